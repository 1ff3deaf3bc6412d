"""MIDI ports: finding, opening, watching; the input queue that protects the live path.

This module owns the edge between the MIDI system and improv:

* the backend: mido's rtmidi with the API the user picks (``--backend alsa |
  jack | coremidi | winmm``) or mido's default; JACK is just one of them;
* opening an input or output by exact name or unique case-insensitive part of a
  name, or as a virtual port ('improv in' / 'improv out'); every way this can
  fail is a :class:`PortError` whose message lists the ports and says what to do;
* :class:`MidiInput`: an rtmidi input is read by polling (:mod:`improv.live.midi_in`:
  no Python in the MIDI system's thread, SysEx ignored, a probe that finds a deaf
  port), each message stamped and put into an
  :class:`~improv.live.input_queue.InputQueue` (or the I/O process's inlet);
* :class:`MidiOutput`: channel remap, program change at open, reopen;
* :class:`PortWatcher`: notices a controller or synth that disappears, reports it,
  and reopens it when it comes back; reopens an input that went deaf.

``improv ports`` lists what is there.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable

import mido

from improv.core.cli_help import with_examples
from improv.live.clock import now
from improv.live.input_queue import InputQueue
from improv.live.midi_in import PolledPort

BACKENDS = {
    "alsa": "LINUX_ALSA",
    "jack": "UNIX_JACK",
    "coremidi": "MACOSX_CORE",
    "winmm": "WINDOWS_MM",
}
RTMIDI = "mido.backends.rtmidi"
CLIENT_NAME = "improv"
VIRTUAL_IN = "improv in"
VIRTUAL_OUT = "improv out"
LOOPMIDI_HINT = (
    "Windows has no virtual MIDI ports: create two ports in loopMIDI "
    "(https://www.tobias-erichsen.de/software/loopmidi.html), e.g. 'improv in' and "
    "'improv out', then run improv jam --in \"improv in\" --out \"improv out\" and point "
    "your keyboard and DAW at the other ends"
)


DRAIN_S = 0.05  # an output stays open this long after its last message (see MidiOutput.close)


class PortError(Exception):
    """A MIDI port problem, with a one-line message that says what to do."""


# --- backends and names ------------------------------------------------------------------------


def get_backend(name: str | None = None) -> mido.Backend:
    """mido's rtmidi backend with the chosen API (None: mido's default backend)."""
    if name is None:
        return mido.Backend()
    if name not in BACKENDS:
        raise PortError(f"unknown MIDI backend '{name}'; choose one of: {', '.join(BACKENDS)}")
    backend = mido.Backend(f"{RTMIDI}/{BACKENDS[name]}")
    try:
        compiled = backend.module.get_api_names()
    except Exception as e:
        raise PortError(
            f"cannot load python-rtmidi ({e}); install it: pip install python-rtmidi"
        ) from None
    if BACKENDS[name] not in compiled:
        have = ", ".join(k for k, v in BACKENDS.items() if v in compiled) or "none"
        raise PortError(f"backend '{name}' is not in this python-rtmidi build; available: {have}")
    return backend


def _hint(backend: mido.Backend, text: str) -> str:
    """What to do when the MIDI system itself cannot be reached: the same words in
    'improv ports', 'improv jam' and wherever a port is opened."""
    api = getattr(backend, "api", None) or ""
    if "JACK" in api or "Jack" in text:
        return "start a JACK server (e.g. 'jackd -d alsa' or qjackctl) or pick another --backend"
    if "ALSA" in api or "Alsa" in text:
        return "no ALSA sequencer (/dev/snd/seq): load snd-seq or try --backend jack"
    if sys.platform == "win32" or "WINDOWS_MM" in api:
        return LOOPMIDI_HINT
    return "check the MIDI system or pick another --backend"


def _system_error(backend: mido.Backend, e: Exception) -> PortError:
    text = str(e).strip().rstrip(".") or type(e).__name__
    return PortError(f"cannot reach the MIDI system ({text}); {_hint(backend, text)}")


def input_names(backend: mido.Backend | None = None) -> list[str]:
    backend = backend or get_backend()
    try:
        return list(backend.get_input_names())
    except Exception as e:
        raise _system_error(backend, e) from None


def output_names(backend: mido.Backend | None = None) -> list[str]:
    backend = backend or get_backend()
    try:
        return list(backend.get_output_names())
    except Exception as e:
        raise _system_error(backend, e) from None


def match_port(query: str, names: Iterable[str], kind: str = "input") -> str:
    """The one name equal to ``query``, or containing it (case-insensitive)."""
    names = list(names)
    if query in names:
        return query
    hits = [n for n in names if query.lower() in n.lower()]
    if len(hits) == 1:
        return hits[0]
    listed = ", ".join(f"'{n}'" for n in names) or "none"
    if not hits:
        raise PortError(
            f"no MIDI {kind} matches '{query}'; available {kind}s: {listed}. "
            "Connect the device, or give an exact name or a unique part of one "
            "(see 'improv ports')"
        )
    raise PortError(
        f"MIDI {kind} '{query}' is ambiguous: it matches {', '.join(repr(h) for h in hits)}; "
        "give more of the name"
    )


def _check_virtual(backend: mido.Backend) -> None:
    if sys.platform == "win32" or getattr(backend, "api", None) == "WINDOWS_MM":
        raise PortError(LOOPMIDI_HINT)


# --- ports ----------------------------------------------------------------------------------------


class _Port:
    """What inputs and outputs share: the query, (re)opening, closing."""

    kind = ""

    def __init__(self, name: str | None, backend: mido.Backend | None, virtual: bool) -> None:
        self.backend = backend or get_backend()
        self.query = name
        self.virtual = virtual
        self.name = ""
        self._lock = threading.Lock()  # guards _port against a concurrent reopen
        self._port = None

    @property
    def connected(self) -> bool:
        return self._port is not None

    def available(self) -> list[str]:
        return input_names(self.backend) if self.kind == "input" else output_names(self.backend)

    def reopen(self) -> None:
        """(Re)open by the original query, so a replugged device is found again."""
        self.close()
        if self.virtual:
            _check_virtual(self.backend)
            required = VIRTUAL_IN if self.kind == "input" else VIRTUAL_OUT
            name = self.query or required
            if required not in name.lower():
                raise PortError(f"a virtual port's name must contain '{required}' (got '{name}')")
            args = dict(name=name, virtual=True, client_name=CLIENT_NAME)
        elif not self.query:
            raise PortError(
                f"no MIDI {self.kind} given; pick one with "
                f"--{'in' if self.kind == 'input' else 'out'} NAME (see 'improv ports')"
            )
        else:
            args = dict(name=match_port(self.query, self.available(), self.kind))
        try:
            port = self._open(args)
        except Exception as e:
            what = "create virtual" if self.virtual else "open"
            text = str(e).strip().rstrip(".")
            unreachable = any(w in text for w in ("initialize", "client", "server"))
            hint = (_hint(self.backend, text) if unreachable
                    else "is the MIDI system running and the port free?")
            raise PortError(f"cannot {what} MIDI {self.kind} '{args['name']}' ({text}); "
                            f"{hint}") from None
        with self._lock:
            self._port = port
        self.name = port.name

    def _open(self, args: dict):
        raise NotImplementedError

    def close(self) -> None:
        with self._lock:
            port, self._port = self._port, None
        if port is not None:
            try:
                port.close()
            except Exception:  # a vanished device may fail to close; it is gone either way
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class MidiInput(_Port):
    """An input port whose messages land in ``self.queue`` as ``(time, message)``.

    ``name``: exact name or unique part of one; ``virtual=True`` creates a port
    named 'improv in' (or ``name``, which must contain it). ``channels``: keep only
    these channels (0-15; system messages always pass).
    """

    kind = "input"

    def __init__(
        self,
        name: str | None = None,
        *,
        backend: mido.Backend | None = None,
        virtual: bool = False,
        channels: Iterable[int] | None = None,
        queue: InputQueue | None = None,
    ) -> None:
        super().__init__(name, backend, virtual)
        self.channels = None if channels is None else frozenset(channels)
        self.queue = queue if queue is not None else InputQueue()
        self.filtered = 0
        self.heard: bool | None = None  # the self-test after the last open (None: no probe)
        self.retries = 0  # opens that failed their self-test
        self.reopen()

    def reopen(self, attempts: int = 3) -> None:
        """Open, then test the port with a probe; a port that does not hear it (a JACK
        client that never got a cycle) is opened again, up to ``attempts`` times."""
        for _ in range(attempts):
            super().reopen()
            port = self._port
            if not isinstance(port, PolledPort) or not port.attach_probe():
                self.heard = None
                return
            self.heard = port.self_test()
            if self.heard:
                return
            self.retries += 1

    @property
    def deaf(self) -> bool:
        """The port stopped hearing its probe during the set (its watcher reopens it)."""
        port = self._port
        return isinstance(port, PolledPort) and port.deaf

    def _open(self, args: dict):
        if self.backend.name == RTMIDI:  # polled: nothing of ours runs in the MIDI thread
            return PolledPort(self.backend, args["name"], virtual=args.get("virtual", False),
                              client_name=CLIENT_NAME, deliver=self._deliver)
        return self.backend.open_input(callback=self._on_message, **args)

    def _on_message(self, msg: mido.Message) -> None:
        self._deliver(now(), msg)  # the time first, before anything can delay it

    def _deliver(self, t: float, msg: mido.Message) -> None:
        keep = self.channels
        if keep is not None and hasattr(msg, "channel") and msg.channel not in keep:
            self.filtered += 1
            return
        self.queue.put(t, msg)


class MidiOutput(_Port):
    """An output port with ``send(msg)``; safe to send from several threads.

    While the port is gone, messages are counted in ``lost`` instead of raising.
    (Channel and program belong to the preset: the session sets them on the messages.)
    """

    kind = "output"

    def __init__(
        self,
        name: str | None = None,
        *,
        backend: mido.Backend | None = None,
        virtual: bool = False,
    ) -> None:
        super().__init__(name, backend, virtual)
        self.lost = 0
        self.reopen()

    def _open(self, args: dict):
        return self.backend.open_output(**args)

    def send(self, msg: mido.Message) -> None:
        with self._lock:
            if self._port is None:
                self.lost += 1
                return
            self._port.send(msg)
            self._last_send = time.monotonic()

    def close(self) -> None:
        # Some backends (JACK) deliver from their own process cycle: closing right after the
        # panic's note-offs could drop them, and the synth would hold the notes forever.
        wait = getattr(self, "_last_send", 0.0) + DRAIN_S - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        super().close()


class PortWatcher:
    """Polls the port list (every ``interval`` s) for a :class:`MidiInput` / :class:`MidiOutput`.

    When the port's device disappears it closes it and calls ``on_event('lost',
    name)``; when a port matching the original query returns it reopens it and calls
    ``on_event('back', name)`` (within ``interval`` of its return: a synth that
    restarts in a second is found again). An input that stopped hearing its probe is
    reopened: ``on_event('deaf', name)``. A virtual port cannot disappear: only the
    last is watched. It keeps running through errors.
    """

    def __init__(
        self,
        port: MidiInput | MidiOutput,
        *,
        interval: float = 0.1,
        on_event: Callable[[str, str], object] | None = None,
    ) -> None:
        self.port = port
        self.interval = interval
        self.on_event = on_event
        self.events: deque[tuple[str, str]] = deque(maxlen=100)
        self._lister = None
        self._quit = threading.Event()
        self._thread = threading.Thread(target=self._run, name="improv-port-watcher", daemon=True)

    def start(self) -> PortWatcher:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._quit.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=self.interval + 1.0)

    def _report(self, event: str, name: str) -> None:
        self.events.append((event, name))
        if self.on_event is not None:
            try:
                self.on_event(event, name)
            except Exception:
                pass

    def _names(self) -> list[str]:
        """The port list through one long-lived rtmidi client when possible.

        mido's listing opens two new clients per call; once a second that would
        churn the JACK graph, so keep one client and ask it again.
        """
        backend = self.port.backend
        if backend.name != RTMIDI:
            return self.port.available()
        if self._lister is None:
            import rtmidi

            api = getattr(rtmidi, f"API_{backend.api}", rtmidi.API_UNSPECIFIED)
            cls = rtmidi.MidiIn if self.port.kind == "input" else rtmidi.MidiOut
            self._lister = cls(rtapi=api)
        try:
            return list(self._lister.get_ports())
        except Exception:
            self._lister = None  # retry with a fresh client next time
            raise

    def poll(self) -> None:
        """One look at the port list (the thread calls this every ``interval``)."""
        port = self.port
        if port.connected and getattr(port, "deaf", False):
            try:
                port.reopen()
            except PortError:
                pass  # gone as well: the list below says so
            self._report("deaf", port.name)
        if port.virtual:
            return
        try:
            names = self._names()
        except Exception:
            names = []  # the MIDI system itself went away: same as the device gone
        if port.connected:
            if port.name not in names:
                gone = port.name
                port.close()
                self._report("lost", gone)
        else:
            try:
                match_port(port.query or "", names, port.kind)
                port.reopen()
            except PortError:
                return
            self._report("back", port.name)

    def _run(self) -> None:
        while not self._quit.wait(self.interval):
            self.poll()


# --- improv ports ------------------------------------------------------------------------------


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=prog, description="List MIDI inputs and outputs.",
        **with_examples(
            "improv ports",
            "improv ports --backend jack"))
    parser.add_argument(
        "--backend",
        choices=sorted(BACKENDS),
        help="MIDI system to use (default: mido's default, or $MIDO_BACKEND)",
    )
    args = parser.parse_args(argv)
    try:
        backend = get_backend(args.backend)
        ins, outs = input_names(backend), output_names(backend)
    except PortError as e:
        print(f"{prog or 'improv ports'}: {e}", file=sys.stderr)
        return 2
    label = f"{backend.name}/{backend.api}" if backend.api else backend.name
    print(f"backend: {label}")
    for title, names in (("inputs", ins), ("outputs", outs)):
        print(f"{title}:")
        for n in names:
            print(f"  {n}")
        if not names:
            print("  (none)")
    print(
        "Open a port by its exact name or any unique part of it. "
        f"improv can also create virtual ports '{VIRTUAL_IN}' / '{VIRTUAL_OUT}'"
        + (" (on Windows: use loopMIDI instead)." if sys.platform == "win32" else ".")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
