"""Every bad file and option of issue 14 costs one clear line and a non-zero exit, never a
traceback: the real command (``python -m improv ...``) in a subprocess, one row per input.
And ``improv presets --check`` accepts exactly what a set accepts, and warns about a preset
that can only answer silence."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import mido
import pytest

from improv.commands import demo, jam, teardown
from improv.core import presets as P
from improv.core.presets import PresetError

ROOT = Path(__file__).resolve().parent.parent
SHIPPED_MODEL = ROOT / "models" / "improv-base"


def _env(tmp: Path) -> dict[str, str]:
    # nothing of the developer's own set-up (user presets, sessions, a running jam) leaks in
    return dict(os.environ, XDG_CONFIG_HOME=str(tmp / "cfg"), IMPROV_SESSIONS=str(tmp / "sets"),
                IMPROV_RUNTIME_DIR=str(tmp / "rt"), JACK_NO_START_SERVER="1")


def improv(args: list[str], tmp: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "improv", *args], cwd=tmp, env=_env(tmp),
                          capture_output=True, text=True, timeout=timeout)


def model_with(tmp: Path, **config) -> Path:
    """The shipped model copied, its config.json changed."""
    folder = tmp / "model"
    shutil.copytree(SHIPPED_MODEL, folder, ignore=shutil.ignore_patterns("*.safetensors"))
    data = json.loads((folder / "config.json").read_text())
    data.update(config)
    (folder / "config.json").write_text(json.dumps(data))
    return folder


def midi_with_notes(path: Path, notes: list[tuple[int, int]]) -> Path:
    """A format-0 file: (pitch, length in ticks at 480 per quarter), one after another."""
    mid = mido.MidiFile(ticks_per_beat=480)
    track = mido.MidiTrack()
    mid.tracks.append(track)
    for pitch, length in notes:
        track.append(mido.Message("note_on", note=pitch, velocity=90, time=0))
        track.append(mido.Message("note_off", note=pitch, velocity=0, time=length))
    mid.save(path)
    return path


def _files(tmp: Path) -> None:
    good = midi_with_notes(tmp / "good.mid", [(60 + i, 240) for i in range(8)])
    (tmp / "garbage.mid").write_bytes(b"this is not MIDI\x00\x01\x02" * 10)
    (tmp / "empty.mid").write_bytes(b"")
    (tmp / "truncated.mid").write_bytes(good.read_bytes()[:40])
    midi_with_notes(tmp / "silent.mid", [])
    (tmp / "a-file").write_text("not a folder")


# (command and options, what the one line must say); {tmp} is the test's folder, {model:...}
# a copy of the shipped model with that config.json change
BAD = [
    ("jam --model {model:n_head=0}", "n_head = 0 is impossible"),
    ("jam --model {model:n_head=-6}", "n_head = -6 is impossible"),
    ("jam --model {model:n_layer=0}", "n_layer = 0 is impossible"),
    ("jam --model {model:context=-1}", "context = -1 is impossible"),
    ("jam --model {model:d_model=190}", "does not split into 6 heads"),
    ("jam --model {model:context=1000000000000}", "context = 1000000000000 is impossible"),
    ("jam --model {tmp}/nowhere", "nowhere does not exist"),
    ("jam --model {tmp}/a-file", "does not exist"),
    ("jam --meter 0/4", "meter '0/4' is not usable"),
    ("jam --meter 4/0", "meter '4/0' is not usable"),
    ("jam --meter 4/3", "meter '4/3' is not usable"),
    ("jam --meter x", "meter 'x' is not like 4/4"),
    ("jam --record {tmp}/a-file/set.mid", "a-file is a file, not a folder"),
    ("jam --record {tmp}/a-file/deeper/set.mid", "a-file is a file, not a folder"),
    ("jam --record /proc/no-such-folder/set.mid", "cannot create the folder /proc/no-such-folder"),
    ("jam --record {tmp}", "is a folder: name a file in it"),
    ("jam --in-channel 0", "--in-channel 0 is out of range: use a whole number from 1 to 16"),
    ("jam --in-channel 17", "--in-channel 17 is out of range: use a whole number from 1 to 16"),
    ("jam --control-channel 0", "--control-channel 0 is out of range"),
    ("jam --control-channel 17", "--control-channel 17 is out of range"),
    ("jam --lookahead -1", "--lookahead -1 is out of range"),
    ("jam --lookahead 0", "--lookahead 0 is out of range"),
    ("jam --bpm 0", "--bpm 0 is not a tempo: use 30 to 300"),
    ("jam --bpm 0.5", "--bpm 0.5 is not a tempo: use 30 to 300"),
    ("jam --bpm 1000", "--bpm 1000 is not a tempo"),
    ("jam --bpm fast", "--bpm fast is not a tempo"),
    ("jam --seconds -1", "--seconds -1 is out of range"),
    ("jam --threads 0", "--threads 0 is out of range"),
    ("jam --latency-ms -5", "--latency-ms -5 is out of range"),
    ("jam --clock midi --clock-offset-ms 80", "--clock-offset-ms 80 is out of range"),
    ("jam --set top_p=0.0", "top_p = 0.0 is out of range"),
    ("demo --call {tmp}/garbage.mid", "garbage.mid: not a Standard MIDI File"),
    ("demo --call {tmp}/empty.mid", "empty.mid: the file is empty"),
    ("demo --call {tmp}/truncated.mid", "truncated.mid: corrupt or truncated"),
    ("demo --call {tmp}/missing.mid", "missing.mid: no such file"),
    ("demo --call {tmp}/silent.mid", "has no notes to play as a call"),
    ("demo --call {tmp}", "is a folder, not a MIDI file"),
    ("demo --model {model:n_head=0}", "n_head = 0 is impossible"),
    ("demo --meter 0/4", "meter '0/4' is not usable"),
    ("demo --bpm 0", "--bpm 0 is not a tempo"),
    ("demo --lookahead -1", "--lookahead -1 is out of range"),
    ("demo --out {tmp}/a-file/demo.mid", "a-file is a file, not a folder"),
]


@pytest.mark.parametrize(("command", "says"), BAD, ids=[c for c, _ in BAD])
def test_a_bad_input_is_one_line_and_a_non_zero_exit(command, says, tmp_path):
    _files(tmp_path)
    args = []
    for word in command.split():
        if word.startswith("{model:"):
            key, _, value = word[len("{model:"):-1].partition("=")
            word = str(model_with(tmp_path, **{key: int(value)}))
        args.append(word.replace("{tmp}", str(tmp_path)))
    if args[0] == "jam":
        # never reaches a MIDI port: with JACK named, a port opened by mistake fails loudly
        args += ["--no-tui", "--backend", "jack", "--seconds", "5"]
    done = improv(args, tmp_path)
    err = done.stderr.strip()
    assert done.returncode == 2, (done.returncode, err)
    assert "Traceback" not in done.stderr, err
    assert len(err.splitlines()) == 1, f"more than one line:\n{err}"
    assert says in err, err
    assert err.startswith(f"improv {args[0]}: "), err
    assert done.stdout == ""
    assert not list((tmp_path / "sets").glob("*")), "a refused set left a recording"


def test_a_call_of_a_hundred_million_ticks_ends_quickly(tmp_path):
    long_call = midi_with_notes(tmp_path / "long.mid", [(60, 10**8)])
    t = time.monotonic()
    done = improv(["demo", "--call", str(long_call), "--bpm", "300", "--seconds", "15",
                   "--out", str(tmp_path / "out.mid")], tmp_path, timeout=120)
    took = time.monotonic() - t
    assert "Traceback" not in done.stderr, done.stderr
    assert "lasts over 4 bars; playing its first 4 as the call" in done.stderr
    assert done.returncode in (0, 1), done.stderr  # 1: the model answered nothing
    assert took < 60, f"the demo took {took:.0f} s"


def test_a_long_call_is_cut_to_four_bars_and_a_short_one_kept(tmp_path):
    bar = 96  # ticks of a 4/4 bar at 24 per quarter
    held = demo.load_call(midi_with_notes(tmp_path / "held.mid", [(60, 10**8)]), bar)
    assert held == [(60, 0, demo.CALL_CAP_BARS * bar)]
    many = demo.load_call(midi_with_notes(tmp_path / "many.mid", [(62, 480)] * 40), bar)
    assert len(many) == demo.CALL_CAP_BARS * 4  # one a beat
    assert max(start + length for _, start, length in many) <= demo.CALL_CAP_BARS * bar
    short = demo.load_call(midi_with_notes(tmp_path / "short.mid", [(64, 240), (65, 240)]), bar)
    assert short == [(64, 0, 12), (65, 12, 12)]


# --- presets: --check and a set agree ----------------------------------------------------------

PRESET_CASES = [
    ("top_p = 0.0\n", False),
    ("bpm = 0.5\n", False),
    ("bpm = 29.0\n", False),
    ("temperature = 0.0\n", False),
    ("channel = 0\n", False),
    ('key = "H major"\n', False),
    ("register_low = 80\nregister_high = 60\n", False),
    ("top_p = 0.05\n", True),
    ("bpm = 0.0\n", True),  # a preset's 0: keep the set's tempo
    ("bpm = 30.0\n", True),
    ("register_low = 61\nregister_high = 61\n", True),
]


@pytest.mark.parametrize(("body", "good"), PRESET_CASES, ids=[b.strip() for b, _ in PRESET_CASES])
def test_presets_check_accepts_exactly_what_a_set_accepts(body, good, tmp_path, monkeypatch,
                                                          capsys):
    folder = tmp_path / "presets"
    path = _write(folder / "edge.toml", f'name = "edge"\n{body}')
    status = P.main(["--check", str(path)])
    out = capsys.readouterr()
    checked_ok = status == 0
    assert checked_ok == ("ok" in out.out)

    monkeypatch.setenv("IMPROV_PRESETS", str(folder))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    args = jam.parser().parse_args(["--preset", "edge"])
    try:
        _, preset = jam.load_preset(args)  # what `improv jam --preset edge` starts with
        set_ok = preset.name == "edge"
    except PresetError as e:
        set_ok = False
        assert "\n" not in str(e) and str(path) in str(e)  # the file's own error, one line
    teardown.drain(2.0)
    assert checked_ok == set_ok == good


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


SILENT = 'register_low = 61\nregister_high = 61\nkey = "C major"\nscale_lock = true\n'


@pytest.mark.parametrize(("body", "silent"), [
    (SILENT, True),  # C#4 alone, C major locked: every note masked
    ('register_low = 70\nregister_high = 70\nkey = "D major"\nscale_lock = true\n', True),
    ('register_low = 70\nregister_high = 70\nkey = "Bb major"\nscale_lock = true\n', False),
    ('register_low = 61\nregister_high = 62\nkey = "C major"\nscale_lock = true\n', False),
    ('register_low = 61\nregister_high = 61\nkey = "C# minor"\nscale_lock = true\n', False),
    ('register_low = 61\nregister_high = 61\nkey = "C major"\nscale_lock = false\n', False),
    ('register_low = 61\nregister_high = 61\nkey = "auto"\nscale_lock = true\n', False),
    ('register_low = 40\nregister_high = 52\nkey = "F# locrian"\nscale_lock = true\n', False),
])
def test_presets_check_warns_about_a_preset_that_can_only_answer_silence(body, silent, tmp_path,
                                                                        capsys):
    path = _write(tmp_path / "quiet.toml", f'name = "quiet"\n{body}')
    assert P.main(["--check", str(path)]) == 0  # valid: a warning, not a refusal
    err = capsys.readouterr().err
    assert ("can only answer silence" in err) == silent, err
    if silent:
        assert err.startswith(f"{path}: warning: register ") and err.count("\n") == 1
        # the sampler agrees: not one pitch of the register passes the lock
        preset = P.load_preset(path)
        pcs = preset.scale_pitch_classes()
        assert not [p for p in range(preset.register_low, preset.register_high + 1)
                    if p % 12 in pcs]


def test_a_set_starting_on_a_silent_preset_says_so(tmp_path, monkeypatch, capfd):
    _write(tmp_path / "presets" / "quiet.toml", f'name = "quiet"\n{SILENT}')
    monkeypatch.setenv("IMPROV_PRESETS", str(tmp_path / "presets"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    jam.load_preset(jam.parser().parse_args(["--preset", "quiet"]))
    teardown.drain(2.0)
    err = capfd.readouterr().err
    assert "improv: warning: preset 'quiet': register 61..61 holds no note of C major" in err


# --- what good options set ---------------------------------------------------------------------


@pytest.mark.parametrize(("argv", "control", "program_change"), [
    ([], None, False),
    (["--control-channel", "10"], 9, False),
    (["--control-channel", "1", "--program-change"], 0, True),
    (["--program-change"], None, True),
])
def test_control_channel_and_program_change_reach_the_session(argv, control, program_change,
                                                              tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    args = jam.parser().parse_args([*argv, "--no-record", "--lookahead", "0.5"])
    rig = jam.build_rig(args, demo.Collector())
    try:
        options = rig.session.options
        assert options.control_channel == control  # 1-16 on the command line, 0-15 in MIDI
        assert options.program_change is program_change
        assert options.lookahead_beats == 0.5
    finally:
        rig.close()
        teardown.drain(2.0)


def test_every_jam_option_has_help():
    for action in jam.parser()._actions:
        if action.option_strings and action.dest != "help":
            assert action.help, f"{action.option_strings[0]} has no help"
