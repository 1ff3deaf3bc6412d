"""The session's public surface: what a UI may read and what it may ask for.

A UI (the Textual app, the headless printer, a test) never calls into the live
path. It reads :class:`Snapshot` objects, which the session publishes at a
bounded rate, and it sends :class:`Intent` objects, which the session's own
thread applies between model steps. Both are plain frozen values, so nothing is
shared between threads but a reference swap and a queue.
"""

from __future__ import annotations

import enum
import json
import math
from collections import deque
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from typing import Protocol


class State(str, enum.Enum):
    IDLE = "idle"
    LISTENING = "listening"
    THINKING = "thinking"
    RESPONDING = "responding"


@dataclass(frozen=True)
class NoteView:
    """One note for the piano roll; beats on the session's clock."""

    who: str  # "human" | "machine"
    pitch: int
    start: float
    end: float | None = None  # None while sounding


class NoteHistory:
    """The recent notes of both players, for the piano roll; used on the session thread.

    The machine's notes arrive as they are generated, a lookahead before they sound: a view
    may start after now (the planned answer). An answer cut short takes back what it will
    not play (``cut``).
    """

    def __init__(self, maxlen: int = 512) -> None:
        self.notes: deque[NoteView] = deque(maxlen=maxlen)
        self._open: dict[tuple[str, int], NoteView] = {}  # (who, pitch) -> its open view

    def on(self, who: str, pitch: int, beat: float) -> None:
        view = NoteView(who, pitch, beat)
        self.notes.append(view)
        self._open[(who, pitch)] = view

    def off(self, who: str, pitch: int, beat: float) -> None:
        view = self._open.pop((who, pitch), None)
        if view is None:
            return
        for i in range(len(self.notes) - 1, -1, -1):  # an open note is a recent one
            if self.notes[i] is view:
                self.notes[i] = replace(view, end=max(beat, view.start))
                return

    def cut(self, who: str, beat: float) -> None:
        """``who`` plays nothing from ``beat`` on: later notes go, longer ones end there."""
        kept: deque[NoteView] = deque(maxlen=self.notes.maxlen)
        for n in self.notes:
            if n.who == who and n.start > beat:
                continue
            if n.who == who and (n.end is None or n.end > beat):
                n = replace(n, end=beat)
            kept.append(n)
        self.notes = kept
        self._open = {k: v for k, v in self._open.items() if k[0] != who}

    def recent(self, n: int = 128) -> tuple[NoteView, ...]:
        return tuple(self.notes)[-n:]


@dataclass(frozen=True)
class PortView:
    role: str  # "in" | "out"
    name: str | None
    connected: bool
    virtual: bool = False


@dataclass(frozen=True)
class Latency:
    decode_median_ms: float | None = None
    decode_p99_ms: float | None = None
    schedule_p99_ms: float | None = None
    tokens_per_s: float | None = None
    ingest_median_ms: float | None = None  # a played note's stamp -> its tokens in the model
    ingest_p99_ms: float | None = None
    late: int = 0
    dropped: int = 0
    provider: str | None = None  # where the model runs: "cpu" or "cuda"
    decode_gap_ms: float | None = None  # median idle time before a decode step


@dataclass(frozen=True)
class Snapshot:
    state: State = State.IDLE
    beat: float = 0.0  # current position in beats
    bpm: float = 120.0
    meter: tuple[int, int] = (4, 4)
    clock_source: str = "internal"  # "internal" | "midi"
    preset: str = ""
    preset_number: int = 0
    presets: tuple[str, ...] = ()
    knobs: dict[str, float] = field(default_factory=dict)
    mode: str = "call_response"  # | "overlap"
    key: str = "auto"  # what the key lock is set to ("auto", "off", "C major", ...)
    key_detected: str | None = None
    ports: tuple[PortView, ...] = ()
    latency: Latency = field(default_factory=Latency)
    notes: tuple[NoteView, ...] = ()  # recent notes, oldest first
    learning: str | None = None  # knob waiting for a CC in MIDI learn
    bindings: dict[str, int] = field(default_factory=dict)  # knob -> CC number
    recording: str | None = None  # path of the session recording
    click: bool = False  # the click on every beat is on (the count-in clicks anyway)
    count_in_until: float | None = None  # the beat the set listens from, while counting in
    # (from, to) beats of the stretch the stage counts down: the count-in, a trading call,
    # the wait for the answer's line, the answer; None when its end is not known (a free call)
    countdown: tuple[float, float] | None = None
    answer_span: tuple[float, float] | None = None  # (start, end) beats of the answer in flight


class Intent:
    """Base class of what a UI asks the session to do."""


@dataclass(frozen=True)
class SetKnob(Intent):
    name: str
    value: float


@dataclass(frozen=True)
class NudgeKnob(Intent):
    name: str
    steps: int  # +1 / -1 steps of the knob's step size


@dataclass(frozen=True)
class SelectPreset(Intent):
    which: int | str  # number (1-based) or name
    now: bool = False  # at once instead of at the next phrase


@dataclass(frozen=True)
class SetMode(Intent):
    mode: str


@dataclass(frozen=True)
class SetKey(Intent):
    key: str  # "auto" | "off" | "C major" ...


@dataclass(frozen=True)
class TapTempo(Intent):
    pass


@dataclass(frozen=True)
class SetClick(Intent):
    on: bool  # the click on every beat (the count-in clicks whatever this says)


@dataclass(frozen=True)
class Learn(Intent):
    knob: str | None  # None cancels learning


@dataclass(frozen=True)
class SelectPort(Intent):
    role: str  # "in" | "out"
    name: str  # a port name as the backend lists it


@dataclass(frozen=True)
class Panic(Intent):
    pass


@dataclass(frozen=True)
class Stop(Intent):
    pass


class SessionLike(Protocol):
    """What a UI needs from a session (the real one, or a fake in tests)."""

    def snapshot(self) -> Snapshot: ...

    def send(self, intent: Intent) -> None: ...

    def drain_log(self) -> list[str]: ...


# --- the wire: snapshots and intents as JSON lines ------------------------------------------------
#
# Between processes (the UI in its own, see api_server and stage.remote) these values travel as
# one JSON object per line, UTF-8. Plain data only: nothing received is ever executed or
# unpickled, and an intent is checked field by field before it reaches a session, so a buggy
# or hostile client can send nothing the session's own UI could not.

INTENTS: tuple[type, ...] = (SetKnob, NudgeKnob, SelectPreset, SetMode, SetKey, TapTempo, Learn,
                             SelectPort, Panic, Stop, SetClick)
_INTENT_BY_NAME = {cls.__name__: cls for cls in INTENTS}

# the accepted JSON types of each intent field, by its annotation (bool is no number here)
_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "str": (str,), "float": (float, int), "int": (int,), "bool": (bool,),
    "int | str": (int, str), "str | None": (str, type(None)),
}


class WireError(ValueError):
    """A line that is not a valid message; the receiver drops it (and may drop the sender)."""


def intent_to_dict(intent: Intent) -> dict:
    """``SetKnob("temperature", 0.8)`` -> ``{"kind": "SetKnob", "name": "temperature", ...}``."""
    if type(intent) not in INTENTS:
        raise WireError(f"not a wire intent: {intent!r}")
    out = {"kind": type(intent).__name__}
    out.update((f.name, getattr(intent, f.name)) for f in fields(intent))
    return out


def intent_from_dict(data: dict) -> Intent:
    """The intent a dict describes, its fields type-checked; WireError if it is not one."""
    if not isinstance(data, dict):
        raise WireError("an intent is a JSON object")
    cls = _INTENT_BY_NAME.get(data.get("kind"))  # type: ignore[arg-type]
    if cls is None:
        raise WireError(f"unknown intent kind {data.get('kind')!r}")
    values = {}
    for f in fields(cls):
        if f.name not in data:
            if f.default is MISSING:
                raise WireError(f"{cls.__name__} needs {f.name!r}")
            continue
        value = data[f.name]
        accepted = _FIELD_TYPES[str(f.type)]
        if not isinstance(value, accepted) or (isinstance(value, bool) and bool not in accepted):
            raise WireError(f"{cls.__name__}.{f.name} cannot be {value!r}")
        if float in accepted:
            value = float(value)
            if not math.isfinite(value):
                raise WireError(f"{cls.__name__}.{f.name} must be finite")
        values[f.name] = value
    return cls(**values)


def snapshot_to_dict(snap: Snapshot) -> dict:
    """A snapshot as plain JSON-ready data (tuples become lists, the state its value)."""
    out = {f.name: getattr(snap, f.name) for f in fields(snap)}
    out["state"] = snap.state.value
    out["meter"] = list(snap.meter)
    out["presets"] = list(snap.presets)
    out["ports"] = [asdict(p) for p in snap.ports]
    out["latency"] = {k: _finite(v) for k, v in asdict(snap.latency).items()}
    # notes as [who, pitch, start, end]: 128 of them at 20 Hz, keys spelled once are enough
    out["notes"] = [[n.who, n.pitch, n.start, n.end] for n in snap.notes]
    out["knobs"] = {k: _finite(v) for k, v in snap.knobs.items()}
    out["bindings"] = dict(snap.bindings)
    return out


def _finite(x):
    """NaN and infinities are not JSON: a figure not known yet travels as null."""
    return None if isinstance(x, float) and not math.isfinite(x) else x


def snapshot_from_dict(data: dict) -> Snapshot:
    """The snapshot a dict describes; fields it does not know are ignored (a newer sender)."""
    if not isinstance(data, dict):
        raise WireError("a snapshot is a JSON object")
    known = {f.name for f in fields(Snapshot)}
    values = {k: v for k, v in data.items() if k in known}
    try:
        if "state" in values:
            values["state"] = State(values["state"])
        if "meter" in values:
            num, den = values["meter"]
            values["meter"] = (int(num), int(den))
        if "presets" in values:
            values["presets"] = tuple(str(p) for p in values["presets"])
        if "ports" in values:
            values["ports"] = tuple(PortView(**p) for p in values["ports"])
        if "latency" in values:
            values["latency"] = Latency(**values["latency"])
        if "notes" in values:
            values["notes"] = tuple(NoteView(who, pitch, start, end)
                                    for who, pitch, start, end in values["notes"])
        for name in ("countdown", "answer_span"):
            if values.get(name) is not None:
                a, b = values[name]
                values[name] = (float(a), float(b))
        for name in ("knobs", "bindings"):
            if name in values and not isinstance(values[name], dict):
                raise WireError(f"snapshot.{name} must be an object")
    except (TypeError, ValueError) as e:
        raise WireError(f"bad snapshot: {e}") from None
    return Snapshot(**values)


def encode_line(message: dict) -> bytes:
    """One message, one line: compact JSON, UTF-8, ending in a newline (never inside it)."""
    return json.dumps(message, separators=(",", ":"), allow_nan=False).encode() + b"\n"


def decode_line(line: bytes | str) -> dict:
    """The JSON object on one line; WireError if it is not one."""
    try:
        message = json.loads(line)
    except (ValueError, UnicodeDecodeError) as e:
        raise WireError(f"not JSON: {e}") from None
    if not isinstance(message, dict):
        raise WireError("a message is a JSON object")
    return message
