"""An rtmidi input read by polling, with a probe that keeps it from going deaf.

This module owns how improv reads an rtmidi input port without running any Python
in the MIDI system's thread. rtmidi calls a callback from its backend's thread (on
JACK, the real-time process thread): a Python callback there waits for the GIL,
and a waiting JACK client causes xruns for every client or is dropped from the
graph. Without a callback, rtmidi's C++ side only queues the message, and
:class:`PolledPort`'s own thread takes it from that queue every millisecond.

Time: rtmidi stamps each message in the backend's thread, as the delta from the
one before. The poll thread sums the deltas and maps that running sum onto
:func:`improv.live.clock.now` by the smallest (poll time - sum) seen so far, so a
message's time is the backend's, not the poll's (off by at most the quickest poll,
usually well under a millisecond), with a slow upward relaxation in case the two
clocks drift.

Never deaf: rtmidi parses a SysEx that is cut short (a cable pulled mid-dump) as
one that never ends and swallows every message after it into it until an End of
Exclusive (F7) arrives. A :class:`Probe` (a second client patched into our own
input) sends a lone F7 every ``UNSTICK_S``, which ends such a SysEx; the messages
it swallowed are taken back out of it (a real SysEx has no byte >= 0x80 inside),
stamped with its end, at most ``UNSTICK_S`` late, and every other SysEx is
dropped (improv uses none). Now and then the probe sends a Song Select with a
nonce: a port that does not hear its own nonce twice is deaf (a JACK client that
never got a cycle) and its owner reopens it (``deaf``).
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Callable

import mido

from improv.live.clock import now

POLL_S = 0.001  # how often the poll thread looks at rtmidi's queue when it is empty
UNSTICK_S = 0.05  # a lone F7 this often: a cut-short SysEx deafens at most this long
PROBE_S = 1.0  # a nonce this often during the set
PROBE_WAIT_S = 0.5  # a nonce not heard within this makes the port deaf
DRIFT = 2e-5  # seconds per second the time offset may relax upward (clock drift)
QUEUE_SIZE = 4096  # rtmidi's own queue, messages (a flood waits there, not in JACK)
SONG_SELECT = 0xF3
SYSEX = 0xF0
EOX = 0xF7
# System common messages improv has no use for (MTC quarter frame, song select, tune
# request, EOX). Song position (F2) is kept: the clock follower needs it.
_DROPPED_STATUS = frozenset({0xF1, SONG_SELECT, 0xF6, EOX})

_count = 0


def _local_name() -> str:
    """A name for our end of a connection to a device, unique in the MIDI graph: the probe
    finds our port by it."""
    global _count
    _count += 1
    return f"improv in {os.getpid()}-{_count}"


def rtmidi_api(backend: mido.Backend) -> int:
    """The rtmidi API number of a mido rtmidi backend (unspecified: rtmidi's default)."""
    import rtmidi

    return getattr(rtmidi, f"API_{backend.api}", rtmidi.API_UNSPECIFIED) if backend.api \
        else rtmidi.API_UNSPECIFIED


class Probe:
    """A second client whose output is patched into ``target`` (our input port's name)."""

    def __init__(self, api: int, target: str) -> None:
        import rtmidi

        self._out = rtmidi.MidiOut(rtapi=api, name="improv-probe")
        names = self._out.get_ports()
        hits = [i for i, n in enumerate(names) if target in n]
        if not hits:
            self._out.delete()
            raise LookupError(f"our input '{target}' is not among the MIDI destinations")
        self._out.open_port(hits[0], "probe")
        self.nonce = 0

    def unstick(self) -> None:
        self._out.send_message([EOX])

    def probe(self) -> int:
        self.nonce = random.randrange(128)
        self._out.send_message([SONG_SELECT, self.nonce])
        return self.nonce

    def close(self) -> None:
        try:
            self._out.close_port()
            self._out.delete()
        except Exception:
            pass


class PolledPort:
    """One open rtmidi input, read by a poll thread; ``deliver(t, msg)`` runs on that thread.

    ``virtual``: create the port ``name``; else open the device ``name`` (an exact name
    from the port list). ``deaf`` becomes True when a probe went unheard.
    """

    def __init__(self, backend: mido.Backend, name: str, *, virtual: bool, client_name: str,
                 deliver: Callable[[float, mido.Message], object]) -> None:
        import rtmidi

        self.api = rtmidi_api(backend)
        self.name = name
        self.deliver = deliver
        self.received = 0
        self.garbled = 0  # bytes that were no MIDI message
        self.rescued = 0  # messages taken back out of a cut-short SysEx
        self.deaf = False
        self._rt = rtmidi.MidiIn(rtapi=self.api, name=client_name,
                                 queue_size_limit=QUEUE_SIZE)
        # SysEx is not ignored: an ignored one that is cut short swallows messages unseen.
        self._rt.ignore_types(sysex=False, timing=False, active_sense=True)
        if virtual:
            self._rt.open_virtual_port(name)
            self._local = name
        else:
            ports = self._rt.get_ports()
            if name not in ports:
                self._rt.delete()
                raise OSError(f"'{name}' is gone")
            self._local = _local_name()
            self._rt.open_port(ports.index(name), self._local)
        self._probe: Probe | None = None
        self._heard = threading.Event()
        self._nonce: int | None = None
        self._misses = 0
        self._offset: float | None = None
        self._sum = 0.0
        self._last_poll = now()
        self._quit = threading.Event()
        self._thread = threading.Thread(target=self._run, name="improv-midi-in", daemon=True)
        self._thread.start()

    # --- the probe ---------------------------------------------------------------------------

    def attach_probe(self) -> bool:
        """Patch a probe into this port; False where the MIDI system does not let us
        (CoreMIDI and WinMM list no destination for a device's input)."""
        try:
            self._probe = Probe(self.api, self._local)
        except Exception:
            self._probe = None
        return self._probe is not None

    def self_test(self, timeout: float = 0.3) -> bool | None:
        """Send a nonce to ourselves and wait for it: True heard, False deaf, None no probe."""
        probe = self._probe
        if probe is None:
            return None
        self._heard.clear()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._nonce = probe.probe()
            # JACK delivers a connection's first events a cycle or two after it is made.
            if self._heard.wait(0.05):
                return True
        return False

    # --- the poll thread ----------------------------------------------------------------------

    def _stamp(self, delta: float, t_poll: float) -> float:
        self._sum += delta
        seen = t_poll - self._sum
        if self._offset is None or seen < self._offset:
            self._offset = seen
        return self._sum + self._offset

    def _run(self) -> None:
        rt = self._rt
        next_unstick = time.monotonic()
        next_probe = next_unstick + PROBE_S  # the owner's self-test comes first
        asked: float | None = None
        while not self._quit.is_set():
            t_poll = now()
            if self._offset is not None:  # the two clocks may drift apart: let it rise
                self._offset += (t_poll - self._last_poll) * DRIFT
            self._last_poll = t_poll
            got = rt.get_message()
            while got is not None:
                data, delta = got
                self._take(data, self._stamp(delta, t_poll))
                got = rt.get_message()
            probe = self._probe
            if probe is not None:
                mono = time.monotonic()
                try:
                    if mono >= next_unstick:
                        next_unstick = mono + UNSTICK_S
                        probe.unstick()
                    if asked is not None and self._heard.is_set():
                        asked, self._misses = None, 0
                    elif asked is not None and mono - asked > PROBE_WAIT_S:
                        asked, self._misses = None, self._misses + 1
                        # Twice: one miss may be the probe's own client skipping a cycle.
                        self.deaf = self._misses >= 2  # the owner reopens the port
                    if mono >= next_probe and asked is None:
                        next_probe = mono + PROBE_S
                        self._heard.clear()
                        self._nonce = probe.probe()
                        asked = mono
                except Exception:
                    pass  # a probe that cannot send proves nothing about the input
            time.sleep(POLL_S)

    def _take(self, data: list[int], t: float) -> None:
        self.received += 1
        status = data[0] if data else 0
        if status == SYSEX:
            self._rescue(data, t)
            return
        if status in _DROPPED_STATUS:
            if status == SONG_SELECT and len(data) > 1 and data[1] == self._nonce:
                self._heard.set()
            return
        try:
            msg = mido.Message.from_bytes(data)
        except (ValueError, TypeError, IndexError):
            self.garbled += 1
            return
        self.deliver(t, msg)

    def _rescue(self, data: list[int], t: float) -> None:
        """A SysEx: dropped, unless it was cut short and swallowed messages (status bytes
        inside it), which are delivered at its time."""
        cut = next((i for i, b in enumerate(data[1:], 1) if b >= 0x80 and b != EOX), None)
        if cut is None:
            return
        parser = mido.Parser()
        parser.feed([b for b in data[cut:] if b != EOX])
        for msg in parser:
            if msg.type != "sysex" and msg.bytes()[0] not in _DROPPED_STATUS:
                self.rescued += 1
                self.deliver(t, msg)

    def close(self) -> None:
        self._quit.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=1.0)
        if self._probe is not None:
            self._probe.close()
        try:
            self._rt.close_port()
            self._rt.delete()
        except Exception:
            pass
