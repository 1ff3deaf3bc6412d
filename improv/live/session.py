"""Call and response: listen, hand over, answer.

This module owns the conversation and one thread, the session thread. The
player's messages arrive timestamped (the ports only stamp and enqueue); each
note becomes tokens at once (:mod:`improv.live.stream`), so the context is
encoded when the call ends. The call ends on a fixed line (trading,
``call_bars``), on a predicted phrase end (:mod:`improv.live.handover`), on the
end-call pedal, on silence or at ``max_call_bars``. Then a TURN, the answer placed
on the next bar (or beat) line, and the machine's tokens generated a lookahead
ahead of playback (:mod:`improv.live.answering`), each note handed to the
scheduler at a deadline in ticks.

States: IDLE -> LISTENING (a call) -> THINKING (answer prepared, not sounding)
-> RESPONDING -> LISTENING... A note before a prepared answer's line drops it
unheard and the call goes on; a note during an answer stops it (``mode =
"call_response"``) and the stream keeps only what was heard; in ``"overlap"``
mode the answer plays on under the new call.

Time is stream ticks (clock ticks + ``offset``: a MIDI master may move the song
position, the stream only runs forward); seconds appear only where the clock
turns an input's timestamp into a tick. Knobs and presets: :mod:`improv.live.knobs`.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import mido

from improv.core import tokens as tk
from improv.core.presets import Preset, PresetLibrary
from improv.live import session_api as api
from improv.live.answer import RESPONSE, Answer, Voice
from improv.live.answering import Answering
from improv.live.clock import Clock
from improv.live.controls import Bindings, Learner
from improv.live.dynamics import Dynamics
from improv.live.handover import LINE_SLACK, Handover, call_bars
from improv.live.knobs import Controls
from improv.live.ports import InputQueue
from improv.live.publisher import Publisher
from improv.live.quantize import Quantizer
from improv.live.sampler import Sampler
from improv.live.session_api import Intent, PortView, Snapshot, State
from improv.live.stream import Stream

log = logging.getLogger("improv.live.session")

CLOCK_MESSAGES = frozenset({"clock", "start", "stop", "continue", "songpos"})
PROGRAM = "program"  # the scheduler tag of a program change
MAX_RESPONSE_BARS = 16


@dataclass
class SessionOptions:
    lookahead_beats: float = 1.0  # generated ahead of playback
    min_lead_ms: float = 30.0  # a response never starts closer than this to the call's end
    seed: int | None = None
    thru: bool = False  # pass the player's notes to the output
    pedal_ccs: tuple[int, ...] = ()  # extra end-of-call pedals besides the preset's
    control_channel: int | None = None  # program change / notes here switch presets (0-15)


class Session:
    """One performance: call and response between a player and an engine."""

    def __init__(
        self,
        engine,
        clock: Clock,
        scheduler,
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
        self.options = options or SessionOptions()
        self.recorder = recorder
        self.ports = ports
        # (role, name) -> PortView: reopens a port when the UI picks another (set by jam)
        self.port_selector: Callable[[str, str], PortView] | None = None
        self.on_state = on_state
        self.inbox = inbox if inbox is not None else InputQueue()  # a port's queue, stamped
        self._intents: queue.Queue = queue.Queue()
        meter = tk.Meter(clock.meter.numerator, clock.meter.denominator)
        sampler = Sampler(seed=self.options.seed, meter=(meter.numerator, meter.denominator))
        self.controls = Controls(presets or PresetLibrary(), preset, sampler, clock,
                                 controls, on_learned)
        self.stream = Stream(engine, sampler, meter)
        self.out = Publisher(clock.time_fn, clock.beat_ticks)
        self.voice = Voice(scheduler, self._time_of, self.options.seed)
        self.answering = Answering(self, guide_engine)
        self.handover = Handover(self)
        self.quantizer = Quantizer(clock)
        self.state = State.IDLE
        self.answer: Answer | None = None
        self.keys_down: set[int] = set()
        self._closed: set[int] = set()  # keys held at a hand-over, closed in the stream already
        self._last_human = 0.0  # stream tick of the player's last note event
        self.call_start: int | None = None
        self.call_bar = 0  # the bar line the call counts its bars from
        self.call_last = 0  # tick of the call's last note event
        self._call_notes: list[tuple[int, int]] = []  # (tick, velocity) of the call's note-ons
        self._heard = False  # any note of the player's yet
        self.discarded = 0  # prepared answers dropped unheard because the player played on
        self.responses: list[dict] = []  # per answer: planned start, first note's deadline
        self.error: BaseException | None = None
        self.offset = 0  # stream ticks - clock ticks (see _transport)
        self.follower = None  # a MidiClockFollower when slaved to MIDI beat clock
        self.ingest_ms: deque[float] = deque(maxlen=4096)  # note in -> tokens fed (bench/)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- public surface ------------------------------------------------------------------------

    @property
    def preset(self) -> Preset:
        return self.controls.preset

    @property
    def presets(self) -> PresetLibrary:
        return self.controls.presets

    @property
    def sampler(self) -> Sampler:
        return self.stream.sampler

    @property
    def encoder(self) -> tk.StreamEncoder:
        return self.stream.encoder

    @property
    def guide(self):
        return self.answering.guide

    def start(self, thread: bool = True) -> Session:
        """Open the stream; with ``thread=False`` the caller drives ``tick_once`` (simulation)."""
        self._start_stream(self.now_tick())
        self._send_program()
        if thread:
            self._thread = threading.Thread(target=self._run, name="improv-session", daemon=True)
            self._thread.start()
        return self

    def request_stop(self) -> None:
        """Ask the loop to end (a Stop intent does the same); never blocks."""
        self._stop.set()

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
        self.inbox.put(self.clock.time_fn() if t is None else t, msg)

    def send(self, intent: Intent) -> None:
        self._intents.put_nowait(intent)

    def snapshot(self) -> Snapshot:
        return self.out.snapshot

    def drain_log(self) -> list[str]:
        return self.out.drain()

    def say(self, line: str) -> None:
        self.out.say(line)

    def set_port(self, view: PortView) -> None:
        """A port changed (picked, unplugged, back); safe from any thread."""
        self.ports = tuple(view if p.role == view.role else p for p in self.ports) or (view,)

    def now_tick(self) -> float:
        return self.clock.now_tick() + self.offset

    def _time_of(self, tick: float) -> float:
        return self.clock.tick_to_time(tick - self.offset)

    def clock_tick(self, tick: float) -> float:
        """A stream tick as a tick of the clock (what the scheduler's deadlines are in)."""
        return tick - self.offset

    # --- the session thread --------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                busy = self.answer is not None and self.answering.behind()
                self.tick_once(0.0 if busy else 0.002)
        except BaseException as e:  # a crash must still end every note
            self.error = e
            log.exception("session thread failed")
            self.out.say(f"session error: {e}")
        finally:
            self.scheduler.panic()
            self.set_state(State.IDLE)
            self.publish(force=True)

    def tick_once(self, timeout: float) -> None:
        """One turn of the loop: input, intents, call end, generation, snapshot."""
        item = self.inbox.get(timeout=timeout)
        while item is not None:  # everything already waiting, before the model runs again
            self._on_message(item[1], item[0])
            item = self.inbox.get_nowait()
        while True:
            try:
                self._on_intent(self._intents.get_nowait())
            except queue.Empty:
                break
        if hasattr(self.scheduler, "heartbeat"):
            self.scheduler.heartbeat()
        self._check_call_end()
        self.answering.generate()
        self.publish()

    def publish(self, force: bool = False) -> None:
        if self.out.due(force):
            self.out.publish(self)

    # --- the player ----------------------------------------------------------------------------

    def _on_message(self, msg: mido.Message, t: float) -> None:
        kind = msg.type
        control = self.options.control_channel is not None and getattr(
            msg, "channel", None) == self.options.control_channel
        if kind in CLOCK_MESSAGES:
            if self.follower is not None:
                if kind != "clock" and self.answer is not None:
                    self._barge_in(int(self.now_tick()))  # the master moves: the answer stops
                self.follower.feed_message(msg, t)
                if kind != "clock":
                    self._transport()
            return
        tick = self.clock.time_to_tick(t) + self.offset  # seconds end here, at the input
        if kind in ("note_on", "note_off"):
            if control:
                if kind == "note_on" and msg.velocity > 0:
                    self._switch_preset(msg.note % 12 + 1, now=False)
                return
            self._human_note(msg.note, msg.velocity if kind == "note_on" else 0, tick)
            self.ingest_ms.append((self.clock.time_fn() - t) * 1000.0)  # note in -> fed
        elif kind == "control_change":
            self._on_cc(msg.control, msg.value, msg.channel)
        elif kind == "program_change":
            if self.options.control_channel is None or control:
                self._switch_preset(msg.program + 1, now=False)
        if self.options.thru and kind in ("note_on", "note_off"):
            self.scheduler.schedule(msg.copy(channel=self.preset.channel - 1), None, tag="thru")

    def _human_note(self, pitch: int, velocity: int, at: float) -> None:
        tick = max(round(at), 0)
        self._record_human(pitch, velocity, at)
        if self.preset.quantize:
            tick = self.quantizer.event(tick, pitch, velocity, self.offset)
        r = self.answer
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
        if pitch in self._closed:
            self._closed.discard(pitch)
            if velocity == 0:
                return  # released after the hand-over closed it
        if velocity > 0:
            if self.call_start is None:
                self._new_call(tick)
            if self.answer is None:
                self.set_state(State.LISTENING)
            self.keys_down.add(pitch)
            self._call_notes.append((tick, velocity))
            self.stream.note_on(tick, pitch, velocity)
            self.handover.pressed()
        else:
            last = self.keys_down == {pitch}
            self.keys_down.discard(pitch)
            before = self.stream.encoder.copy() if last else None
            toks = self.stream.note_off(tick, pitch)
            if not self.keys_down:
                self.handover.released(tick, at, before, pitch, toks)
        self._last_human = at
        self.call_last = max(self.call_last, tick) if self.call_start is not None else tick

    def _new_call(self, tick: int) -> None:
        """A call's first note (in overlap mode: under the answer)."""
        if not self._heard:
            # The set's first note: the stream begins on its bar line, as a piece in the
            # corpus does, not after however many empty bars the set opened with (they blur
            # the model's sense of where phrases end).
            self._heard = True
            self._start_stream(self.bar_line_of(tick))
        self.call_start = tick
        self.call_bar = self.bar_line_of(tick)
        self._call_notes = []
        self.handover.new_call()
        if self.answer is None:
            self._apply_pending_preset()

    def _record_human(self, pitch: int, velocity: int, at: float) -> None:
        self.out.note("human", pitch, velocity, at)
        if self.recorder is not None:
            kind = "note_on" if velocity else "note_off"
            self.recorder.add("human", mido.Message(kind, note=pitch, velocity=velocity),
                              max(0.0, self.clock_tick(at)))

    def _on_cc(self, control: int, value: int, channel: int) -> None:
        pedals = {self.preset.end_call_cc, *self.options.pedal_ccs} - {None}
        if control in pedals and value >= 64 and self.state == State.LISTENING:
            self._end_call("pedal")
            return
        said = self.controls.feed_cc(control, value, channel + 1)
        if said:
            self.say(said)

    # --- hand-over -------------------------------------------------------------------------------

    def _check_call_end(self) -> None:
        if self.state != State.LISTENING or self.call_start is None:
            return
        p = self.preset
        now = self.now_tick()
        bar = self.clock.bar_ticks
        if p.call_bars:  # trading: the line is fixed by the call's first bar
            line = self.call_bar + p.call_bars * bar
            if now >= line - self.lead_ticks():
                self._end_call("trading", start=line, bars=p.call_bars, trading=True)
            return
        if p.predict_handover:
            guess = self.handover.judge(now)
            if guess is not None:
                line, bars = guess
                self._end_call("predicted", start=line, bars=bars, predicted=True)
                return
        if not self.keys_down and now - self._last_human >= p.silence_beats * \
                self.clock.beat_ticks:
            self._end_call("silence")
        elif now - self.call_start >= p.max_call_bars * bar:
            self._end_call("max length")

    def line_after(self, tick: float) -> int:
        """The first bar line (or beat, with ``response_start = "beat"``) at or after ``tick``."""
        line = self.clock.next_bar if self.preset.response_start == "bar" else self.clock.next_beat
        return line(tick - self.offset) + self.offset

    def bar_line_of(self, tick: int) -> int:
        """The bar line on or before a first note (one a hair early belongs to the line)."""
        return self.clock.bar_start(tick + LINE_SLACK - self.offset) + self.offset

    def lead_ticks(self) -> float:
        return self.clock.ticks(self.options.min_lead_ms / 1000.0)

    def _end_call(self, why: str, *, start: int | None = None, bars: int | None = None,
                  predicted: bool = False, trading: bool = False) -> None:
        """Hand over: TURN, place the answer on the grid, start generating."""
        self._apply_pending_preset()  # a phrase boundary: a preset waiting for one applies now
        if start is None:
            start = self.line_after(self.now_tick() + self.lead_ticks())
        if start < self.stream.tick and not trading:  # the stream is past it: the next one
            start = self.line_after(self.stream.tick)
        if bars is None:
            bars = call_bars(self.call_bar, self.call_last, self.clock.bar_ticks)
        self.handover.predictor.remember(bars)
        bars = min(max(1, self.preset.response_bars or bars), MAX_RESPONSE_BARS)
        call = self.stream.checkpoint()
        # Close the player's keys in the stream (held through a pedal or trading hand-over);
        # at the line in trading, as a player's note that ends there reads in the corpus.
        held = bool(self.keys_down)
        self.stream.close_turn((start if trading else 0) if held else None, start)
        self._closed |= self.keys_down
        self.keys_down.clear()
        self.answer = Answer(
            start_tick=start, end_tick=start + bars * self.clock.bar_ticks,
            start=self.stream.checkpoint(), call=call, call_start=self.call_start or 0,
            call_bar=self.call_bar, predicted=predicted, trading=trading,
            dynamics=Dynamics.of_call(self._call_notes, self.call_bar, self.clock.bar_ticks))
        self.call_start = None
        self.handover.ended()
        self.answering.begin(self.answer)
        self.set_state(State.THINKING)
        self.say(f"call ended ({why}); answer of {bars} bar(s) from bar "
                 f"{start // self.clock.bar_ticks + 1}")

    def finish_answer(self) -> None:
        """The answer reached its length: end its notes, hand the turn back."""
        r = self.answer
        if r.predicted:  # the guess held: the player let the answer play out
            self.handover.predictor.confirmed(
                call_bars(r.call_bar, r.start_tick, self.clock.bar_ticks))
        for p in sorted(r.sounding):
            self.stream.note_off(r.end_tick, p, human=False)
            self.voice.note_off(r, p, r.end_tick, self.preset)
            self.out.note("machine", p, 0, r.end_tick)
        self.stream.feed(self.stream.encoder.turn(), human=False)
        self.answer = None
        self.answering.end()
        # A call played under the answer (overlap mode) is heard out like any other.
        self.set_state(State.LISTENING if self.call_start is not None else State.IDLE)
        if self.call_start is None:
            self._apply_pending_preset()

    def _barge_in(self, tick: int) -> None:
        """The player came in: stop the answer and rewind the context to what was heard."""
        r = self.answer
        self.answer = None
        self.answering.end()
        self.scheduler.cancel(RESPONSE)
        # A wrong guess (Answer.played_into): at most a note sounded and was cut; the
        # context forgets it, so the call reads on as one phrase.
        wrong = r.played_into(tick, self.clock.beat_ticks)
        if not r.first_note or tick < r.start_tick or wrong:
            # Nothing of the answer sounded: the call simply goes on, as if never ended.
            self.stream.restore(r.call)
            self.call_start, self.call_bar = r.call_start, r.call_bar
            self.handover.taken_back(r, wrong and tick >= r.start_tick)
            self.discarded += 1
            if self.responses and self.responses[-1].get("first_note_deadline") is None:
                self.responses.pop()
            cut = wrong and r.first_note and tick >= r.start_tick
            self.say("the call goes on" + (" (a note of the answer was cut)" if cut else ""))
            self.set_state(State.LISTENING)
            return
        heard = r.heard(tick)
        self.stream.restore(r.start)
        self.stream.replay(heard)
        for p in sorted(self.stream.sampler.machine):
            self.stream.note_off(tick, p, human=False)
            self.out.note("machine", p, 0, tick)
        self.stream.feed(self.stream.encoder.turn(tick), human=False)
        self.say("barge-in: the answer stops")
        self.set_state(State.LISTENING)

    # --- what the player turns -------------------------------------------------------------------

    def _on_intent(self, intent: Intent) -> None:
        c = self.controls
        said = None
        if isinstance(intent, api.SetKnob):
            said = c.set_knob(intent.name, intent.value)
        elif isinstance(intent, api.NudgeKnob):
            said = c.nudge(intent.name, intent.steps)
        elif isinstance(intent, api.SetMode):
            said = c.update(mode=intent.mode)
        elif isinstance(intent, api.SetKey):
            said = c.update(key=intent.key)
        elif isinstance(intent, api.SelectPreset):
            self._switch_preset(intent.which, now=intent.now)
        elif isinstance(intent, api.TapTempo):
            bpm = self.clock.tap()
            said = None if bpm is None else f"tap tempo: {bpm:.1f} BPM"
        elif isinstance(intent, api.Learn):
            said = c.learn(intent.knob)
        elif isinstance(intent, api.Panic):
            self.scheduler.panic()
            said = "panic: all notes off"
        elif isinstance(intent, api.SelectPort):
            if self.port_selector is None:
                said = "ports are fixed in this session"
            else:  # opening a port may block on a driver: never on the session thread
                threading.Thread(target=self._select_port, args=(intent.role, intent.name),
                                 name="improv-port-select", daemon=True).start()
        elif isinstance(intent, api.Stop):
            self._stop.set()
        if said:
            self.say(said)

    def _select_port(self, role: str, name: str) -> None:
        try:
            view = self.port_selector(role, name)
        except Exception as e:  # the old port stays in use
            self.say(f"could not open the {role}put port {name!r}: {e}")
            return
        self.set_port(view)
        self.say(f"{role}put port: {view.name}")

    def _switch_preset(self, which: int | str, now: bool) -> None:
        try:
            preset = self.controls.resolve(which)
        except (KeyError, IndexError, ValueError) as e:
            self.say(f"no preset {which!r}: {e}")
            return
        self.controls.pending = preset
        if now or preset.switch == "now" or self.state == State.IDLE:
            if self.answer is not None:
                self._barge_in(int(self.now_tick()))
            self._apply_pending_preset()
        else:
            self.say(f"preset {preset.name} at the next phrase")

    def _apply_pending_preset(self) -> None:
        switch = self.controls.take_pending()
        if switch is None:
            return
        self._send_program()
        if switch.restyle:
            try:
                self.stream.restyle(switch.preset.style)
            except Exception as e:  # an unknown style keeps the old one playing
                self.say(f"style {switch.preset.style!r} unavailable: {e}")
        self.say(f"preset: {switch.preset.name} (style {switch.preset.style})")

    def _send_program(self) -> None:
        if self.preset.program is not None:
            self.scheduler.schedule(mido.Message(
                "program_change", channel=self.preset.channel - 1, program=self.preset.program),
                None, tag=PROGRAM)

    # --- helpers ------------------------------------------------------------------------------

    def _transport(self) -> None:
        """The master started or moved: realign the stream's bars on its bars, time going on."""
        bar = self.clock.bar_ticks
        lag = self.stream.tick - self.clock.now_tick()
        self.offset = max(0, -(-int(lag) // bar)) * bar if lag > 0 else 0
        self.say(f"MIDI clock: transport at bar {int(self.clock.now_tick()) // bar + 1}")

    def _start_stream(self, now_tick: float) -> None:
        start = self.clock.bar_start(now_tick - self.offset) + self.offset
        problem = self.stream.start(start, self.preset.style)
        if problem:
            self.say(problem)

    def set_state(self, state: State) -> None:
        if state == self.state:
            return
        self.state = state
        if state == State.THINKING:
            r = self.answer
            self.responses.append({
                "planned_time": self.clock.tick_to_time(self.clock_tick(r.start_tick)),
                "start_tick": r.start_tick, "end_tick": r.end_tick, "call_bar": r.call_bar,
                "predicted": r.predicted, "trading": r.trading})
        if self.on_state is not None:
            self.on_state(state)
        self.publish(force=True)
