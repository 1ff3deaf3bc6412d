"""The machine's answer as it is generated: tokens a lookahead ahead of playback.

This module owns the generation loop of one answer: the model's scores, mixed
with the call-less guide stream when the preset asks for guidance
(:mod:`improv.live.guidance`), drawn by the sampler, each token stepped into the
stream; each note handed to the voice (:class:`~improv.live.answer.Voice`) with
the call's dynamics. The answer's first token is a note (it starts on its line)
and no time shift crosses its end. The session decides when an answer begins,
is cut, or ends; this decides what it plays.
"""

from __future__ import annotations

from improv.core import tokens as tk
from improv.live.answer import RESPONSE, Answer
from improv.live.guidance import Guide
from improv.live.handover import call_bars
from improv.live.session_api import State

MAX_STEPS = 256  # tokens per turn of the session loop, so input is never starved


class Answering:
    """Generates the answer in flight, a lookahead ahead of the session's clock."""

    def __init__(self, session, guide_engine=None) -> None:
        self.session = session
        # The unconditioned twin for guidance (presets with guidance > 0): the caller's, or
        # a second decoder of the same model, made before the set when a preset needs it.
        self.guide = Guide(guide_engine) if guide_engine is not None else None
        c = session.controls
        if self.guide is None and any(p.guidance > 0 for p in (*c.presets, c.preset)):
            self._make_guide()

    def _make_guide(self) -> None:
        engine = self.session.engine
        if hasattr(engine, "twin"):
            self.guide = Guide(engine.twin())

    def _horizon(self) -> float:
        s = self.session
        return s.now_tick() + s.options.lookahead_beats * s.clock.beat_ticks

    def behind(self) -> bool:
        """Whether the answer needs tokens now (or has reached its end)."""
        r, tick = self.session.answer, self.session.stream.tick
        return r is not None and (tick < min(self._horizon(), r.end_tick) or tick >= r.end_tick)

    def begin(self, answer: Answer) -> None:
        """An answer was placed: start the guide stream at its line if the preset guides."""
        s = self.session
        if s.preset.guidance <= 0:
            self.end()
            return
        if self.guide is None:  # a knob turned guidance on mid-set: made once, here
            self._make_guide()
            if self.guide is None:
                return
        m = s.clock.meter
        bar_start = s.clock.bar_start(s.clock_tick(answer.start_tick)) + s.offset
        try:
            self.guide.start(s.preset.style, answer.start_tick, bar_start,
                             tk.Meter(m.numerator, m.denominator), s.stream.encoder.velocity_bin)
        except Exception as e:  # an unknown style: answer unguided rather than not at all
            self.guide.stop()
            s.say(f"guidance off for this answer: {e}")

    def end(self) -> None:
        if self.guide is not None:
            self.guide.stop()

    def generate(self) -> None:
        s = self.session
        r = s.answer
        if r is None:
            return
        horizon = self._horizon()
        if s.state == State.THINKING and s.now_tick() >= r.start_tick:
            s.set_state(State.RESPONDING)
        stream = s.stream
        steps = 0
        while stream.tick < min(horizon, r.end_tick) and steps < MAX_STEPS:
            logits = stream.logits
            if self.guide is not None and self.guide.active:
                logits = self.guide.mix(logits, s.preset.guidance)
            if not r.first_note:
                # The answer starts on the planned line: no waiting before its first note.
                logits = logits.copy()
                logits[tk.TIME_SHIFT_BASE : tk.NOTE_ON_BASE] = -float("inf")
                logits[tk.TURN] = -float("inf")
            tok = stream.sampler.sample(logits)
            if tk.is_time_shift(tok) and stream.tick + tk.shift_ticks(tok) > r.end_tick:
                tok = tk.time_shift_token(r.end_tick - stream.tick)
            self._play(r, tok)
            steps += 1
        if stream.tick >= r.end_tick:
            self.finish()

    def finish(self) -> None:
        """The answer reached its length: end its notes, hand the turn back."""
        s = self.session
        r = s.answer
        if r.predicted:  # the guess held: the player let the answer play out
            s.handover.predictor.confirmed(
                call_bars(r.call_bar, r.start_tick, s.clock.bar_ticks))
        for p in sorted(r.sounding):
            s.stream.note_off(r.end_tick, p, human=False)
            s.voice.note_off(r, p, r.end_tick, s.preset)
            s.out.note("machine", p, 0, r.end_tick)
        s.stream.feed(s.stream.encoder.turn(), human=False)
        s.answer = None
        self.end()
        # A call played under the answer (overlap mode) is heard out like any other.
        s.set_state(State.LISTENING if s.call_start is not None else State.IDLE)
        if s.call_start is None:
            s.controls.apply_pending(s)

    def barge_in(self, tick: int) -> None:
        """The player came in: stop the answer and rewind the context to what was heard."""
        s = self.session
        r = s.answer
        s.answer = None
        self.end()
        s.scheduler.cancel(RESPONSE)
        s.out.cut(max(tick, s.now_tick()))  # what it would have played next is off the roll
        # A wrong guess (Answer.played_into): at most a note sounded and was cut; the
        # context forgets it, so the call reads on as one phrase.
        wrong = r.played_into(tick, s.clock.beat_ticks)
        if not r.first_note or tick < r.start_tick or wrong:
            # Nothing of the answer sounded: the call simply goes on, as if never ended.
            s.stream.restore(r.call)
            s.call_start, s.call_bar = r.call_start, r.call_bar
            s.handover.taken_back(r, wrong and tick >= r.start_tick)
            s.discarded += 1
            if s.responses and s.responses[-1].get("first_note_deadline") is None:
                s.responses.pop()
            cut = wrong and r.first_note and tick >= r.start_tick
            s.say("the call goes on" + (" (a note of the answer was cut)" if cut else ""))
            s.set_state(State.LISTENING)
            return
        self.keep_heard(r, tick)
        s.say("barge-in: the answer stops")
        s.set_state(State.LISTENING)

    def keep_heard(self, r: Answer, tick: int) -> None:
        """The stream keeps the answer as far as it sounded by ``tick``, ends its notes
        there, and hands the turn back (a barge-in, a panic)."""
        s = self.session
        heard = r.heard(tick)
        s.stream.restore(r.start)
        s.stream.replay(heard)
        for p in sorted(s.stream.sampler.machine):
            s.stream.note_off(tick, p, human=False)
            s.out.note("machine", p, 0, tick)
        s.stream.feed(s.stream.encoder.turn(tick), human=False)

    def _play(self, r: Answer, tok: int) -> None:
        s = self.session
        tick = s.stream.tick
        if self.guide is not None:
            self.guide.step(tok)
        s.stream.step(tok)
        r.tokens.append((tok, tick))
        if tk.is_note_on(tok):
            p = tk.token_pitch(tok)
            r.first_note = True
            velocity = r.dynamics.velocity(tick, tk.bin_velocity(s.stream.encoder.velocity_bin),
                                           s.preset.dynamics)
            deadline = s.voice.note_on(r, p, tick, velocity, s.preset)
            if s.responses and s.responses[-1].get("first_note_deadline") is None:
                s.responses[-1]["first_note_deadline"] = deadline
            s.out.note("machine", p, velocity, tick)
        elif tk.is_note_off(tok):
            p = tk.token_pitch(tok)
            s.voice.note_off(r, p, tick, s.preset)
            s.out.note("machine", p, 0, tick)
