"""Call and response: the state machine that wires the live rooms together.

This module owns one thread, the session thread. It takes the player's MIDI
messages from a queue (the port callback only timestamps and enqueues), turns
each note into tokens the moment it arrives and feeds them to the engine, so
the context is already encoded when the call ends. When the call ends (silence,
a pedal, or the maximum length) it marks the turn, places the response on the
next beat or bar line, and generates the machine's tokens ahead of playback by
a lookahead, handing each note to the scheduler at an absolute deadline. The
machine's own tokens stay in the context after the TURN marker, so the next
call is heard against the last answer.

States: IDLE (nothing yet) -> LISTENING (a call is being played) -> THINKING
(the call ended, the response has not sounded yet) -> RESPONDING -> LISTENING...

Hand-over: with ``call_bars = N`` (trading) the call is the N bars from the bar
line on or before the player's first note, and the answer starts on the line
after them whatever the player holds. Otherwise, when the player releases every
key shortly before a bar line and the evidence says the phrase is over
(:mod:`improv.live.handover`), the answer is prepared for that line; a note played
before the line discards it unheard and the call goes on. Silence, the end-call
pedal and ``max_call_bars`` end the call when nothing was predicted. The answer
lasts the call's length in bars, up to the bar of its last note.

Barge-in: a note from the player during a response stops it (``mode =
"call_response"``): the scheduler cancels what is pending and ends what sounds,
and the context is rewound to what was actually heard, closed with the machine's
note-offs and a TURN, before the player's note is encoded. In ``"overlap"`` mode
the response plays on and the player's notes join the context as they come.

Nothing here blocks on the UI: UIs read :class:`~improv.live.session_api.Snapshot`
values published at a bounded rate and send intents through a queue. Time is
ticks everywhere; ``clock`` alone turns ticks into seconds.
"""

from __future__ import annotations

import copy
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import mido

from improv.core import tokens as tk
from improv.core.presets import Preset, PresetLibrary
from improv.live.answer import RESPONSE, Answer, Voice
from improv.live.clock import Clock
from improv.live.controls import Bindings, Learner
from improv.live.dynamics import Dynamics
from improv.live.guidance import Guide
from improv.live.handover import (
    GRACE_S,
    LATE_TICKS,
    LINE_SLACK,
    HandoverPredictor,
    Release,
    call_bars,
    turn_probability,
)
from improv.live.knobs import PlayerControls
from improv.live.ports import InputQueue
from improv.live.quantize import quantize_release, quantize_tick
from improv.live.sampler import Constraints, Sampler
from improv.live.scheduler import Scheduler
from improv.live.session_api import (
    KNOBS,
    Intent,
    Latency,
    NoteHistory,
    PortView,
    Snapshot,
    State,
)

log = logging.getLogger("improv.live.session")

CLOCK_MESSAGES = frozenset({"clock", "start", "stop", "continue", "songpos"})
SNAPSHOT_EVERY = 0.05  # seconds between published snapshots (20 Hz)
MAX_RESPONSE_BARS = 16


@dataclass
class SessionOptions:
    lookahead_beats: float = 1.0  # generated ahead of playback
    min_lead_ms: float = 30.0  # a response never starts closer than this to the call's end
    seed: int | None = None
    thru: bool = False  # pass the player's notes to the output
    pedal_ccs: tuple[int, ...] = ()  # extra end-of-call pedals besides the preset's
    control_channel: int | None = None  # program change / notes here switch presets
    history_beats: float = 32.0  # how much of the piano roll the snapshot carries


class Session(PlayerControls):
    """One performance: call and response between a player and an engine."""

    def __init__(
        self,
        engine,
        clock: Clock,
        scheduler: Scheduler,
        presets: PresetLibrary | None = None,
        preset: Preset | str | int | None = None,
        *,
        options: SessionOptions | None = None,
        inbox: InputQueue | None = None,
        recorder=None,
        controls: Learner | None = None,
        on_learned: Callable[[Bindings], object] | None = None,
        ports: tuple[PortView, ...] = (),
        on_state: Callable[[State], object] | None = None,
        guide_engine=None,
    ) -> None:
        self.engine = engine
        self.clock = clock
        self.scheduler = scheduler
        self.presets = presets or PresetLibrary()
        # The unconditioned twin for guidance (presets with guidance > 0): the caller's, or
        # a second decoder of the same model, made before the set when a preset needs it.
        self.guide = Guide(guide_engine) if guide_engine is not None else None
        self.options = options or SessionOptions()
        self.recorder = recorder
        self.controls = controls  # CC -> knob bindings and MIDI learn
        self.on_learned = on_learned  # saves the bindings; called on the session thread
        self.ports = ports
        # (role, name) -> PortView: reopens a port when the UI picks another (set by jam)
        self.port_selector: Callable[[str, str], PortView] | None = None
        self.on_state = on_state
        # The input port's own queue when there is one: its callback only stamps and enqueues.
        self._inbox = inbox if inbox is not None else InputQueue()
        self._intents: queue.Queue = queue.Queue()
        self._log: deque[str] = deque(maxlen=500)
        self.voice = Voice(scheduler, clock, self.options.seed, offset=lambda: self._offset)
        self.state = State.IDLE
        self.preset = self._resolve(preset) if preset is not None else self.presets.default()
        self._pending_preset: Preset | None = None
        self.sampler = Sampler(
            Constraints.from_preset(self.preset),
            seed=self.options.seed,
            meter=(clock.meter.numerator, clock.meter.denominator),
        )
        self.encoder = tk.StreamEncoder(tk.Meter(clock.meter.numerator, clock.meter.denominator))
        self._logits = None
        self._keys_down: set[int] = set()
        self._last_human = 0.0  # time of the player's last note event
        self._call_start: int | None = None
        self._call_bar = 0  # the bar line the call counts its bars from
        self._call_last = 0  # tick of the call's last note event
        self._call_notes: list[tuple[int, int]] = []  # (tick, velocity) of the call's note-ons
        self._release: Release | None = None  # the keys all came up (while they are up)
        self._judged: int | None = None  # the line the predictor last judged
        self._closed: set[int] = set()  # keys held at a hand-over, closed in the stream already
        self._on_ticks: dict[int, int] = {}  # key -> its quantized note-on tick
        self._heard = False  # any note of the player's yet
        self._refused: set[int] = set()  # lines this call went on through after a prediction
        self.handover = HandoverPredictor()
        self.discarded = 0  # prepared answers dropped unheard because the player played on
        self._response: Answer | None = None
        self._history = NoteHistory()
        if self.guide is None and any(p.guidance > 0 for p in (*self.presets, self.preset)):
            self._make_guide()
        self._snapshot = Snapshot()
        self._snap_time = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.responses: list[dict] = []  # per response: planned start and first-note deadline
        self.error: BaseException | None = None
        self._program_sent = False
        self._fed = 0  # tokens that entered the engine, to rewind by count across rolls
        # Stream ticks = clock ticks + offset: a MIDI master may move the song position,
        # but the token stream's time only runs forward (see _transport).
        self._offset = 0
        self.follower = None  # a MidiClockFollower when slaved to MIDI beat clock
        self.ingest_ms: deque[float] = deque(maxlen=4096)  # note in -> tokens fed (bench/)

    # --- public surface ----------------------------------------------------------------------

    def start(self, thread: bool = True) -> Session:
        """Open the stream; with ``thread=False`` the caller drives ``_tick_once`` (simulation)."""
        self._start_stream(self._now())
        if thread:
            self._thread = threading.Thread(target=self._run, name="improv-session", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """End the session: every machine note gets its note-off (the scheduler's panic)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=2.0)
        self.scheduler.panic()

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def submit(self, msg: mido.Message, t: float | None = None) -> None:
        """A message from the player (in-process ports, tests); never blocks."""
        self._inbox.put(self.clock.time_fn() if t is None else t, msg)

    def send(self, intent: Intent) -> None:
        self._intents.put_nowait(intent)

    def snapshot(self) -> Snapshot:
        return self._snapshot

    def drain_log(self) -> list[str]:
        out = []
        while self._log:
            out.append(self._log.popleft())
        return out

    # --- the session thread --------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self._tick_once(self._wait_time())
        except BaseException as e:  # a crash must still end every note
            self.error = e
            log.exception("session thread failed")
            self._say(f"session error: {e}")
        finally:
            self.scheduler.panic()
            self._set_state(State.IDLE)
            self._publish(force=True)

    def _wait_time(self) -> float:
        if self._response is not None and self._needs_generation():
            return 0.0
        return 0.002

    def _tick_once(self, timeout: float) -> None:
        """One turn of the loop: input, intents, call end, generation, snapshot."""
        self.scheduler.heartbeat()  # the I/O process's watchdog: the session lives
        item = self._inbox.get(timeout=timeout)
        while item is not None:  # everything already waiting, before the model runs again
            self._on_message(item[1], item[0])
            item = self._inbox.get_nowait()
        while True:
            try:
                self._on_intent(self._intents.get_nowait())
            except queue.Empty:
                break
        self._check_call_end()
        self._generate()
        self._publish()

    # --- the player ----------------------------------------------------------------------------

    def _on_message(self, msg: mido.Message, t: float) -> None:
        kind = msg.type
        control = self.options.control_channel is not None and getattr(
            msg, "channel", None) == self.options.control_channel
        if kind in CLOCK_MESSAGES:
            if self.follower is not None:
                if kind != "clock" and self._response is not None:
                    self._barge_in(int(self._now()))  # the master moves: the answer stops
                self.follower.feed_message(msg, t)
                if kind != "clock":
                    self._transport()
            return
        if kind == "note_on" and msg.velocity > 0:
            if control:
                self._switch_preset(msg.note % 12 + 1, now=False)
                return
            self._human_note(msg.note, msg.velocity, t)
        elif kind == "note_off" or (kind == "note_on" and msg.velocity == 0):
            if control:
                return
            self._human_note(msg.note, 0, t)
        elif kind == "control_change":
            self._on_cc(msg.control, msg.value, msg.channel)
        elif kind == "program_change":
            if self.options.control_channel is None or msg.channel == self.options.control_channel:
                self._switch_preset(msg.program + 1, now=False)
        if self.options.thru and kind in ("note_on", "note_off"):
            self.scheduler.schedule(msg.copy(channel=self._channel()), None, tag="thru")

    def _human_note(self, pitch: int, velocity: int, t: float) -> None:
        tick = max(self.clock.nearest_tick(t) + self._offset, 0)
        self._record_human(pitch, velocity, t, tick)
        if self.preset.quantize:
            tick = self._quantize(tick, pitch, velocity)
        r = self._response
        if velocity > 0 and r is not None:
            if tick < r.start_tick and r.trading:
                # The call's last moment after a fixed hand-over: heard, but the stream is
                # already at the answer; its release must not reach the stream either.
                self._closed.add(pitch)
                return
            wrong = r.played_into(tick, self.clock.beat_ticks)
            if tick < r.start_tick or wrong or self.preset.mode == "call_response":
                self._barge_in(tick)  # before the line (or a wrong guess): the call goes on
            # overlap: the response goes on; the player's note joins the context as it comes
        if velocity == 0 and pitch in self._closed:
            self._closed.discard(pitch)  # released after the hand-over closed it
            return
        self._closed.discard(pitch)
        if velocity > 0:
            if self._call_start is None:  # a new call (in overlap mode: under the answer)
                if not self._heard:
                    # The set's first note: the stream begins on its bar line, as a piece in
                    # the corpus does, not after however many empty bars the set opened with
                    # (they blur the model's sense of where phrases end).
                    self._heard = True
                    self._start_stream(self._bar_line_of(tick))
                self._call_start = tick
                self._call_bar = self._bar_line_of(tick)
                self._call_notes = []
                self._judged = None
                self._refused.clear()
                if self._response is None:
                    self._apply_pending_preset()
            if self._response is None:
                self._set_state(State.LISTENING)
            self._keys_down.add(pitch)
            self._call_notes.append((tick, velocity))
            toks = self.encoder.note_on(tick, pitch, velocity)
        else:
            last = self._keys_down == {pitch}
            self._keys_down.discard(pitch)
            before = copy.deepcopy(self.encoder) if last else None
            toks = self.encoder.note_off(tick, pitch)
        self._last_human = t
        self._call_last = max(self._call_last, tick) if self._call_start is not None else tick
        self._feed(toks, human=True)
        if velocity == 0 and not self._keys_down:
            self._judged = None  # a new release: judge its line afresh
            self._release = Release(tick, t, turn_probability(self._logits), before, pitch,
                                    toks, self._fed)
        elif velocity > 0:
            self._release = None
        self.ingest_ms.append((self.clock.time_fn() - t) * 1000.0)

    def _quantize(self, tick: int, pitch: int, velocity: int) -> int:
        """The event on the grid; a note keeps at least a sixteenth (no zero-length notes).

        Never past the beat line after the event: the stream may run a few ticks ahead of
        the clock, but never across a line the clock has not reached, where an answer may
        have to begin.
        """
        origin = self.clock.bar_start(tick - self._offset) + self._offset
        cap = self.clock.next_beat(tick - self._offset) + self._offset
        if velocity > 0:
            q = self._on_ticks[pitch] = min(quantize_tick(tick, origin), cap)
            return q
        on = self._on_ticks.pop(pitch, None)
        if on is None:
            return min(quantize_tick(tick, origin), cap)
        return min(quantize_release(on, tick, origin), cap)

    def _record_human(self, pitch: int, velocity: int, t: float, tick: int) -> None:
        self._view("human", pitch, velocity, tick)
        if self.recorder is not None:
            kind = "note_on" if velocity else "note_off"
            self.recorder.add("human", mido.Message(kind, note=pitch, velocity=velocity),
                              max(0.0, self.clock.time_to_tick(t)))

    def _on_cc(self, control: int, value: int, channel: int = 0) -> None:
        pedals = {self.preset.end_call_cc, *self.options.pedal_ccs} - {None}
        if control in pedals and value >= 64 and self.state == State.LISTENING:
            self._end_call("pedal")
            return
        if self.controls is not None:
            done = self.controls.feed(control, value, channel + 1)
            if done is not None:
                self._set_knob(done.knob, done.value)
                if done.learned:
                    self._say(f"learned: CC {control} -> {done.knob}")
                    if self.on_learned is not None:
                        self.on_learned(self.controls.bindings)

    # --- call end and response -------------------------------------------------------------------

    def _check_call_end(self) -> None:
        if self.state != State.LISTENING or self._call_start is None:
            return
        p = self.preset
        now_tick = self._now()
        bar = self.clock.bar_ticks
        if p.call_bars:  # trading: the line is fixed by the call's first bar
            line = self._call_bar + p.call_bars * bar
            if now_tick >= line - self._lead_ticks():
                self._end_call("trading", start=line, bars=p.call_bars, trading=True)
            return
        if p.predict_handover and self._predict(now_tick):
            return
        now = self.clock.time_fn()
        beat_s = self.clock.beat_ticks * self.clock.seconds_per_tick
        if not self._keys_down and now - self._last_human >= p.silence_beats * beat_s:
            self._end_call("silence")
        elif now_tick - self._call_start >= p.max_call_bars * bar:
            self._end_call("max length")

    def _predict(self, now_tick: float) -> bool:
        """Answer on the line the player let go at (or just before) if the phrase seems over.

        Judged a moment after the release (a legato player's next note may follow its
        note-off by a few ms), and no earlier than the line's last beat. A phrase held to
        the line is answered on it, a few ms after the release; one let go earlier is
        answered exactly on it, and discarded unheard if the player goes on before it.
        """
        rel = self._release
        if self._keys_down or rel is None:
            return False
        line = self._handover_line(rel.tick - LINE_SLACK)
        near = self.clock.bar_ticks // 2 if self.preset.response_start == "bar" \
            else self.clock.beat_ticks
        if line == self._judged or line in self._refused or rel.tick < line - near \
                or self.encoder.tick > line:
            return False
        if self.clock.time_fn() < rel.time + GRACE_S:
            return False
        if now_tick < line - self.clock.beat_ticks or now_tick > line + LATE_TICKS:
            return False
        self._judged = line
        bars = call_bars(self._call_bar, line, self.clock.bar_ticks)
        self.handover.threshold = self.preset.handover_threshold
        if not self.handover.decide(rel.line_turn_p(self.engine, self._fed, line), bars):
            return False
        self._end_call("predicted", start=line, bars=bars, predicted=True)
        return True

    def _handover_line(self, tick: float) -> int:
        """The first bar line (or beat, with ``response_start = "beat"``) at or after ``tick``."""
        line = self.clock.next_bar if self.preset.response_start == "bar" else self.clock.next_beat
        return line(tick - self._offset) + self._offset

    def _bar_line_of(self, tick: int) -> int:
        """The bar line on or before a first note (one a hair early belongs to the line)."""
        return self.clock.bar_start(tick + LINE_SLACK - self._offset) + self._offset

    def _lead_ticks(self) -> float:
        return self.options.min_lead_ms / 1000.0 / self.clock.seconds_per_tick

    def _end_call(self, why: str, *, start: int | None = None, bars: int | None = None,
                  predicted: bool = False, trading: bool = False) -> None:
        """Hand over: TURN, place the response on the grid, start generating."""
        self._apply_pending_preset()  # a phrase boundary: a preset waiting for one applies now
        now_tick = self._now()
        if start is None:
            start = self._handover_line(now_tick + self._lead_ticks())
        if start < self.encoder.tick and not trading:  # the stream is past it: the next one
            start = self._handover_line(self.encoder.tick)
        if bars is None:
            bars = call_bars(self._call_bar, self._call_last, self.clock.bar_ticks)
        self.handover.remember(bars)
        bars = min(max(1, self.preset.response_bars or bars), MAX_RESPONSE_BARS)
        end = start + bars * self.clock.bar_ticks
        call_base, call_encoder = self._fed, copy.deepcopy(self.encoder)
        call_sampler, call_start = _sampler_state(self.sampler), self._call_start or 0
        # Close the player's keys in the stream (held through a pedal or trading hand-over);
        # at the line in trading, as a player's note that ends there reads in the corpus.
        toks = []
        if self._keys_down:
            toks = self.encoder.close(max(self.encoder.tick, start if trading else 0))
            self._closed |= self._keys_down
        self._keys_down.clear()
        toks += self.encoder.turn()
        toks += self.encoder.advance(start)
        self._feed(toks, human=True)
        self._call_start = None
        self._release = None
        self._response = Answer(
            start_tick=start,
            end_tick=end,
            base=self._fed,
            encoder=copy.deepcopy(self.encoder),
            sampler_state=_sampler_state(self.sampler),
            call_base=call_base,
            call_encoder=call_encoder,
            call_sampler=call_sampler,
            call_start=call_start,
            call_bar=self._call_bar,
            planned_time=self._time_of(start),
            predicted=predicted,
            trading=trading,
            dynamics=Dynamics.of_call(self._call_notes, self._call_bar, self.clock.bar_ticks),
        )
        self._start_guide(start)
        self._set_state(State.THINKING)
        bar = start // self.clock.bar_ticks + 1
        self._say(f"call ended ({why}); answer of {bars} bar(s) from bar {bar}")

    def _needs_generation(self) -> bool:
        r = self._response
        if r is None:
            return False
        horizon = self._now() + self.options.lookahead_beats * self.clock.beat_ticks
        return self.encoder.tick < min(horizon, r.end_tick) or self.encoder.tick >= r.end_tick

    def _generate(self) -> None:
        r = self._response
        if r is None:
            return
        horizon = self._now() + self.options.lookahead_beats * self.clock.beat_ticks
        if self.state == State.THINKING and self._now() >= r.start_tick:
            self._set_state(State.RESPONDING)
        steps = 0
        while self.encoder.tick < min(horizon, r.end_tick) and steps < 256:
            logits = self._logits
            if self.guide is not None and self.guide.active:
                logits = self.guide.mix(logits, self.preset.guidance)
            if not r.first_note:
                # The answer starts on the planned line: no waiting before its first note.
                logits = logits.copy()
                logits[tk.TIME_SHIFT_BASE : tk.NOTE_ON_BASE] = -float("inf")
                logits[tk.TURN] = -float("inf")
            tok = self.sampler.sample(logits)
            if tk.is_time_shift(tok) and self.encoder.tick + tk.shift_ticks(tok) > r.end_tick:
                tok = tk.time_shift_token(r.end_tick - self.encoder.tick)
            self._machine_token(tok)
            steps += 1
        if self.encoder.tick >= r.end_tick:
            self._finish_response()

    def _make_guide(self) -> None:
        if hasattr(self.engine, "twin"):
            self.guide = Guide(self.engine.twin())

    def _start_guide(self, start: int) -> None:
        if self.preset.guidance <= 0:
            if self.guide is not None:
                self.guide.stop()
            return
        if self.guide is None:  # a knob turned guidance on mid-set: made once, here
            self._make_guide()
            if self.guide is None:
                return
        m = self.clock.meter
        bar_start = self.clock.bar_start(start - self._offset) + self._offset
        try:
            self.guide.start(self.preset.style, start, bar_start,
                             tk.Meter(m.numerator, m.denominator), self.encoder.velocity_bin)
        except Exception as e:  # an unknown style: answer unguided rather than not at all
            self.guide.stop()
            self._say(f"guidance off for this answer: {e}")

    def _machine_token(self, tok: int) -> None:
        r = self._response
        tick = self.encoder.tick
        self._step(tok)
        r.tokens.append((tok, tick))
        if tk.is_note_on(tok):
            p = tk.token_pitch(tok)
            r.first_note = True
            velocity = r.dynamics.velocity(tick, tk.bin_velocity(self.encoder.velocity_bin),
                                           self.preset.dynamics)
            deadline = self.voice.note_on(r, p, tick, velocity, self.preset)
            if self.responses and self.responses[-1].get("first_note_deadline") is None:
                self.responses[-1]["first_note_deadline"] = deadline
            self._view("machine", p, velocity, tick)
        elif tk.is_note_off(tok):
            p = tk.token_pitch(tok)
            self.voice.note_off(r, p, tick, self.preset)
            self._view("machine", p, 0, tick)

    def _finish_response(self) -> None:
        """The answer has reached its length: end its notes, hand the turn back."""
        r = self._response
        if r.predicted:  # the guess held: the player let the answer play out
            self.handover.confirmed(call_bars(r.call_bar, r.start_tick, self.clock.bar_ticks))
        toks = []
        for p in sorted(r.sounding):
            toks += self.encoder.note_off(r.end_tick, p)
            self.voice.note_off(r, p, r.end_tick, self.preset)
            self._view("machine", p, 0, r.end_tick)
        toks += self.encoder.turn()
        self._feed(toks, human=False)
        self._response = None
        if self.guide is not None:
            self.guide.stop()
        # A call played under the answer (overlap mode) is heard out like any other.
        self._set_state(State.LISTENING if self._call_start is not None else State.IDLE)
        if self._call_start is None:
            self._apply_pending_preset()

    def _barge_in(self, tick: int) -> None:
        """The player came in: stop the answer and rewind the context to what was heard."""
        r = self._response
        self._response = None
        if self.guide is not None:
            self.guide.stop()
        self.scheduler.cancel(RESPONSE)
        # A wrong guess (Answer.played_into): at most a note sounded and was cut; the
        # context forgets it, so the call reads on as one phrase.
        wrong = r.played_into(tick, self.clock.beat_ticks)
        if not r.first_note or tick < r.start_tick or wrong:
            # Nothing of the answer sounded: the call simply goes on, as if never ended.
            self._rewind(r.call_base, r.call_encoder, r.call_sampler)
            self._call_start, self._call_bar = r.call_start, r.call_bar
            self.handover.forget_last()  # it was not a call's end after all
            if wrong and tick >= r.start_tick:  # played on through the line: not that line
                self._refused.add(r.start_tick)  # again in this call, nor lightly that length
                self.handover.taken_back(call_bars(r.call_bar, r.start_tick,
                                                   self.clock.bar_ticks))
            # (A note before the line only says the phrase had more in it: the line may
            # still end it, judged again at the next release.)
            self.discarded += 1
            if self.responses and self.responses[-1].get("first_note_deadline") is None:
                self.responses.pop()
            self._say("the call goes on" + (" (a note of the answer was cut)" if wrong and
                                            r.first_note and tick >= r.start_tick else ""))
            self._set_state(State.LISTENING)
            return
        heard = r.heard(tick)
        self._rewind(r.base, r.encoder, r.sampler_state)
        for tok in heard:
            self.encoder.observe(tok)
        self.sampler.observe_all(heard)
        closing = []
        for p in sorted(self.sampler.machine):
            closing += self.encoder.note_off(tick, p)
            self._view("machine", p, 0, tick)
        closing += self.encoder.turn(tick)
        self.sampler.observe_all(closing)
        self._logits = self.engine.feed(heard + closing)
        self._fed += len(heard) + len(closing)
        self._say("barge-in: the answer stops")
        self._set_state(State.LISTENING)

    def _rewind(self, base: int, encoder: tk.StreamEncoder, sampler_state: dict) -> None:
        self.engine.rewind(self._fed - base)
        self._fed = base
        self.encoder = copy.deepcopy(encoder)
        _restore_sampler(self.sampler, sampler_state)

    # --- helpers ------------------------------------------------------------------------------

    def _now(self) -> float:
        return self.clock.now_tick() + self._offset

    def _time_of(self, tick: float) -> float:
        return self.clock.tick_to_time(tick - self._offset)

    def _transport(self) -> None:
        """The master started or moved: realign the stream's bars on its bars, time going on."""
        bar = self.clock.bar_ticks
        lag = self.encoder.tick - self.clock.now_tick()
        self._offset = max(0, -(-int(lag) // bar)) * bar if lag > 0 else 0
        self._say(f"MIDI clock: transport at bar {int(self.clock.now_tick()) // bar + 1}")

    def _start_stream(self, now_tick: float) -> None:
        start = self.clock.bar_start(now_tick - self._offset) + self._offset
        self.encoder = tk.StreamEncoder(
            meter=tk.Meter(self.clock.meter.numerator, self.clock.meter.denominator),
            tick=start, bar_start=start)
        self.sampler.reset(start)
        style = self.preset.style
        try:
            self._logits = self.engine.reset(style)
        except Exception as e:
            self._say(f"style {style!r} unavailable ({e}); using the model's first style")
            self._logits = self.engine.reset(None)
        self._feed(self.encoder.start(None), human=True)
        self._send_program()

    def _feed(self, toks: list[int], human: bool) -> None:
        if not toks:
            return
        self._logits = self.engine.feed(toks)
        self._fed += len(toks)
        self.sampler.observe_all(toks, human=human)

    def _step(self, tok: int) -> None:
        if self.guide is not None:
            self.guide.step(tok)
        self.encoder.observe(tok)
        self.sampler.observe(tok)
        self._logits = self.engine.step(tok)
        self._fed += 1

    def _channel(self) -> int:
        return int(self.preset.channel) - 1

    def _view(self, who: str, pitch: int, velocity: int, tick: float) -> None:
        beat = tick / self.clock.beat_ticks
        if velocity > 0:
            self._history.on(who, pitch, beat)
        else:
            self._history.off(who, pitch, beat)

    def _set_state(self, state: State) -> None:
        if state == self.state:
            return
        self.state = state
        if state == State.THINKING:
            r = self._response
            self.responses.append({"planned_time": r.planned_time, "start_tick": r.start_tick,
                                   "end_tick": r.end_tick, "call_bar": r.call_bar,
                                   "predicted": r.predicted, "trading": r.trading})
        if self.on_state is not None:
            self.on_state(state)
        self._publish(force=True)

    def _say(self, line: str) -> None:
        log.info(line)
        self._log.append(line)

    def _publish(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._snap_time < SNAPSHOT_EVERY:
            return
        self._snap_time = now
        es = self.engine.stats
        ss = self.scheduler.stats()
        key = self.sampler.key
        names = tuple(p.name for p in self.presets)
        self._snapshot = Snapshot(
            state=self.state,
            beat=self._now() / self.clock.beat_ticks,
            bpm=self.clock.bpm,
            meter=(self.clock.meter.numerator, self.clock.meter.denominator),
            clock_source="midi" if self.follower is not None else "internal",
            preset=self.preset.name,
            preset_number=names.index(self.preset.name) + 1 if self.preset.name in names else 0,
            presets=names,
            knobs={name: self._knob_value(name) for name in KNOBS},
            mode=self.preset.mode,
            key=self.preset.key,
            key_detected=key.name if key is not None else None,
            ports=self.ports,
            latency=Latency(
                decode_median_ms=es.median_ms if es.steps else None,
                decode_p99_ms=es.p99_ms if es.steps else None,
                schedule_p99_ms=ss.p99_ms,
                tokens_per_s=es.tokens_per_s or None,
                late=ss.late,
                dropped=0,
            ),
            notes=self._history.recent(),
            learning=getattr(self.controls, "armed", None),
            bindings=self.controls.bindings.ccs() if self.controls is not None else {},
            recording=str(getattr(self.recorder, "path", "")) or None,
        )


def _sampler_state(s: Sampler) -> dict:
    state = {k: copy.copy(v) for k, v in vars(s).items() if k not in ("rng", "constraints")}
    return copy.deepcopy(state)


def _restore_sampler(s: Sampler, state: dict) -> None:
    for k, v in copy.deepcopy(state).items():
        setattr(s, k, v)
