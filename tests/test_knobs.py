"""The one knob registry: every preset field and knob flag comes from it, and a value out of range
is refused with the same words by a preset file, ``--set``, a jam flag, the stage, the sampler.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing

import pytest

from improv.commands import jam
from improv.core import knobs
from improv.core import presets as P
from improv.core.knobs import tomllib  # tomli on Python 3.10
from improv.core.presets import Preset, PresetError, PresetLibrary
from improv.live import clock as clock_mod
from improv.live import midi_learn as controls
from improv.live.sampler import Constraints, SamplerError
from improv.live.session_api import SetKnob
from improv.stage import widgets
from improv.stage.demo import DemoSession

_PY_TYPES = {"str": str, "name": str, "style": str, "key": str, "choice": str, "bool": bool,
             "int": int, "float": float, "int_or_none": int | None, "curve": tuple[int, ...]}


def test_every_preset_field_comes_from_the_registry_and_back():
    fields = dataclasses.fields(Preset)
    assert [f.name for f in fields] == list(knobs.FIELDS)
    hints = typing.get_type_hints(Preset)
    for f in fields:
        k = knobs.FIELDS[f.name]
        assert f.default == k.default, f.name
        assert hints[f.name] == _PY_TYPES[k.kind], f.name
        assert knobs.check(f.name, f.default) == f.default, "a default passes its own check"


def _flags(ap: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {a.dest: a for a in ap._actions if a.option_strings}


def test_every_jam_knob_flag_comes_from_the_registry_and_back():
    flags = _flags(jam.parser())
    for name in knobs.LIVE:  # every live knob can be set from the command line
        action = flags[name]
        assert action.option_strings == [knobs.FIELDS[name].flag]
        assert action.type.__name__ == name, f"--{name} is not typed by the registry"
    for dest, action in flags.items():  # every flag named after a field is the registry's
        if dest not in knobs.FIELDS:
            continue
        k = knobs.FIELDS[dest]
        if action.choices is not None:
            assert tuple(action.choices) == k.choices
        else:
            assert action.type.__name__ == dest
        if dest in jam.KNOB_FLAGS:
            assert k.label in action.help


def test_knob_flags_arrive_as_typed_checked_values():
    args = jam.parser().parse_args(["--response-bars", "4", "--top-p", "0.9", "--bpm", "90"])
    assert args.response_bars == 4 and isinstance(args.response_bars, int)
    assert args.top_p == 0.9 and args.bpm == 90.0
    assert knobs.flag_values(args, jam.KNOB_FLAGS) == {"response_bars": 4, "top_p": 0.9}


def test_live_views_are_the_registry():
    assert widgets.KNOB_LABELS == {n: knobs.FIELDS[n].label for n in knobs.LIVE}
    assert controls.learnable() == tuple(n for n in knobs.LIVE if knobs.FIELDS[n].learnable)
    assert (clock_mod.MIN_BPM, clock_mod.MAX_BPM) == (knobs.FIELDS["bpm"].lo,
                                                      knobs.FIELDS["bpm"].hi)
    with pytest.raises(controls.ControlsError, match="unknown knob 'top_k'"):
        controls.cc_to_value("top_k", 64)  # not CC-learnable
    with pytest.raises(ValueError, match="use 30 to 300"):
        clock_mod.Clock(10)


def test_register_range_is_the_vocabulary():
    from improv.core import tokens as tk

    for name in ("register_low", "register_high"):
        k = knobs.FIELDS[name]
        assert (k.lo, k.hi) == (tk.LOWEST_PITCH, tk.HIGHEST_PITCH)
    assert knobs.CORPUS_STYLES == tk.CORPUS_STYLES


# (field, TOML / command-line text, value): each out of its range
BAD = [
    ("top_p", "0.0", 0.0),
    ("top_p", "1.5", 1.5),
    ("temperature", "5.0", 5.0),
    ("density", "-1.2", -1.2),
    ("response_bars", "17", 17),
    ("call_bars", "-1", -1),
    ("silence_beats", "9.0", 9.0),
    ("bpm", "10.0", 10.0),
    ("bpm", "400.0", 400.0),
]


@pytest.mark.parametrize(("name", "text", "value"), BAD)
def test_out_of_range_is_refused_with_the_same_words_everywhere(name, text, value, capsys):
    with pytest.raises(knobs.KnobError) as e:
        knobs.check(name, value)
    msg = str(e.value)
    assert "\n" not in msg and "use" in msg and msg.startswith(f"{name} = ")

    with pytest.raises(PresetError) as e:  # improv presets --check reads a file with this
        P.parse_preset(f"{name} = {text}\n", "x.toml")
    assert e.value.reason == msg and str(e.value) == f"x.toml:1: {msg}"

    with pytest.raises(PresetError) as e:  # --set NAME=TEXT
        P.apply_overrides(Preset(), **P.parse_overrides([f"{name}={text}"]))
    assert e.value.reason == msg

    flag = knobs.FIELDS[name].flag  # improv jam --NAME TEXT: one line
    with pytest.raises(SystemExit):
        jam.parser().parse_args([flag, text])
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    if name == "bpm":  # the flag refuses the knob's 0 too (no tempo to keep yet): its own words
        assert err.strip().endswith(f"argument --bpm: --bpm {text} is not a tempo: use 30 to "
                                    "300 beats per minute, or leave --bpm out for the preset's "
                                    "tempo")
    else:
        assert err.strip().endswith(f"argument {flag}: {msg}")

    demo = DemoSession(clock=lambda: 0.0, presets=PresetLibrary([]))  # the stage's knob path
    before = demo.snapshot().knobs[name]
    demo.drain_log()
    demo.send(SetKnob(name, value))
    assert demo.drain_log() == [msg]
    assert demo.snapshot().knobs[name] == before

    class Duck:  # anything preset-like handed to the sampler
        pass

    duck = Duck()
    setattr(duck, name, value)
    if name in {f.name for f in dataclasses.fields(Constraints)}:
        with pytest.raises(SamplerError) as e:
            Constraints.from_preset(duck)
        assert str(e.value) == msg


def test_top_p_zero_is_refused_by_presets_check(tmp_path, capsys):
    path = tmp_path / "zero.toml"
    path.write_text('name = "zero"\ntop_p = 0.0\n')
    assert P.main(["--check", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}:2: top_p = 0.0 is out of range: use a value from 0.05 to 1.0" in err


def _edges(k: knobs.Knob) -> list[object]:
    if k.kind in ("int", "float", "int_or_none"):
        return [k.lo, k.hi] + ([k.off] if k.off is not None else [])
    if k.kind == "choice":
        return list(k.choices)
    return [k.default]


@pytest.mark.parametrize("name", list(knobs.FIELDS))
def test_what_a_preset_accepts_a_set_accepts(name):
    """Each field at both ends of its range: the preset loads, and so do the sampler's
    constraints and the clock (what a set builds from a preset when it starts)."""
    k = knobs.FIELDS[name]
    for value in _edges(k):
        other = {"register_low": 21} if name == "register_high" else {}
        other = {"register_high": 108} if name == "register_low" else other
        p = P.apply_overrides(Preset(), **{name: value}, **other)
        Constraints.from_preset(p)
        if name == "bpm" and p.bpm:
            clock_mod.Clock(p.bpm)
        if k.live and value != k.off:
            assert knobs.turn(name, value) == value
            assert knobs.clamp(name, value) == value


def test_shipped_presets_start_a_set():
    for p in PresetLibrary():
        Constraints.from_preset(p)
        for name in knobs.LIVE:
            knobs.turn(name, getattr(p, name))


def test_set_values_are_read_as_the_field_type_not_guessed():
    got = P.parse_overrides(["name=123", "response_bars=4", "program=none", "scale_lock=true",
                             "velocity_curve=[1, 127]", "key=A minor", "bpm=90"])
    assert got == {"name": "123", "response_bars": 4, "program": "none", "scale_lock": True,
                   "velocity_curve": [1, 127], "key": "A minor", "bpm": 90.0}
    p = P.apply_overrides(Preset(), **got)
    assert (p.name, p.program, p.velocity_curve) == ("123", None, (1, 127))
    with pytest.raises(PresetError, match="response_bars must be a whole number"):
        P.apply_overrides(Preset(), **P.parse_overrides(["response_bars=4.5"]))
    with pytest.raises(PresetError, match="temperature must be a number"):
        P.apply_overrides(Preset(), **P.parse_overrides(["temperature=hot"]))


def test_keys_listing_is_a_toml_file_of_the_defaults(capsys):
    assert P.main(["--keys"]) == 0
    text = capsys.readouterr().out
    tomllib.loads(text)
    assert P.parse_preset(text) == Preset()


def test_turn_keeps_the_tempo_on_zero_and_refuses_other_fields():
    assert knobs.turn("bpm", 0) is None  # bpm 0 = keep the session's tempo, as in a preset
    with pytest.raises(knobs.KnobError, match="not a live knob"):
        knobs.turn("top_k", 3)
    assert knobs.nudge("temperature", 1.98, 2) == 2.0
    assert knobs.nudge("response_bars", 0, -1) == 0
