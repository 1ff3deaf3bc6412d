"""Ports: listing, name matching, virtual ports over JACK, flood protection, the watcher."""

from __future__ import annotations

import os
import time

import mido
import pytest

from improv.live import ports
from improv.live.ports import InputQueue, MidiInput, MidiOutput, PortError, PortWatcher, match_port


class FakePort:
    def __init__(self, name: str, callback=None) -> None:
        self.name = name
        self.callback = callback
        self.sent: list[mido.Message] = []
        self.closed = False

    def send(self, msg: mido.Message) -> None:
        self.sent.append(msg)

    def close(self) -> None:
        self.closed = True


class FakeBackend:
    """Stands in for mido.Backend: names in, FakePorts out."""

    name = "fake"
    api = None

    def __init__(self, inputs=(), outputs=()) -> None:
        self.inputs, self.outputs = list(inputs), list(outputs)
        self.opened: list[FakePort] = []

    def get_input_names(self):
        return list(self.inputs)

    def get_output_names(self):
        return list(self.outputs)

    def open_input(self, name=None, virtual=False, callback=None, client_name=None):
        self.opened.append(FakePort(name, callback))
        return self.opened[-1]

    def open_output(self, name=None, virtual=False, client_name=None):
        self.opened.append(FakePort(name))
        return self.opened[-1]


KEYS = ["Keystation 88 MK3:Keystation 88 MK3 MIDI 1 20:0", "Midi Through:Midi Through Port-0 14:0"]


def wait_for(cond, timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            return False
        time.sleep(0.01)
    return True


def test_match_exact_then_unique_substring():
    assert match_port(KEYS[1], KEYS) == KEYS[1]
    assert match_port("keystation", KEYS) == KEYS[0]
    assert match_port("THROUGH", KEYS) == KEYS[1]


def test_match_missing_and_ambiguous_say_what_to_do():
    with pytest.raises(PortError) as missing:
        match_port("nanokey", KEYS, "input")
    text = str(missing.value)
    assert "\n" not in text and "nanokey" in text
    assert all(k in text for k in KEYS) and "improv ports" in text
    with pytest.raises(PortError) as ambiguous:
        match_port("midi", KEYS, "output")
    text = str(ambiguous.value)
    assert "ambiguous" in text and "more of the name" in text and "\n" not in text
    with pytest.raises(PortError, match="available outputs: none"):
        match_port("x", [], "output")
    with pytest.raises(PortError, match="ambiguous"):
        MidiInput("88", backend=FakeBackend(inputs=KEYS + ["Oxygen 88"]))


def test_backend_choice_errors(monkeypatch):
    with pytest.raises(PortError, match="choose one of: alsa, jack, coremidi, winmm"):
        ports.get_backend("oss")
    import mido.backends.rtmidi as rt

    monkeypatch.setattr(rt, "get_api_names", lambda: ["LINUX_ALSA"])
    with pytest.raises(PortError, match="not in this python-rtmidi build; available: alsa"):
        ports.get_backend("jack")
    assert ports.get_backend(None).name == mido.Backend().name


def test_input_queues_timestamped_filtered_messages():
    backend = FakeBackend(inputs=KEYS)
    inp = MidiInput("keystation", backend=backend, channels={0, 1})
    assert inp.name == KEYS[0] and inp.connected
    cb = backend.opened[-1].callback
    before = ports.now()
    cb(mido.Message("note_on", channel=0, note=60))
    cb(mido.Message("note_on", channel=5, note=61))  # filtered out
    cb(mido.Message("clock"))  # system messages have no channel: they pass
    items = inp.queue.drain()
    assert [m.type for _, m in items] == ["note_on", "clock"]
    assert all(before <= t <= ports.now() for t, _ in items)
    assert inp.filtered == 1
    inp.close()
    assert backend.opened[-1].closed and not inp.connected


def test_output_sends_as_given_and_counts_what_a_gone_port_loses():
    backend = FakeBackend(outputs=["FluidSynth:Synth input port (1234:0) 128:0"])
    out = MidiOutput("fluid", backend=backend)
    port = backend.opened[-1]
    out.send(mido.Message("note_on", channel=3, note=60))
    out.send(mido.Message("clock"))
    assert [(m.type, getattr(m, "channel", None)) for m in port.sent] == [
        ("note_on", 3),
        ("clock", None),
    ]
    out.close()
    out.send(mido.Message("note_on", note=60))  # gone: counted, not raised
    assert out.lost == 1


def test_open_without_a_name_and_windows_virtual_ports(monkeypatch):
    with pytest.raises(PortError, match="pick one with --in NAME"):
        MidiInput(None, backend=FakeBackend())
    with pytest.raises(PortError, match="must contain 'improv out'"):
        MidiOutput("my synth", backend=FakeBackend(), virtual=True)
    monkeypatch.setattr(ports.sys, "platform", "win32")
    with pytest.raises(PortError, match="loopMIDI"):
        MidiInput(None, backend=FakeBackend(), virtual=True)


def test_flood_is_bounded_keeps_note_offs_and_counts_drops():
    q = InputQueue(maxsize=256)
    offs_pushed: dict[tuple[int, int], int] = {}
    n_offs = 0
    for i in range(10_000):
        kind = i % 4
        ch, note = i % 16, 21 + (i // 4) % 88
        if kind == 0:
            msg = mido.Message("note_on", channel=ch, note=note, velocity=90)
        elif kind == 1:
            msg = mido.Message("note_off", channel=ch, note=note)
            offs_pushed[(ch, note)] = i
            n_offs += 1
        elif kind == 2:
            msg = mido.Message("note_on", channel=ch, note=note, velocity=0)  # an off too
            offs_pushed[(ch, note)] = i
            n_offs += 1
        else:
            msg = mido.Message("polytouch", channel=ch, note=note, value=i % 128)
        q.put(float(i), msg)
    assert len(q) <= 256 + 16 * 128
    assert q.received == 10_000 and q.dropped > 0
    items = q.drain()
    got_offs = [(t, m) for t, m in items if m.type == "note_off" or m.velocity == 0]
    # Every note-off arrived or was replaced by a later one for the same key.
    assert len(got_offs) + q.coalesced == n_offs
    last_off = {}
    for t, m in got_offs:
        last_off[(m.channel, m.note)] = t
    assert last_off == {k: float(i) for k, i in offs_pushed.items()}
    assert q.dropped == 10_000 - len(items) - q.coalesced
    # Non-notes went first: none survive a flood that held this many note-offs.
    assert all(m.type != "polytouch" for _, m in items)
    assert [t for t, _ in items] == sorted(t for t, _ in items)  # arrival order kept


def test_queue_drops_oldest_non_note_first_and_waits():
    q = InputQueue(maxsize=3)
    q.put(1.0, mido.Message("control_change", value=1))
    q.put(2.0, mido.Message("note_on", note=60))
    q.put(3.0, mido.Message("control_change", value=2))
    q.put(4.0, mido.Message("note_on", note=62))  # full: the oldest CC goes
    assert [t for t, _ in q.drain()] == [2.0, 3.0, 4.0] and q.dropped == 1
    assert q.get(timeout=0.01) is None


@pytest.mark.jack
def test_ports_command_lists_jack_ports(jack_backend, capsys):
    name = f"improv in list-{os.getpid()}"
    with MidiInput(name, backend=jack_backend, virtual=True):
        assert ports.main(["--backend", "jack"], prog="improv ports") == 0
    out = capsys.readouterr().out
    assert "UNIX_JACK" in out and f":{name}" in out and "outputs:" in out


def test_ports_command_reports_errors_in_one_line(monkeypatch, capsys):
    def broken(backend=None):
        raise PortError("cannot reach the MIDI system (x); try --backend jack")

    monkeypatch.setattr(ports, "input_names", broken)
    assert ports.main([], prog="improv ports") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("improv ports: cannot reach")


@pytest.mark.jack
def test_virtual_ports_round_trip_over_jack(jack_backend):
    tag = f"rt-{os.getpid()}"
    vin = MidiInput(f"improv in {tag}", backend=jack_backend, virtual=True)
    vout = MidiOutput(f"improv out {tag}", backend=jack_backend, virtual=True)
    # Another program's view: our virtual input is a JACK sink, our output a source.
    to_us = MidiOutput(f"improv in {tag}", backend=jack_backend)
    from_us = MidiInput(f"improv out {tag}", backend=jack_backend)
    try:
        to_us.send(mido.Message("note_on", note=60, velocity=100))
        to_us.send(mido.Message("note_off", note=60))
        vout.send(mido.Message("control_change", control=64, value=127))
        assert wait_for(lambda: len(vin.queue) == 2 and len(from_us.queue) == 1)
        got = [m for _, m in vin.queue.drain()]
        assert [(m.type, m.note) for m in got] == [("note_on", 60), ("note_off", 60)]
        assert from_us.queue.get(timeout=0)[1].value == 127
        assert "improv in" in vin.name and "improv out" in vout.name
    finally:
        for p in (to_us, from_us, vin, vout):
            p.close()


@pytest.mark.jack
def test_watcher_reports_a_lost_controller_and_reopens_it(jack_backend):
    keys_name = f"fake keys {os.getpid()}"
    keys = jack_backend.open_output(keys_name, virtual=True, client_name="fakekeys")
    inp = MidiInput(keys_name, backend=jack_backend)
    events: list[tuple[str, str]] = []
    watcher = PortWatcher(inp, interval=0.05, on_event=lambda e, n: events.append((e, n))).start()
    try:
        keys.close()  # unplugged
        assert wait_for(lambda: len(events) >= 1)
        assert events[0][0] == "lost" and not inp.connected
        keys = jack_backend.open_output(keys_name, virtual=True, client_name="fakekeys")
        assert wait_for(lambda: len(events) >= 2)
        assert events[1][0] == "back" and keys_name in events[1][1] and inp.connected
        time.sleep(0.05)
        keys.send(mido.Message("note_on", note=64))
        assert wait_for(lambda: len(inp.queue) == 1)
    finally:
        watcher.stop()
        keys.close()
        inp.close()


def test_opening_a_port_without_the_midi_system_gives_the_same_hint_as_improv_ports(
        monkeypatch, capsys):
    class NoSequencer(FakeBackend):
        api = "LINUX_ALSA"

        def open_output(self, name=None, virtual=False, client_name=None):
            raise OSError("MidiOutAlsa::initialize: error creating ALSA sequencer client object.")

        def get_input_names(self):
            raise OSError("MidiInAlsa::initialize: error creating ALSA sequencer client object.")

    monkeypatch.setattr(ports.sys, "platform", "linux")
    with pytest.raises(PortError) as opened:
        MidiOutput(None, backend=NoSequencer(), virtual=True)
    monkeypatch.setattr(ports, "get_backend", lambda name=None: NoSequencer())
    assert ports.main([], prog="improv ports") == 2
    listed = capsys.readouterr().err
    hint = "no ALSA sequencer (/dev/snd/seq): load snd-seq or try --backend jack"
    assert hint in str(opened.value) and hint in listed and "\n" not in str(opened.value)
