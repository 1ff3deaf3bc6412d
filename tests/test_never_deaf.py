"""The input never goes deaf: polled rtmidi input, SysEx ignored, the probe (JACK)."""

from __future__ import annotations

import os
import time

import pytest

from improv.live import midi_in
from improv.live.midi_in import PolledPort
from improv.live.ports import MidiInput, PortWatcher

pytestmark = pytest.mark.jack


def wait_for(cond, timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return cond()


def _raw_sender(name: str):
    """Another program's output patched into our input, sending raw bytes (rtmidi)."""
    import rtmidi

    out = rtmidi.MidiOut(rtapi=rtmidi.API_UNIX_JACK, name="keys")
    names = out.get_ports()
    out.open_port([i for i, n in enumerate(names) if n.endswith(":" + name)][0], "keys")
    return out


def _notes(inp: MidiInput) -> list[tuple[str, int]]:
    return [(m.type, m.note) for _, m in inp.queue.drain() if hasattr(m, "note")]


def _settle(out, inp: MidiInput) -> None:
    """Wait until the sender's new connection carries messages (a CC we then drop)."""
    def heard() -> bool:
        out.send_message([0xB0, 3, 1])
        time.sleep(0.02)
        return any(m.type == "control_change" for _, m in inp.queue.drain())

    assert wait_for(heard), "the sender's connection never carried a message"


def test_the_input_passes_its_self_test_and_is_read_without_a_callback(jack_backend):
    inp = MidiInput(f"improv in st-{os.getpid()}", backend=jack_backend, virtual=True)
    try:
        assert isinstance(inp._port, PolledPort) and inp.heard is True
        assert inp._port._rt.is_port_open() and not inp.deaf
    finally:
        inp.close()


def test_a_cut_short_sysex_does_not_deafen_the_input(jack_backend):
    name = f"improv in sx-{os.getpid()}"
    inp = MidiInput(name, backend=jack_backend, virtual=True)
    out = _raw_sender(name)
    try:
        _settle(out, inp)
        out.send_message([0xF0, 0x7D, 0x01, 0x02])  # a cable pulled mid-dump: no F7
        time.sleep(0.01)
        out.send_message([0x90, 60, 100])  # the call
        out.send_message([0x80, 60, 0])
        assert wait_for(lambda: len(inp.queue) >= 2, 2.0)
        assert _notes(inp) == [("note_on", 60), ("note_off", 60)]
    finally:
        out.close_port()
        inp.close()


def test_messages_are_stamped_with_the_backends_time_not_the_polls(jack_backend, monkeypatch):
    monkeypatch.setattr(midi_in, "POLL_S", 0.02)  # a slow poll must not smear the times
    name = f"improv in ts-{os.getpid()}"
    inp = MidiInput(name, backend=jack_backend, virtual=True)
    out = _raw_sender(name)
    try:
        _settle(out, inp)
        # The poll's time only bounds a message's time from above: the mapping is the
        # tightest bound seen, so let messages land at many phases of the slow poll first.
        for i in range(40):
            out.send_message([0xB0, 3, i])
            time.sleep(0.007)
        time.sleep(0.05)
        inp.queue.drain()
        sent = []
        for i in range(12):
            sent.append(time.monotonic())
            out.send_message([0x90, 60 + i, 100])
            time.sleep(0.013)
        assert wait_for(lambda: len(inp.queue) >= 12)
        got = [t for t, m in inp.queue.drain() if m.type == "note_on"]
        gaps = [b - a for a, b in zip(got, got[1:], strict=False)]
        sent_gaps = [b - a for a, b in zip(sent, sent[1:], strict=False)]
        # Polled every 20 ms, poll times would show gaps of 0 or 20 ms; the backend's
        # times keep the 13 ms spacing within a JACK period or two.
        assert max(abs(g - s) for g, s in zip(gaps, sent_gaps, strict=True)) < 0.004
    finally:
        out.close_port()
        inp.close()


def test_a_deaf_input_is_reopened_by_its_watcher_and_said(jack_backend, monkeypatch):
    name = f"improv in df-{os.getpid()}"
    inp = MidiInput(name, backend=jack_backend, virtual=True)
    events: list[tuple[str, str]] = []
    watcher = PortWatcher(inp, interval=0.05, on_event=lambda e, n: events.append((e, n)))
    try:
        first = inp._port
        first._nonce = -1  # nothing can answer this: the probe goes unheard from now on
        monkeypatch.setattr(first, "_take", lambda data, t: None)
        watcher.start()
        assert wait_for(lambda: events, 5.0)
        assert events[0] == ("deaf", inp.name) and inp._port is not first
        assert inp.heard is True and not inp.deaf
    finally:
        watcher.stop()
        inp.close()


def test_a_whole_sysex_even_a_large_one_is_dropped_and_the_input_goes_on(jack_backend):
    name = f"improv in sy-{os.getpid()}"
    inp = MidiInput(name, backend=jack_backend, virtual=True)
    out = _raw_sender(name)
    try:
        _settle(out, inp)
        out.send_message([0xF0, 0x7D, 0x01, 0x02, 0x03, 0xF7])
        out.send_message([0xF0, 0x7D] + [i % 128 for i in range(4000)] + [0xF7])  # a dump
        out.send_message([0x90, 64, 100])
        assert wait_for(lambda: len(inp.queue) >= 1, 2.0)
        time.sleep(0.1)
        assert _notes(inp) == [("note_on", 64)]  # nothing of either SysEx came through
        assert inp._port.rescued == 0
    finally:
        out.close_port()
        inp.close()
