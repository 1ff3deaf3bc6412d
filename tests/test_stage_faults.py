"""A hostile stage, end to end over JACK: `improv jam` in its own process against a feedback
loop, a keyboard and a synth that restart, thru of the player's pedal, a MIDI flood."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import mido
import pytest
from jack_player import Keys  # tests/ is on the path (pytest's rootdir import mode)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/ (the Listener)
from bench.trading import Listener  # noqa: E402

pytestmark = pytest.mark.jack

MUSIC = ("--set", "humanize_ms=0", "--set", "swing=0", "--set", "silence_beats=1",
         "--set", "response_bars=1", "--set", "response_start=beat", "--set", "density=0.6")


class Jam:
    """`improv jam --no-tui` on JACK in a subprocess, its output lines as they come."""

    def __init__(self, model_dir, *args: str, seconds: float = 60) -> None:
        cmd = [sys.executable, "-m", "improv", "jam", "--no-tui", "--backend", "jack",
               "--model", str(model_dir), "--seconds", str(seconds), "--seed", "3", *args]
        self.env = dict(os.environ, JACK_NO_START_SERVER="1")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, env=self.env)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=lambda: self.lines.extend(self.proc.stdout),
                                        daemon=True)
        self._reader.start()
        self.wait_line("state:", 30)

    @property
    def text(self) -> str:
        return "".join(self.lines)

    def wait_line(self, part: str, timeout: float) -> float:
        """Seconds until a line containing ``part`` appears (AssertionError after timeout)."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if any(part in x for x in list(self.lines)):
                return time.monotonic() - t0
            if self.proc.poll() is not None:
                break
            time.sleep(0.01)
        raise AssertionError(f"no line with {part!r} within {timeout} s:\n{self.text}")

    def count(self, part: str) -> int:
        """Headless lines (stamped with the beat) containing ``part``."""
        return sum(part in x and x.startswith("[") for x in list(self.lines))

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(timeout=5)
        return self.proc.returncode


@contextlib.contextmanager
def played(jam: Jam, tag: str):
    """An ear on the jam's output and a keyboard into its input, probed before it plays;
    both closed, then the jam stopped, however the test ends."""
    ear = keys = None
    try:
        ear = Listener(f"improv out {tag}", client=f"ear{tag}")
        keys = Keys(f"improv in {tag}")
        assert keys.probe()
        yield ear, keys
    finally:
        for port in (keys, ear):
            if port is not None:
                port.close()
        jam.stop()


def play_call(keys: Keys, pitches=(60, 62, 64, 65), step: float = 0.15) -> None:
    for p in pitches:
        keys.send(mido.Message("note_on", note=p, velocity=90))
        time.sleep(step)
        keys.send(mido.Message("note_off", note=p, velocity=0))
        time.sleep(0.03)


def note_ons(ear: Listener, after: float = 0.0) -> list[float]:
    return [t for t, m in ear.copy() if m.type == "note_on" and m.velocity > 0 and t >= after]


def unended(ear: Listener) -> set[tuple[int, int]]:
    sounding: set[tuple[int, int]] = set()
    for _, m in ear.copy():
        if m.type == "note_on" and m.velocity > 0:
            sounding.add((m.channel, m.note))
        elif m.type in ("note_on", "note_off"):
            sounding.discard((m.channel, m.note))
    return sounding


def wait_for(pred, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.01)
    return bool(pred())


def full_names(part: str) -> list[str]:
    done = subprocess.run(["jack_lsp"], capture_output=True, text=True, timeout=10)
    return [n for n in done.stdout.splitlines() if n.endswith(part)]


@pytest.mark.parametrize("thru", [False, True], ids=["plain", "thru"])
def test_a_feedback_loop_is_recognised_no_storm_no_self_interruption(
        jack_backend, tiny_model_dir, thru):
    tag = f"fb{os.getpid()}{int(thru)}"
    jam = Jam(tiny_model_dir, "--virtual", "--in", f"improv in {tag}", "--out",
              f"improv out {tag}", *MUSIC, *(["--thru"] if thru else []))
    with played(jam, tag) as (ear, keys):
        (out_port,), (in_port,) = full_names(f":improv out {tag}"), full_names(f":improv in {tag}")
        subprocess.run(["jack_connect", out_port, in_port], check=True, timeout=10)
        play_call(keys)
        jam.wait_line("feedback loop", 10)
        time.sleep(10.0 if thru else 6.0)
        heard = ear.copy()
        per_s = len(heard) / 10.0
        assert per_s < 60, f"{len(heard)} messages: a storm"
        assert jam.count("call ended") == 1, jam.text  # its own echo never became a call
        assert jam.count("feedback loop") == 1
        # said once, labelled with the beat (not a second, unlabelled copy from the logger)
        assert sum("feedback loop" in x for x in jam.lines) == 1, jam.text
        assert note_ons(ear), f"no answer:\n{jam.text}"
    assert not unended(ear)


def test_thru_passes_the_players_sustain_pedal_and_bend(jack_backend, tiny_model_dir):
    tag = f"th{os.getpid()}"
    jam = Jam(tiny_model_dir, "--virtual", "--in", f"improv in {tag}", "--out",
              f"improv out {tag}", "--thru", *MUSIC)
    with played(jam, tag) as (ear, keys):
        keys.send(mido.Message("control_change", control=64, value=127))
        keys.send(mido.Message("pitchwheel", pitch=2000))
        keys.send(mido.Message("control_change", control=64, value=0))
        assert wait_for(lambda: sum(m.type == "control_change" and m.control == 64
                                    for _, m in ear.copy()) == 2, 3.0), ear.copy()
        assert any(m.type == "pitchwheel" and m.pitch == 2000 for _, m in ear.copy())


def _virtual_out(name: str):
    import rtmidi

    rt = rtmidi.MidiOut(rtapi=rtmidi.API_UNIX_JACK, name=name.replace(" ", ""))
    rt.open_virtual_port(name)
    return rt


def test_a_restarted_keyboard_and_synth_are_reconnected_within_a_second(
        jack_backend, tiny_model_dir):
    tag = f"rc{os.getpid()}"
    keyboard = _virtual_out(f"keys {tag}")
    import rtmidi

    def start_synth():
        rt = rtmidi.MidiIn(rtapi=rtmidi.API_UNIX_JACK, name=f"synth{tag}")
        rt.ignore_types(sysex=True, timing=True, active_sense=True)
        rt.open_virtual_port(f"synth {tag}")
        return rt

    synth = start_synth()
    jam = Jam(tiny_model_dir, "--in", f"keys {tag}", "--out", f"synth {tag}", *MUSIC)
    try:
        for restart, role in (("keyboard", "input"), ("synth", "output")):  # killed, restarted
            if restart == "keyboard":
                keyboard.send_message([0x90, 60, 90])  # unplugged with a key held
                time.sleep(0.2)
                keyboard.close_port()
                keyboard.delete()
                jam.wait_line(f"keys {tag}: unplugged", 5)
                # The held key is let go: the call ends on silence, not after 8 bars.
                assert jam.wait_line("call ended (silence)", 3.0) < 3.0
                time.sleep(0.3)
                keyboard = _virtual_out(f"keys {tag}")
            else:
                synth.close_port()
                synth.delete()
                jam.wait_line(f"synth {tag}: unplugged", 5)
                time.sleep(0.3)
                synth = start_synth()
            port = "keys" if restart == "keyboard" else "synth"
            took = jam.wait_line(f"{port} {tag}: back", 5)
            assert any(f"] {role} " in x and f"{port} {tag}: back" in x
                       for x in jam.lines)  # said as the input's / the output's
            assert took < 1.0, f"{restart} reconnected after {took:.2f} s"
        # Both connections carry music again: a call on the new keyboard, its answer heard
        # on the new synth.
        time.sleep(0.2)
        while synth.get_message() is not None:
            pass
        for p in (60, 64, 67, 72):
            keyboard.send_message([0x90, p, 90])
            time.sleep(0.15)
            keyboard.send_message([0x80, p, 0])
        deadline = time.monotonic() + 10
        answered = False
        while time.monotonic() < deadline and not answered:
            got = synth.get_message()
            if got is None:
                time.sleep(0.01)
            else:
                answered = got[0][0] & 0xF0 == 0x90 and got[0][2] > 0
        assert answered, jam.text
    finally:
        jam.stop()
        keyboard.delete()
        synth.delete()


def test_a_flood_is_shed_answers_come_back_within_a_second_nothing_is_lost_or_stuck(
        jack_backend, tiny_model_dir, tmp_path):
    tag = f"fl{os.getpid()}"
    record = tmp_path / "flood.mid"
    jam = Jam(tiny_model_dir, "--virtual", "--in", f"improv in {tag}", "--out",
              f"improv out {tag}", "--bpm", "200", "--record", str(record), *MUSIC)
    sent = 0
    with played(jam, tag) as (ear, keys):
        t0 = time.monotonic()
        i = 0
        while time.monotonic() - t0 < 2.0:  # 5,000 events a second: a note every 0.4 ms
            due = t0 + i * 0.0002
            while time.monotonic() < due:
                pass
            pitch = 36 + (i // 2) % 48
            keys.send(mido.Message("note_on", note=pitch, velocity=80 if i % 2 == 0 else 0))
            i += 1
        if i % 2:
            keys.send(mido.Message("note_on", note=36 + (i // 2) % 48, velocity=0))
            i += 1
        sent = i // 2
        flood_end = time.monotonic()
        assert wait_for(lambda: note_ons(ear, flood_end), 5.0), jam.text
        back = note_ons(ear, flood_end)[0] - flood_end
        print(f"{sent} notes in 2 s; first answer note {back * 1000:.0f} ms after the flood")
        assert back < 1.0 + 0.3 + 0.15, back  # silence (1 beat) + the next beat + lead
        time.sleep(1.5)
    assert jam.proc.returncode == 0, jam.text
    assert not unended(ear)
    human = [m for m in mido.MidiFile(record).tracks[1] if m.type == "note_on" and m.velocity]
    played_pitches = [36 + k % 48 for k in range(sent)]
    recorded = [m.note for m in human]
    pairs = zip(recorded, played_pitches, strict=False)
    first_diff = next((k for k, (a, b) in enumerate(pairs) if a != b), None)
    assert len(human) == sent, (f"{len(human)} of {sent} played notes recorded; first "
                                f"difference at note {first_diff}: "
                                f"{recorded[first_diff - 3:first_diff + 6] if first_diff else ''}"
                                f"\n{jam.text}")
    assert "dropped" in jam.text


def test_panic_by_cc_123_and_by_sigusr1_stops_the_answer_until_the_next_call(
        jack_backend, tiny_model_dir):
    tag = f"pa{os.getpid()}"
    jam = Jam(tiny_model_dir, "--virtual", "--in", f"improv in {tag}", "--out",
              f"improv out {tag}", *MUSIC, "--set", "response_bars=4", "--set", "density=1")
    with played(jam, tag) as (ear, keys):
        for how in ("cc123", "sigusr1"):
            start = time.monotonic()
            play_call(keys)
            assert wait_for(lambda s=start: note_ons(ear, s), 10.0), jam.text
            time.sleep(0.3)  # mid-answer
            panicked = time.monotonic()
            if how == "cc123":
                keys.send(mido.Message("control_change", control=123, value=0))
            else:
                jam.proc.send_signal(signal.SIGUSR1)
            time.sleep(2.0)  # a 4-bar answer would still be playing
            late = [t - panicked for t in note_ons(ear, panicked + 0.02)]
            assert not late, f"{how}: machine note-ons {late} s after the panic\n{jam.text}"
            assert not unended(ear), how
        assert jam.count("panic") >= 2, jam.text
    assert jam.proc.returncode == 0, jam.text


def test_a_program_change_flood_neither_stalls_nor_aborts_the_set(jack_backend, tiny_model_dir):
    tag = f"pc{os.getpid()}"
    jam = Jam(tiny_model_dir, "--virtual", "--in", f"improv in {tag}", "--out",
              f"improv out {tag}", "--program-change", *MUSIC)
    with played(jam, tag) as (ear, keys):
        t0 = time.monotonic()
        i = 0
        while time.monotonic() - t0 < 2.0:  # 1,000 program changes a second
            keys.send(mido.Message("program_change", program=i % 8))
            i += 1
            time.sleep(0.001)
        end = time.monotonic()
        play_call(keys)
        assert wait_for(lambda: note_ons(ear, end), 5.0), f"no answer after the flood\n{jam.text}"
    code = jam.proc.returncode
    assert code == 0 and "terminate called" not in jam.text, jam.text
