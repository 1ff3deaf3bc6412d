"""The real-time I/O process: MIDI ports, the scheduler and its book, clock in and out.

This module owns what runs in the process that :class:`improv.live.iolink.IOLink`
starts (multiprocessing, spawn context), apart from the session's model and any UI,
so that neither a decode step nor a redraw can delay a deadline or a timestamp:

* the MIDI ports (:class:`~improv.live.ports.MidiInput` timestamps each message in
  its callback; :class:`~improv.live.ports.MidiOutput`);
* the :class:`~improv.live.scheduler.Scheduler` with its book of sounding machine
  notes, driven by this process's :class:`~improv.live.clock.Clock` (late binding);
* clock out (:class:`~improv.live.clock.ClockSender`) and the
  :class:`~improv.live.clock.MidiClockFollower`, fed with the callback's timestamps;
* thru: the player's notes, controllers, bend and pressure go straight to the output,
  not via the session;
* the echo guard (:mod:`improv.live.echo`): our own messages coming back into the
  input are dropped here, before thru or the session sees them;
* JACK's period (:mod:`improv.live.jack_info`): on JACK every message goes out half a
  period before its time, so it lands in the nearest cycle, and a followed master's pulses
  are taken as ``--clock-offset-ms`` (default half a period) earlier than heard;
* the watchdog: if the session process dies (the pipe's end of file) or stops its
  heartbeat for ``watchdog_s`` (200 ms), every sounding note is ended, then CC 123
  on every channel used, one line says so on stderr, and the process exits.

Nothing here touches a disk or imports the model. Real-time priority
(SCHED_FIFO) where the OS grants it.

Messages, as tuples on one duplex ``multiprocessing`` pipe (bench/transport.py
measured it against a bytes pipe and a Queue: the fastest of the three):

session -> here: ``("s", tick|None, bytes, tag)`` schedule, ``("c", tag)`` cancel,
``("p",)`` panic, ``("h",)`` heartbeat, ``("t", channel)`` thru's channel, ``("m", tick0,
t0, spt)`` the session's clock mapping (internal tempo), ``("l", ms)`` latency, ``("o",
role, name)`` another port, ``("q",)`` stop.

here -> session: ``("ready", in_name, out_name, in_virtual, out_virtual, heard, timing)``
(heard: the input's self-test, None where no probe can reach it; timing: JACK's period
and the lead and clock offset applied, ms) or
``("error", text)`` once; then ``("i", t, bytes)`` input (clock pulses stay here),
``("m", tick0, t0, spt)`` the followed clock's mapping, ``("x", t, bytes, tag)`` sent,
``("S", stats)`` every 250 ms, ``("O", role, ok, text)`` port reply, ``("w", event,
name, role)`` a port 'lost' / 'back' / 'deaf' (reopened) (a
:class:`~improv.live.ports.PortWatcher`), 'echo' (a feedback loop: our output
comes back in), ``("bye",)``.
"""

from __future__ import annotations

import dataclasses
import signal
import sys
import threading
from collections.abc import Hashable

import mido

from improv.live.clock import Clock, ClockSender, MidiClockFollower, now, try_realtime
from improv.live.echo import EchoGuard
from improv.live.jack_info import half_period_ms

WATCHDOG_S = 0.2  # silence from the session that ends every note
STATS_EVERY = 0.25
_TRANSPORT = ("start", "stop", "continue", "songpos")
# What --thru passes: the player's notes, pedals and other controllers, bend, pressure.
THRU = frozenset({"note_on", "note_off", "control_change", "pitchwheel", "aftertouch",
                  "polytouch"})


class _Wire:
    """The pipe's sending end, shared by the callback, the scheduler's reporter and the
    main loop; a session that is gone makes sends no-ops (the watchdog sees the EOF)."""

    def __init__(self, conn) -> None:
        self.conn = conn
        self._lock = threading.Lock()
        self.broken = False

    def send(self, item: tuple) -> None:
        if self.broken:
            return
        try:
            with self._lock:
                self.conn.send(item)
        except (OSError, ValueError):
            self.broken = True


class _Inlet:
    """Stands in for MidiInput's queue: runs on the port's poll thread with the message's
    time (never in the MIDI system's own thread)."""

    def __init__(self, wire: _Wire, follower: MidiClockFollower | None, thru,
                 guard: EchoGuard) -> None:
        self.wire = wire
        self.follower = follower
        self.thru = thru  # callable(msg) or None
        self.guard = guard
        self.received = 0
        self._said_loop = False
        # (channel, key) -> how many controllers hold it: two keyboards merged into one
        # port must not release each other's key, and an unplugged one releases its own.
        self.held: dict[tuple[int, int], int] = {}
        self._lock = threading.Lock()

    def _first_or_last(self, msg: mido.Message) -> bool:
        """Whether a note message passes: a key's first strike and its last release."""
        key = (msg.channel, msg.note)
        with self._lock:
            n = self.held.get(key, 0)
            if msg.type == "note_on" and msg.velocity > 0:
                self.held[key] = n + 1
                return n == 0
            if n > 1:
                self.held[key] = n - 1
                return False
            self.held.pop(key, None)
            return True

    def release_all(self) -> int:
        """The keys held when the input went away (unplugged, reopened): their note-offs,
        so the call ends and thru's synth lets go; returns how many."""
        with self._lock:
            keys, self.held = list(self.held), {}
        for channel, note in keys:
            off = mido.Message("note_off", channel=channel, note=note, velocity=0)
            if self.thru is not None:
                self.thru(off)
            self.wire.send(("i", now(), bytes(off.bytes())))
        return len(keys)

    def put(self, t: float, msg: mido.Message) -> None:
        self.received += 1
        kind = msg.type
        data = bytes(msg.bytes())
        if kind != "clock" and self.guard.is_echo(data, t):
            if self.guard.looped and not self._said_loop:
                self._said_loop = True
                self.wire.send(("w", "echo", "", "in"))
            return  # our own message come back: not the player, not for thru
        if kind == "clock" or kind in _TRANSPORT:
            if self.follower is None:
                return
            self.follower.feed_message(msg, t)  # its mapping goes out before the message
            if kind == "clock":
                return  # pulses are this process's business: only the mapping travels
        elif kind in ("note_on", "note_off") and not self._first_or_last(msg):
            return
        if self.thru is not None and kind in THRU:
            self.thru(msg)
        self.wire.send(("i", t, data))


def _realtime_line(granted: bool) -> str | None:
    if granted:
        return None
    if sys.platform == "darwin":
        return "improv io: real-time priority is not available on macOS; normal priority"
    return ("improv io: real-time priority refused (SCHED_FIFO needs rtprio, see "
            "/etc/security/limits.conf); normal priority")


def serve(conn, config: dict) -> int:
    """The I/O process's main: open, answer the session, watch it; returns the exit code."""
    from improv.live.ports import MidiInput, MidiOutput, PortWatcher, get_backend
    from improv.live.scheduler import Scheduler

    # Ctrl-C and a closed terminal reach the whole process group: the session decides
    # when to stop, and if it dies the watchdog ends the notes.
    for name in ("SIGINT", "SIGHUP"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_IGN)
    wire = _Wire(conn)
    line = _realtime_line(try_realtime() if config.get("realtime", True) else True)
    if line:
        print(line, file=sys.stderr, flush=True)
    clock = Clock(120.0, *config.get("meter", (4, 4)))
    clock.bar_origin = int(config.get("bar_origin", 0))
    clock.set_mapping(*config["mapping"])
    try:
        backend = get_backend(config.get("backend"))
        out = MidiOutput(config.get("out"), backend=backend, virtual=config.get("virtual_out"))
    except Exception as e:
        wire.send(("error", str(e)))
        return 2
    # JACK moves MIDI once a period: what is sent goes out early by half of one, and a
    # master's pulses are taken as that much earlier than heard (improv.live.jack_info).
    half = half_period_ms(getattr(backend, "api", None))
    offset = config.get("clock_offset_ms")
    timing = {"period_ms": 2 * half, "lead_ms": half,
              "clock_offset_ms": half if offset is None else float(offset)}
    follow = bool(config.get("follow"))
    follower = (MidiClockFollower(clock, offset_s=timing["clock_offset_ms"] / 1e3)
                if follow else None)
    if follow:
        clock.on_change(lambda: wire.send(("m", *clock.mapping())))

    def on_sent(msg: mido.Message, t: float, tag: Hashable) -> None:
        wire.send(("x", t, bytes(msg.bytes()), tag))

    guard = EchoGuard(out)  # the scheduler sends through it: it knows what went out
    sched = Scheduler(guard, clock, latency_ms=config.get("latency_ms", 0.0) + half,
                      on_sent=on_sent if config.get("report_sent", True) else None,
                      realtime=config.get("realtime", True))
    thru_channel = config.get("thru_channel")
    thru = None
    if thru_channel is not None:
        def thru(msg: mido.Message) -> None:
            sched.schedule(msg.copy(channel=thru_to[0]), None, tag="thru")
    thru_to = [thru_channel]  # the preset's channel: a preset switch moves it ("t")

    inlet = _Inlet(wire, follower, thru, guard)
    channels = config.get("channels")
    try:
        inp = MidiInput(config.get("inp"), backend=backend, virtual=config.get("virtual_in"),
                        channels=None if channels is None else set(channels), queue=inlet)
    except Exception as e:
        sched.stop()
        out.close()
        wire.send(("error", str(e)))
        return 2
    # A keyboard unplugged mid-set or a synth restarted is found again when it returns;
    # an input that stops hearing its probe is reopened (a virtual one too).
    def on_event(event: str, name: str, role: str) -> None:
        if role == "in" and event in ("lost", "deaf"):
            inlet.release_all()  # its note-offs went with it
        wire.send(("w", event, name, role))

    watchers = [PortWatcher(port, on_event=lambda event, name, role=role:
                            on_event(event, name, role)).start()
                for port, role in ((inp, "in"), (out, "out")) if role == "in" or not port.virtual]
    sender = None
    if config.get("clock_out"):
        sender = ClockSender(clock, out.send, realtime=config.get("realtime", True),
                             lead_s=half / 1e3).open()
        sender.start()  # a slave's beat 1 lands on our next bar line
    wire.send(("ready", inp.name, out.name, inp.virtual, out.virtual, inp.heard, timing))
    watchdog = float(config.get("watchdog_s", WATCHDOG_S))
    why = None
    last = now()
    next_stats = last + STATS_EVERY
    try:
        while True:
            if conn.poll(0.02):
                try:
                    item = conn.recv()
                except (EOFError, OSError):
                    why = "the session process is gone"
                    break
                last = now()
                if item[0] == "q":
                    break
                if item[0] == "t":
                    thru_to[0] = int(item[1])
                else:
                    _handle(item, sched, clock, inp, out, wire, half)
            elif now() - last > watchdog:
                why = f"no heartbeat from the session for {watchdog * 1000:.0f} ms"
                break
            if now() >= next_stats:
                next_stats = now() + STATS_EVERY
                wire.send(("S", dataclasses.asdict(sched.stats())))
    finally:
        n = len(sched.sounding())
        sched.panic()  # every sounding note, then CC 123 on the channels used
        if why is not None:
            print(f"improv io: {why}: ended {n} sounding note(s) and sent All Notes Off; "
                  "exiting", file=sys.stderr, flush=True)
        if sender is not None:
            sender.close()
        for watcher in watchers:
            watcher.stop()
        sched.stop()
        inp.close()
        out.close()  # waits for JACK to take the note-offs
        wire.send(("bye",))
    return 0 if why is None else 3


def _handle(item: tuple, sched, clock: Clock, inp, out, wire: _Wire, lead_ms: float) -> None:
    kind = item[0]
    if kind == "s":
        sched.schedule(mido.Message.from_bytes(item[2]), item[1], tag=item[3])
    elif kind == "c":
        sched.cancel(item[1])
    elif kind == "p":
        sched.panic()
    elif kind == "m":
        clock.set_mapping(item[1], item[2], item[3])
    elif kind == "l":
        sched.latency_ms = item[1] + lead_ms
    elif kind == "o":
        wire.send(("O", item[1], *_select_port(sched, inp, out, item[1], item[2])))


def _select_port(sched, inp, out, role: str, name: str) -> tuple[bool, str]:
    """Reopen the input or output on another port; on failure the old one is back in use."""
    port = inp if role == "in" else out
    if role == "out":
        sched.panic()  # the synth we leave must not keep our notes
    old = (port.query, port.virtual)
    port.query, port.virtual = name, False
    try:
        port.reopen()
    except Exception as e:
        port.query, port.virtual = old
        try:
            port.reopen()
        except Exception:
            pass
        return False, str(e)
    return True, port.name


def child_main(conn, config: dict) -> None:
    """Entry point of the spawned process."""
    code = 1
    try:
        code = serve(conn, config)
    finally:
        conn.close()
    sys.exit(code)
