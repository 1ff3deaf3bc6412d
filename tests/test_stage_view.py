"""The stage view: whose turn and the countdown, the planned answer on the roll before it
sounds, the help screen made from the bindings, and the session side of it (what a real
session publishes while it counts in, trades and answers)."""

from __future__ import annotations

from dataclasses import replace

import mido
from test_tui import FakeSession, make_app, on_screen, sync, until

from improv.core.presets import apply_overrides
from improv.live.engine import Engine
from improv.live.session_api import NoteHistory, NoteView, Snapshot, State
from improv.live.simulate import Script, run, sim_session
from improv.stage.screens import HelpScreen, help_rows
from improv.stage.tui import ImprovApp
from improv.stage.turn import big_text, boxes, turn_view
from improv.stage.widgets import key_label


def trading(beat: float) -> Snapshot:
    """A two-bar trading call from beat 32 to the hand-over at 40."""
    return Snapshot(state=State.LISTENING, beat=beat, countdown=(32.0, 40.0),
                    knobs={"call_bars": 2.0}, notes=(NoteView("human", 62, 32.0, 33.0),))


# --- whose turn -------------------------------------------------------------------------------


def test_turn_view_counts_down_bars_and_beats_to_the_hand_over():
    v = turn_view(trading(34.5))
    assert (v.turn, v.label) == ("your-turn", "YOUR TURN")
    assert v.detail == "1 bar 2 beats left to the hand-over"
    assert boxes(v) == [False] * 2 + [True] * 6
    assert turn_view(trading(39.2)).detail == "1 beat left to the hand-over"
    count = Snapshot(beat=2.5, count_in_until=8.0, countdown=(0.0, 8.0))
    assert turn_view(count).label == "COUNT-IN"
    assert turn_view(count).detail == "1 bar 2 beats left · you play from bar 3"
    answer = Snapshot(state=State.RESPONDING, beat=41.0, countdown=(40.0, 48.0))
    assert turn_view(answer).label == "ANSWERING"
    assert turn_view(answer).detail == "1 bar 3 beats left · play to take over"
    long = turn_view(Snapshot(state=State.RESPONDING, beat=40.0, countdown=(40.0, 104.0)))
    assert len(boxes(long)) == 16, "sixteen bars: a box a bar"
    free = turn_view(Snapshot(state=State.LISTENING))
    assert free.left is None and not boxes(free) and "bar line you end on" in free.detail


def test_big_text_is_three_even_lines():
    rows = big_text("YOUR TURN")
    assert len(rows) == 3 and len({len(r) for r in rows}) == 1
    assert rows[0].startswith("╻ ╻ ┏━┓")


@sync
async def test_the_big_state_follows_the_countdown_and_is_big_when_tall():
    fake = FakeSession(trading(34.5))
    app = make_app(fake)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: "YOUR TURN" in on_screen(app))
        screen = on_screen(app)
        assert "○ ○ ● ●  ● ● ● ●" in screen and "1 bar 2 beats left to the hand-over" in screen
        assert app.query_one("#turn").has_class("-your-turn")
        fake.snap = replace(fake.snap, state=State.RESPONDING, beat=41.0, countdown=(40.0, 48.0))
        await until(pilot, lambda: "ANSWERING" in on_screen(app))
        assert "1 bar 3 beats left · play to take over" in on_screen(app)
        assert app.query_one("#turn").has_class("-answering")
    app = make_app(FakeSession(trading(34.5)))
    async with app.run_test(size=(160, 48)) as pilot:
        await until(pilot, lambda: big_text("YOUR TURN")[1] in on_screen(app))
        assert "██" in on_screen(app) and "░░" in on_screen(app)


# --- the planned answer ----------------------------------------------------------------------


@sync
async def test_the_planned_answer_is_drawn_before_it_sounds():
    planned = (NoteView("machine", 67, 41.0, 41.75), NoteView("machine", 69, 42.0, None))
    fake = FakeSession(Snapshot(state=State.THINKING, beat=40.2, notes=planned,
                                countdown=(36.0, 41.0), answer_span=(41.0, 49.0)))
    app = make_app(fake)
    async with app.run_test(size=(80, 24)) as pilot:
        roll = app.query_one("#roll")

        def roll_text() -> str:
            region = roll.content_region
            rows = on_screen(app).split("\n")[region.y:region.bottom]
            return "\n".join(r[region.x:region.right] for r in rows)

        await until(pilot, lambda: roll_text().count("□") == 2)
        assert "■" not in roll_text(), "planned: drawn ahead of the playhead, not as sounding"
        ruler = roll_text().split("\n")[0]
        assert "▼" in ruler and "▁" in ruler  # the playhead and the answer's span
        head = ruler.index("▼")
        assert all(row.index("□") > head for row in roll_text().split("\n") if "□" in row)
        # the clock moves on: the first note is under the playhead and sounds, the second
        # is still ahead
        fake.snap = replace(fake.snap, state=State.RESPONDING, beat=41.6, countdown=(41.0, 49.0))
        await until(pilot, lambda: roll_text().count("□") == 1 and "■" in roll_text())
        fake.snap = replace(fake.snap, beat=42.5)
        await until(pilot, lambda: "□" not in roll_text() and roll_text().count("■") == 2)


def test_the_history_takes_back_what_a_cut_answer_will_not_play():
    h = NoteHistory()
    h.on("human", 60, 1.0)
    h.on("machine", 67, 4.0)
    h.off("machine", 67, 5.0)
    h.on("machine", 69, 5.0)  # sounding when the answer is cut
    h.on("machine", 71, 6.0)  # planned
    h.off("human", 60, 2.0)
    h.cut("machine", 5.5)
    assert h.recent() == (NoteView("human", 60, 1.0, 2.0), NoteView("machine", 67, 4.0, 5.0),
                          NoteView("machine", 69, 5.0, 5.5))
    h.off("machine", 69, 7.0)  # a late note-off of a cut note changes nothing
    assert h.recent()[-1].end == 5.5


def test_a_session_publishes_its_countdown_and_planned_notes(tiny_model_dir, library):
    engine = Engine(tiny_model_dir, provider="cpu", background=False)
    p = apply_overrides(library.by_number(1), humanize_ms=0.0, swing=0.0, call_bars=1,
                        count_in=1)
    s, sim, clock, sched = sim_session(engine, library, p, 120.0)
    s.tick_once(0)
    listen = s.click.listen_at
    beat_s = 60.0 / clock.bpm
    start = clock.tick_to_time(listen) - sim.t + 0.01
    events = [(start + i * beat_s / 2, mido.Message("note_on" if i % 2 == 0 else "note_off",
                                                    note=60 + 2 * (i // 2), velocity=80))
              for i in range(6)]
    snaps: list[Snapshot] = []
    run(s, sim, sched, Script(events, stop_at=start + 4 * 4 * beat_s),
        check=lambda sess, _: snaps.append(sess.snapshot()))
    bt = clock.beat_ticks
    assert any(x.count_in_until == listen / bt for x in snaps)
    calls = [x for x in snaps if x.state == State.LISTENING and x.countdown is not None]
    assert calls and calls[0].countdown == (listen / bt, listen / bt + 4)  # one bar, traded
    answering = [x for x in snaps if x.answer_span is not None]
    assert answering and answering[0].answer_span == (listen / bt + 4, listen / bt + 8)
    # the answer's last beat sounds after the session is done with it: still counted down
    tail = [x for x in answering if x.state == State.IDLE]
    assert tail and all(x.beat < listen / bt + 8 and x.countdown == answering[0].answer_span
                        for x in tail)
    assert turn_view(tail[0]).label == "ANSWERING"
    # the machine's notes reach the snapshot as they are generated, before they sound
    ahead = [n for x in answering for n in x.notes if n.who == "machine" and n.start > x.beat]
    assert ahead, "no planned note was ever published ahead of the playhead"


# --- help ---------------------------------------------------------------------------------------


@sync
async def test_help_lists_every_binding_and_closes():
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("f1")
        await until(pilot, lambda: isinstance(app.screen, HelpScreen))
        screen = on_screen(app)
        lines = screen.split("\n")
        for b in ImprovApp.BINDINGS:
            assert b.description, f"{b.key} has no description for the help screen"
            for key in b.key.split(","):
                label = key_label(key)
                assert any(label in line and b.description in line for line in lines), \
                    f"{label} ({b.description}) is not on the help screen"
        assert app.session.sent == [], "keys on the help screen are not sent"
        await pilot.press("escape")
        await until(pilot, lambda: not isinstance(app.screen, HelpScreen))
        await pilot.press("question_mark")
        await until(pilot, lambda: isinstance(app.screen, HelpScreen))
        await pilot.press("question_mark")
        await until(pilot, lambda: not isinstance(app.screen, HelpScreen))


def test_help_rows_come_from_the_bindings_so_they_cannot_drift():
    rows = dict((d, k) for k, d in help_rows(ImprovApp.BINDINGS))
    assert rows["preset"] == "1 2 3 4 5 6 7 8 9"
    assert rows["panic"] == "esc F12" and rows["help"] == "F1 ?"
    assert rows["temp"] == "T t" and rows["tempo"] == "+ = -"
    assert "!" not in " ".join(rows.values()), "shift+1 is preset 1's key, never panic"


@sync
async def test_the_key_bar_shows_every_shown_binding():
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        bar = app.query_one("#keys").render().plain
        for b in ImprovApp.BINDINGS:
            if b.show:
                assert f"{b.key_display or b.key} {b.description}" in bar


def test_a_barge_in_takes_the_planned_notes_off_the_roll(tiny_model_dir, library):
    engine = Engine(tiny_model_dir, provider="cpu", background=False)
    p = apply_overrides(library.by_number(1), humanize_ms=0.0, swing=0.0, call_bars=1,
                        response_bars=4, mode="call_response")
    s, sim, clock, sched = sim_session(engine, library, p, 120.0)
    origin = clock.next_bar(clock.now_tick() + 1)
    t_bar = clock.tick_to_time(origin) - sim.t
    events = [(t_bar + i * 0.25, mido.Message("note_on" if i % 2 == 0 else "note_off",
                                              note=60 + i, velocity=80)) for i in range(6)]
    run(s, sim, sched, Script(events, stop_at=t_bar + 2.0 + 1.3))  # into the answer
    assert s.state == State.RESPONDING
    bt, now = clock.beat_ticks, s.now_tick()
    # what the answering loop does with each note it generates, a beat ahead: the tiny random
    # model may generate none just here, so two are placed as it would place them
    s.out.note("machine", 70, 80, now - bt / 2)  # sounding
    s.out.note("machine", 74, 80, now + bt / 2)  # planned
    s.publish(force=True)
    assert any(n.pitch == 74 and n.start > s.snapshot().beat for n in s.snapshot().notes)
    s.submit(mido.Message("note_on", note=72, velocity=90))  # the player comes in
    s.tick_once(0)
    s.publish(force=True)
    cut = s.now_tick() / bt
    machine = [n for n in s.snapshot().notes if n.who == "machine"]
    assert machine and all(n.start <= cut and n.end is not None and n.end <= cut
                           for n in machine), (cut, machine[-3:])
    assert 74 not in {n.pitch for n in machine} and 70 in {n.pitch for n in machine}
    span = s.snapshot().answer_span
    assert span is None or span[1] <= cut


@sync
async def test_the_latency_panel_says_where_the_model_runs():
    from improv.live.session_api import Latency

    fake = FakeSession(Snapshot(latency=Latency(0.3, 0.9, 0.1, 900.0, provider="cpu")))
    app = make_app(fake)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: "900 tok/s on cpu" in on_screen(app))
        fake.snap = replace(fake.snap, latency=Latency(0.1, 0.2, 0.1, 5000.0, provider="cuda"))
        await until(pilot, lambda: "5000 tok/s on cuda" in on_screen(app))


def test_a_session_publishes_its_engines_provider(tiny_model_dir):
    from improv.live.publisher import Publisher

    engine = Engine(tiny_model_dir, provider="cpu")
    s, _, _, _ = sim_session(engine, None, None, 120.0)
    assert isinstance(s.out, Publisher)
    s.publish(force=True)
    assert s.snapshot().latency.provider == "cpu"
