"""Knob <-> MIDI CC: scaling, learn, rebinding, the bindings file."""

import json

import mido
import pytest

from improv.core import knobs as registry
from improv.core.presets import user_preset_dir
from improv.live import midi_learn as controls
from improv.live.midi_learn import (
    Binding,
    Bindings,
    ControlsError,
    Learner,
    cc_to_value,
    default_bindings,
    load_bindings,
    read_bindings,
    save_bindings,
    value_to_cc,
)


@pytest.mark.parametrize("knob", registry.LIVE)
def test_cc_scaling_covers_the_range_in_steps(knob):
    k = registry.FIELDS[knob]
    lo, hi, step = k.lo, k.hi, k.step
    values = [cc_to_value(knob, v) for v in range(128)]
    assert values[0] == pytest.approx(lo)
    assert values[127] == pytest.approx(hi)
    assert values == sorted(values), "must not go backwards"
    for v in values:
        assert lo - 1e-9 <= v <= hi + 1e-9
        assert (v - lo) / step == pytest.approx(round((v - lo) / step), abs=1e-6)


def test_cc_scaling_middle_and_clamping():
    assert cc_to_value("density", 64) == pytest.approx(0.0, abs=0.051)
    assert cc_to_value("bpm", 200) == 300.0  # out-of-range input is clamped, not an error
    assert cc_to_value("bpm", -5) == 30.0
    assert value_to_cc("temperature", 2.0) == 127
    assert value_to_cc("temperature", 0.05) == 0
    for v in range(128):  # value_to_cc inverts cc_to_value to within a controller step
        assert abs(value_to_cc("top_p", cc_to_value("top_p", v)) - v) <= 1
    with pytest.raises(ControlsError, match="unknown knob"):
        cc_to_value("volume", 10)


def test_defaults_bind_the_mod_wheel_to_density():
    learner = Learner()
    assert learner.bindings == default_bindings()
    out = learner.feed(1, 127, channel=5)
    assert out is not None and out.knob == "density" and out.value == 1.0 and not out.learned
    assert learner.feed(2, 64) is None  # unbound CC: nothing happens


def test_learn_binds_the_next_cc_with_its_channel():
    learner = Learner(Bindings())
    assert learner.feed(74, 10, channel=1) is None
    learner.arm("temperature")
    out = learner.feed(74, 127, channel=3)
    assert out.knob == "temperature" and out.learned and out.value == 2.0
    assert learner.armed is None, "learn takes exactly one message"
    assert learner.bindings.get("temperature") == Binding(74, 3)
    assert learner.bindings.ccs() == {"temperature": 74}
    # afterwards that CC turns the knob, on its channel only
    assert learner.feed(74, 0, channel=3).value == 0.05
    assert learner.feed(74, 0, channel=4) is None


def test_learn_from_mido_messages_and_cancel():
    learner = Learner(Bindings())
    learner.arm("bpm")
    assert learner.feed_message(mido.Message("note_on", note=60)) is None
    assert learner.armed == "bpm", "a note must not consume the learn"
    learner.cancel()
    assert learner.feed_message(mido.Message("control_change", control=20, value=5)) is None
    learner.arm("bpm")
    out = learner.feed_message(mido.Message("control_change", channel=0, control=20, value=127))
    assert out.knob == "bpm" and out.value == 300.0
    assert learner.bindings.get("bpm") == Binding(20, 1)  # mido channel 0 is channel 1
    with pytest.raises(ControlsError, match="unknown knob"):
        learner.arm("wobble")


def test_rebinding_a_cc_moves_it():
    learner = Learner(Bindings({"density": 21}))
    learner.arm("top_p")
    out = learner.feed(21, 0)
    assert out.moved_from == ("density",)
    assert learner.bindings.ccs() == {"top_p": 21}
    assert learner.feed(21, 127).knob == "top_p"
    # and binding a knob again replaces its old CC
    learner.arm("top_p")
    learner.feed(22, 0)
    assert learner.bindings.ccs() == {"top_p": 22}
    assert learner.feed(21, 5) is None


def test_channels_keep_same_cc_apart():
    b = Bindings()
    b.bind("temperature", 7, channel=1)
    assert b.bind("top_p", 7, channel=2) == []
    assert b.knob_for(7, 1) == "temperature" and b.knob_for(7, 2) == "top_p"
    assert b.bind("density", 7) == ["temperature", "top_p"]  # any-channel takes both
    assert b.ccs() == {"density": 7}


def test_save_load_round_trip(tmp_path):
    b = Bindings({"temperature": Binding(74, 2), "bpm": 20})
    path = save_bindings(b, tmp_path / "sub" / "bindings.json")
    assert path.exists() and not path.with_name("bindings.json.tmp").exists()
    loaded, err = load_bindings(path)
    assert err is None and loaded == b
    assert json.loads(path.read_text())["bindings"]["temperature"] == {"cc": 74, "channel": 2}


def test_missing_file_gives_defaults_without_error(tmp_path):
    loaded, err = load_bindings(tmp_path / "nope.json")
    assert err is None and loaded == default_bindings()


@pytest.mark.parametrize(
    "text, message",
    [
        ("{not json", "not valid JSON"),
        ('{"bindings": {"volume": 7}}', "unknown knob 'volume'"),
        ('{"bindings": {"density": 300}}', "0..127"),
        ('{"bindings": {"density": {"cc": 3, "channel": 0}}}', "1..16"),
        ('{"bindings": {"density": 3, "top_p": 3}}', "bound to both"),
        ('["density"]', "'bindings' object"),
        ('{"version": 9, "bindings": {}}', "unsupported version"),
    ],
)
def test_corrupt_file_keeps_defaults_and_reports(tmp_path, text, message):
    path = tmp_path / "bindings.json"
    path.write_text(text)
    loaded, err = load_bindings(path)
    assert loaded == default_bindings()
    assert isinstance(err, ControlsError)
    assert message in str(err) and str(path) in str(err) and "delete it" in str(err)
    with pytest.raises(ControlsError):
        read_bindings(path)


def test_default_path_sits_next_to_the_user_presets(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.setenv("APPDATA", str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path))
    assert controls.bindings_path() == user_preset_dir().parent / "bindings.json"
    assert controls.bindings_path().is_relative_to(tmp_path)
    save_bindings(Bindings({"bpm": 9}))  # the default path, inside tmp_path
    assert load_bindings()[0].ccs() == {"bpm": 9}
