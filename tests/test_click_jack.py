"""The count-in and the click over JACK: `improv jam` in its own process, heard by a listener.

With ``--count-in 2 --set click=true`` the listener hears two bars of clicks on the beat (the
downbeats accented) before the set listens; a note played in the count-in starts no call (no
answer is heard before the listening line); a call played after it is answered.
"""

from __future__ import annotations

import os
import threading
import time

import mido
import pytest
from jack_player import connect  # tests/ is on the path (pytest's rootdir import mode)
from test_stage_faults import MUSIC, Jam, play_call, wait_for

from improv.live.click import BEAT_NOTE, CHANNEL, DOWNBEAT_NOTE

pytestmark = pytest.mark.jack

BPM = 80.0


def test_two_bars_of_count_in_clicks_then_a_call_is_answered(jack_backend, tiny_model_dir):
    tag = f"ci{os.getpid()}"
    made: dict = {}
    starting = threading.Thread(target=lambda: made.setdefault("jam", Jam(
        tiny_model_dir, "--virtual", "--in", f"improv in {tag}", "--out", f"improv out {tag}",
        *MUSIC, "--bpm", str(BPM), "--count-in", "2", "--set", "click=true")))
    starting.start()  # the ear is patched while the jam starts: the count-in begins at once
    ports = connect(tag)
    starting.join(timeout=60)
    jam = made.get("jam")
    assert jam is not None, "the jam did not start"
    assert ports is not None, "no JACK ports to the jam"
    ear, keys = ports
    beat_s = 60.0 / BPM

    def clicks():
        return [(t, m) for t, m in ear.copy()
                if m.type == "note_on" and m.velocity > 0 and m.channel == CHANNEL]

    def machine_ons():
        return [t for t, m in ear.copy()
                if m.type == "note_on" and m.velocity > 0 and m.channel != CHANNEL]

    try:
        assert wait_for(lambda: len(clicks()) >= 6, 20), jam.text
        keys.send(mido.Message("note_on", note=67, velocity=90))  # in the count-in: no call
        time.sleep(beat_s / 2)
        keys.send(mido.Message("note_off", note=67, velocity=0))
        assert wait_for(lambda: len(clicks()) >= 9, 10), jam.text  # the listening line
        play_call(keys)
        assert wait_for(lambda: machine_ons(), 15), f"the call got no answer:\n{jam.text}"
        got, answers = clicks(), machine_ons()
    finally:
        for p in (keys, ear):
            p.close()
        jam.stop()

    times = [t for t, _ in got]
    notes = [m.note for _, m in got]
    # two bars of 4/4, each on its beat, the downbeats accented; the ninth is the line
    assert notes[:9] == [DOWNBEAT_NOTE, BEAT_NOTE, BEAT_NOTE, BEAT_NOTE] * 2 + [DOWNBEAT_NOTE], \
        f"{notes}\n{jam.text}"
    gaps = [b - a for a, b in zip(times[:8], times[1:9], strict=True)]
    assert all(abs(g - beat_s) < 0.01 for g in gaps), gaps
    line = times[8]
    # nothing of the machine's before the line: the count-in's note was no call
    assert answers and answers[0] > line, (answers[:1], line)
    assert jam.count("call ended") >= 1
