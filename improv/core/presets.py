"""Style presets: one TOML file per preset, one frozen schema, errors that point at the line.

This module owns the preset schema (``Preset``), its validation, where presets live on disk
and the ordered ``PresetLibrary`` the live session switches through with the number keys.

A preset file is flat TOML; every key is optional and falls back to the default below::

    # for slow, singing tunes
    name = "ballad"
    style = "folk"
    temperature = 0.6
    density = -0.5

Where presets come from, later folders overriding earlier ones by preset ``name``:

1. the shipped folder: ``$IMPROV_PRESETS`` when set, else ``presets/`` next to the package
   (a checkout or an editable install);
2. the user folder: ``$XDG_CONFIG_HOME/improv/presets`` (Linux, default ``~/.config``),
   ``~/Library/Application Support/improv/presets`` (macOS), ``%APPDATA%\\improv\\presets``
   (Windows).

The room imports the standard library only (``tomli`` on Python 3.10) and the key table
of :mod:`improv.core.keys`, so the UI and the live path can both hold presets without pulling
anything else in.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import math
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from improv.core.keys import MODES, parse_key, pitch_classes

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

# Kept equal to improv.core.tokens.CORPUS_STYLES (a test checks), so this room stays stdlib-only.
CORPUS_STYLES: tuple[str, ...] = ("chorale", "renaissance", "celtic", "folk", "classical")


class PresetError(ValueError):
    """A preset that cannot be used; the message reads ``FILE:LINE: reason; what to do``."""

    def __init__(self, source: str, line: int, reason: str):
        super().__init__(f"{source}:{line}: {reason}")
        self.source, self.line, self.reason = source, line, reason


@dataclass(frozen=True)
class Preset:
    """Everything a style preset sets. Immutable: change it with ``apply_overrides``."""

    name: str = "default"
    description: str = ""
    default: bool = False  # the preset a set starts with when none is named (the first if none)
    style: str = "folk"  # a corpus style or a user style name
    # sampling
    temperature: float = 0.9
    top_p: float = 0.95
    top_k: int = 0  # 0 = off
    repetition_penalty: float = 1.0  # 1.0 = off
    density: float = 0.0  # -1 sparse (favour TIME_SHIFT) .. +1 busy (favour NOTE_ON)
    # what the machine may play
    register_low: int = 36
    register_high: int = 96
    register_follow: int = 0  # 0 = the whole range; N = within N semitones of the player
    echo: float = 0.0  # 0 = off; how strongly the answer takes up the call's melodic shapes
    max_polyphony: int = 4
    max_note_beats: float = 4.0
    key: str = "auto"  # "auto" (follow the call), "off", or e.g. "C major", "D dorian"
    scale_lock: bool = False  # true: never leave the key's scale; false: only lean towards it
    # turn-taking
    bpm: float = 0.0  # 0 = keep the session's tempo
    response_bars: int = 0  # 0 = as long as the call
    call_bars: int = 0  # 0 = the call ends when the player does; N = trading N-bar phrases
    predict_handover: bool = True  # answer on the line a phrase ends on, not after silence
    handover_threshold: float = 0.08  # how sure the phrase-end evidence must be (0..1)
    quantize: bool = True  # the player's notes on the sixteenth/triplet grid the model knows
    silence_beats: float = 2.0  # the call ends after this much silence with all keys up
    max_call_bars: int = 8
    response_start: str = "bar"  # "beat" | "bar": where the response may start
    mode: str = "call_response"  # "call_response" | "overlap" (keep listening while playing)
    switch: str = "phrase"  # "phrase" | "now": when a new preset takes over
    end_call_cc: int | None = 67  # a pedal that ends the call now (67 soft, 64 sustain), or none
    # how it sounds
    velocity_scale: float = 1.0
    velocity_offset: int = 0
    velocity_curve: tuple[int, ...] = ()  # output velocities at evenly spaced inputs 0..127
    dynamics: float = 1.0  # 0 = the model's velocities, 1 = the call's level and accents
    guidance: float = 0.0  # 0 = off; >0 = lean on what the call implies (a second stream)
    swing: float = 0.0  # delay of off-beat eighths, as a fraction of an eighth (0..0.5)
    humanize_ms: float = 0.0
    channel: int = 1  # 1..16, as printed on synths
    program: int | None = None  # 0..127 program change sent on switch, or none

    def shape_velocity(self, velocity: int) -> int:
        """Map a model velocity through scale, offset and curve to 1..127."""
        v = min(127.0, max(1.0, velocity * self.velocity_scale + self.velocity_offset))
        curve = self.velocity_curve
        if curve:
            pos = v / 127 * (len(curve) - 1)
            i = min(int(pos), len(curve) - 2)
            v = curve[i] + (curve[i + 1] - curve[i]) * (pos - i)
        return int(min(127, max(1, round(v))))

    def scale_pitch_classes(self) -> frozenset[int] | None:
        """Pitch classes of ``key``; None for "auto" and "off" (nothing fixed in advance)."""
        parsed = parse_key(self.key)
        if parsed is None:
            return None
        return pitch_classes(*parsed)


# --- the schema's rules --------------------------------------------------------------------


@dataclass(frozen=True)
class _Rule:
    kind: str  # str, float, int, bool, choice, int_or_none, curve, key, style, name
    lo: float | None = None
    hi: float | None = None
    choices: tuple[str, ...] = ()


_RULES: dict[str, _Rule] = {
    "name": _Rule("name"),
    "description": _Rule("str"),
    "default": _Rule("bool"),
    "style": _Rule("style"),
    "temperature": _Rule("float", 0.05, 2.0),
    "top_p": _Rule("float", 0.0, 1.0),
    "top_k": _Rule("int", 0, 307),
    "repetition_penalty": _Rule("float", 1.0, 2.0),
    "density": _Rule("float", -1.0, 1.0),
    "register_low": _Rule("int", 21, 108),
    "register_high": _Rule("int", 21, 108),
    "register_follow": _Rule("int", 0, 48),
    "echo": _Rule("float", 0.0, 8.0),
    "max_polyphony": _Rule("int", 1, 16),
    "max_note_beats": _Rule("float", 0.125, 32.0),
    "key": _Rule("key"),
    "scale_lock": _Rule("bool"),
    "bpm": _Rule("float", 0.0, 300.0),
    "response_bars": _Rule("int", 0, 64),
    "call_bars": _Rule("int", 0, 16),
    "predict_handover": _Rule("bool"),
    "handover_threshold": _Rule("float", 0.0, 1.0),
    "quantize": _Rule("bool"),
    "silence_beats": _Rule("float", 0.25, 16.0),
    "max_call_bars": _Rule("int", 1, 64),
    "response_start": _Rule("choice", choices=("beat", "bar")),
    "mode": _Rule("choice", choices=("call_response", "overlap")),
    "switch": _Rule("choice", choices=("phrase", "now")),
    "end_call_cc": _Rule("int_or_none", 0, 127),
    "velocity_scale": _Rule("float", 0.1, 2.0),
    "velocity_offset": _Rule("int", -126, 126),
    "velocity_curve": _Rule("curve", 1, 127),
    "dynamics": _Rule("float", 0.0, 1.0),
    "guidance": _Rule("float", 0.0, 4.0),
    "swing": _Rule("float", 0.0, 0.5),
    "humanize_ms": _Rule("float", 0.0, 50.0),
    "channel": _Rule("int", 1, 16),
    "program": _Rule("int_or_none", 0, 127),
}
assert set(_RULES) == {f.name for f in dataclasses.fields(Preset)}, "schema and rules disagree"

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.+-]{0,39}$")
_STYLE_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")


def _fmt(v: object) -> str:
    return json.dumps(v) if isinstance(v, str) else repr(v)


def _number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check(key: str, value: object) -> tuple[object, str | None]:
    """Validate one value: returns (normalised value, None) or (None, 'reason; what to do')."""
    rule = _RULES[key]
    got = f"got {_fmt(value)}"
    if rule.kind in ("str", "name", "style", "key", "choice"):
        if not isinstance(value, str):
            return None, f"{key} must be a string, {got}: put the value in double quotes"
        if rule.kind == "name" and not _NAME_RE.match(value):
            return None, (
                f"name {_fmt(value)} is not usable: use 1-40 letters, digits, spaces or _.+- "
                "starting with a letter or digit"
            )
        if rule.kind == "style" and not _STYLE_RE.match(value):
            return None, (
                f"style {_fmt(value)} is not a style name: use one of "
                f"{', '.join(CORPUS_STYLES)} or a lowercase user style name"
            )
        if rule.kind == "choice" and value not in rule.choices:
            options = " or ".join(_fmt(c) for c in rule.choices)
            return None, f"{key} = {_fmt(value)} is not allowed: use {options}"
        if rule.kind == "key":
            try:
                parsed = parse_key(value)
            except ValueError:
                return None, (
                    f"key = {_fmt(value)} is not a key: use \"auto\", \"off\" or a tonic and "
                    f"mode such as \"C major\", \"A minor\", \"F# dorian\" (modes: "
                    f"{', '.join(MODES)})"
                )
            if parsed is not None:  # keep the tonic as spelled (Bb stays Bb), tidy the case
                tonic = value.split()[0]
                value = f"{tonic[:1].upper()}{tonic[1:]} {parsed[1]}"
            else:
                value = value.strip().lower()
        return value, None
    if rule.kind == "bool":
        if not isinstance(value, bool):
            return None, f"{key} must be true or false, {got}: write true or false without quotes"
        return value, None
    if rule.kind == "curve":
        if not isinstance(value, (list, tuple)) or len(value) == 1 or len(value) > 17:
            return None, (f"{key} must be a list of 2 to 17 velocities, {got}: "
                          "use e.g. [1, 64, 127], or [] for no curve")
        for v in value:
            if not _number(v) or not math.isfinite(v) or v != int(v) or not 1 <= v <= 127:
                return None, f"{key} holds {_fmt(v)}: use whole numbers from 1 to 127"
        return tuple(int(v) for v in value), None
    # numbers: float, int, int_or_none
    if rule.kind == "int_or_none" and (value is None or value == "none"):
        return None, None
    if not _number(value):
        extra = ' or "none"' if rule.kind == "int_or_none" else ""
        hint = " without quotes" if isinstance(value, str) else ""
        return None, f"{key} must be a number{extra}, {got}: write a number{hint}"
    if isinstance(value, float) and not math.isfinite(value):
        return None, f"{key} must be a finite number, {got}"
    if rule.kind != "float" and value != int(value):
        return None, f"{key} must be a whole number, {got}: drop the fraction"
    if not rule.lo <= value <= rule.hi:
        lo, hi = (rule.lo, rule.hi) if rule.kind == "float" else (int(rule.lo), int(rule.hi))
        return None, f"{key} = {_fmt(value)} is out of range: use a value from {lo} to {hi}"
    return (float(value) if rule.kind == "float" else int(value)), None


def _line_of(text: str, key: str) -> int:
    """The 1-based line where ``key`` is assigned in ``text``; 1 when it cannot be found."""
    k = re.escape(key)
    pat = re.compile(rf"""^\s*(?:(?:{k}|"{k}"|'{k}')\s*=|\[+\s*(?:{k}|"{k}")\s*[\].])""")
    for i, line in enumerate(text.splitlines(), 1):
        if pat.match(line):
            return i
    return 1


def _build(data: dict, where) -> Preset:
    """Preset from parsed values; ``where(key) -> (source, line)`` locates errors."""
    values: dict[str, object] = {}
    for key, value in data.items():
        if key not in _RULES:
            close = difflib.get_close_matches(key, _RULES, n=1)
            hint = f"did you mean '{close[0]}'?" if close else "run 'improv presets --keys'"
            raise PresetError(*where(key), f"unknown key '{key}': {hint}")
        checked, problem = _check(key, value)
        if problem:
            raise PresetError(*where(key), problem)
        values[key] = checked
    preset = dataclasses.replace(Preset(), **values)
    if preset.register_low > preset.register_high:
        raise PresetError(
            *where("register_high" if "register_high" in data else "register_low"),
            f"register_low ({preset.register_low}) is above register_high "
            f"({preset.register_high}): swap them or widen the range",
        )
    return preset


def parse_preset(text: str, source: str = "<string>", default_name: str | None = None) -> Preset:
    """Parse one preset from TOML text; ``source`` names the file in error messages."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        msg = str(e)
        m = re.search(r"\(at line (\d+), column \d+\)", msg)
        line = getattr(e, "lineno", None) or (int(m.group(1)) if m else 1)
        if m is None and "end of document" in msg:
            line = max(1, len(text.splitlines()))
        reason = re.sub(r"\s*\(at (line \d+, column \d+|end of document)\)", "", msg)
        raise PresetError(source, line, f"TOML syntax error: {reason}; fix the line") from None
    if default_name and "name" not in data:
        data["name"] = default_name
    return _build(data, lambda key: (source, _line_of(text, key)))


def load_preset(path: str | os.PathLike) -> Preset:
    """Read and validate one preset file; its name defaults to the file name's stem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise PresetError(str(path), 1, f"cannot read the file ({e}); check the path") from None
    return parse_preset(text, str(path), default_name=path.stem)


def apply_overrides(preset: Preset, **changes: object) -> Preset:
    """A validated copy of ``preset`` with ``changes`` (from knobs or the command line)."""
    return _build({**dataclasses.asdict(preset), **changes}, lambda key: ("<override>", 1))


def parse_overrides(items: list[str]) -> dict[str, object]:
    """``["temperature=0.7", "key=A minor"]`` -> a dict for ``apply_overrides``.

    Values are read as TOML (numbers, true/false, lists), else taken as plain strings, so
    ``key=A minor`` needs no quotes on a shell command line.
    """
    out: dict[str, object] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise PresetError("<override>", 1, f"'{item}' is not KEY=VALUE: e.g. temperature=0.7")
        try:
            out[key.strip()] = tomllib.loads(f"v = {raw.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            out[key.strip()] = raw.strip()
    return out


def to_toml(preset: Preset) -> str:
    """The preset as a TOML file that ``parse_preset`` reads back to an equal preset."""
    lines = []
    for f in dataclasses.fields(Preset):
        v = getattr(preset, f.name)
        if v is None:
            v = "none"
        if isinstance(v, tuple):
            lines.append(f"{f.name} = [{', '.join(str(x) for x in v)}]")
        elif isinstance(v, bool):
            lines.append(f"{f.name} = {'true' if v else 'false'}")
        else:
            lines.append(f"{f.name} = {_fmt(v)}")
    return "\n".join(lines) + "\n"


# --- where presets live --------------------------------------------------------------------


def shipped_preset_dir() -> Path:
    """``$IMPROV_PRESETS`` if set, else the checkout's ``presets/`` folder, else the copy
    a wheel installs as ``improv/_presets`` (see pyproject's package-dir)."""
    env = os.environ.get("IMPROV_PRESETS")
    if env:
        return Path(env).expanduser()
    here = Path(__file__).resolve().parents[1]  # the improv package
    checkout = here.parent / "presets"
    return checkout if checkout.is_dir() else here / "_presets"


def user_preset_dir() -> Path:
    """The platform's per-user config folder for presets (it may not exist yet)."""
    if sys.platform == "win32":
        base = os.environ.get("APPDATA") or str(Path.home() / "AppData" / "Roaming")
        return Path(base) / "improv" / "presets"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "improv" / "presets"
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "improv" / "presets"


def preset_dirs() -> list[Path]:
    """Folders searched in order; a preset in a later folder overrides one of the same name."""
    return [shipped_preset_dir(), user_preset_dir()]


class PresetLibrary:
    """All presets in switching order (numbered from 1; keys 1..9 pick the first nine).

    Shipped files come in file-name order; a user preset with a shipped preset's name takes
    its place; other user presets follow. ``reload()`` re-reads every file and keeps the last
    good version of a preset whose file has become malformed.
    """

    def __init__(self, dirs: list[Path] | None = None):
        self.dirs = [Path(d) for d in (preset_dirs() if dirs is None else dirs)]
        self.presets: tuple[Preset, ...] = ()
        self.sources: dict[str, Path | None] = {}  # name -> the file it came from
        self.errors: list[PresetError] = []
        self._by_path: dict[Path, Preset] = {}
        self.reload()

    def reload(self) -> list[PresetError]:
        """Re-read all folders; returns (and keeps in ``errors``) the files that failed."""
        errors: list[PresetError] = []
        by_path: dict[Path, Preset] = {}
        order: list[str] = []
        chosen: dict[str, tuple[Preset, Path]] = {}
        for folder in self.dirs:
            seen_here: dict[str, Path] = {}
            files = sorted(folder.glob("*.toml")) if folder.is_dir() else []
            for path in files:
                try:
                    preset = load_preset(path)
                except PresetError as e:
                    errors.append(e)
                    preset = self._by_path.get(path)  # the last good version, if any
                    if preset is None:
                        continue
                if preset.name in seen_here:
                    errors.append(PresetError(str(path), _line_of(_read(path), "name"),
                                              f"preset name '{preset.name}' is also used by "
                                              f"{seen_here[preset.name]}: rename one of them"))
                    continue
                seen_here[preset.name] = path
                by_path[path] = preset
                if preset.name not in chosen:
                    order.append(preset.name)
                chosen[preset.name] = (preset, path)
        self._by_path = by_path
        if not chosen:  # nothing on disk (e.g. an install without the presets folder)
            chosen, order = {"default": (Preset(), None)}, ["default"]
        self.presets = tuple(chosen[n][0] for n in order)
        self.sources = {n: chosen[n][1] for n in order}
        self.errors = errors
        return errors

    def get(self, name: str) -> Preset:
        for p in self.presets:
            if p.name == name:
                return p
        raise PresetError("<library>", 1, f"no preset named '{name}': "
                          f"choose one of {', '.join(self.names())}")

    def default(self) -> Preset:
        """The preset a set starts with: the first marked ``default = true``, else the first."""
        return next((p for p in self.presets if p.default), self.presets[0])

    def by_number(self, number: int) -> Preset:
        """Preset ``number`` counted from 1, as on the switching keys."""
        if not 1 <= number <= len(self.presets):
            raise PresetError("<library>", 1, f"no preset number {number}: "
                              f"use 1 to {len(self.presets)}")
        return self.presets[number - 1]

    def names(self) -> list[str]:
        return [p.name for p in self.presets]

    def __len__(self) -> int:
        return len(self.presets)

    def __iter__(self) -> Iterator[Preset]:
        return iter(self.presets)


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return ""


# --- `improv presets` ----------------------------------------------------------------------


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    ap = argparse.ArgumentParser(prog=prog, description="List style presets and check them.")
    ap.add_argument("--show", metavar="NAME|NUMBER", help="print one preset in full, as TOML")
    ap.add_argument("--check", nargs="+", metavar="FILE", help="validate these preset files")
    ap.add_argument("--keys", action="store_true", help="list every key with its default")
    ap.add_argument("--dir", action="append", type=Path, metavar="FOLDER",
                    help="search these folders instead of the shipped and user folders")
    args = ap.parse_args(argv)

    if args.keys:
        for f in dataclasses.fields(Preset):
            rule = _RULES[f.name]
            rng = f" ({rule.lo}..{rule.hi})" if rule.lo is not None else ""
            rng = f" ({' | '.join(rule.choices)})" if rule.choices else rng
            print(f"{f.name} = {_fmt(f.default)}{rng}")
        return 0
    if args.check:
        bad = 0
        for file in args.check:
            try:
                p = load_preset(file)
                print(f"{file}: ok ({p.name}, style {p.style})")
            except PresetError as e:
                print(e, file=sys.stderr)
                bad += 1
        return 2 if bad else 0

    lib = PresetLibrary(args.dir)
    if args.show:
        try:
            p = lib.by_number(int(args.show)) if args.show.isdigit() else lib.get(args.show)
        except PresetError as e:
            print(f"{ap.prog}: {e.reason}", file=sys.stderr)
            return 2
        print(f"# from {lib.sources[p.name] or 'built-in defaults'}")
        print(to_toml(p), end="")
        return 0
    print(f"{'#':>2}  {'name':<18} {'style':<12} {'bpm':>5} {'swing':>5} {'temp':>5} "
          f"{'dens':>5} {'resp':>4}  source")
    for i, p in enumerate(lib, 1):
        bpm = f"{p.bpm:g}" if p.bpm else "-"
        resp = str(p.response_bars) if p.response_bars else "call"
        src = str(lib.sources[p.name] or "built-in")
        src += "  (default)" if p is lib.default() else ""
        print(f"{i:>2}  {p.name:<18} {p.style:<12} {bpm:>5} {p.swing:>5.2f} "
              f"{p.temperature:>5.2f} {p.density:>+5.2f} {resp:>4}  {src}")
    for e in lib.errors:
        print(f"malformed: {e}", file=sys.stderr)
    return 2 if lib.errors else 0


if __name__ == "__main__":
    sys.exit(main())
