"""Keys and modes: pitch-class names, the scales improv knows, and reading a key's name.

This module owns the one table of modes that presets validate against, the sampler
locks or leans to, and the evaluation scores against, plus the Krumhansl-Kessler
key profiles both key finders use. It imports the standard library only, so the
preset room stays stdlib-only and the live path can use it freely.
"""

from __future__ import annotations

NOTE_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
# Other spellings a key name may use for its tonic.
FLATS = {"Db": 1, "Eb": 3, "Gb": 6, "Ab": 8, "Bb": 10, "Cb": 11, "Fb": 4, "E#": 5, "B#": 0}
MODES: dict[str, tuple[int, ...]] = {
    "major": (0, 2, 4, 5, 7, 9, 11),
    "minor": (0, 2, 3, 5, 7, 8, 10),
    "ionian": (0, 2, 4, 5, 7, 9, 11),
    "dorian": (0, 2, 3, 5, 7, 9, 10),
    "phrygian": (0, 1, 3, 5, 7, 8, 10),
    "lydian": (0, 2, 4, 6, 7, 9, 11),
    "mixolydian": (0, 2, 4, 5, 7, 9, 10),
    "aeolian": (0, 2, 3, 5, 7, 8, 10),
    "locrian": (0, 1, 3, 5, 6, 8, 10),
    "harmonic_minor": (0, 2, 3, 5, 7, 8, 11),
    "pentatonic": (0, 2, 4, 7, 9),
    "minor_pentatonic": (0, 3, 5, 7, 10),
}

# Krumhansl-Kessler key profiles (probe-tone ratings), tonic first.
KK_MAJOR = (6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88)
KK_MINOR = (6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17)


def parse_key(text: str, default_mode: str | None = None) -> tuple[int, str] | None:
    """``"D dorian"`` -> ``(2, "dorian")``; ``"auto"`` / ``"off"`` -> None.

    A bare tonic (``"D"``) takes ``default_mode`` when one is given. Anything else
    raises ValueError with a message that says what a key looks like.
    """
    t = text.strip()
    if t.lower() in ("auto", "off"):
        return None
    parts = t.split(None, 1)
    if len(parts) == 1 and default_mode is not None:
        parts.append(default_mode)
    if len(parts) == 2:
        tonic = parts[0][:1].upper() + parts[0][1:]
        mode = parts[1].strip().lower().replace(" ", "_")
        pc = NOTE_NAMES.index(tonic) if tonic in NOTE_NAMES else FLATS.get(tonic)
        if pc is not None and mode in MODES:
            return pc, mode
    raise ValueError(
        f"key {text!r} is not a key: use 'auto', 'off' or a tonic and mode like 'D dorian' "
        f"(modes: {', '.join(MODES)})"
    )


def pitch_classes(tonic: int, mode: str) -> frozenset[int]:
    """The pitch classes of ``mode`` on ``tonic`` (0 = C)."""
    return frozenset((tonic + step) % 12 for step in MODES[mode])
