"""The session API socket: a UI in another process gets snapshots and log lines and sends
intents; a client that stops reading is dropped without the session (or the other clients)
waiting for it; a UI sees when the jam is gone."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import tempfile
import threading
import time
from dataclasses import replace

import pytest

from improv.live.api_server import Address, ApiServer, find_jam
from improv.live.session_api import (
    NoteView,
    Panic,
    SetKnob,
    Snapshot,
    State,
    encode_line,
)
from improv.stage.remote import JamGone, RemoteSession

pytestmark = pytest.mark.skipif(os.name == "nt", reason="Unix sockets (TCP on Windows)")


class FakeSession:
    """A new snapshot every call (a busy roll: 128 notes), intents kept, log lines on demand."""

    def __init__(self) -> None:
        self.beat = 0.0
        self.sent: list = []
        self.lines: list[str] = []
        self.base = Snapshot(state=State.RESPONDING, notes=tuple(
            NoteView("machine", 40 + i % 40, i * 0.25, i * 0.25 + 0.2) for i in range(128)))

    def snapshot(self) -> Snapshot:
        self.beat += 0.05
        return replace(self.base, beat=self.beat)

    def send(self, intent) -> None:
        self.sent.append(intent)

    def drain_log(self) -> list[str]:
        out, self.lines = self.lines, []
        return out


@pytest.fixture
def runtime(monkeypatch):
    folder = tempfile.mkdtemp(prefix="improv-rt-")  # short: a socket path has ~100 bytes
    monkeypatch.setenv("IMPROV_RUNTIME_DIR", folder)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def wait_for(pred, timeout: float = 10.0, what: str = "it"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def test_the_socket_is_private_and_the_ui_can_find_it(runtime):
    with ApiServer(FakeSession()) as server:
        path = server.path
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(runtime).st_mode) == 0o700
        assert find_jam() == server.address
    assert not path.exists() and find_jam() is None  # a closed jam leaves nothing behind


def test_a_stale_address_file_is_ignored_and_removed(runtime):
    dead = os.path.join(runtime, "jam-999999999.json")
    with open(dead, "w") as f:
        f.write('{"address": "unix:/nowhere.sock", "pid": 999999999}')
    assert find_jam() is None and not os.path.exists(dead)


def test_no_jam_is_one_clear_error(runtime):
    with pytest.raises(JamGone, match="no jam at unix:"):
        RemoteSession(Address.from_socket_path(os.path.join(runtime, "none.sock")))


def test_a_remote_session_gets_snapshots_and_logs_and_its_intents_reach_the_session(runtime):
    fake = FakeSession()
    fake.lines = ["before you came"]
    with ApiServer(fake, rate_hz=50) as server:
        server.publish()  # the backlog: a UI attaching later sees what just happened
        remote = RemoteSession(server.address)
        assert remote.wait_first(5.0)
        assert remote.snapshot().state == State.RESPONDING and len(remote.snapshot().notes) == 128
        beat = remote.snapshot().beat
        wait_for(lambda: remote.snapshot().beat > beat, what="a newer snapshot")
        fake.lines.append("state: listening")
        log: list[str] = []
        wait_for(lambda: log.extend(remote.drain_log()) or "state: listening" in log,
                 what="the log line")
        assert log[0] == "before you came"
        remote.send(SetKnob("temperature", 0.7))
        remote.send(Panic())
        wait_for(lambda: len(fake.sent) == 2, what="the intents")
        assert fake.sent == [SetKnob("temperature", 0.7), Panic()]
        assert remote.jam_pid == os.getpid() and server.client_pids() == [os.getpid()]
        remote.close()
        wait_for(lambda: server.client_pids() == [], what="the detach")


def test_bad_lines_are_refused_and_the_session_never_sees_them(runtime):
    fake = FakeSession()
    with ApiServer(fake) as server:
        sock = server.address.connect()
        for line in (b"nonsense\n", encode_line({"intent": {"kind": "Exec", "code": "1"}}),
                     encode_line({"intent": {"kind": "SetKnob", "name": "volume", "value": 1}}),
                     encode_line({"intent": {"kind": "Panic"}})):
            sock.sendall(line)
        wait_for(lambda: fake.sent, what="the good intent")
        assert fake.sent == [Panic()]
        received = b""
        while received.count(b'"error"') < 3:
            received += sock.recv(65536)
        sock.sendall(b"x" * 70000)  # no newline: not a message, and not kept for ever
        wait_for(lambda: server.client_pids() == [], what="the client dropped")
        sock.close()


def test_a_client_that_stops_reading_is_dropped_and_costs_the_others_nothing(runtime):
    fake = FakeSession()
    server = ApiServer(fake, rate_hz=1, max_buffer=256 * 1024).start()
    try:
        stuck = server.address.connect()
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stuck.sendall(encode_line({"hello": {"pid": 4242}}))  # ... and it never reads again
        reader = RemoteSession(server.address)
        wait_for(lambda: set(server.client_pids()) == {4242, os.getpid()},
                 what="both clients")
        costs: list[float] = []

        def publish_a_lot():
            for _ in range(300):  # ~3 MB of snapshots: far more than the stuck one may hold
                t = time.perf_counter()
                server.publish()
                costs.append(time.perf_counter() - t)
                time.sleep(0.002)  # 500 Hz: 25 times the real rate, and the reader keeps up

        worker = threading.Thread(target=publish_a_lot, daemon=True)
        worker.start()
        worker.join(timeout=60)
        assert not worker.is_alive(), "publish blocked on a client that does not read"
        assert list(server.dropped) == [(4242, "stopped reading")]
        assert server.client_pids() == [os.getpid()]
        # a blocking send would have hung above; this bounds a copy into a buffer, loosely
        assert max(costs) < 0.5
        wait_for(lambda: abs(reader.snapshot().beat - fake.beat) < 1e-9, what="the last snapshot")
        assert reader.gone is None
        stuck.close()
    finally:
        server.close()


def test_the_ui_sees_the_jam_end_or_vanish(runtime):
    server = ApiServer(FakeSession()).start()
    remote = RemoteSession(server.address)
    assert remote.wait_first(5.0) or True
    server.close()
    wait_for(lambda: remote.gone is not None, what="the bye")
    assert remote.gone == "the jam has ended" and remote.ended
    assert "the jam has ended" in remote.drain_log()
    remote.send(Panic())  # a no-op once gone, not an error

    path = os.path.join(runtime, "raw.sock")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen(1)
    remote = RemoteSession(Address.from_socket_path(path))
    conn, _ = listener.accept()
    conn.close()  # a jam killed: no bye
    wait_for(lambda: remote.gone is not None, what="the hang-up")
    assert remote.gone == "the jam went away" and not remote.ended
    listener.close()
