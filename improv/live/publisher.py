"""What the session shows: the log lines, the piano roll's notes and the snapshots.

This module owns the session's side of the UI boundary. The session says lines
and shows notes as they happen (the machine's as they are generated, a lookahead
before they sound: the stage draws the planned answer ahead of its playhead); the
publisher keeps them and, at a bounded rate on the session's own clock (so a
simulated set publishes the same snapshots every run), builds the
:class:`~improv.live.session_api.Snapshot` a UI reads, with what the stage counts
down to (:func:`countdown`). Nothing here waits for a UI: a snapshot is one
reference swap.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable

from improv.live.session_api import Latency, NoteHistory, Snapshot, State

log = logging.getLogger("improv.live.session")

SNAPSHOT_EVERY = 0.05  # seconds between published snapshots (20 Hz)


class Publisher:
    """Log lines, recent notes and the latest snapshot of one session."""

    def __init__(self, time_fn: Callable[[], float], beat_ticks: int) -> None:
        self.time_fn = time_fn
        self.beat_ticks = beat_ticks
        self.lines: deque[str] = deque(maxlen=500)
        self.history = NoteHistory()
        self.snapshot = Snapshot()
        self._last = float("-inf")
        # (start, end) stream ticks of the latest answer: it is generated a lookahead ahead,
        # so the session is done with it (IDLE) while its last beat still sounds
        self.span: tuple[int, int] | None = None

    def say(self, line: str) -> None:
        log.info(line)
        self.lines.append(line)

    def drain(self) -> list[str]:
        out = []
        while self.lines:
            out.append(self.lines.popleft())
        return out

    def note(self, who: str, pitch: int, velocity: int, tick: float) -> None:
        """A note-on (velocity > 0) or note-off of ``who`` for the piano roll."""
        beat = tick / self.beat_ticks
        if velocity > 0:
            self.history.on(who, pitch, beat)
        else:
            self.history.off(who, pitch, beat)

    def cut(self, tick: float) -> None:
        """The answer stopped at stream tick ``tick``: its planned notes after it are gone."""
        self.history.cut("machine", tick / self.beat_ticks)
        if self.span is not None:
            self.span = (self.span[0], min(self.span[1], int(tick)))

    def due(self, force: bool = False) -> bool:
        """Whether a snapshot is due (20 Hz, or at once when forced)."""
        now = self.time_fn()
        if not force and now - self._last < SNAPSHOT_EVERY:
            return False
        self._last = now
        return True

    def publish(self, session) -> None:
        """Build the snapshot from the session's public state."""
        es = session.engine.stats
        ss = session.scheduler.stats()
        clock = session.clock
        controls = session.controls
        key = session.stream.sampler.key
        names = tuple(p.name for p in controls.presets)
        preset = controls.preset
        learner = controls.learner
        bt = clock.beat_ticks
        r = session.answer
        click = session.click
        if r is not None:
            self.span = (r.start_tick, r.end_tick)
        elif self.span is not None and session.now_tick() >= self.span[1]:
            self.span = None
        span = self.span
        self.snapshot = Snapshot(
            state=session.state,
            beat=session.now_tick() / clock.beat_ticks,
            bpm=clock.bpm,
            meter=(clock.meter.numerator, clock.meter.denominator),
            clock_source="midi" if session.follower is not None else "internal",
            preset=preset.name,
            preset_number=names.index(preset.name) + 1 if preset.name in names else 0,
            presets=names,
            knobs=controls.values(),
            mode=preset.mode,
            key=preset.key,
            key_detected=key.name if key is not None else None,
            ports=session.ports,
            latency=Latency(
                decode_median_ms=es.median_ms if es.steps else None,
                decode_p99_ms=es.p99_ms if es.steps else None,
                decode_gap_ms=es.gap_median_ms if es.steps else None,
                schedule_p99_ms=ss.p99_ms,
                tokens_per_s=es.tokens_per_s or None,
                ingest_median_ms=_pct(session.ingest_ms, 50),
                ingest_p99_ms=_pct(session.ingest_ms, 99),
                late=ss.late,
                dropped=session.intake.dropped,  # lost by the input queue, or shed
                provider=getattr(session.engine, "provider", None),
            ),
            notes=self.history.recent(),
            learning=getattr(learner, "armed", None),
            bindings=learner.bindings.ccs() if learner is not None else {},
            recording=str(getattr(session.recorder, "path", "")) or None,
            click=bool(preset.click),
            count_in_until=(click.listen_at + session.offset) / bt if click.counting() else None,
            countdown=countdown(session, span),
            answer_span=None if span is None else (span[0] / bt, span[1] / bt),
        )


def countdown(session, span: tuple[int, int] | None = None) -> tuple[float, float] | None:
    """(from, to) beats of the stretch the stage counts down now, None when its end is not
    known: the count-in; a trading call (from its first bar line); the wait for a placed
    answer (at most a bar); the answer (``span``, in stream ticks: it sounds on after the
    session is done with it), to the player's turn."""
    s = session
    bt, bar = s.clock.beat_ticks, s.clock.bar_ticks
    click, r = s.click, s.answer
    if click.counting():
        return (click.count_from + s.offset) / bt, (click.listen_at + s.offset) / bt
    if r is not None and s.state == State.THINKING:
        return max(r.call_bar, r.start_tick - bar) / bt, r.start_tick / bt
    if span is not None and s.call_start is None and s.now_tick() >= span[0]:
        return span[0] / bt, span[1] / bt
    if s.state == State.LISTENING and s.call_start is not None and s.preset.call_bars:
        return s.call_bar / bt, (s.call_bar + s.preset.call_bars * bar) / bt
    return None


def _pct(values, q: float) -> float | None:
    """The q-th percentile of the recent figures, None before the first."""
    xs = sorted(values)
    return xs[min(len(xs) - 1, int(q / 100 * len(xs)))] if xs else None


__all__ = ["Publisher", "SNAPSHOT_EVERY", "State", "countdown"]
