"""Knobs on MIDI control change: which CC turns which knob, MIDI learn, and the bindings file.

This module owns the mapping between hardware controllers and the CC-learnable knobs of the
knob registry (:mod:`improv.core.knobs`, which holds their ranges and steps). The session holds
a :class:`Learner` (over a :class:`Bindings`) and feeds it every control-change message; the
same code runs with or without the TUI, so a headless ``improv jam`` and the stage UI turn knobs
the same way.

- ``cc_to_value(knob, 0..127)`` scales a controller position onto the knob's range, in whole
  steps of the knob's step size (0 gives the low end, 127 the high end).
- A binding is a CC number and optionally a channel (1..16, as printed on synths; none means any
  channel). One CC drives at most one knob: binding a CC that another knob uses moves it.
- MIDI learn: ``Learner.arm(knob)``; the next CC message binds that knob (with its channel) and
  also sets the knob to the controller's position, so what you see matches the hardware.
- Bindings are saved as JSON in the user config folder, next to the user presets folder
  (``$XDG_CONFIG_HOME/improv/bindings.json`` on Linux, ``~/Library/Application Support/improv``
  on macOS, ``%APPDATA%\\improv`` on Windows). A corrupt file is reported, and the defaults are
  used until it is fixed or deleted.

Default bindings: CC 1 (the mod wheel, on nearly every keyboard) -> density, so the wheel makes
the machine sparser (down) or busier (up) with no setup. CC 64 and 67 (sustain, soft pedal) are
left alone: presets use them to end the call.

Standard library only, so the live path and the UI can both import it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from improv.core import knobs, paths

FORMAT_VERSION = 1


class ControlsError(ValueError):
    """A bindings file or a binding that cannot be used; the message says what to do."""


@dataclass(frozen=True)
class Binding:
    cc: int
    channel: int | None = None  # 1..16; None listens on every channel

    def matches(self, cc: int, channel: int | None) -> bool:
        any_channel = self.channel is None or channel is None
        return cc == self.cc and (any_channel or channel == self.channel)


def learnable() -> tuple[str, ...]:
    """The knobs a CC may turn, in stage order."""
    return tuple(n for n in knobs.LIVE if knobs.learnable(n))


def _unknown(knob: str) -> str:
    return f"unknown knob '{knob}': use one of {', '.join(learnable())}"


def _check_binding(knob: str, cc: object, channel: object, where: str) -> Binding:
    if not knobs.learnable(knob):
        raise ControlsError(f"{where}: {_unknown(knob)}")
    if isinstance(cc, bool) or not isinstance(cc, int) or not 0 <= cc <= 127:
        raise ControlsError(f"{where}: CC for '{knob}' must be a whole number 0..127, got {cc!r}")
    if channel is not None and (
        isinstance(channel, bool) or not isinstance(channel, int) or not 1 <= channel <= 16
    ):
        raise ControlsError(
            f"{where}: channel for '{knob}' must be 1..16 or null (any), got {channel!r}"
        )
    return Binding(cc, channel)


class Bindings:
    """Knob name -> :class:`Binding`; a CC (on a channel) belongs to one knob at most."""

    def __init__(self, items: dict[str, Binding | int] | None = None):
        self._by_knob: dict[str, Binding] = {}
        for knob, b in (items or {}).items():
            b = b if isinstance(b, Binding) else Binding(b)
            self.bind(knob, b.cc, b.channel)

    def bind(self, knob: str, cc: int, channel: int | None = None) -> list[str]:
        """Bind ``knob`` to ``cc``; returns the knobs that lost that CC to it."""
        new = _check_binding(knob, cc, channel, "binding")
        moved = [k for k, b in self._by_knob.items() if k != knob and b.matches(cc, channel)]
        for k in moved:
            del self._by_knob[k]
        self._by_knob[knob] = new
        return moved

    def unbind(self, knob: str) -> None:
        self._by_knob.pop(knob, None)

    def get(self, knob: str) -> Binding | None:
        return self._by_knob.get(knob)

    def knob_for(self, cc: int, channel: int | None = None) -> str | None:
        """The knob a CC message on ``channel`` (1..16) turns, if any."""
        for knob, b in self._by_knob.items():
            if b.matches(cc, channel):
                return knob
        return None

    def ccs(self) -> dict[str, int]:
        """Knob -> CC number, the shape ``Snapshot.bindings`` carries."""
        return {k: b.cc for k, b in self._by_knob.items()}

    def items(self):
        return self._by_knob.items()

    def to_dict(self) -> dict:
        return {
            "version": FORMAT_VERSION,
            "bindings": {k: {"cc": b.cc, "channel": b.channel} for k, b in self.items()},
        }

    @classmethod
    def from_dict(cls, data: object, where: str = "bindings") -> Bindings:
        if not isinstance(data, dict) or not isinstance(data.get("bindings"), dict):
            raise ControlsError(f"{where}: expected an object with a 'bindings' object")
        if data.get("version", FORMAT_VERSION) != FORMAT_VERSION:
            raise ControlsError(f"{where}: unsupported version {data.get('version')!r} "
                                f"(this improv reads version {FORMAT_VERSION})")
        out = cls()
        for knob, entry in data["bindings"].items():
            if isinstance(entry, dict):
                b = _check_binding(knob, entry.get("cc"), entry.get("channel"), where)
            else:  # a bare CC number is accepted too: {"density": 1}
                b = _check_binding(knob, entry, None, where)
            other = out.knob_for(b.cc, b.channel)
            if other is not None:
                raise ControlsError(f"{where}: CC {b.cc} is bound to both '{other}' and '{knob}'")
            out.bind(knob, b.cc, b.channel)
        return out

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Bindings) and self._by_knob == other._by_knob

    def __len__(self) -> int:
        return len(self._by_knob)

    def __repr__(self) -> str:
        return f"Bindings({self._by_knob!r})"


def default_bindings() -> Bindings:
    return Bindings({"density": Binding(1)})


# --- scaling -------------------------------------------------------------------------------


def cc_to_value(knob: str, cc_value: int) -> float:
    """A controller position 0..127 on the knob's range, in whole steps of its step size."""
    if not knobs.learnable(knob):
        raise ControlsError(_unknown(knob))
    k = knobs.FIELDS[knob]
    lo, hi, step = k.lo, k.hi, k.step
    frac = min(127, max(0, int(cc_value))) / 127
    steps = round(frac * (hi - lo) / step)
    return round(min(hi, lo + steps * step), 6)  # round(): no 0.30000000000000004 on screen


def value_to_cc(knob: str, value: float) -> int:
    """The controller position nearest to ``value`` (for feedback to motorised/LED knobs)."""
    if not knobs.learnable(knob):
        raise ControlsError(_unknown(knob))
    lo, hi = knobs.FIELDS[knob].lo, knobs.FIELDS[knob].hi
    return int(round(min(1.0, max(0.0, (value - lo) / (hi - lo))) * 127))


# --- MIDI learn ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Control:
    """What one CC message did: set ``knob`` to ``value``; ``learned`` if it made a binding."""

    knob: str
    value: float
    learned: bool = False
    moved_from: tuple[str, ...] = ()  # knobs that lost this CC to ``knob``


class Learner:
    """Turns CC messages into knob values, and binds the next CC to an armed knob."""

    def __init__(self, bindings: Bindings | None = None):
        self.bindings = bindings if bindings is not None else default_bindings()
        self.armed: str | None = None

    def arm(self, knob: str | None) -> None:
        """Wait for a CC to bind to ``knob``; None cancels (as does :meth:`cancel`)."""
        if knob is not None and not knobs.learnable(knob):
            raise ControlsError(f"cannot learn {_unknown(knob)}")
        self.armed = knob

    def cancel(self) -> None:
        self.armed = None

    def feed(self, cc: int, value: int, channel: int | None = None) -> Control | None:
        """One CC message (``channel`` 1..16); returns what it changed, or None."""
        if self.armed is not None:
            knob, self.armed = self.armed, None
            moved = self.bindings.bind(knob, cc, channel)
            return Control(knob, cc_to_value(knob, value), True, tuple(moved))
        knob = self.bindings.knob_for(cc, channel)
        if knob is None:
            return None
        return Control(knob, cc_to_value(knob, value))

    def feed_message(self, msg) -> Control | None:
        """A mido message; anything but control_change is ignored (mido channels are 0..15)."""
        if getattr(msg, "type", None) != "control_change":
            return None
        return self.feed(msg.control, msg.value, msg.channel + 1)


# --- the bindings file ---------------------------------------------------------------------


def config_dir() -> Path:
    """The per-user improv config folder (improv.core.paths)."""
    return paths.config_dir()


def bindings_path() -> Path:
    return config_dir() / "bindings.json"


def read_bindings(path: str | os.PathLike) -> Bindings:
    """Parse a bindings file; raises :class:`ControlsError` naming the file and the fix."""
    path = Path(path)
    fix = f"fix it or delete it to start again ({path})"
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ControlsError(f"{path}: not a text file; {fix}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ControlsError(f"{path}:{e.lineno}: not valid JSON ({e.msg}); {fix}") from None
    try:
        return Bindings.from_dict(data, where=str(path))
    except ControlsError as e:
        raise ControlsError(f"{e}; {fix}") from None


def load_bindings(path: str | os.PathLike | None = None) -> tuple[Bindings, ControlsError | None]:
    """The saved bindings, or the defaults and the reason when the file is corrupt.

    A missing file is not an error (nothing learned yet). The live session calls this at start
    and keeps playing either way; the error goes to its log.
    """
    path = bindings_path() if path is None else Path(path)
    if not path.exists():
        return default_bindings(), None
    try:
        return read_bindings(path), None
    except (ControlsError, OSError) as e:
        err = e if isinstance(e, ControlsError) else ControlsError(
            f"{path}: cannot read ({e.strerror}); using default bindings")
        return default_bindings(), err


def save_bindings(bindings: Bindings, path: str | os.PathLike | None = None) -> Path:
    """Write atomically (temp file + rename), so a crash never leaves half a file."""
    path = bindings_path() if path is None else Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(bindings.to_dict(), indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path
