"""Every command the README shows is tried: as written where this machine can, else with
the least change that lets it run here (JACK instead of the platform's MIDI system, a set
of two seconds), else it names the test that covers it. A command added to the README
without a line here fails the first test."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

# How each README command is tried: "run" as written; "jack" with `--backend jack` (and
# `--no-tui --seconds 2` where it would play on) on the test's JACK server; "ci" is the
# README's test command, which .ci/run runs verbatim; anything else names where it runs.
HOW = {
    "pip install -e .": "ci: .ci/run installs the package the same way (with the extras)",
    "improv demo": "run",
    "pip install torch==2.13.0": "ci",
    "python -m pip install -q -e '.[test]'": "ci",
    "python -m pytest": "ci",
    "improv ports": "run",
    'improv jam --in "Keystation" --out "FluidSynth"': "jack",
    "improv jam --virtual": "jack",
    "improv jam --no-tui --seconds 600 --preset celtic-reel --bpm 112": "jack",
    "improv ui": "run",
    "pip install -e '.[train]'": "ci: the test extras hold the training extras",
    "improv data": "tests/test_data.py: the corpus build on a few chorales (the whole corpus "
                   "takes ~6 min, not for CI)",
    "improv train --out models/mine": "tests/test_model.py::test_improv_train_end_to_end: the "
                                      "same command on a tiny corpus and model",
    "improv eval --model models/mine": "tests/test_evaluate.py: improv eval on a tiny model",
    "improv eval --conversation --model models/mine --bar":
        "tests/test_conversation.py: the conversation evaluation on a tiny model",
    "improv data --midi ~/my-sets --style mine --out ~/.cache/improv/mine": "run",
    "improv train --from models/improv-base --data ~/my-sets --style mine --out models/mine":
        "run: with --steps 2 (1000 steps by default; the flow, not the training, is tried)",
}


def readme_commands() -> list[str]:
    """Each command of the README's bash blocks, `a && b` as two, comments dropped."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(), re.S):
        for line in block.splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line and not line.startswith("#"):
                out += [part.strip() for part in line.split("&&")]
    return out


def test_every_readme_command_is_tried_or_says_where():
    assert set(readme_commands()) == set(HOW)


def test_the_readme_test_command_is_what_ci_runs():
    line = next(x for x in README.read_text().splitlines() if "python -m pytest" in x)
    assert line.strip() in (ROOT / ".ci" / "run").read_text().splitlines()


def _run(cmd: str, home: Path, timeout: float = 120, **env) -> subprocess.CompletedProcess:
    """A README line through bash (for ~ and quotes) with `improv` as this checkout's."""
    env = dict(os.environ, HOME=str(home), IMPROV_SESSIONS=str(home / "sets"),
               IMPROV_CACHE_DIR=str(home / "cache"), IMPROV_CONFIG_DIR=str(home / "config"),
               JACK_NO_START_SERVER="1", **env)
    env.pop("IMPROV_CORPUS", None)
    bin_dir = home / "bin"
    bin_dir.mkdir(exist_ok=True)
    shim = bin_dir / "improv"
    shim.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -m improv \"$@\"\n")
    shim.chmod(0o755)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run(["bash", "-c", cmd], cwd=home, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_demo_ports_and_ui_as_written(tmp_path):
    demo = _run("improv demo", tmp_path, timeout=300)
    assert demo.returncode == 0, demo.stderr
    assert (tmp_path / "improv-demo.mid").stat().st_size > 100
    ports = _run("improv ports", tmp_path)
    # Without the platform's MIDI system (no ALSA sequencer here) it must say what to do.
    assert ports.returncode == 0 or (ports.returncode == 2 and "--backend jack" in ports.stderr)
    ui = _run("improv ui", tmp_path)
    assert ui.returncode == 2 and "start one with 'improv jam'" in ui.stderr
    for r in (demo, ports, ui):
        assert "Traceback" not in r.stderr


def test_the_fine_tuning_flow_as_written(tmp_path):
    import random

    from helpers import SHIPPED

    from improv.core.midifile import Note, Score, write_midi

    rng = random.Random(0)
    (tmp_path / "my-sets").mkdir()
    for i in range(10):  # ten short phrases of one's own
        t, notes = 0, []
        for _ in range(48):
            d = rng.choice([6, 12, 24])
            notes.append(Note(t, t + d, rng.randint(55, 79), rng.randint(60, 100)))
            t += d
        write_midi(tmp_path / "my-sets" / f"set{i}.mid", Score(notes=notes, end_tick=t))
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "improv-base").symlink_to(SHIPPED)
    data = _run("improv data --midi ~/my-sets --style mine --out ~/.cache/improv/mine",
                tmp_path, timeout=300)
    assert data.returncode == 0, data.stderr
    assert "10 source files" in data.stdout and (tmp_path / ".cache/improv/mine").is_dir()
    train = _run("improv train --from models/improv-base --data ~/my-sets --style mine "
                 "--out models/mine --steps 2 --no-progress", tmp_path, timeout=600)
    assert train.returncode == 0, train.stderr[-2000:]
    assert (tmp_path / "models" / "mine" / "model.onnx").is_file()


@pytest.mark.jack
@pytest.mark.parametrize("cmd", [c for c, how in HOW.items() if how == "jack"])
def test_jam_lines_on_jack(cmd, jack_backend, tmp_path):
    ports = []
    if "Keystation" in cmd:  # stand-ins for the README's keyboard and synth
        ports.append(jack_backend.open_output("Keystation", virtual=True, client_name="ks"))
        ports.append(jack_backend.open_input("FluidSynth", virtual=True, client_name="fs"))
    line = cmd.replace("--seconds 600", "--seconds 2") + " --backend jack"
    if "--no-tui" not in line:
        line += " --no-tui --seconds 2"
    try:
        r = _run(line + " --no-record", tmp_path, timeout=120)
    finally:
        for p in ports:
            p.close()
    assert r.returncode == 0, r.stdout + r.stderr
    assert "listening on" in r.stderr and "Traceback" not in r.stderr


def test_the_trip_of_a_note_points_at_the_functions_it_names():
    """"How it is built" names `file.py:LINE` `Function` for each hop: each must still be the
    line where that function starts (code moves; the README must move with it)."""
    text = README.read_text()
    refs = re.findall(r"`((?:live|core|learn|stage)/[\w/]+\.py):(\d+)`(?: `([\w.]+)`)?", text)
    assert len(refs) >= 20
    root = ROOT / "improv"
    wrong = []
    for path, line, name in refs:
        got = (root / path).read_text().split("\n")[int(line) - 1].strip()
        if not got.startswith(("def ", "async def ")) or (name and name.split(".")[-1] not in got):
            wrong.append(f"{path}:{line} {name or ''}: {got[:60]!r}")
    assert not wrong, "\n".join(wrong)
