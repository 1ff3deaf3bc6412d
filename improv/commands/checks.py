"""What the command line of ``improv jam`` and ``improv demo`` may hold, checked before anything
starts: a bad option costs one line that says what to write, and exit status 2, never a
traceback, a deaf set or a silently replaced value.

This module owns the argument types (meter, tempo, channels, bounded numbers), the parser whose
errors are one line, and the checks that need the disk (the recording's folder), run before the
model loads so a bad path does not wait for it.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from improv.core import knobs

# What the recording and the clock both accept (improv.live.recording, improv.live.clock).
METER_DENOMINATORS = (1, 2, 4, 8, 16, 32)
MAX_METER_NUMERATOR = 32


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line (argparse prints the whole usage
    first, which buries the reason on a small terminal)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message}\n")


def parse_meter(text: str) -> tuple[int, int]:
    """``"3/4"`` -> ``(3, 4)``; ValueError (one line, what to write) for anything else."""
    try:
        num, den = (int(x) for x in str(text).split("/"))
    except ValueError:
        raise ValueError(f"meter {text!r} is not like 4/4: write NUMERATOR/DENOMINATOR, "
                         "e.g. 3/4 or 6/8") from None
    if not 1 <= num <= MAX_METER_NUMERATOR or den not in METER_DENOMINATORS:
        notes = ", ".join(map(str, METER_DENOMINATORS[:-1])) + f" or {METER_DENOMINATORS[-1]}"
        raise ValueError(f"meter {text!r} is not usable: use 1 to {MAX_METER_NUMERATOR} beats "
                         f"over {notes}, e.g. 3/4 or 6/8")
    return num, den


def meter_arg(text: str) -> str:
    """``--meter``: checked here, kept as text (``build_rig`` reads it with parse_meter)."""
    try:
        num, den = parse_meter(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return f"{num}/{den}"


def bpm(text: str) -> float:
    """``--bpm``: the registry's tempo knob without its 0 (a preset's "keep the tempo": on the
    command line there is no tempo yet to keep, and 0 must not quietly become 120)."""
    k = knobs.FIELDS["bpm"]
    try:
        value = knobs.check("bpm", knobs.parse_text("bpm", text))
    except knobs.KnobError:
        value = k.off
    if value == k.off:
        raise argparse.ArgumentTypeError(
            f"--bpm {text} is not a tempo: use {k.lo:g} to {k.hi:g} beats per minute, or leave "
            "--bpm out for the preset's tempo")
    return float(value)


bpm_arg = bpm  # argparse names a type by its __name__: the registry's field name


def number_arg(flag: str, lo: float, hi: float, *, integer: bool = False,
               lo_open: bool = False, what: str = "") -> Callable[[str], float]:
    """An argparse type for a number in ``lo..hi`` (``lo_open``: ``lo`` itself refused)."""

    def convert(text: str) -> float:
        try:
            value = int(text) if integer else float(text)
        except ValueError:
            value = math.nan
        ok = math.isfinite(value) and (lo < value if lo_open else lo <= value) and value <= hi
        if not ok:
            kind = "a whole number" if integer else "a number"
            span = f"above {_n(lo)}, up to {_n(hi)}" if lo_open else f"from {_n(lo)} to {_n(hi)}"
            raise argparse.ArgumentTypeError(
                f"{flag} {text} is out of range: use {kind} {span}"
                + (f" ({what})" if what else ""))
        return value

    convert.__name__ = flag.lstrip("-")
    return convert


def _n(x: float) -> str:
    return str(int(x)) if x == int(x) else f"{x:g}"


def channel_arg(flag: str) -> Callable[[str], int]:
    """A MIDI channel as printed on synths and keyboards, 1 to 16."""
    return number_arg(flag, 1, 16, integer=True, what="MIDI channels are counted from 1")


def check_record_path(path: Path | None, flag: str = "--record") -> None:
    """The recording's folder exists or can be made, and ``path`` is not a folder; ValueError
    with one line otherwise (before the model loads, so a typo costs no waiting)."""
    if path is None:
        return
    if path.is_dir():
        raise ValueError(f"{flag} {path} is a folder: name a file in it, e.g. {path / 'set.mid'}")
    blocker = next((p for p in path.parents if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise ValueError(f"{blocker} is a file, not a folder: choose another {flag} path")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"cannot create the folder {path.parent} for the recording "
                         f"({e.strerror or e}): choose another {flag} path") from None


def fail(prog: str, problem: object, status: int = 2) -> int:
    """One line on stderr; the exit status to return."""
    try:
        print(f"{prog}: {problem}", file=sys.stderr, flush=True)
    except (OSError, ValueError):  # no stderr left to say it on
        pass
    return status


__all__ = ["OneLineParser", "bpm_arg", "channel_arg", "check_record_path", "fail", "meter_arg",
           "number_arg", "parse_meter"]
