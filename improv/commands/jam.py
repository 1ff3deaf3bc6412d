"""`improv jam`: play live. Builds the rig (ports, clock, scheduler, engine, session,
recording), runs the stage UI or a plain headless printer, and takes it all down
again so that every note the machine started is ended, whatever ends the set.

The ports, the scheduler and clock in/out run in the real-time I/O process
(improv.live.rtio, reached through improv.live.iolink.IOLink); ``--in-process`` keeps
them in this process, as before.

This module owns the wiring and the shutdown order, nothing musical. It never
imports torch: a stage machine needs only the runtime dependencies.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import logging
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from improv.commands import teardown
from improv.commands.checks import check_record_path
from improv.commands.checks import parse_meter as _parse_meter
from improv.commands.jam_args import KNOB_FLAGS, parser
from improv.commands.jam_ui import (
    headless_seconds,
    run_with_ui,
    start_api_server,
    terminal_ok,
)
from improv.core import knobs, paths
from improv.core.presets import (
    PresetError,
    PresetLibrary,
    apply_overrides,
    parse_overrides,
    silence_problem,
)
from improv.live.clock import Clock, ClockSender, MidiClockFollower
from improv.live.marks import machine_track
from improv.live.scheduler import Scheduler
from improv.live.session import Session, SessionOptions
from improv.live.session_api import PortView, State

log = logging.getLogger("improv.commands.jam")
TEARDOWN_LIMIT_S = 10.0  # a shutdown that takes longer ends the process (see teardown.Watchdog)


class JamError(Exception):
    """A set that cannot start; the message says what to do."""


def repo_root() -> Path:
    return Path(__file__).resolve().parents[2]


def default_model_dir() -> Path:
    """$IMPROV_MODEL, else the first shipped model under models/."""
    env = os.environ.get("IMPROV_MODEL")
    if env:
        return Path(env)
    models = repo_root() / "models"
    if not models.is_dir():  # installed from a wheel: the shipped models sit in the package
        models = Path(__file__).resolve().parents[1] / "_models"
    found = sorted(p.parent for p in models.glob("*/model.onnx"))
    if not found:
        raise JamError(
            f"no model found under {models}; pass --model DIR (a folder with model.onnx) "
            "or train one with 'improv train'"
        )
    return found[0]


def sessions_dir() -> Path:
    """Where sets are recorded (improv.core.paths: $IMPROV_SESSIONS, else ~/Music/...)."""
    return paths.sessions_dir()


@dataclass
class Rig:
    """Everything one set needs, in the order it must be taken down."""

    session: Session
    scheduler: Scheduler  # or the IOLink to the I/O process (the same contract)
    clock: Clock
    engine: object
    recorder: object | None = None
    closers: list = field(default_factory=list)  # ports, watchers, clock senders

    def close(self) -> None:
        # Session first (it stops generating), then the scheduler's panic ends every note,
        # then the recording is closed with those note-offs in it, then the ports. Every step
        # is waited for a limited time: a MIDI server that vanished, an I/O process that stopped
        # reading or a stalled disk must not hold the exit.
        if not teardown.bounded(self.session.stop, 2.5, "the session"):
            _kill_io(self.scheduler)  # its panic waits on a pipe nobody reads
        if not teardown.bounded(self.scheduler.stop, 2.0, "the MIDI I/O process"):
            _kill_io(self.scheduler)
        if self.recorder is not None:
            teardown.bounded(lambda: _close_recording(self.recorder), 2.0, "the recording")
        for c in reversed(self.closers):
            teardown.bounded(c.close if hasattr(c, "close") else c.stop, 1.0, f"closing {c}")


def _close_recording(recorder) -> None:
    try:
        recorder.close()
    except Exception as e:  # a full disk: the line says how to save what was written
        teardown.err(f"improv: {e}")


def _kill_io(scheduler) -> None:
    """The I/O process, stuck (in a MIDI server that went away): ended, so nothing waits on it."""
    process = getattr(scheduler, "process", None)
    if process is not None:
        with contextlib.suppress(Exception):
            process.kill()


def load_preset(args: argparse.Namespace):
    """The library and the preset a set starts with, checked as `improv presets --check` does;
    a preset that can only answer silence costs a warning."""
    library = PresetLibrary()
    which = args.preset
    try:
        preset = library.default() if which is None else library.find(which)
    except PresetError:
        named = [e for e in library.errors if str(which) in (Path(e.source).stem,
                                                             Path(e.source).name)]
        if named:  # the preset asked for is a broken file: that is the one line to say
            raise named[0] from None
        raise
    finally:
        for err in library.errors:
            if which is None or str(which) not in (Path(err.source).stem, Path(err.source).name):
                teardown.err(f"improv: {err}")
    changes = parse_overrides(args.overrides) if args.overrides else {}
    if args.mode:
        changes["mode"] = args.mode
    changes.update(knobs.flag_values(args, KNOB_FLAGS))  # typed and checked by argparse
    if changes:
        preset = apply_overrides(preset, **changes)
    problem = silence_problem(preset)
    if problem is not None:
        teardown.err(f"improv: warning: preset '{preset.name}': {problem}")
    return library, preset


def parse_meter(text: str) -> tuple[int, int]:
    try:
        return _parse_meter(text)
    except ValueError as e:
        raise JamError(str(e)) from None


def io_config(args: argparse.Namespace, preset, follow: bool) -> dict:
    """What the I/O process needs to open the ports and run (plain values: it is spawned)."""
    return {
        "backend": getattr(args, "backend", None), "inp": getattr(args, "inp", None),
        "out": getattr(args, "out", None),
        "virtual_in": bool(getattr(args, "virtual", False) or getattr(args, "inp", None) is None),
        "virtual_out": bool(getattr(args, "virtual", False) or getattr(args, "out", None) is None),
        "channels": None if getattr(args, "in_channel", None) is None else [args.in_channel - 1],
        "thru_channel": int(preset.channel) - 1 if getattr(args, "thru", False) else None,
        "follow": follow, "clock_out": bool(getattr(args, "clock_out", False)),
        "latency_ms": getattr(args, "latency_ms", 0.0) or 0.0,
        "clock_offset_ms": getattr(args, "clock_offset_ms", None),
    }


def build_rig(args: argparse.Namespace, output=None, inbox=None, ports=(), follower=False,
              on_lost=None) -> Rig:
    """The live rig around an output (anything with send) and an input queue; with no
    output, around the real-time I/O process (it opens the ports named in ``args``)."""
    from improv.live.engine import Engine  # onnxruntime loads only when a set starts

    library, preset = load_preset(args)
    num, den = parse_meter(args.meter)
    bpm = args.bpm or preset.bpm or 120.0
    clock = Clock(bpm, num, den)
    model_dir = args.model or default_model_dir()
    engine = Engine(model_dir, provider=args.provider, threads=args.threads)
    recorder = None
    if not args.no_record:
        from improv.live.recording import SessionRecorder

        path = args.record or sessions_dir() / dt.datetime.now().strftime("%Y-%m-%d_%H%M%S.mid")
        try:
            check_record_path(path)
        except ValueError as e:
            raise JamError(str(e)) from None
        recorder = SessionRecorder(path, bpm=bpm, meter=(num, den))
        if recorder.set_aside is not None:
            teardown.err(f"improv: {recorder.journal.name} was left by a start that recorded no "
                         f"note; moved aside to {recorder.set_aside.name}")

    on_sent = machine_track(recorder, clock)  # the machine's notes; thru notes are the player's

    link = None
    if output is None:
        from improv.live.iolink import IOLink

        try:
            link = IOLink(clock, io_config(args, preset, follower), on_sent=on_sent,
                          on_lost=on_lost)
        except BaseException:  # a signal in start-up too: no journal left to block a next start
            if recorder is not None:
                recorder.close()
            raise
        scheduler, inbox = link, link.inbox
        ports = (PortView("in", link.in_name, True, link.in_virtual),
                 PortView("out", link.out_name, True, link.out_virtual))
    else:
        scheduler = Scheduler(output, clock,
                              latency_ms=getattr(args, "latency_ms", 0.0) or 0.0,
                              on_sent=on_sent)
    control = getattr(args, "control_channel", None)
    options = SessionOptions(lookahead_beats=args.lookahead, seed=args.seed,
                             # the I/O process forwards the player's notes itself
                             thru=getattr(args, "thru", False) and link is None,
                             control_channel=None if control is None else control - 1,
                             program_change=bool(getattr(args, "program_change", False)))
    from improv.live.midi_learn import Learner, load_bindings, save_bindings

    bindings, problem = load_bindings()
    if problem is not None:
        teardown.err(f"improv: {problem} (using the default CC bindings)")
    session = Session(engine, clock, scheduler, library, preset, options=options, inbox=inbox,
                      recorder=recorder, controls=Learner(bindings), ports=tuple(ports),
                      on_learned=lambda b: _save_in_background(save_bindings, b))
    if follower:
        if link is not None:
            from improv.live.iolink import RemoteFollower

            session.follower = RemoteFollower()  # the follower runs in the I/O process
        else:
            offset = getattr(args, "clock_offset_ms", None) or 0.0  # no JACK period here
            session.follower = MidiClockFollower(clock, offset_s=offset / 1e3)
    return Rig(session, scheduler, clock, engine, recorder)


def _save_in_background(save, bindings) -> None:
    """MIDI learn saves its bindings off the session thread: a slow disk must not hold a note."""
    threading.Thread(target=_save_quietly, args=(save, bindings), name="improv-save-bindings",
                     daemon=True).start()


def _save_quietly(save, bindings) -> None:
    try:
        save(bindings)
    except OSError as e:  # a read-only config folder must not stop the set
        log.warning("could not save MIDI learn bindings: %s", e)


# --- headless -----------------------------------------------------------------------------------


def run_headless(rig: Rig, seconds: float | None, stop: threading.Event, log=None) -> None:
    """Plain lines: state changes as they happen, latency every few seconds. ``log``: where
    the session's lines come from (the API server's tap when it drains the session). The
    lines go through a printer: a closed or stalled stdout silences them, the set plays on."""
    session = rig.session
    drain = session.drain_log if log is None else log.drain
    last_state = None
    last_report = time.monotonic()
    t_end = None if seconds is None else time.monotonic() + seconds
    while not stop.is_set() and session.running:
        if t_end is not None and time.monotonic() >= t_end:
            break
        snap = session.snapshot()
        for line in drain():
            teardown.out(f"[{snap.beat:8.2f}] {line}")
        if snap.state != last_state:
            teardown.out(f"[{snap.beat:8.2f}] state: {snap.state.value}")
            last_state = snap.state
        if time.monotonic() - last_report >= 5.0:
            last_report = time.monotonic()
            teardown.out(latency_line(snap))
        stop.wait(0.02)
    teardown.out(latency_line(session.snapshot()))


def latency_line(snap) -> str:
    lat = snap.latency

    def f(x):
        return "-" if x is None else f"{x:.2f}"

    return (f"latency: decode median {f(lat.decode_median_ms)} ms, p99 {f(lat.decode_p99_ms)} ms; "
            f"schedule p99 {f(lat.schedule_p99_ms)} ms; late {lat.late}; "
            f"note in -> fed median {f(lat.ingest_median_ms)} ms, p99 {f(lat.ingest_p99_ms)} ms; "
            f"dropped {lat.dropped}; tokens/s {f(lat.tokens_per_s)}")


# --- command ------------------------------------------------------------------------------------


def open_ports(args: argparse.Namespace):
    from improv.live.ports import MidiInput, MidiOutput, get_backend

    backend = get_backend(args.backend)
    virtual_in = args.virtual or args.inp is None
    virtual_out = args.virtual or args.out is None
    channels = None if args.in_channel is None else {args.in_channel - 1}
    # With --virtual, --in/--out name the virtual ports (they must contain 'improv in/out').
    out = MidiOutput(args.out, backend=backend, virtual=virtual_out)
    inp = MidiInput(args.inp, backend=backend, virtual=virtual_in, channels=channels)
    return inp, out


def select_io_port(rig: Rig, role: str, name: str) -> PortView:
    """Another port, opened by the I/O process (it ends our notes before leaving a synth)."""
    return PortView(role, rig.scheduler.select_port(role, name), True, False)


def select_port(rig: Rig, inp, out, role: str, name: str) -> PortView:
    """Reopen the input or output on another port; on failure the old one is back in use."""
    port = inp if role == "in" else out
    if role == "out":
        rig.scheduler.panic()  # the synth we leave must not keep our notes
    old = (port.query, port.virtual)
    port.query, port.virtual = name, False
    try:
        port.reopen()
    except Exception:
        port.query, port.virtual = old
        port.reopen()
        raise
    return PortView(role, port.name, True, False)


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    args = parser(prog).parse_args(argv)
    me = prog or "improv jam"
    teardown.log_to_stderr()  # through a printer: a stalled terminal never holds a thread
    # Python threads hand over the GIL every 5 ms by default: too coarse for 1 ms timing.
    sys.setswitchinterval(0.001)
    from improv.live.ports import PortError
    from improv.live.recording import RecordingError

    rig = server = None
    stop = threading.Event()
    # before anything is built: a signal during start-up ends it as cleanly as a set
    signals = teardown.Signals(stop).install()
    status = 0
    try:
        check_record_path(None if args.no_record else args.record)
        if not args.in_process:
            rig = build_rig(args, follower=args.clock == "midi", on_lost=stop.set)
            link = rig.scheduler
            teardown.err(f"improv: listening on '{link.in_name}', playing to '{link.out_name}'")
            if link.timing["period_ms"]:
                teardown.err(_timing_line(link.timing, args.clock == "midi"))
            rig.session.port_panel.selector = lambda role, name: select_io_port(rig, role, name)
            link.on_port = lambda event, name, role: _port_event(rig, event, name, role)
            if link.in_heard is False:
                rig.session.say(f"input {link.in_name}: its self-test heard nothing after 3 "
                                "opens; check the MIDI server (JACK: jack_lsp)")
        else:
            rig = _in_process_rig(args)
        if not stop.is_set():
            rig.session.start()
            signals.running(rig.session)
            server = start_api_server(rig.session, args.socket)  # `improv ui` attaches here
            _play(args, rig, server, stop)
    except KeyboardInterrupt:  # Ctrl-C twice during start-up
        pass
    except (JamError, PortError, PresetError, RecordingError, ValueError) as e:
        teardown.err(f"{me}: {e}")  # after the lines already queued, never before them
        status = 2
    finally:
        signals.tearing_down()
        watchdog = teardown.Watchdog(TEARDOWN_LIMIT_S).start()
        if server is not None:
            teardown.bounded(server.close, 2.0, "the UI socket")
        if rig is not None:
            rig.close()
            recorder = rig.recorder
            if recorder is not None and not recorder.journal.exists():
                teardown.err(f"improv: session recorded to {recorder.path}")
            elif recorder is not None:
                teardown.err(f"improv: the recording was not finished; run 'improv recover "
                             f"{recorder.journal}' to save it")
        if rig is not None and rig.session.error is not None and status == 0:
            teardown.err(f"{me}: the session failed: {rig.session.error}")
            status = 1
        teardown.drain(0.5)
        watchdog.done()
        signals.exiting()
    return status


def _play(args: argparse.Namespace, rig: Rig, server, stop: threading.Event) -> None:
    """The set: with the stage UI in its own process, else (or once it is lost) headless."""
    started = time.monotonic()
    ui = not args.no_tui and server is not None
    if ui and not terminal_ok():
        teardown.err("improv: no terminal for the stage UI; playing headless")
        ui = False
    if not ui or run_with_ui(rig.session, server, args.backend, args.seconds, stop):
        run_headless(rig, headless_seconds(args.seconds, started), stop,
                     None if server is None else server.tap())


_PORT_EVENTS = {
    "lost": "{role} {name}: unplugged, waiting for it",
    "back": "{role} {name}: back, reconnected",
    "deaf": "{role} {name}: heard nothing (not even its probe): reopened",
    "echo": "feedback loop: improv's output comes back into its input; its echo is "
            "ignored (unpatch the loop or the DAW's MIDI thru)",
}


def _port_event(rig: Rig, event: str, name: str, role: str = "in") -> None:
    """A port went away ('lost'), came back ('back') or was reopened ('deaf'); 'echo': our
    output comes back in. Said on screen and in the log."""
    if event in ("lost", "back"):
        rig.session.set_port(PortView(role, name, event == "back", False))
    line = _PORT_EVENTS.get(event, "{role} {name}: " + event)
    rig.session.say(line.format(role="input" if role == "in" else "output", name=name))


def _timing_line(timing: dict, follow: bool) -> str:
    line = (f"improv: JACK period {timing['period_ms']:.2f} ms: sending "
            f"{timing['lead_ms']:.2f} ms early")
    if follow:
        line += (f"; the master's pulses taken as {timing['clock_offset_ms']:+.2f} ms late "
                 "(--clock-offset-ms)")
    return line


def _in_process_rig(args: argparse.Namespace) -> Rig:
    """The rig with the ports and the scheduler in this process (--in-process)."""
    from improv.live.ports import PortWatcher

    inp, out = open_ports(args)
    teardown.err(f"improv: listening on '{inp.name}', playing to '{out.name}'")
    ports = (PortView("in", inp.name, True, inp.virtual),
             PortView("out", out.name, True, out.virtual))
    try:
        rig = build_rig(args, out, inbox=inp.queue, ports=ports, follower=args.clock == "midi")
    except BaseException:
        inp.close()
        out.close()
        raise
    rig.closers += [inp, out]
    rig.session.port_panel.selector = lambda role, name: select_port(rig, inp, out, role, name)
    if not inp.virtual:
        rig.closers.append(PortWatcher(
            inp, on_event=lambda event, name: _port_event(rig, event, name)).start())
    if args.clock_out:
        sender = ClockSender(rig.clock, out.send).open()
        sender.start()  # a slave's beat 1 lands on our next bar line
        rig.closers.append(sender)
    return rig


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["JamError", "Rig", "build_rig", "main", "State"]
