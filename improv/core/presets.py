"""Style presets: one TOML file per preset, one frozen schema, errors that point at the line.

This module owns the preset record (``Preset``), reading and checking preset files (errors that
point at the line), where presets live on disk and the ordered ``PresetLibrary`` the live session
switches through with the number keys. What each field may hold (type, range, default) is the
knob registry's, :mod:`improv.core.knobs`, which also validates every value.

A preset file is flat TOML; every key is optional and falls back to the default below::

    # for slow, singing tunes
    name = "ballad"
    style = "folk"
    temperature = 0.6
    density = -0.5

Where presets come from, later folders overriding earlier ones by preset ``name``:

1. the shipped folder: ``$IMPROV_PRESETS`` when set, else ``presets/`` next to the package
   (a checkout or an editable install);
2. the user folder: ``presets`` in improv's config folder (:mod:`improv.core.paths`:
   ``~/.config/improv`` on Linux, ``~/Library/Application Support/improv`` on macOS,
   ``%APPDATA%\\improv`` on Windows).

The room imports the standard library only (``tomli`` on Python 3.10; platformdirs through
:mod:`improv.core.paths`), the key table of :mod:`improv.core.keys` and the knob registry,
so the UI and the live path can both hold presets without pulling anything else in.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from improv.core import knobs, paths
from improv.core.cli_help import with_examples
from improv.core.keys import parse_key, pitch_classes
from improv.core.knobs import CORPUS_STYLES  # noqa: F401  (re-exported: presets.CORPUS_STYLES)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

class PresetError(ValueError):
    """A preset that cannot be used; the message reads ``FILE:LINE: reason; what to do``."""

    def __init__(self, source: str, line: int, reason: str):
        super().__init__(f"{source}:{line}: {reason}")
        self.source, self.line, self.reason = source, line, reason


_D = knobs.defaults()


@dataclass(frozen=True)
class Preset:
    """Everything a style preset sets. Immutable: change it with ``apply_overrides``.

    What each field means, its range and its default live in :mod:`improv.core.knobs`
    (``improv presets --keys`` lists them); the defaults below are read from there.
    """

    name: str = _D["name"]
    description: str = _D["description"]
    default: bool = _D["default"]
    style: str = _D["style"]
    # sampling
    temperature: float = _D["temperature"]
    top_p: float = _D["top_p"]
    top_k: int = _D["top_k"]
    repetition_penalty: float = _D["repetition_penalty"]
    density: float = _D["density"]
    # what the machine may play
    register_low: int = _D["register_low"]
    register_high: int = _D["register_high"]
    register_follow: int = _D["register_follow"]
    echo: float = _D["echo"]
    max_polyphony: int = _D["max_polyphony"]
    max_note_beats: float = _D["max_note_beats"]
    key: str = _D["key"]
    scale_lock: bool = _D["scale_lock"]
    # turn-taking
    bpm: float = _D["bpm"]
    response_bars: int = _D["response_bars"]
    call_bars: int = _D["call_bars"]
    predict_handover: bool = _D["predict_handover"]
    handover_threshold: float = _D["handover_threshold"]
    quantize: bool = _D["quantize"]
    silence_beats: float = _D["silence_beats"]
    max_call_bars: int = _D["max_call_bars"]
    response_start: str = _D["response_start"]
    mode: str = _D["mode"]
    switch: str = _D["switch"]
    end_call_cc: int | None = _D["end_call_cc"]
    count_in: int = _D["count_in"]
    click: bool = _D["click"]
    # how it sounds
    velocity_scale: float = _D["velocity_scale"]
    velocity_offset: int = _D["velocity_offset"]
    velocity_curve: tuple[int, ...] = _D["velocity_curve"]
    dynamics: float = _D["dynamics"]
    guidance: float = _D["guidance"]
    swing: float = _D["swing"]
    humanize_ms: float = _D["humanize_ms"]
    channel: int = _D["channel"]
    program: int | None = _D["program"]

    @property
    def midi_channel(self) -> int:
        """``channel`` as MIDI messages carry it (0-15); presets and users count 1-16."""
        return int(self.channel) - 1

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


# --- the schema's rules: the knob registry ---------------------------------------------------

assert list(knobs.FIELDS) == [f.name for f in dataclasses.fields(Preset)], \
    "the Preset dataclass and the knob registry disagree"


def _fmt(v: object) -> str:
    return json.dumps(v) if isinstance(v, str) else repr(v)


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
        if key not in knobs.FIELDS:
            close = difflib.get_close_matches(key, knobs.FIELDS, n=1)
            hint = f"did you mean '{close[0]}'?" if close else "run 'improv presets --keys'"
            raise PresetError(*where(key), f"unknown key '{key}': {hint}")
        try:
            values[key] = knobs.check(key, value)
        except knobs.KnobError as e:
            raise PresetError(*where(key), str(e)) from None
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


def silence_problem(preset: Preset) -> str | None:
    """Why ``preset`` can only ever answer silence, or None: a scale lock on a fixed key whose
    scale has no note in the register (say a one-note register off the key). The sampler masks
    every other note, so each answer would be empty; "auto" keys are found from the call and
    cannot be judged in advance."""
    pcs = preset.scale_pitch_classes()
    if not preset.scale_lock or pcs is None:
        return None
    lo, hi = preset.register_low, preset.register_high
    if any(p % 12 in pcs for p in range(lo, hi + 1)):
        return None
    return (f"register {lo}..{hi} holds no note of {preset.key} and scale_lock is on, so it can "
            "only answer silence: widen the register, change the key or set scale_lock = false")


def apply_overrides(preset: Preset, **changes: object) -> Preset:
    """A validated copy of ``preset`` with ``changes`` (from knobs or the command line)."""
    return _build({**dataclasses.asdict(preset), **changes}, lambda key: ("<override>", 1))


def parse_overrides(items: list[str]) -> dict[str, object]:
    """``["temperature=0.7", "key=A minor"]`` -> a dict for ``apply_overrides``.

    Each value is read as its field's type from the knob registry (``knobs.parse_text``):
    numbers, true/false, a list for ``velocity_curve``, plain text for strings, so
    ``key=A minor`` needs no quotes on a shell command line.
    """
    out: dict[str, object] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise PresetError("<override>", 1, f"'{item}' is not KEY=VALUE: e.g. temperature=0.7")
        out[key.strip()] = knobs.parse_text(key.strip(), raw)
    return out


def _toml_value(v: object) -> str:
    if v is None:
        return '"none"'
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, tuple):
        return f"[{', '.join(str(x) for x in v)}]"
    return _fmt(v)


def _keys_toml() -> str:
    """Every key with its default, as a TOML file; the range and meaning as a comment."""
    lines = []
    for k in knobs.FIELDS.values():
        notes = "; ".join(x for x in (k.range_text(), k.help) if x)
        lines.append(f"{k.name} = {_toml_value(k.default)}" + (f"  # {notes}" if notes else ""))
    return "\n".join(lines) + "\n"


def to_toml(preset: Preset) -> str:
    """The preset as a TOML file that ``parse_preset`` reads back to an equal preset."""
    lines = [f"{f.name} = {_toml_value(getattr(preset, f.name))}"
             for f in dataclasses.fields(Preset)]
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
    """``presets`` in the per-user config folder (improv.core.paths; may not exist yet)."""
    return paths.config_dir() / "presets"


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

    def find(self, which: Preset | str | int) -> Preset:
        """A preset by its number (from 1), its name or its file's name (``celtic-reel``).

        The one lookup every way of naming a preset goes through; PresetError if none.
        """
        if isinstance(which, Preset):
            return which
        if isinstance(which, int) or str(which).strip().isdigit():
            return self.by_number(int(which))
        for name, path in self.sources.items():
            if which == name or (path is not None and which in (path.stem, path.name)):
                return self.get(name)
        return self.get(which)

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
    ap = argparse.ArgumentParser(
        prog=prog, description="List style presets and check them.",
        **with_examples(
            "improv presets                 # the presets, numbered as keys 1-9 pick them",
            "improv presets --check my.toml  # a preset file checked as a set would check it",
            "improv presets --show 2        # one preset in full, as TOML",
            "improv presets --keys          # every field with its range, as TOML"))
    ap.add_argument("--show", metavar="NAME|NUMBER", help="print one preset in full, as TOML")
    ap.add_argument("--check", nargs="+", metavar="FILE", help="validate these preset files")
    ap.add_argument("--keys", action="store_true", help="print every key with its default, as TOML")
    ap.add_argument("--dir", action="append", type=Path, metavar="FOLDER",
                    help="search these folders instead of the shipped and user folders")
    args = ap.parse_args(argv)

    if args.keys:
        print(_keys_toml(), end="")
        return 0
    if args.check:
        bad = 0
        for file in args.check:
            try:  # the very check a set makes when it loads the file: same verdicts
                p = load_preset(file)
            except PresetError as e:
                print(e, file=sys.stderr)
                bad += 1
                continue
            print(f"{file}: ok ({p.name}, style {p.style})")
            problem = silence_problem(p)
            if problem is not None:
                print(f"{file}: warning: {problem}", file=sys.stderr)
        return 2 if bad else 0

    lib = PresetLibrary(args.dir)
    if args.show:
        try:
            p = lib.find(args.show)
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
