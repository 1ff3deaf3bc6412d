"""The one knob registry: every preset field's type, range, default, step and label.

This module owns what a preset field may hold and the one message that says so. Presets
(``improv presets --check``, ``--set KEY=VALUE``), the command line's knob flags, the stage's
knob panel, MIDI learn and the sampler's constraints all read :data:`FIELDS` and validate with
:func:`check`, so a value is accepted or refused the same way, with the same words, everywhere.

- ``FIELDS``: name -> :class:`Knob`, in the order of the ``Preset`` dataclass.
- ``LIVE``: the knobs a player turns while playing (stage panel, keys, flags), in stage order;
  ``learnable(name)`` says whether MIDI learn may bind a CC to one.
- ``check(name, value)`` returns the normalised value or raises :class:`KnobError` whose message
  is one line: ``what is wrong: what to use``.
- ``parse_text(name, text)`` reads a command-line string as the field's type (no TOML guessing);
  ``arg_type(name)`` is that plus ``check``, for argparse.
- ``clamp`` / ``nudge`` keep a live knob inside its range (for CC and +/- keys).

Standard library and :mod:`improv.core.keys` only, so every layer may import it.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass

from improv.core.keys import MODES, parse_key

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

# Kept equal to improv.core.tokens.CORPUS_STYLES (a test checks), so this room stays stdlib-only.
CORPUS_STYLES: tuple[str, ...] = ("chorale", "renaissance", "celtic", "folk", "classical")

# kinds: str, name, style, key, choice (strings); bool; int, float; int_or_none; curve
_STRINGS = ("str", "name", "style", "key", "choice")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.+-]{0,39}$")
_STYLE_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")


class KnobError(ValueError):
    """A value a field does not accept; the message says what is wrong and what to use."""


@dataclass(frozen=True)
class Knob:
    """One preset field. ``off`` is a value allowed outside ``lo..hi`` meaning "not set"."""

    name: str
    kind: str
    default: object
    help: str = ""
    lo: float | None = None
    hi: float | None = None
    step: float | None = None
    choices: tuple[str, ...] = ()
    label: str = ""  # on the stage's knob panel and in flag help
    off: float | None = None
    off_means: str = ""  # what ``off`` stands for, in the out-of-range message
    live: bool = False  # a knob turned while playing (stage, keys, jam flag)
    learnable: bool = False  # MIDI learn may bind a CC to it

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def range_text(self) -> str:
        """``0.05..2.0``, ``"beat" | "bar"``, or "" for free text; TOML-friendly."""
        if self.choices:
            return " | ".join(json.dumps(c) for c in self.choices)
        if self.lo is None:
            return ""
        lo, hi = self._bounds()
        text = f"{lo}..{hi}"
        if self.kind == "int_or_none":
            return f'{text} or "none"'
        return f"{self.off:g} or {text}" if self.off is not None else text

    def _bounds(self) -> tuple[float, float]:
        if self.kind == "float":
            return self.lo, self.hi
        return int(self.lo), int(self.hi)


def _k(name: str, kind: str, default: object, help: str = "", **kw) -> Knob:
    return Knob(name, kind, default, help, **kw)


_ALL: tuple[Knob, ...] = (
    _k("name", "name", "default"),
    _k("description", "str", ""),
    _k("default", "bool", False,
       "the preset a set starts with when none is named (the first if none)"),
    _k("style", "style", "folk", "a corpus style or a user style name"),
    # sampling
    _k("temperature", "float", 0.9, "how bold the machine's choices are",
       lo=0.05, hi=2.0, step=0.05, label="temp", live=True, learnable=True),
    _k("top_p", "float", 0.95, "sample only from the most likely notes holding this share",
       lo=0.05, hi=1.0, step=0.01, label="top-p", live=True, learnable=True),
    _k("top_k", "int", 0, "0 = off", lo=0, hi=307, step=1),
    _k("repetition_penalty", "float", 1.0, "1.0 = off", lo=1.0, hi=2.0, step=0.05),
    _k("density", "float", 0.0, "-1 sparse (favour TIME_SHIFT) .. +1 busy (favour NOTE_ON)",
       lo=-1.0, hi=1.0, step=0.05, label="density", live=True, learnable=True),
    # what the machine may play
    _k("register_low", "int", 36, lo=21, hi=108, step=1),
    _k("register_high", "int", 96, lo=21, hi=108, step=1),
    _k("register_follow", "int", 0, "0 = the whole range; N = within N semitones of the player",
       lo=0, hi=48, step=1),
    _k("echo", "float", 0.0, "0 = off; how strongly the answer takes up the call's shapes",
       lo=0.0, hi=8.0, step=0.25),
    _k("max_polyphony", "int", 4, lo=1, hi=16, step=1),
    _k("max_note_beats", "float", 4.0, lo=0.125, hi=32.0, step=0.125),
    _k("key", "key", "auto", '"auto" (follow the call), "off", or e.g. "C major", "D dorian"'),
    _k("scale_lock", "bool", False,
       "true: never leave the key's scale; false: only lean towards it"),
    # turn-taking
    _k("bpm", "float", 0.0, "tempo; 0 = keep the session's tempo",
       lo=30.0, hi=300.0, step=1.0, off=0.0, off_means="keep the session's tempo",
       label="tempo", live=True, learnable=True),
    _k("response_bars", "int", 0, "0 = as long as the call",
       lo=0, hi=16, step=1, label="resp bars", live=True, learnable=True),
    _k("call_bars", "int", 0, "0 = the call ends when the player does; N = trading N-bar phrases",
       lo=0, hi=16, step=1, label="trade", live=True, learnable=True),
    _k("predict_handover", "bool", True, "answer on the line a phrase ends on, not after silence"),
    _k("handover_threshold", "float", 0.08, "how sure the phrase-end evidence must be",
       lo=0.0, hi=1.0, step=0.01),
    _k("quantize", "bool", True, "the player's notes on the sixteenth/triplet grid"),
    _k("silence_beats", "float", 2.0, "the call ends after this much silence with all keys up",
       lo=0.25, hi=8.0, step=0.25, label="silence", live=True, learnable=True),
    _k("max_call_bars", "int", 8, lo=1, hi=64, step=1),
    _k("response_start", "choice", "bar", "where the response may start",
       choices=("beat", "bar")),
    _k("mode", "choice", "call_response", "overlap: keep listening while playing",
       choices=("call_response", "overlap")),
    _k("switch", "choice", "phrase", "when a new preset takes over", choices=("phrase", "now")),
    _k("end_call_cc", "int_or_none", 67,
       "a pedal that ends the call now (67 soft, 64 sustain), or none", lo=0, hi=127, step=1),
    _k("count_in", "int", 0, "bars of click before the set listens (at its start)",
       lo=0, hi=16, step=1, label="count-in"),
    _k("click", "bool", False, "a click on every beat (MIDI channel 10), on from the start"),
    # how it sounds
    _k("velocity_scale", "float", 1.0, lo=0.1, hi=2.0, step=0.05),
    _k("velocity_offset", "int", 0, lo=-126, hi=126, step=1),
    _k("velocity_curve", "curve", (), "output velocities at evenly spaced inputs 0..127",
       lo=1, hi=127),
    _k("dynamics", "float", 1.0, "0 = the model's velocities, 1 = the call's level and accents",
       lo=0.0, hi=1.0, step=0.05),
    _k("guidance", "float", 0.0, "0 = off; >0 = lean on what the call implies",
       lo=0.0, hi=4.0, step=0.25),
    _k("swing", "float", 0.0, "delay of off-beat eighths, as a fraction of an eighth",
       lo=0.0, hi=0.5, step=0.05),
    _k("humanize_ms", "float", 0.0, lo=0.0, hi=50.0, step=1.0),
    _k("channel", "int", 1, "MIDI channel, as printed on synths", lo=1, hi=16, step=1),
    _k("program", "int_or_none", None, "program change sent on switch, or none",
       lo=0, hi=127, step=1),
)

FIELDS: dict[str, Knob] = {k.name: k for k in _ALL}
# Stage order of the live knobs (the knob panel, the key bar, MIDI learn's list).
LIVE: tuple[str, ...] = ("temperature", "top_p", "density", "response_bars", "call_bars",
                         "silence_beats", "bpm")
assert set(LIVE) == {k.name for k in _ALL if k.live}, "LIVE and the live flags disagree"


def get(name: str) -> Knob:
    """The field ``name``; KnobError listing the fields when there is none."""
    try:
        return FIELDS[name]
    except KeyError:
        raise KnobError(f"unknown knob '{name}': use one of {', '.join(FIELDS)}") from None


def defaults() -> dict[str, object]:
    return {k.name: k.default for k in _ALL}


def learnable(name: str) -> bool:
    return name in FIELDS and FIELDS[name].learnable


def _fmt(v: object) -> str:
    return json.dumps(v) if isinstance(v, str) else repr(v)


def _number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def check(name: str, value: object) -> object:
    """``value`` normalised for field ``name`` (float, int, tuple, tidied key), or KnobError."""
    k = get(name)
    got = f"got {_fmt(value)}"
    if k.kind in _STRINGS:
        return _check_string(k, value, got)
    if k.kind == "bool":
        if not isinstance(value, bool):
            raise KnobError(f"{name} must be true or false, {got}: write true or false "
                            "without quotes")
        return value
    if k.kind == "curve":
        if not isinstance(value, (list, tuple)) or len(value) == 1 or len(value) > 17:
            raise KnobError(f"{name} must be a list of 2 to 17 velocities, {got}: "
                            "use e.g. [1, 64, 127], or [] for no curve")
        for v in value:
            if not _number(v) or not math.isfinite(v) or v != int(v) or not k.lo <= v <= k.hi:
                raise KnobError(f"{name} holds {_fmt(v)}: use whole numbers from 1 to 127")
        return tuple(int(v) for v in value)
    # numbers: float, int, int_or_none
    if k.kind == "int_or_none" and (value is None or value == "none"):
        return None
    if not _number(value):
        extra = ' or "none"' if k.kind == "int_or_none" else ""
        hint = " without quotes" if isinstance(value, str) else ""
        raise KnobError(f"{name} must be a number{extra}, {got}: write a number{hint}")
    if isinstance(value, float) and not math.isfinite(value):
        raise KnobError(f"{name} must be a finite number, {got}")
    if k.kind != "float" and value != int(value):
        raise KnobError(f"{name} must be a whole number, {got}: drop the fraction")
    if not (k.lo <= value <= k.hi or (k.off is not None and value == k.off)):
        lo, hi = k._bounds()
        off = f"{k.off:g} ({k.off_means}) or " if k.off is not None else ""
        raise KnobError(f"{name} = {_fmt(value)} is out of range: use {off}a value "
                        f"from {lo} to {hi}")
    return float(value) if k.kind == "float" else int(value)


def _check_string(k: Knob, value: object, got: str) -> str:
    name = k.name
    if not isinstance(value, str):
        raise KnobError(f"{name} must be a string, {got}: put the value in double quotes")
    if k.kind == "name" and not _NAME_RE.match(value):
        raise KnobError(f"name {_fmt(value)} is not usable: use 1-40 letters, digits, spaces "
                        "or _.+- starting with a letter or digit")
    if k.kind == "style" and not _STYLE_RE.match(value):
        raise KnobError(f"style {_fmt(value)} is not a style name: use one of "
                        f"{', '.join(CORPUS_STYLES)} or a lowercase user style name")
    if k.kind == "choice" and value not in k.choices:
        options = " or ".join(_fmt(c) for c in k.choices)
        raise KnobError(f"{name} = {_fmt(value)} is not allowed: use {options}")
    if k.kind == "key":
        try:
            parsed = parse_key(value)
        except ValueError:
            raise KnobError(
                f"key = {_fmt(value)} is not a key: use \"auto\", \"off\" or a tonic and mode "
                f"such as \"C major\", \"A minor\", \"F# dorian\" (modes: {', '.join(MODES)})"
            ) from None
        if parsed is None:
            return value.strip().lower()
        tonic = value.split()[0]  # keep the tonic as spelled (Bb stays Bb), tidy the case
        return f"{tonic[:1].upper()}{tonic[1:]} {parsed[1]}"
    return value


def parse_text(name: str, text: str) -> object:
    """A command-line string read as field ``name``'s type; unreadable text stays a string
    (``check`` then says what to write). Unknown names are read as TOML, else as text."""
    text = text.strip()
    k = FIELDS.get(name)
    kind = k.kind if k else None
    try:
        if kind in _STRINGS:
            return text
        if kind == "bool":
            low = text.lower()
            return {"true": True, "false": False}.get(low, text)
        if kind == "float":
            return float(text)
        if kind in ("int", "int_or_none"):
            return "none" if text.lower() == "none" else int(text)
        return tomllib.loads(f"v = {text}")["v"]  # a curve (a TOML list) or an unknown key
    except (ValueError, tomllib.TOMLDecodeError):
        if kind in ("int", "int_or_none"):  # "4.5": let check() say "drop the fraction"
            try:
                return float(text)
            except ValueError:
                pass
        return text


def arg_type(name: str) -> Callable[[str], object]:
    """An argparse ``type=`` for field ``name``: the typed, checked value or a usage error."""

    def convert(text: str) -> object:
        try:
            return check(name, parse_text(name, text))
        except KnobError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    convert.__name__ = name  # argparse names the type in some errors
    return convert


def add_flags(ap: argparse.ArgumentParser, names: tuple[str, ...]) -> None:
    """One typed flag per field (``--top-p 0.9``); the value lands in ``args.<name>``."""
    for name in names:
        k = FIELDS[name]
        ap.add_argument(k.flag, dest=name, type=arg_type(name), default=None,
                        metavar=k.range_text() or k.kind.upper(),
                        help=f"{k.label or name}: {k.help or name} (overrides the preset)")


def flag_values(args: argparse.Namespace, names: tuple[str, ...]) -> dict[str, object]:
    """The fields among ``names`` given on the command line, as checked values."""
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def clamp(name: str, value: float) -> float:
    """A live knob's value kept inside its range (CC positions, nudges past the end)."""
    k = get(name)
    v = min(max(float(value), k.lo), k.hi)
    return float(round(v)) if k.kind == "int" else round(v, 6)


def nudge(name: str, value: float, steps: int) -> float:
    """``value`` moved by ``steps`` of the knob's step, kept inside its range."""
    return clamp(name, value + steps * get(name).step)


def turn(name: str, value: object) -> float | int | None:
    """What a UI's "set this knob to ``value``" does: refused exactly as a preset value would be
    (KnobError, same message); None for the knob's ``off`` value (bpm 0: keep the tempo)."""
    k = get(name)
    if not k.live:
        raise KnobError(f"{name} is not a live knob: use one of {', '.join(LIVE)}")
    checked = check(name, value)
    return None if k.off is not None and checked == k.off else checked
