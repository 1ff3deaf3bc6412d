"""The machine's answer in flight: what was generated, when it sounds, what was heard.

This module owns two small things the session uses while it answers:

* :class:`Answer`, the record of one answer: where it starts and ends on the
  grid, the stream checkpoints to rewind to (before the TURN, or at the answer's
  start), and every token generated with the tick it was generated at, so that
  a barge-in can replay exactly the part that sounded (:meth:`Answer.heard`).
* :class:`Voice`, which turns the answer's notes into scheduled MIDI: swing,
  humanize, the preset's velocity curve and channel, tagged so a barge-in can
  cancel them. Deadlines are clock ticks (the stream's offset subtracted; humanize
  turned from ms into ticks at the current tempo), bound to time only when sent.
  Humanize moves note-ons, so the voice keeps two promises the scheduler's book
  relies on: a note-off never goes before its own note-on (at least
  ``MIN_NOTE_TICKS`` after it), and a note-on never goes before the last note-off
  of its key.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

import mido

from improv.core import tokens as tk
from improv.live.book import MIN_NOTE_TICKS
from improv.live.dynamics import Dynamics
from improv.live.stream import Checkpoint

RESPONSE = "response"  # scheduler tag of the machine's notes


@dataclass
class Answer:
    start_tick: int
    end_tick: int
    start: Checkpoint  # the stream where generation began (after the TURN)
    call: Checkpoint  # the stream before the TURN: a player who goes on before the
    call_start: int  # answer sounds is still playing the call
    call_bar: int = 0  # the bar line the call counted from (restored if the call goes on)
    predicted: bool = False  # handed over on predicted phrase end (discarded if played on)
    trading: bool = False  # handed over on a fixed line (call_bars): never discarded
    dynamics: Dynamics = field(default_factory=Dynamics)
    tokens: list[tuple[int, int]] = field(default_factory=list)  # (token, tick generated at)
    sounding: dict[int, float] = field(default_factory=dict)  # pitch -> its note-on clock tick
    last_off: dict[int, float] = field(default_factory=dict)  # pitch -> its last off clock tick
    first_note: bool = False

    def played_into(self, tick: int, beat_ticks: int) -> bool:
        """A predicted answer the player plays straight into (before its line, on it, or
        within its first beat): the guess was wrong, the phrase went on."""
        return self.predicted and tick < self.start_tick + beat_ticks

    def heard(self, tick: int) -> list[int]:
        """The answer's tokens as far as they sounded by ``tick`` (a shift is cut there)."""
        out = []
        for tok, t in self.tokens:
            if t > tick or (t == tick and tk.is_note_on(tok)):
                break
            if tk.is_time_shift(tok) and t + tk.shift_ticks(tok) > tick:
                if tick > t:
                    out.append(tk.time_shift_token(tick - t))
                break
            out.append(tok)
        return out


class Voice:
    """Schedules the machine's notes from stream ticks, with the preset's feel."""

    def __init__(self, scheduler, clock, seed: int | None = None,
                 offset: Callable[[], float] = lambda: 0) -> None:
        self.scheduler = scheduler
        self.clock = clock  # for the tempo humanize is measured in
        self.offset = offset  # stream tick - clock tick (the session's stream offset)
        self.rng = random.Random(seed)

    def deadline(self, tick: float, preset, humanize: bool = False) -> float:
        """The clock tick at which the note of stream tick ``tick`` is due."""
        eighth = tk.TICKS_PER_QUARTER // 2
        if preset.swing and tick % tk.TICKS_PER_QUARTER == eighth:
            tick += preset.swing * eighth
        tick -= self.offset()
        if humanize and preset.humanize_ms:
            tick += self.rng.gauss(0.0, preset.humanize_ms / 2000.0) / self.clock.seconds_per_tick
        return tick

    def note_on(self, answer: Answer, pitch: int, tick: int, velocity: int, preset) -> float:
        """Schedule a note-on; returns its time as bound now (seconds, for reports)."""
        deadline = max(self.deadline(tick, preset, humanize=True),
                       answer.last_off.get(pitch, float("-inf")))
        if pitch in answer.sounding:  # struck again while sounding (a player's note closed
            self.note_off(answer, pitch, tick, preset)  # it in the stream): off, then on
            deadline = max(deadline, answer.last_off[pitch])
        answer.sounding[pitch] = deadline
        msg = mido.Message("note_on", channel=preset.midi_channel, note=pitch,
                           velocity=preset.shape_velocity(velocity))
        self.scheduler.schedule(msg, deadline, tag=RESPONSE)
        return self.clock.tick_to_time(deadline)

    def note_off(self, answer: Answer, pitch: int, tick: int, preset) -> None:
        on = answer.sounding.pop(pitch, None)
        if on is None:
            return
        deadline = max(self.deadline(tick, preset), on + MIN_NOTE_TICKS)
        answer.last_off[pitch] = deadline
        msg = mido.Message("note_off", channel=preset.midi_channel, note=pitch, velocity=0)
        self.scheduler.schedule(msg, deadline, tag=RESPONSE)
