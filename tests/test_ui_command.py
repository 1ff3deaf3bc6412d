"""`improv ui` and the jam's supervision of its UI process: attaching to a jam's socket under a
pseudo-terminal, what q does (detach, or end the set for the jam's own UI), a jam that goes
away, no jam at all, and a UI process that dies or hangs while the set plays on."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from types import SimpleNamespace

import pytest

from bench.terminal import Pty
from improv.commands import jam_ui, teardown
from improv.commands.ui import main as ui_main
from improv.live.api_server import ApiServer
from improv.live.session_api import Snapshot, State, Stop, encode_line

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="pty, Unix sockets")


class FakeSession:
    def __init__(self) -> None:
        self.sent: list = []
        self.running = True
        self.snap = Snapshot(state=State.LISTENING, presets=("one", "two"))

    def snapshot(self) -> Snapshot:
        return replace(self.snap, beat=time.monotonic())

    def send(self, intent) -> None:
        self.sent.append(intent)

    def drain_log(self) -> list[str]:
        return []


@pytest.fixture
def runtime(monkeypatch):
    folder = tempfile.mkdtemp(prefix="improv-rt-")
    monkeypatch.setenv("IMPROV_RUNTIME_DIR", folder)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def wait_for(pred, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


class Term:
    """`improv ui ARGS` under an 80x24 pseudo-terminal, its output drained."""

    def __init__(self, *args: str) -> None:
        self.pty = Pty(80, 24)
        self.proc = subprocess.Popen([sys.executable, "-m", "improv", "ui", *args],
                                     stdin=self.pty.slave, stdout=self.pty.slave,
                                     stderr=self.pty.slave, start_new_session=True,
                                     env=dict(os.environ, TERM="xterm-256color"))
        self.pty.close_slave()
        self.master = self.pty.master

    def text(self) -> str:
        return self.pty.text()

    def wait(self, timeout: float = 30) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()


def test_no_jam_running_is_one_clear_line(runtime, capsys):
    assert ui_main([]) == 2
    err = capsys.readouterr().err
    assert "no jam is running" in err and err.count("\n") == 1
    assert ui_main(["--socket", os.path.join(runtime, "gone.sock")]) == 2
    assert "no jam at unix:" in capsys.readouterr().err


@pytest.mark.parametrize("owner", [False, True], ids=["attached", "the jam's own"])
def test_q_detaches_an_attached_ui_and_ends_the_set_from_the_jams_own(runtime, owner):
    fake = FakeSession()
    with ApiServer(fake) as server:
        term = Term(*(["--owner", "--socket", server.address.text] if owner else []))
        wait_for(lambda: "latency" in term.text() or term.proc.poll() is not None, 30,
                 "the first frame")
        wait_for(lambda: server.client_pids() == [term.proc.pid], 10, "the UI attached")
        os.write(term.master, b"q")
        if owner:  # the jam's own UI asks before it ends the set
            wait_for(lambda: "End the set?" in term.text(), 10, "the question")
            os.write(term.master, b"y")
        assert term.wait() == 0, term.text()[-2000:]
        wait_for(lambda: server.client_pids() == [], 10, "the UI detached")
    assert fake.sent == ([Stop()] if owner else [])


def test_the_ui_says_when_the_jam_ends(runtime):
    server = ApiServer(FakeSession()).start()
    term = Term()
    try:
        wait_for(lambda: server.client_pids() == [term.proc.pid], 30, "the UI attached")
    finally:
        server.close()
    assert term.wait() == 0
    assert "improv: the jam has ended" in term.text()


def slow_ui(code: str):
    return lambda server, backend: [sys.executable, "-c", code, server.address.text]


def test_a_ui_that_quits_ends_the_set(runtime, monkeypatch):
    monkeypatch.setattr(jam_ui, "ui_command", slow_ui("pass"))
    with ApiServer(FakeSession()) as server:
        assert jam_ui.run_with_ui(FakeSession(), server, None, 20, threading.Event()) is None


def test_a_killed_ui_is_one_line_and_the_set_plays_on(runtime, monkeypatch, capfd):
    monkeypatch.setattr(jam_ui, "ui_command", slow_ui("import os, signal; "
                                                      "os.kill(os.getpid(), signal.SIGKILL)"))
    with ApiServer(FakeSession()) as server:
        why = jam_ui.run_with_ui(FakeSession(), server, None, 20, threading.Event())
    assert why == "was killed (SIGKILL)"
    teardown.drain(5.0)  # the jam's lines are written by a printer thread
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and "the stage UI was killed (SIGKILL); the set plays on" in err


def test_a_hung_ui_is_ended_and_the_set_plays_on(runtime, monkeypatch, capfd):
    # connects, says hello, and never reads again: the server drops it, the jam ends it
    hello = encode_line({"hello": {"pid": 0}}).decode().strip()
    code = ("import os, socket, sys, time; s = socket.socket(socket.AF_UNIX); "
            "s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096); "
            "s.connect(sys.argv[1].partition(':')[2]); "
            f"s.sendall({hello!r}.replace('0', str(os.getpid()), 1).encode() + b'\\n'); "
            "time.sleep(60)")
    monkeypatch.setattr(jam_ui, "ui_command", slow_ui(code))
    fake = FakeSession()
    fake.snap = replace(fake.snap, presets=tuple(f"preset {i}" * 20 for i in range(200)))
    server = ApiServer(fake, rate_hz=200, max_buffer=64 * 1024).start()
    try:
        t = time.monotonic()
        why = jam_ui.run_with_ui(fake, server, None, 30, threading.Event())
        assert time.monotonic() - t < 25
    finally:
        server.close()
    assert why == "stopped answering and was ended"
    teardown.drain(5.0)
    assert "the set plays on" in capfd.readouterr().err


def test_the_set_ending_says_bye_to_the_ui(runtime, monkeypatch):
    # a UI that waits for the jam's bye, then goes: the jam's time is up first
    code = ("import socket, sys; s = socket.socket(socket.AF_UNIX); "
            "s.connect(sys.argv[1].partition(':')[2]); "
            "data = b''\nwhile b'bye' not in data:\n    data += s.recv(65536)")
    monkeypatch.setattr(jam_ui, "ui_command", slow_ui(code))
    server = ApiServer(FakeSession()).start()
    t = time.monotonic()
    assert jam_ui.run_with_ui(FakeSession(), server, None, 1.0, threading.Event()) is None
    assert time.monotonic() - t < jam_ui.BYE_WAIT  # it went by itself, it was not killed


def test_while_the_ui_runs_nothing_of_the_jam_reaches_the_terminal(runtime, monkeypatch, capfd,
                                                                   tmp_path):
    # the UI: collects the log lines the jam sends until its bye, and writes them down
    code = ("import json, socket, sys; s = socket.socket(socket.AF_UNIX); "
            "s.connect(sys.argv[2].partition(':')[2]); data = b''\n"
            "while b'bye' not in data:\n    data += s.recv(65536)\n"
            "lines = [json.loads(x) for x in data.splitlines()]\n"
            "open(sys.argv[1], 'w').write(json.dumps([m['log'] for m in lines if 'log' in m]))")
    got = tmp_path / "log.json"
    monkeypatch.setattr(jam_ui, "ui_command", lambda server, backend: [
        sys.executable, "-c", code, str(got), server.address.text])
    server = ApiServer(FakeSession(), rate_hz=50).start()
    handler = logging.StreamHandler(sys.stderr)  # what jam's logging.basicConfig does
    logging.getLogger().addHandler(handler)

    def write_while_it_runs():
        wait_for(lambda: server.client_pids(), 20, "the UI attached")
        os.write(2, b"a C library on fd 2\n")
        print("a stray print", flush=True)
        logging.getLogger("improv.x").warning("careful")

    writer = threading.Thread(target=write_while_it_runs)
    writer.start()
    try:
        assert jam_ui.run_with_ui(FakeSession(), server, None, 2.0, threading.Event()) is None
    finally:
        writer.join()
        logging.getLogger().removeHandler(handler)
    out, err = capfd.readouterr()
    assert "stray" not in out + err and "fd 2" not in out + err and "careful" not in out + err
    lines = [line for batch in json.loads(got.read_text()) for line in batch]
    assert {"a C library on fd 2", "a stray print", "warning: careful"} <= set(lines)


@pytest.mark.jack
def test_the_ports_screen_lists_the_sets_backend(jack_backend, monkeypatch, runtime):
    from improv.commands import ui as ui_mod
    from improv.stage import remote as remote_mod
    from improv.stage import tui as tui_mod

    made = {}

    class App:  # the stage app, as far as `improv ui` builds it
        def __init__(self, session, presets=(), list_ports=None, quit_ends_set=False):
            made["list_ports"] = list_ports
            self.return_code = 0

        def run(self) -> None:
            pass

    class Remote:
        def __init__(self, address) -> None:
            pass

        def wait_first(self, timeout: float) -> None:
            pass

        def snapshot(self) -> Snapshot:
            return FakeSession().snap

        def close(self) -> None:
            pass

    monkeypatch.setattr(remote_mod, "RemoteSession", Remote)
    monkeypatch.setattr(tui_mod, "ImprovApp", App)
    monkeypatch.setattr(ui_mod, "_yield_to_the_set", lambda: None)  # no nice() on pytest
    name = f"edges picker {os.getpid()}"
    probe = jack_backend.open_output(name, virtual=True)  # a JACK port: only JACK lists it
    try:
        # the jam hands its --backend to its UI, and the UI's ports screen lists that backend
        server = SimpleNamespace(address=SimpleNamespace(text=f"unix:{runtime}/jam.sock"))
        argv = jam_ui.ui_command(server, "jack")[3:]  # after `python -m improv`
        assert argv[:1] == ["ui"] and argv[-2:] == ["--backend", "jack"]
        assert ui_main(argv[1:]) == 0
        inputs, outputs = made["list_ports"]()
    finally:
        probe.close()
    assert any(name in n for n in inputs), inputs
