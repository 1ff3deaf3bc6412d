"""The session's public surface: what a UI may read and what it may ask for.

A UI (the Textual app, the headless printer, a test) never calls into the live
path. It reads :class:`Snapshot` objects, which the session publishes at a
bounded rate, and it sends :class:`Intent` objects, which the session's own
thread applies between model steps. Both are plain frozen values, so nothing is
shared between threads but a reference swap and a queue.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Protocol

from improv.core import knobs as knob_registry


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
    """The recent notes of both players, for the piano roll; used on the session thread."""

    def __init__(self, maxlen: int = 512) -> None:
        self.notes: deque[NoteView] = deque(maxlen=maxlen)
        self._open: dict[tuple[str, int], int] = {}  # (who, pitch) -> serial of its view
        self._serial = 0  # views appended so far, to find an open one after the deque rolls

    def on(self, who: str, pitch: int, beat: float) -> None:
        self.notes.append(NoteView(who, pitch, beat))
        self._open[(who, pitch)] = self._serial
        self._serial += 1

    def off(self, who: str, pitch: int, beat: float) -> None:
        serial = self._open.pop((who, pitch), None)
        i = None if serial is None else len(self.notes) - (self._serial - serial)
        if i is not None and i >= 0:
            self.notes[i] = replace(self.notes[i], end=beat)

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
    late: int = 0
    dropped: int = 0


# The knobs a player can turn: name -> (low, high, step), in stage order. A view of the knob
# registry (improv.core.knobs, which holds labels, defaults and validation too), kept under this
# name until Session reads the registry itself.
KNOBS: dict[str, tuple[float, float, float]] = {
    name: (float(k.lo), float(k.hi), float(k.step))
    for name, k in ((n, knob_registry.FIELDS[n]) for n in knob_registry.LIVE)
}


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
