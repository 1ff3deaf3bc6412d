"""Shutdown cannot hang and signals have clean edges: a real `improv jam` on a JACK server, in a
subprocess. Ctrl-C twice exits cleanly; SIGTERM during start-up leaves nothing that blocks the
next start with the same --record; a closed stdout does not end the set; SIGUSR1 reaches the
session as a panic; and a jam whose terminal and MIDI server both vanish exits within 5 s with
its recording closed."""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import helpers
import mido
import pytest

from bench.terminal import Pty
from improv.commands import teardown

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="pty, /proc")


@pytest.fixture
def place(tmp_path):
    """The jam's environment: its own runtime folder (short: a socket path), config, sessions."""
    runtime = tempfile.mkdtemp(prefix="improv-rt-")
    env = dict(os.environ, JACK_NO_START_SERVER="1", IMPROV_RUNTIME_DIR=runtime,
               XDG_CONFIG_HOME=str(tmp_path / "cfg"), IMPROV_SESSIONS=str(tmp_path / "sets"))
    yield env
    shutil.rmtree(runtime, ignore_errors=True)


def jam_cmd(*extra: str) -> list[str]:
    tag = f"sd{os.getpid()}-{time.monotonic_ns() % 10**6}"  # ports of its own on a shared server
    return [sys.executable, "-m", "improv", "jam", "--backend", "jack", "--virtual",
            "--in", f"improv in {tag}", "--out", f"improv out {tag}", *extra]


def wait_for(pred, timeout: float, what: str):
    return helpers.wait_for(pred, timeout, what, every=0.02)


def children(pid: int) -> list[int]:
    try:
        return [int(k) for k in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def finish(proc: subprocess.Popen, timeout: float = 20) -> tuple[str, str]:
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"the jam did not exit within {timeout} s:\n{err[-2000:]}") from None


def headless(env: dict, *extra: str, stdout=subprocess.PIPE) -> subprocess.Popen:
    return subprocess.Popen(jam_cmd("--no-tui", *extra), env=env, stdout=stdout,
                            stderr=subprocess.PIPE, text=True)


def first_line(proc: subprocess.Popen) -> str:
    line = proc.stdout.readline()
    assert line, f"the jam printed nothing:\n{proc.stderr.read()[-2000:]}"
    return line


@pytest.mark.jack
def test_ctrl_c_twice_and_more_exits_cleanly(jack_server, place):
    proc = headless(place, "--no-record", "--seconds", "60")
    assert "state:" in first_line(proc)
    # Ctrl-C, then again and again while the set comes down: each one can land in the teardown
    # (a port's close), or after it, while the interpreter finalizes
    for _ in range(200):
        if proc.poll() is not None:
            break
        proc.send_signal(signal.SIGINT)
        time.sleep(0.02)
    out, err = finish(proc)
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert "latency:" in out  # the set's last line: it ended the ordinary way


@pytest.mark.jack
def test_sigusr1_asks_the_session_for_a_panic(jack_server, place):
    proc = headless(place, "--no-record", "--seconds", "60")
    first_line(proc)
    proc.send_signal(signal.SIGUSR1)
    line = wait_for(lambda: proc.stdout.readline(), 10, "a line after SIGUSR1")
    assert "panic" in line and "all notes off" in line, line
    proc.send_signal(signal.SIGTERM)
    out, err = finish(proc)
    assert proc.returncode == 0 and "Traceback" not in err, err


@pytest.mark.jack
def test_a_closed_stdout_does_not_end_the_set(jack_server, place):
    seconds = 5.0
    t0 = time.monotonic()
    proc = headless(place, "--no-record", "--seconds", str(seconds))
    first_line(proc)
    proc.stdout.close()  # the reader goes (`improv jam | head -1`, a log collector dies)
    proc.send_signal(signal.SIGUSR1)  # a line to print right away: it meets EPIPE
    time.sleep(1.5)
    assert proc.poll() is None, f"the set ended with its stdout:\n{proc.stderr.read()}"
    err = proc.stderr.read()
    proc.wait(timeout=20)
    took = time.monotonic() - t0
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "BrokenPipe" not in err, err
    assert took >= seconds, f"the set ended after {took:.1f} s of {seconds}"


def catches(pid: int, signum: int) -> bool:
    """Whether process ``pid`` has a handler for ``signum`` (its SigCgt mask)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    mask = next(int(line.split()[1], 16) for line in status.splitlines()
                if line.startswith("SigCgt:"))
    return bool(mask >> (signum - 1) & 1)


@pytest.mark.jack
@pytest.mark.parametrize("moment", ["model loading", "I/O process starting"])
def test_sigterm_during_startup_leaves_nothing_that_blocks_the_next_start(jack_server, place,
                                                                         tmp_path, moment):
    record = tmp_path / "set.mid"
    journal = Path(str(record) + ".partial")
    proc = headless(place, "--record", str(record), "--seconds", "60")
    if moment == "model loading":  # the jam's handlers are in: preset and model come next
        wait_for(lambda: catches(proc.pid, signal.SIGTERM) or proc.poll() is not None, 30,
                 "the jam's signal handlers")
        assert not journal.exists()
    else:  # the journal exists once the model has loaded; the I/O process and ports are next
        wait_for(lambda: journal.exists() or proc.poll() is not None, 30,
                 "the recording's journal")
    proc.send_signal(signal.SIGTERM)
    out, err = finish(proc)
    assert proc.returncode == 0 and "Traceback" not in err, err
    assert not journal.exists(), "a start ended by SIGTERM left its journal"

    again = headless(place, "--record", str(record), "--seconds", "1")
    out, err = finish(again, 30)
    assert again.returncode == 0 and "Traceback" not in err, err
    assert mido.MidiFile(record).tracks, "the second start's recording is a .mid"
    assert not journal.exists()


@pytest.mark.jack
def test_a_start_killed_outright_leaves_a_journal_that_is_moved_aside(jack_server, place,
                                                                    tmp_path):
    record = tmp_path / "set.mid"
    journal = Path(str(record) + ".partial")
    proc = headless(place, "--record", str(record), "--seconds", "60")
    wait_for(lambda: journal.exists() or proc.poll() is not None, 30, "the recording's journal")
    proc.kill()  # no handler runs: the journal stays, without a note in it
    finish(proc)
    assert journal.exists()

    again = headless(place, "--record", str(record), "--seconds", "1")
    out, err = finish(again, 30)
    assert again.returncode == 0 and "Traceback" not in err, err
    assert f"{journal.name} was left by a start that recorded no note; moved aside" in err
    assert Path(str(journal) + ".empty").exists() and mido.MidiFile(record).tracks


def _jackd(name: str, log) -> subprocess.Popen:
    jackd = shutil.which("jackd")  # the jack_server fixture has made sure it is there
    assert jackd is not None
    env = dict(os.environ, JACK_DEFAULT_SERVER=name, JACK_NO_START_SERVER="1")
    proc = subprocess.Popen([jackd, "-n", name, "-d", "dummy", "-r", "48000", "-p", "64"],
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    wait_for(lambda: subprocess.run(["jack_lsp"], env=env, capture_output=True, timeout=5)
             .returncode == 0 or proc.poll() is not None, 15, "the private JACK server")
    assert proc.poll() is None, "the private JACK server did not start"
    return proc


@pytest.mark.jack
def test_terminal_and_midi_server_vanish_the_jam_exits_within_5_s(jack_server, place, tmp_path):
    name = f"improv-edges-{os.getpid()}"  # a server of its own: this test stops it
    log = tempfile.TemporaryFile("w+")
    jackd = _jackd(name, log)
    record = tmp_path / "set.mid"
    env = dict(place, JACK_DEFAULT_SERVER=name, TERM="xterm-256color", COLUMNS="100",
               LINES="30")
    term = Pty(100, 30)
    proc = subprocess.Popen(jam_cmd("--record", str(record), "--seconds", "120"),
                            stdin=term.slave, stdout=term.slave, stderr=term.slave, env=env,
                            start_new_session=True)  # no controlling terminal: no SIGHUP comes
    term.close_slave()
    kids: list[int] = []
    try:
        wait_for(lambda: "latency" in term.text() or proc.poll() is not None, 40,
                 "the UI's first frame")
        assert proc.poll() is None, term.text()[-3000:]
        time.sleep(1.0)  # playing
        kids = children(proc.pid)  # the I/O process and the UI process
        assert len(kids) >= 2, kids
        os.close(term.master)  # the terminal goes away (a killed tmux, a dropped link)...
        jackd.terminate()  # ...and the MIDI server with it
        t = time.monotonic()
        try:
            proc.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            raise AssertionError("the jam did not exit within 5 s of its terminal and its "
                                 "MIDI server vanishing") from None
        took = time.monotonic() - t
    finally:
        for p in (proc, jackd):
            if p.poll() is None:
                p.kill()
                p.wait()
        log.close()
    print(f"the jam exited {took:.2f} s after its terminal and its MIDI server went")
    assert proc.returncode == 0
    wait_for(lambda: not any(alive(k) for k in kids), 5, "the jam's children to go")
    assert not Path(str(record) + ".partial").exists(), "the recording was not closed"
    assert mido.MidiFile(record).tracks, "the recording is a .mid"


# --- the pieces: printers, bounded steps, the watchdog --------------------------------------


def test_a_printer_never_blocks_on_a_reader_that_stopped_and_goes_quiet_when_it_left():
    r, w = os.pipe()
    stalled = teardown.Printer(w)  # nobody reads r: the pipe fills (64 KiB), the thread waits
    t = time.monotonic()
    for i in range(teardown.PRINT_QUEUE * 3):
        stalled.line(f"line {i} " + "x" * 200)
    assert time.monotonic() - t < 1.0, "line() waited on the reader"
    assert stalled.dropped > 0 and not stalled.drain(0.2)
    os.close(r)  # the reader leaves: EPIPE, the printer goes quiet instead of raising
    wait_for(lambda: stalled.dead, 5, "the printer to notice EPIPE")
    stalled.line("after the reader left")  # nothing happens, nothing raised
    assert os.write(w, b"x") == 1  # the descriptor now leads to /dev/null: no one's write fails
    os.close(w)


def test_a_bounded_step_that_hangs_is_left_behind_and_said(capfd):
    import threading

    never = threading.Event()
    t = time.monotonic()
    assert teardown.bounded(never.wait, 0.3, "a stuck port") is False
    assert time.monotonic() - t < 1.0
    assert teardown.bounded(lambda: 1 / 0, 2.0, "a failing step") is True  # raised: swallowed
    teardown.drain(2.0)
    err = capfd.readouterr().err
    assert "improv: a stuck port did not finish within 0.3 s; going on without it" in err
    assert "failing step" not in err
    never.set()


def test_the_watchdog_ends_a_shutdown_that_hangs():
    code = ("import threading; from improv.commands import teardown; "
            "teardown.Watchdog(0.5, status=7).start(); threading.Event().wait(30)")
    t = time.monotonic()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 7 and time.monotonic() - t < 10
    assert "the shutdown took over 0.5 s; exiting now" in done.stderr
    done_in_time = ("import time; from improv.commands import teardown; "
                    "w = teardown.Watchdog(0.5, status=7).start(); w.done(); time.sleep(1)")
    quiet = subprocess.run([sys.executable, "-c", done_in_time], capture_output=True, text=True,
                           timeout=30)
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr


def test_a_printer_waits_out_a_non_blocking_reader_that_is_slow():
    r, w = os.pipe()
    os.set_blocking(w, False)  # as a terminal a UI made non-blocking: EAGAIN when full
    p = teardown.Printer(w)
    lines = [f"{i:05d} " + "y" * 1000 for i in range(200)]  # 200 KB: more than the pipe holds
    for line in lines:
        p.line(line)
    got = b""
    while len(got) < sum(len(x) + 1 for x in lines):
        if not select.select([r], [], [], 5.0)[0]:
            break  # the printer gave up: what came is compared below
        got += os.read(r, 65536)
    assert got.decode().splitlines() == lines and not p.dead
    os.close(r)
    os.close(w)
