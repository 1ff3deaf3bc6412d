"""The session API on the wire: snapshots and intents round-trip through JSON lines, and a line
that is not a valid message is refused (never executed, never half applied)."""

from __future__ import annotations

import json

import pytest

from improv.live.session_api import (
    INTENTS,
    Latency,
    Learn,
    NoteView,
    NudgeKnob,
    Panic,
    PortView,
    SelectPort,
    SelectPreset,
    SetClick,
    SetKey,
    SetKnob,
    SetMode,
    Snapshot,
    State,
    Stop,
    TapTempo,
    WireError,
    decode_line,
    encode_line,
    intent_from_dict,
    intent_to_dict,
    snapshot_from_dict,
    snapshot_to_dict,
)

EVERY_INTENT = [
    SetKnob("temperature", 0.8), NudgeKnob("bpm", -1), SelectPreset(3), SelectPreset("folk", True),
    SetMode("overlap"), SetKey("G major"), TapTempo(), Learn("density"), Learn(None),
    SelectPort("out", "Synth A"), Panic(), Stop(), SetClick(True),
]

FULL = Snapshot(
    state=State.RESPONDING, beat=17.25, bpm=96.0, meter=(3, 4), clock_source="midi",
    preset="folk song", preset_number=2, presets=("jazz", "folk song"),
    knobs={"temperature": 0.9, "bpm": 96.0}, mode="overlap", key="auto", key_detected="D minor",
    ports=(PortView("in", "Keystation", True), PortView("out", None, False, virtual=True)),
    latency=Latency(1.5, 4.25, 0.3, 410.0, late=2, dropped=1),
    notes=(NoteView("human", 60, 1.0, 2.0), NoteView("machine", 67, 16.5)),
    learning="top_p", bindings={"temperature": 21}, recording="/tmp/set.mid",
    click=True, count_in_until=8.0, countdown=(4.0, 8.0), answer_span=(8.0, 16.0),
)


def through_the_wire(message: dict) -> dict:
    line = encode_line(message)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    return decode_line(line)


def test_every_intent_kind_is_covered():
    assert {type(i) for i in EVERY_INTENT} == set(INTENTS)


@pytest.mark.parametrize("intent", EVERY_INTENT, ids=repr)
def test_intents_round_trip(intent):
    back = intent_from_dict(through_the_wire(intent_to_dict(intent)))
    assert back == intent and type(back) is type(intent)


@pytest.mark.parametrize("snap", [Snapshot(), FULL], ids=["default", "full"])
def test_snapshots_round_trip(snap):
    assert snapshot_from_dict(through_the_wire(snapshot_to_dict(snap))) == snap


def test_a_snapshot_from_a_newer_sender_keeps_what_it_knows():
    data = snapshot_to_dict(FULL) | {"something_new": [1, 2]}
    assert snapshot_from_dict(data) == FULL


def test_figures_not_known_yet_travel_as_null():
    snap = Snapshot(latency=Latency(decode_median_ms=float("nan")), knobs={"x": float("inf")})
    back = snapshot_from_dict(decode_line(encode_line(snapshot_to_dict(snap))))
    assert back.latency.decode_median_ms is None and back.knobs == {"x": None}


def test_json_ints_are_floats_where_a_float_is_meant():
    back = intent_from_dict({"kind": "SetKnob", "name": "bpm", "value": 100})
    assert back == SetKnob("bpm", 100.0) and isinstance(back.value, float)


@pytest.mark.parametrize("data", [
    {"kind": "Exec", "code": "import os"},
    {"kind": "__class__"},
    {"name": "bpm", "value": 1.0},
    {"kind": "SetKnob", "name": "bpm"},
    {"kind": "SetKnob", "name": 3, "value": 1.0},
    {"kind": "SetKnob", "name": "bpm", "value": "fast"},
    {"kind": "SetKnob", "name": "bpm", "value": True},
    {"kind": "NudgeKnob", "name": "bpm", "steps": 1.5},
    {"kind": "SelectPreset", "which": [1]},
    {"kind": "SelectPreset", "which": 1, "now": "yes"},
    [1, 2],
], ids=lambda d: json.dumps(d)[:40])
def test_a_bad_intent_is_refused(data):
    with pytest.raises(WireError):
        intent_from_dict(data)


def test_not_finite_knob_values_are_refused():
    with pytest.raises(WireError):
        intent_from_dict({"kind": "SetKnob", "name": "bpm", "value": 1e400})


@pytest.mark.parametrize("line", [b"not json\n", b"[1,2]\n", b"\xff\xfe\n", b'"text"\n'])
def test_a_line_that_is_no_message_is_refused(line):
    with pytest.raises(WireError):
        decode_line(line)


@pytest.mark.parametrize("data", [
    {"state": "dancing"}, {"meter": [4]}, {"ports": [{"role": "in"}]}, {"notes": [[1, 2]]},
    {"latency": {"nope": 1}}, {"knobs": [1]}, [],
], ids=lambda d: json.dumps(d)[:40])
def test_a_bad_snapshot_is_refused(data):
    with pytest.raises(WireError):
        snapshot_from_dict(data)


def test_the_wire_never_pickles():
    with pytest.raises(WireError):
        intent_to_dict(object())  # type: ignore[arg-type]
