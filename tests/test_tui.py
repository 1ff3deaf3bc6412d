"""The stage UI: keys send intents, the screen follows snapshots, and two screenshots.

A FakeSession records intents and serves a snapshot the test replaces, the way the real session
publishes a new one after applying an intent. Screenshots: tests/__snapshots__/test_tui/*.svg
(regenerate with ``pytest tests/test_tui.py --snapshot-update`` and look at them).
"""

from __future__ import annotations

import asyncio
import functools
import io
import logging
import re
import threading
from dataclasses import replace

import pytest
from rich.text import Text
from textual.widgets import OptionList

from improv.core.presets import PresetLibrary
from improv.live.session_api import (
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
    SetMode,
    Snapshot,
    State,
    Stop,
    TapTempo,
)
from improv.stage.screens import QuitScreen
from improv.stage.tui import ImprovApp
from improv.stage.widgets import KnobView, PortsScreen

NAMES = ("ballad", "celtic-reel", "chorale", "classical", "folk-song", "renaissance", "runs")


def fixed_notes(now: float) -> tuple[NoteView, ...]:
    """Two bars of call and two of answer, repeating; the last human note still sounding; the
    answer generated a beat ahead of now (planned, not sounding yet)."""
    notes = []
    for phrase in range(3):
        base = phrase * 16
        for i, step in enumerate((0, 4, 7, 12, 7, 4, 2, 0)):
            notes.append(NoteView("human", 60 + step, base + i, base + i + 0.9))
            if i % 4 == 0:
                notes.append(NoteView("human", 48 + step, base + i, base + i + 3.5))
        for i, step in enumerate((12, 11, 7, 9, 5, 4, 2, 0, 4, 7)):
            start = base + 8.5 + i * 0.75
            notes.append(NoteView("machine", 64 + step, start, start + 0.5))
    notes.append(NoteView("human", 72, now - 0.75, None))
    return tuple(n for n in notes if n.start < now + 1.0)


def fixed_snapshot() -> Snapshot:
    now = 41.5
    return Snapshot(
        state=State.RESPONDING, beat=now, bpm=96.0, meter=(4, 4), clock_source="internal",
        preset="chorale", preset_number=3, presets=NAMES,
        knobs={"temperature": 0.9, "top_p": 0.95, "density": -0.25, "response_bars": 4.0,
               "call_bars": 0.0, "silence_beats": 2.0, "bpm": 96.0},
        mode="call_response", key="auto", key_detected="G major",
        ports=(PortView("in", "Keystation 49 MkII", True),
               PortView("out", "improv out", True, virtual=True)),
        latency=Latency(4.2, 9.8, 0.7, 231.0, late=1, dropped=0),
        notes=fixed_notes(now), bindings={"density": 1, "temperature": 74},
        recording="/home/player/improv/2024-05-01-2130.mid",
        click=True, countdown=(40.0, 48.0), answer_span=(40.0, 48.0),
    )


class FakeSession:
    def __init__(self, snap: Snapshot | None = None, log: list[str] | None = None):
        self.snap = snap or fixed_snapshot()
        self.sent: list = []
        self.log = list(log or [])

    def snapshot(self) -> Snapshot:
        return self.snap

    def send(self, intent) -> None:
        self.sent.append(intent)

    def drain_log(self) -> list[str]:
        out, self.log = self.log, []
        return out


def sync(test):
    """Run an async pilot test with asyncio.run (no pytest-asyncio needed)."""

    @functools.wraps(test)
    def run():
        asyncio.run(test())

    return run


def make_app(session=None) -> ImprovApp:
    session = session or FakeSession(log=["model: tiny-folk.onnx (CPU)", "listening on Keystation"])
    return ImprovApp(session, list_ports=lambda: (["Keystation 49 MkII", "Through"],
                                                 ["Synth A", "Through"]))


def shown(widget) -> str:
    """What the widget would draw now (its render), for widgets off the main screen."""
    rendered = widget.render()
    return rendered.plain if isinstance(rendered, Text) else str(rendered)


def on_screen(app) -> str:
    """The characters on the terminal, as composed (stale if a panel failed to repaint)."""
    return "\n".join(strip.text for strip in app.screen._compositor.render_strips())


async def until(pilot, condition, tries: int = 100) -> None:
    """Let the app's own polling run until ``condition()`` holds (fails if it never does)."""
    for _ in range(tries):
        if condition():
            return
        await pilot.pause(0.02)
    assert condition()


# --- keys -> intents, snapshots -> screen --------------------------------------------------


@sync
async def test_knob_keys_send_nudges_and_the_screen_follows_the_snapshot():
    app = make_app()
    fake = app.session
    async with app.run_test(size=(80, 24)) as pilot:
        assert "temp        0.90" in on_screen(app) and "cc74" in on_screen(app)
        await pilot.press("T")
        assert fake.sent == [NudgeKnob("temperature", 1)]
        await pilot.pause()
        assert "temp        0.90" in on_screen(app), "the UI shows the session's value, not a guess"
        fake.snap = replace(fake.snap, knobs={**fake.snap.knobs, "temperature": 0.95})
        await until(pilot, lambda: "temp        0.95" in on_screen(app))
        for key in ("t", "p", "P", "d", "D", "r", "R", "s", "S", "minus", "plus"):
            await pilot.press(key)
        assert fake.sent[1:] == [
            NudgeKnob("temperature", -1), NudgeKnob("top_p", -1), NudgeKnob("top_p", 1),
            NudgeKnob("density", -1), NudgeKnob("density", 1),
            NudgeKnob("response_bars", -1), NudgeKnob("response_bars", 1),
            NudgeKnob("silence_beats", -1), NudgeKnob("silence_beats", 1),
            NudgeKnob("bpm", -1), NudgeKnob("bpm", 1),
        ]


@sync
async def test_arrows_pick_and_turn_the_focused_knob():
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        assert app.focused.knob == "temperature"
        await pilot.press("down", "down", "right", "left", "up", "up", "up")
        assert app.session.sent == [NudgeKnob("density", 1), NudgeKnob("density", -1)]
        assert app.focused.knob == "bpm", "focus wraps around"


@sync
async def test_preset_keys_select_by_number():
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("3", "1", "9")
        assert app.session.sent == [SelectPreset(3), SelectPreset(1)]  # there is no preset 9
        log = "\n".join(str(line.text) for line in app.query_one("#log").lines)
        assert "no preset 9" in log
        screen = on_screen(app)
        assert "▶3 chorale" in screen and " 1 ballad" in screen and " 7 runs" in screen
        app.session.snap = replace(app.session.snap, preset="ballad", preset_number=1)
        await until(pilot, lambda: "▶1 ballad" in on_screen(app))
        assert "▶3" not in on_screen(app)


@sync
async def test_midi_learn_on_the_focused_knob():
    app = make_app()
    fake = app.session
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("down", "l")
        assert fake.sent == [Learn("top_p")]
        top_p = app.query_one("#knob-top_p", KnobView)
        fake.snap = replace(fake.snap, learning="top_p")
        await until(pilot, lambda: "learn…" in on_screen(app))
        assert "learn…" in shown(top_p) and "learn top-p: turn a control" in on_screen(app)
        await pilot.press("escape")  # while learning, escape cancels it (no panic)
        assert fake.sent[-1] == Learn(None)
        await pilot.press("l")  # as l on the knob being learned does
        assert fake.sent[-1] == Learn(None) and Panic() not in fake.sent
        fake.snap = replace(fake.snap, learning=None, bindings={**fake.snap.bindings, "top_p": 21})
        await until(pilot, lambda: "cc21" in on_screen(app))
        assert "learn" not in shown(top_p) and "learn top-p" not in on_screen(app)
        await pilot.press("escape")  # and otherwise panics
        assert fake.sent[-1] == Panic()


@sync
async def test_mode_key_lock_tap_click_panic():
    app = make_app(FakeSession(replace(fixed_snapshot(), click=False)))
    fake = app.session
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("m", "k", "space", "c", "escape", "f12")
        assert fake.sent == [SetMode("overlap"), SetKey("G major"), TapTempo(), SetClick(True),
                             Panic(), Panic()]
        await pilot.press("exclamation_mark")  # shift+1 is preset 1's key: no panic there
        assert fake.sent[-1] == Panic() and len(fake.sent) == 6
        fake.snap = replace(fake.snap, click=True)
        await until(pilot, lambda: "♩ click" in on_screen(app))
        await pilot.press("c")
        assert fake.sent[-1] == SetClick(False)
        fake.snap = replace(fake.snap, mode="overlap", key="G major")
        await until(pilot, lambda: "mode overlap  key G major" in on_screen(app))
        await pilot.press("m", "k")
        assert fake.sent[-2:] == [SetMode("call_response"), SetKey("off")]


@sync
async def test_quit_asks_before_it_ends_the_set():
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("q")
        await until(pilot, lambda: isinstance(app.screen, QuitScreen))
        assert "End the set?" in on_screen(app) and app.session.sent == []
        await pilot.press("n")  # play on
        await until(pilot, lambda: not isinstance(app.screen, QuitScreen))
        assert app.session.sent == [] and app.return_code is None
        await pilot.press("q", "escape")  # escape plays on too (and is no panic here)
        await until(pilot, lambda: not isinstance(app.screen, QuitScreen))
        assert app.session.sent == []
        await pilot.press("q")
        await until(pilot, lambda: isinstance(app.screen, QuitScreen))
        await pilot.press("y")
        await pilot.pause()
        assert app.session.sent == [Stop()]
    assert app.return_code == 0


@sync
async def test_quit_in_an_attached_ui_only_detaches():
    app = ImprovApp(FakeSession(), quit_ends_set=False)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("q")
        await pilot.pause()
        assert app.session.sent == []
    assert app.return_code == 0


@sync
async def test_the_app_exits_saying_why_when_the_jam_is_gone():
    fake = FakeSession()
    app = make_app(fake)
    async with app.run_test(size=(80, 24)) as pilot:
        fake.gone, fake.ended = "the jam went away", False  # what a RemoteSession says
        await until(pilot, lambda: app.return_code is not None)
    assert app.return_code == 1 and fake.sent == []


def options(screen, role: str) -> list[str]:
    view = screen.query_one(f"#ports-{role}", OptionList)
    return [Text.from_markup(o.prompt).plain if isinstance(o.prompt, str) else o.prompt.plain
            for o in view.options]


def port_lists(seen_threads: list | None = None):
    def list_ports():
        if seen_threads is not None:
            seen_threads.append(threading.current_thread())
        return ["Keystation 49 MkII", "Through"], ["Synth A", "Through"]

    return list_ports


@sync
async def test_ports_screen_enter_selects_the_highlighted_output():
    threads: list = []
    app = ImprovApp(FakeSession(), list_ports=port_lists(threads))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("o")
        screen = app.screen
        assert isinstance(screen, PortsScreen)
        await until(pilot, lambda: "Synth A" in on_screen(app))
        assert threads and threads[0] is not threading.main_thread(), "scanned off the UI thread"
        ins, outs = options(screen, "in"), options(screen, "out")
        assert ins == ["● Keystation 49 MkII  in use", "  Through"]
        # our own virtual output is not in the backend's list: shown and marked, not pickable
        assert outs == ["● improv out (virtual)  in use", "  Synth A", "  Through"]
        assert screen.query_one("#ports-out", OptionList).get_option_at_index(0).disabled
        screen_text = on_screen(app)  # both lists and the hint fit at 80x24
        assert all(w in screen_text for w in ("inputs", "outputs", "Through", "enter use port"))
        await pilot.press("tab", "down", "enter")
        assert app.session.sent == [SelectPort("out", "Through")]
        await pilot.pause()
        assert not isinstance(app.screen, PortsScreen)


@sync
async def test_ports_screen_starts_on_the_port_in_use_and_picks_an_input():
    app = ImprovApp(FakeSession(), list_ports=lambda: (["Other", "Keystation 49 MkII"], ["X"]))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("o")
        await until(pilot, lambda: "Other" in on_screen(app))
        assert app.screen.query_one("#ports-in", OptionList).highlighted == 1
        await pilot.press("up", "enter")
        assert app.session.sent == [SelectPort("in", "Other")]


@sync
async def test_ports_screen_escape_closes_without_sending():
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("o")
        await until(pilot, lambda: "Synth A" in on_screen(app))
        await pilot.press("tab", "down", "escape")
        assert not isinstance(app.screen, PortsScreen)
        assert app.session.sent == []
        await pilot.press("T")  # the main screen has its keys back
        assert app.session.sent == [NudgeKnob("temperature", 1)]


@sync
async def test_ports_screen_marks_follow_the_snapshot_and_scan_errors_are_shown():
    app = make_app()
    fake = app.session
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("o")
        await until(pilot, lambda: "Synth A" in on_screen(app))
        fake.snap = replace(fake.snap, ports=(PortView("in", "Keystation 49 MkII", False),
                                              PortView("out", "Synth A", True)))
        await until(pilot, lambda: "in use, unplugged" in on_screen(app))
        assert options(app.screen, "in")[0] == "○ Keystation 49 MkII  in use, unplugged"
        assert options(app.screen, "out") == ["● Synth A  in use", "  Through"]
        await pilot.press("escape")

    def broken():
        raise OSError("no MIDI backend")

    app = ImprovApp(FakeSession(), list_ports=broken)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("o")
        await until(pilot, lambda: "cannot list MIDI ports: no MIDI backend" in on_screen(app))
        await pilot.press("enter", "escape")
        assert app.session.sent == [] and not isinstance(app.screen, PortsScreen)


@sync
async def test_a_failing_session_is_logged_not_fatal():
    class Broken(FakeSession):
        def send(self, intent):
            raise RuntimeError("queue full")

    app = make_app(Broken())
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("f12")
        log = "\n".join(str(line.text) for line in app.query_one("#log").lines)
        assert "could not send Panic()" in log and "queue full" in log


class TtyStream(io.StringIO):
    """Stands in for the terminal the app draws on (stderr under ``improv jam``)."""

    def isatty(self) -> bool:
        return True


@sync
async def test_log_lines_stay_in_the_log_pane_and_off_the_terminal():
    """``improv jam`` logs to stderr: a session line written there landed over the knobs panel."""
    line = "call ended (silence); answer of 2 bar(s) from bar 9"
    terminal = TtyStream()
    handler = logging.StreamHandler(terminal)  # what logging.basicConfig in jam.py sets up
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    session = FakeSession(log=[])
    app = make_app(session)
    try:
        async with app.run_test(size=(80, 24)) as pilot:
            session.log.append(line)
            logging.getLogger("improv.live.session").info(line)  # Session._say logs it as well
            await until(pilot, lambda: "call ended" in on_screen(app))
            rows = on_screen(app).split("\n")
            assert terminal.getvalue() == ""  # nothing written over the screen
            assert rows[0].startswith("─knobs───")
            # the whole line, wrapped to the pane: no part hidden off to the side
            assert any(r.rstrip().endswith(" bar 9") for r in rows)
            # other warnings go to the pane too, wrapped to the same width once it scrolls
            jam_log = logging.getLogger("improv.commands.jam")
            jam_log.warning("could not save MIDI learn bindings: denied")
            await until(pilot, lambda: "warning: could not save MIDI" in on_screen(app))
            log = app.query_one("#log")
            assert log.virtual_size.width <= log.scrollable_content_region.width
            assert terminal.getvalue() == ""
        logging.getLogger("improv.live.session").info("the set is over")
        assert terminal.getvalue() == "the set is over\n"  # the terminal's again once we quit
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


@sync
async def test_every_panel_follows_the_snapshot():
    """One field at a time, so a panel that misses a change cannot ride on another's repaint."""
    app = make_app()
    fake = app.session
    changes = [
        (dict(state=State.LISTENING, answer_span=None, countdown=None), ["YOUR TURN"]),
        (dict(bpm=132.0), ["132 bpm"]),
        (dict(beat=45.0), ["bar 12.2"]),
        (dict(recording=None), []),
        (dict(latency=Latency(5.5, 12.5, 2.5, 180.0, late=3, dropped=2)),
         ["5.5 med 12.5 p99", "2.5 p99", "180 tok/s", "late 3  dropped 2"]),
        (dict(ports=(PortView("in", "Other Keys", False), PortView("out", "Synth", True))),
         ["in ○ Other Keys", "out ● Synth"]),
        (dict(notes=(NoteView("machine", 84, 44.0, None),)), [r"re:C6 [ ·│]*■━+┃"]),
        (dict(presets=("one", "two")), ["1 one", "2 two"]),
        (dict(mode="overlap", key="off"), ["mode overlap  key off"]),
        (dict(bindings={"bpm": 7}), ["tempo         96 ▰▰▱▱▱▱▱ cc7"]),
    ]
    async with app.run_test(size=(80, 24)) as pilot:
        for change, expected in changes:
            fake.snap = replace(fake.snap, **change)
            for want in expected:
                if want.startswith("re:"):
                    await until(pilot, lambda w=want: re.search(w[3:], on_screen(app), re.M))
                else:
                    await until(pilot, lambda w=want: w in on_screen(app))
        assert "● rec" not in on_screen(app) and "cc74" not in on_screen(app)


def test_preset_names_come_from_a_library_until_the_session_sends_them(tmp_path):
    (tmp_path / "a.toml").write_text('name = "warm"\n')
    (tmp_path / "b.toml").write_text('name = "cool"\n')
    app = ImprovApp(FakeSession(Snapshot()), PresetLibrary([tmp_path]))
    assert app.preset_names == ("warm", "cool")


def test_poll_rate_is_bounded():
    assert make_app().poll_hz <= 30
    assert ImprovApp(FakeSession(), poll_hz=500).poll_hz == 30


def test_demo_session_applies_intents_and_is_deterministic_on_a_frozen_clock():
    from improv.stage.demo import DemoSession

    clock = [10.0]
    demo = DemoSession(clock=lambda: clock[0])
    first = demo.snapshot()
    assert demo.snapshot() == first, "a frozen clock gives the same snapshot"
    demo.send(NudgeKnob("temperature", 1))
    assert demo.snapshot().knobs["temperature"] == pytest.approx(
        first.knobs["temperature"] + 0.05)
    demo.send(Learn("bpm"))
    assert demo.snapshot().learning == "bpm"
    clock[0] += 1.5  # the demo "hears" a CC after a second
    later = demo.snapshot()
    assert later.learning is None and "bpm" in later.bindings and later.beat > first.beat
    clock[0] += 60 / later.bpm * 8  # 8 beats on: into the answer of the first call
    snap = demo.snapshot()
    assert snap.state == State.RESPONDING and snap.countdown == snap.answer_span
    assert any(n.who == "machine" for n in snap.notes)
    assert any(n.who == "machine" and n.start > snap.beat for n in snap.notes), "planned"
    demo.send(SetClick(True))
    assert demo.snapshot().click


def test_demo_session_picks_ports_from_its_own_list():
    from improv.stage.demo import DemoSession

    demo = DemoSession(clock=lambda: 0.0)
    inputs, outputs = demo.list_ports()
    demo.drain_log()
    demo.send(SelectPort("out", outputs[-1]))
    demo.send(SelectPort("in", "no such keyboard"))
    ports = {p.role: p for p in demo.snapshot().ports}
    assert ports["out"] == PortView("out", outputs[-1], True, False)
    assert ports["in"].name != "no such keyboard"
    log = demo.drain_log()
    assert f"output port: {outputs[-1]}" in log and any("no such keyboard" in x for x in log)


# --- screenshots ---------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(80, 24), (160, 48)], ids=["80x24", "160x48"])
def test_main_screen_snapshot(snap_compare, size):
    """An answer: ANSWERING, its bars left, its planned notes ahead of the playhead."""
    assert snap_compare(make_app(), terminal_size=size)


def your_turn() -> Snapshot:
    """Trading two-bar phrases: the player's call, a bar and a half to the hand-over."""
    snap = fixed_snapshot()
    now = 50.5
    notes = tuple(n for n in fixed_notes(now) if n.start < 48.0 or n.who == "human")
    notes += (NoteView("human", 67, 48.0, 49.0), NoteView("human", 71, 49.0, 50.0),
              NoteView("human", 74, 50.0, None))
    return replace(snap, state=State.LISTENING, beat=now, notes=notes, countdown=(48.0, 56.0),
                   answer_span=None, knobs={**snap.knobs, "call_bars": 2.0})


@pytest.mark.parametrize("size", [(80, 24), (160, 48)], ids=["80x24", "160x48"])
def test_your_turn_countdown_snapshot(snap_compare, size):
    assert snap_compare(make_app(FakeSession(your_turn())), terminal_size=size)
