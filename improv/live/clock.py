"""Musical time: ticks (24 per quarter note) <-> seconds of one monotonic clock.

This module owns the only conversion between ticks and seconds in the live
path. A :class:`Clock` is an anchor ``(tick0, t0)`` plus a tempo; every
conversion is computed from the anchor, never accumulated, so a position is as
exact after three hours as after three seconds. A tempo change re-anchors at the
current tick, so positions never jump; only :meth:`Clock.set_position` (and a
master's start / song position) moves them on purpose.

Where the tempo comes from:

* internally: :meth:`Clock.set_tempo` and tap tempo (:meth:`Clock.tap`);
* from a master: :class:`MidiClockFollower`, fed with incoming MIDI beat clock
  (24 pulses per quarter, start / stop / continue / song position), fits a line
  through the recent pulses (least squares over a sliding window, so a few
  milliseconds of jitter per pulse barely move it) and re-anchors the Clock on
  that line;
* as a master: :class:`ClockSender` sends MIDI clock at the Clock's deadlines.

All times are seconds of :func:`now` (``time.monotonic``; ``perf_counter`` on
Windows before Python 3.13, whose ``monotonic`` ticks at 15.6 ms). Use
``improv.live.clock.now`` wherever a timestamp meets a deadline.
"""

from __future__ import annotations

import math
import sys
import threading
import time
from collections import deque
from collections.abc import Callable

import mido

from improv.core.knobs import FIELDS
from improv.core.tokens import TICKS_PER_QUARTER, Meter

now: Callable[[], float] = (
    time.perf_counter if sys.platform == "win32" and sys.version_info < (3, 13) else time.monotonic
)

# The one tempo range (the knob registry's): tap tempo, set_tempo and the MIDI clock follower.
MIN_BPM, MAX_BPM = float(FIELDS["bpm"].lo), float(FIELDS["bpm"].hi)


def try_realtime() -> bool:
    """Ask for SCHED_FIFO for the calling thread (Linux, needs rtprio); False if refused.

    For the threads that wait for deadlines: on a loaded machine it takes the p99
    wake-up error from several ms to tens of microseconds. Their spins yield and
    are short, so they cannot starve the machine.
    """
    import os

    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))  # type: ignore[attr-defined]
        return True
    except (AttributeError, OSError):
        return False


def bpm_to_seconds_per_tick(bpm: float) -> float:
    return 60.0 / (bpm * TICKS_PER_QUARTER)


def seconds_per_tick_to_bpm(spt: float) -> float:
    return 60.0 / (spt * TICKS_PER_QUARTER)


def _ceil_line(tick: float, origin: int, step: int) -> int:
    """The first multiple of ``step`` after ``origin`` at or after ``tick``."""
    k = math.ceil((tick - origin) / step - 1e-9)  # 1e-9: a float hair past a line is on it
    return origin + k * step


class Clock:
    """Ticks <-> seconds from an anchor and a tempo; thread-safe.

    Readers take one immutable ``(tick0, t0, seconds_per_tick)`` snapshot, so a
    conversion never sees half an update; writers serialise on a lock.
    """

    def __init__(
        self,
        bpm: float = 120.0,
        numerator: int = 4,
        denominator: int = 4,
        *,
        time_fn: Callable[[], float] = now,
        tick: float = 0.0,
    ) -> None:
        self.time_fn = time_fn
        self._lock = threading.Lock()
        self._anchor = (float(tick), time_fn(), bpm_to_seconds_per_tick(_check_bpm(bpm)))
        self.meter = Meter(numerator, denominator)
        self.bar_origin = 0  # a tick on a bar line; bars repeat from it
        self._taps: deque[float] = deque(maxlen=5)  # 5 taps = the last 4 intervals
        self._listeners: list[Callable[[], object]] = []

    # --- the mapping, and who hears of its changes -----------------------------------------

    def mapping(self) -> tuple[float, float, float]:
        """``(tick0, t0, seconds_per_tick)``: tick ``tick0`` is at ``t0``."""
        return self._anchor

    def set_mapping(self, tick0: float, t0: float, seconds_per_tick: float) -> None:
        """Take another clock's mapping (the I/O process's, or the session's) as it is."""
        with self._lock:
            self._anchor = (float(tick0), float(t0), float(seconds_per_tick))
        self._changed()

    def on_change(self, callback: Callable[[], object]) -> Callable[[], None]:
        """Call ``callback()`` after every tempo, position, follow or mapping change (a
        scheduler re-binds its queued deadlines); returns the function that unsubscribes."""
        self._listeners.append(callback)

        def remove() -> None:
            if callback in self._listeners:
                self._listeners.remove(callback)

        return remove

    def _changed(self) -> None:
        for callback in list(self._listeners):
            try:
                callback()
            except Exception:  # a listener's fault must not undo the tempo change
                pass

    # --- conversions (lock-free: one snapshot each) ---------------------------------------

    def tick_to_time(self, tick: float) -> float:
        tick0, t0, spt = self._anchor
        return t0 + (tick - tick0) * spt

    def time_to_tick(self, t: float) -> float:
        tick0, t0, spt = self._anchor
        return tick0 + (t - t0) / spt

    def nearest_tick(self, t: float) -> int:
        """``time_to_tick`` rounded to the nearest whole tick."""
        return round(self.time_to_tick(t))

    def now_tick(self) -> float:
        return self.time_to_tick(self.time_fn())

    @property
    def bpm(self) -> float:
        return seconds_per_tick_to_bpm(self._anchor[2])

    @property
    def seconds_per_tick(self) -> float:
        return self._anchor[2]

    def ticks(self, seconds: float) -> float:
        """How many ticks ``seconds`` last at the current tempo."""
        return seconds / self._anchor[2]

    # --- tempo and position -----------------------------------------------------------------

    def set_tempo(self, bpm: float, *, at: float | None = None) -> None:
        """Change tempo from time ``at`` (default: now) on; the tick at ``at`` stays put."""
        spt = bpm_to_seconds_per_tick(_check_bpm(bpm))
        with self._lock:
            t = self.time_fn() if at is None else at
            self._anchor = (self.time_to_tick(t), t, spt)
        self._changed()

    def set_position(self, tick: float, t: float | None = None) -> None:
        """Make ``tick`` happen at time ``t`` (default: now): a deliberate jump."""
        with self._lock:
            t = self.time_fn() if t is None else t
            self._anchor = (float(tick), t, self._anchor[2])
        self._changed()

    def follow(self, tick: float, t: float, seconds_per_tick: float) -> None:
        """Tick ``tick`` is at ``t`` and ticks last ``seconds_per_tick``: one atomic update."""
        with self._lock:
            self._anchor = (float(tick), t, seconds_per_tick)
        self._changed()

    def tap(self, t: float | None = None) -> float | None:
        """One tap of tap tempo; returns the new BPM once there are two taps, else None.

        The tempo is the mean of the last (up to four) intervals; a pause longer
        than two seconds starts a new series.
        """
        t = self.time_fn() if t is None else t
        if self._taps and t - self._taps[-1] > 2.0:
            self._taps.clear()
        if self._taps and t <= self._taps[-1]:
            return None
        self._taps.append(t)
        if len(self._taps) < 2:
            return None
        interval = (self._taps[-1] - self._taps[0]) / (len(self._taps) - 1)
        bpm = min(max(60.0 / interval, MIN_BPM), MAX_BPM)
        self.set_tempo(bpm, at=t)
        return bpm

    # --- meter --------------------------------------------------------------------------------

    @property
    def bar_ticks(self) -> int:
        return self.meter.bar_ticks

    @property
    def beat_ticks(self) -> int:
        """Ticks per beat, the beat being the meter's denominator (a quarter in 4/4)."""
        return TICKS_PER_QUARTER * 4 // self.meter.denominator

    def set_meter(self, numerator: int, denominator: int, *, origin: int | None = None) -> None:
        """New meter with a bar line at ``origin`` (default: the start of the current bar)."""
        meter = Meter(numerator, denominator)
        if meter.bar_ticks < 1 or denominator not in (1, 2, 4, 8, 16, 32):
            raise ValueError(f"meter {numerator}/{denominator} is not usable; try 4/4 or 3/4")
        if origin is None:
            origin = self.bar_start(self.now_tick())
        self.meter = meter
        self.bar_origin = int(origin)

    def bar_start(self, tick: float) -> int:
        """The bar line at or before ``tick``."""
        line = self.next_bar(tick)
        return line if line <= tick + 1e-9 else line - self.bar_ticks

    def next_beat(self, tick: float) -> int:
        """The first beat line at or after ``tick``."""
        return _ceil_line(tick, self.bar_origin, self.beat_ticks)

    def next_bar(self, tick: float) -> int:
        """The first bar line at or after ``tick``."""
        return _ceil_line(tick, self.bar_origin, self.bar_ticks)


def _check_bpm(bpm: float) -> float:
    if not MIN_BPM <= bpm <= MAX_BPM:
        raise ValueError(f"tempo {bpm} BPM is out of range; use {MIN_BPM:g} to {MAX_BPM:g}")
    return float(bpm)


class MidiClockFollower:
    """Follows a MIDI beat-clock master by re-anchoring a :class:`Clock`.

    Feed it every real-time message with its arrival time (``feed``). The tempo is
    the slope of a least-squares line through the last ``window`` pulses; the
    position is the master's song position, placed on that line, so the Clock's
    ticks follow the master while the jitter of single pulses is averaged away.
    Clock pulses that arrive while the master is stopped still set the tempo.
    """

    # A pulse gap this long (10 BPM) means the master paused: start a new fit.
    MAX_GAP = 0.25

    def __init__(self, clock: Clock, *, window: int = 48, min_pulses: int = 6,
                 offset_s: float = 0.0) -> None:
        self.clock = clock
        self.offset = offset_s  # how late the master's messages are heard (jack_info)
        self.window = window
        self.min_pulses = max(min_pulses, 2)
        self._fit: deque[tuple[int, float]] = deque(maxlen=window)  # (pulse index, time)
        self._index = 0
        self.position = 0  # the tick the next pulse stands for
        self.running = False  # between start/continue and stop
        self.master_stopped = False  # True after a stop, until start/continue
        self.pulses = 0
        self.last_pulse: float | None = None
        self.seconds_per_tick: float | None = None

    @property
    def bpm(self) -> float | None:
        """The estimated master tempo, or None before enough pulses."""
        spt = self.seconds_per_tick
        return None if spt is None else seconds_per_tick_to_bpm(spt)

    def receiving(self, t: float | None = None) -> bool:
        """True while pulses keep coming (the last one less than MAX_GAP ago)."""
        t = self.clock.time_fn() if t is None else t
        return self.last_pulse is not None and t - self.last_pulse < self.MAX_GAP

    def feed_message(self, msg: mido.Message, t: float) -> None:
        """Feed a mido message; anything that is not beat clock is ignored."""
        self.feed(msg.type, t, getattr(msg, "pos", None))

    def feed(self, kind: str, t: float, value: int | None = None) -> None:
        """One message: 'clock', 'start', 'stop', 'continue' or 'songpos' (``value`` = 16ths)."""
        t -= self.offset
        if kind == "clock":
            self._pulse(t)
        elif kind == "start":
            self.position = 0
            self.running, self.master_stopped = True, False
        elif kind == "continue":
            self.running, self.master_stopped = True, False
        elif kind == "stop":
            self.running, self.master_stopped = False, True
        elif kind == "songpos" and value is not None:
            # A sixteenth is 6 ticks; the next pulse is at that position.
            self.position = int(value) * TICKS_PER_QUARTER // 4
            if not self.running:
                self.clock.set_position(self.position, t)

    def _pulse(self, t: float) -> None:
        if self.last_pulse is not None and t - self.last_pulse > self.MAX_GAP:
            self._fit.clear()
        self.last_pulse = t
        self.pulses += 1
        self._index += 1
        self._fit.append((self._index, t))
        line = _fit_line(self._fit) if len(self._fit) >= self.min_pulses else None
        if line is not None:
            self.seconds_per_tick = line[1]
        if self.running:
            if line is None:
                self.clock.set_position(self.position, t)
            else:
                a, b = line
                self.clock.follow(self.position, a + b * self._index, b)
            self.position += 1
        elif line is not None:
            self.clock.follow(self.clock.time_to_tick(t), t, line[1])


def _fit_line(points: deque[tuple[int, float]]) -> tuple[float, float] | None:
    """Least squares t = a + b*i; times relative to the first point keep precision."""
    n = len(points)
    i0, t0 = points[0]
    si = st = sii = sit = 0.0
    for i, t in points:
        x, y = i - i0, t - t0
        si += x
        st += y
        sii += x * x
        sit += x * y
    den = n * sii - si * si
    if den <= 0:
        return None
    b = (n * sit - si * st) / den
    if not bpm_to_seconds_per_tick(MAX_BPM) <= b <= bpm_to_seconds_per_tick(MIN_BPM):
        return None
    a = (st - b * si) / n
    return t0 + a - b * i0, b


PULSES_PER_SIXTEENTH = TICKS_PER_QUARTER // 4  # a Song Position unit ("MIDI beat")


class ClockSender:
    """Sends MIDI beat clock as a master: one pulse per tick of a :class:`Clock`.

    A thread waits for each tick's deadline (sleep, then a short spin) and calls
    ``send(mido.Message('clock'))``; deadlines are recomputed from the Clock for
    every pulse, so tempo changes take effect at once. ``start()`` sends Song
    Position 0 and Start just before the next bar line's pulse (the slave's beat 1
    lands on our bar); ``stop()`` sends Stop, then the Song Position where it stopped
    (as a DAW does, so the slave shows it); ``resume()`` sends that Song Position
    and Continue on the next sixteenth. ``close()`` stops a started slave first: a
    DAW slaved to a set that ended must not keep rolling. Pulses keep going while
    stopped so a slave can lock.
    """

    SPIN = 0.0005  # as the scheduler's: a short spin after a real-time wait

    def __init__(
        self, clock: Clock, send: Callable[[mido.Message], object], *, realtime: bool = True,
        lead_s: float = 0.0,
    ) -> None:
        self.clock = clock
        self.send = send
        self.lead = lead_s  # sent this much before each pulse's time, as the notes are
        self.realtime = realtime
        self.sent = 0
        self.errors = 0
        self._start_at: int | None = None
        self._resume_at: int | None = None
        self._stop_now = False
        self._origin: int | None = None  # the tick of Start: song position 0
        self._position = 0  # sixteenths from Start where it stopped
        self._quit = threading.Event()
        self._thread: threading.Thread | None = None

    def open(self) -> ClockSender:
        """Start sending pulses."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="improv-clock-out", daemon=True)
            self._thread.start()
        return self

    def start(self) -> None:
        """Send Start at the next bar line."""
        self._start_at = self.clock.next_bar(self.clock.now_tick() + 1)

    def stop(self) -> None:
        """Send Stop (then where it stopped) before the next pulse."""
        self._stop_now = True

    def resume(self) -> None:
        """Send the Song Position and Continue on the next sixteenth."""
        self._resume_at = math.ceil((self.clock.now_tick() + 1) / PULSES_PER_SIXTEENTH) \
            * PULSES_PER_SIXTEENTH

    @property
    def rolling(self) -> bool:
        return self._origin is not None

    def close(self) -> None:
        """Stop a started slave, then end the thread."""
        self._quit.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=1.0)
        self._thread = None
        if self.rolling:
            self._stop(math.floor(self.clock.now_tick()))

    def _stop(self, tick: int) -> None:
        self._position = min(max(0, (tick - self._origin) // PULSES_PER_SIXTEENTH), 16383)
        self._origin = None
        self._send(mido.Message("stop"))
        self._send(mido.Message("songpos", pos=self._position))

    def _send(self, msg: mido.Message) -> None:
        try:
            self.send(msg)
            self.sent += 1
        except Exception:  # a broken output must not stop the clock thread
            self.errors += 1

    def _run(self) -> None:
        self.realtime = self.realtime and try_realtime()
        clock = self.clock
        tick = math.floor(clock.now_tick()) + 1
        while not self._quit.is_set():
            target = clock.tick_to_time(tick) - self.lead
            delay = target - clock.time_fn()
            if delay > self.SPIN:
                self._quit.wait(delay - self.SPIN)
                continue  # the tempo may have changed while we slept
            if delay > 0:
                time.sleep(0)
                continue
            behind = clock.now_tick() - tick
            if behind > TICKS_PER_QUARTER:  # stalled for a beat: skip ahead, don't burst
                tick = math.floor(clock.now_tick())
            if self._stop_now:
                self._stop_now = False
                if self.rolling:
                    self._stop(tick)
            if self._start_at is not None and tick >= self._start_at:
                self._start_at = None
                self._origin = tick
                self._send(mido.Message("songpos", pos=0))
                self._send(mido.Message("start"))
            if self._resume_at is not None and tick >= self._resume_at and not self.rolling:
                self._resume_at = None
                self._origin = tick - self._position * PULSES_PER_SIXTEENTH
                self._send(mido.Message("songpos", pos=self._position))
                self._send(mido.Message("continue"))
            self._send(mido.Message("clock"))
            tick += 1
