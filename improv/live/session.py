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

Time is stream ticks (clock ticks + ``offset``: a MIDI master may move the song position,
the stream only runs forward); seconds appear only where an input's timestamp becomes a tick.
Knobs and presets: :mod:`~improv.live.controls`; the input's way in: :mod:`~improv.live.intake`;
panic: :mod:`~improv.live.panic`; tempo map and markers: :mod:`~improv.live.marks`; the click
and the count-in (a note in it is no call): :mod:`~improv.live.click`.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import deque
from collections.abc import Callable

import mido

from improv.core import tokens as tk
from improv.core.presets import Preset, PresetLibrary
from improv.live import session_api as api
from improv.live.answer import Answer, Voice
from improv.live.answering import Answering
from improv.live.click import Click
from improv.live.clock import Clock
from improv.live.controls import Controls
from improv.live.dynamics import Dynamics
from improv.live.handover import Handover, call_bars
from improv.live.intake import Intake
from improv.live.marks import Marks
from improv.live.midi_learn import Bindings, Learner
from improv.live.options import SessionOptions
from improv.live.panic import Panic
from improv.live.port_panel import PortPanel
from improv.live.ports import InputQueue
from improv.live.publisher import Publisher
from improv.live.quantize import Quantizer
from improv.live.router import Router
from improv.live.sampler import Sampler
from improv.live.session_api import Intent, PortView, Snapshot, State
from improv.live.stream import Stream

log = logging.getLogger("improv.live.session")

PROGRAM = "program"  # the scheduler tag of a program change
MAX_RESPONSE_BARS = 16
INTAKE_SLICE_S = 0.02  # the most one turn of the loop spends on input (the watchdog: 200 ms)


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
        self.port_panel = PortPanel(ports)
        self.on_state = on_state
        self.inbox = inbox if inbox is not None else InputQueue()  # a port's queue, stamped
        self._intents: queue.Queue = queue.Queue()
        meter = tk.Meter(clock.meter.numerator, clock.meter.denominator)
        sampler = Sampler(seed=self.options.seed, meter=(meter.numerator, meter.denominator))
        self.controls = Controls(presets or PresetLibrary(), preset, sampler, clock,
                                 controls, on_learned)
        self.stream = Stream(engine, sampler, meter)
        self.out = Publisher(clock.time_fn, clock.beat_ticks)
        self.voice = Voice(scheduler, clock, self.options.seed, offset=lambda: self.offset)
        self.answering = Answering(self, guide_engine)
        self.handover = Handover(self)
        self.quantizer = Quantizer(clock)
        self.router = Router(self)
        self.intake = Intake(self)
        self.panic = Panic(self)
        self.marks = Marks(self)
        self.click = Click(self)  # the count-in starts with the loop's first turn
        self.state = State.IDLE
        self.answer: Answer | None = None
        self.keys_down: set[int] = set()
        self._closed: set[int] = set()  # keys held at a hand-over, closed in the stream already
        self.last_human = 0.0  # stream tick of the player's last note event
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

    def start(self, thread: bool = True) -> Session:
        """Open the stream; with ``thread=False`` the caller drives ``tick_once`` (simulation)."""
        self._start_stream(self.now_tick())
        self.send_program()
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

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def submit(self, msg: mido.Message, t: float | None = None) -> None:
        """A message from the player (in-process ports, tests); never blocks."""
        self.inbox.put(self.clock.time_fn() if t is None else t, msg)

    def send(self, intent: Intent) -> None:
        """A UI's intent, applied on the session thread between two model steps."""
        self._intents.put_nowait(intent)

    def snapshot(self) -> Snapshot:
        """The latest published state (20 Hz); one reference, never a lock."""
        return self.out.snapshot

    def drain_log(self) -> list[str]:
        """The lines said since the last call, oldest first."""
        return self.out.drain()

    def say(self, line: str) -> None:
        """One line for the log, the headless printer and every attached UI."""
        self.out.say(line)

    @property
    def ports(self) -> tuple[PortView, ...]:
        return self.port_panel.views

    def set_port(self, view: PortView) -> None:
        """A port changed (picked, unplugged, back); safe from any thread."""
        self.port_panel.set(view)

    def now_tick(self) -> float:
        """Now, in stream ticks."""
        return self.clock.now_tick() + self.offset

    def clock_tick(self, tick: float) -> float:
        return tick - self.offset  # a stream tick as the clock's (the scheduler's deadlines)

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
        until = self.clock.time_fn() + INTAKE_SLICE_S
        while item is not None:  # what is waiting, before the model runs again
            self.router.on_message(item[1], item[0])
            if self.clock.time_fn() > until:  # a flood: the heartbeat and the answer first
                break
            item = self.inbox.get_nowait()
        while True:
            try:
                intent = self._intents.get_nowait()
            except queue.Empty:
                break
            try:
                self._on_intent(intent)
            except (KeyError, ValueError, TypeError) as e:  # a bad intent costs one line
                self.say(f"ignored {type(intent).__name__}: {e}")
        self.scheduler.heartbeat()  # the I/O process's watchdog: the session lives
        self.controls.tick(self)  # a switch held back by the rate limit, when due
        self.marks.poll()
        self.click.tick()
        self._check_call_end()
        self.answering.generate()
        self.publish()

    def publish(self, force: bool = False) -> None:
        if self.out.due(force):
            self.out.publish(self)

    # --- the player ----------------------------------------------------------------------------

    def hear(self, pitch: int, velocity: int, at: float) -> None:
        """A note of the player's (velocity 0: its release) played at stream tick ``at``."""
        if self.click.holds(pitch, velocity, at):
            return  # the count-in: heard, not a call
        tick = max(round(at), 0)
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
                self.answering.barge_in(tick)  # before the line, or a wrong guess: call goes on
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
        self.last_human = at
        self.call_last = max(self.call_last, tick) if self.call_start is not None else tick

    def _new_call(self, tick: int) -> None:
        """A call's first note (in overlap mode: under the answer)."""
        if not self._heard:
            # The set's first note: the stream begins on its bar line, as a piece in the
            # corpus does, not after however many empty bars the set opened with (they blur
            # the model's sense of where phrases end).
            self._heard = True
            self._start_stream(self.handover.bar_line_of(tick))
        self.call_start = tick
        self.call_bar = self.handover.bar_line_of(tick)
        self._call_notes = []
        self.handover.new_call()
        if self.answer is None:
            self.controls.apply_pending(self)

    # --- hand-over -------------------------------------------------------------------------------

    def _check_call_end(self) -> None:
        if self.state == State.LISTENING and self.call_start is not None:
            end = self.handover.due(self.now_tick())
            if end is not None:
                self.end_call(end.why, start=end.start, bars=end.bars,
                               predicted=end.why == "predicted", trading=end.why == "trading")

    def end_call(self, why: str, *, start: int | None = None, bars: int | None = None,
                  predicted: bool = False, trading: bool = False) -> None:
        """Hand over: TURN, place the answer on the grid, start generating."""
        self.controls.apply_pending(self)  # a phrase boundary: a waiting preset applies now
        if start is None:
            start = self.handover.line_after(self.now_tick() + self.handover.lead_ticks())
        if start < self.stream.tick and not trading:  # the stream is past it: the next one
            start = self.handover.line_after(self.stream.tick)
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

    # --- what the player turns (the host of Controls) ------------------------------------------

    def _on_intent(self, intent: Intent) -> None:
        if isinstance(intent, api.Panic):
            self.panic.now()
        elif isinstance(intent, api.Stop):
            self._stop.set()
        elif isinstance(intent, api.SelectPort):
            self.port_panel.pick(intent.role, intent.name, self.say)
        else:
            self.controls.on_intent(intent, self)

    @property
    def between_phrases(self) -> bool:
        return self.state == State.IDLE  # a preset may switch at once: nothing played or answered

    def cut(self) -> None:
        """Stop the answer now (a preset switched at once), as a barge-in would."""
        if self.answer is not None:
            self.answering.barge_in(int(self.now_tick()))

    def restyle(self, style: str) -> None:
        try:
            self.stream.restyle(style)
        except Exception as e:  # an unknown style keeps the old one playing
            self.say(f"style {style!r} unavailable: {e}")

    def mark(self, text: str) -> None:
        self.marks.marker(text)

    def send_program(self) -> None:
        if hasattr(self.scheduler, "set_thru_channel"):  # the I/O process's thru follows
            self.scheduler.set_thru_channel(self.preset.midi_channel)
        if self.preset.program is not None:
            self.scheduler.schedule(mido.Message(
                "program_change", channel=self.preset.midi_channel, program=self.preset.program),
                None, tag=PROGRAM)

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
