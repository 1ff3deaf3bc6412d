"""What a set is started with that no preset or knob changes: :class:`SessionOptions`."""

from __future__ import annotations

from dataclasses import dataclass

from improv.live.panic import PANIC_CCS


@dataclass
class SessionOptions:
    lookahead_beats: float = 1.0  # generated ahead of playback
    min_lead_ms: float = 30.0  # a response never starts closer than this to the call's end
    seed: int | None = None
    thru: bool = False  # pass the player's notes to the output
    pedal_ccs: tuple[int, ...] = ()  # extra end-of-call pedals besides the preset's
    control_channel: int | None = None  # program change / notes here switch presets (0-15)
    panic_ccs: tuple[int, ...] = PANIC_CCS  # CCs on the input that panic (any channel)
    shed_after_ms: float = 250.0  # a note this late is recorded but not fed (intake.py)
    program_change: bool = False  # program changes switch presets only when this is on


__all__ = ["SessionOptions"]
