"""Hand-over on time: trading on fixed lines, the predicted phrase end, the answer's length.

Scripted players on simulated time drive a real session (engine, sampler, encoder). Where
the test is about the rules alone, ``handover_threshold = 0`` makes the predictor hand
over whenever the rules let it, so only the rules can keep it quiet; where it is about
the evidence, the shipped model judges.
"""

from __future__ import annotations

import pytest
from helpers import BAR, SHIPPED, Player, Q

from improv.live.engine import Engine
from improv.live.handover import HandoverPredictor, call_bars, turn_probability

TICK_TOL = 0.05  # simulated time steps at least 0.1 ms: a send may land that much late


@pytest.fixture(scope="module")
def shipped_engine() -> Engine:
    return Engine(SHIPPED, provider="cpu", background=False)


# --- trading -------------------------------------------------------------------------------


@pytest.mark.parametrize("held", [False, True])
def test_trading_answers_on_the_line_after_the_call_for_as_long(tiny_model_dir, library, held):
    """call_bars = 2: the answer's first note is on the bar line after the call's second bar
    (whether or not a key is still down), and it lasts two bars."""
    pl = Player(Engine(tiny_model_dir, provider="cpu", background=False), library,
                call_bars=2)
    pl.phrase(BAR, [60, 62, 64, 65, 67, 65, 64])  # bars 2-3 of the script, ends beat 3.9
    if held:
        pl.note(BAR + 7 * Q, 3 * BAR + Q, 60)  # held across the hand-over line
    pl.play()
    r = pl.session.responses[0]
    assert r["trading"]
    line = pl.origin + 3 * BAR
    assert r["start_tick"] == line
    assert r["end_tick"] - r["start_tick"] == 2 * BAR
    ons = pl.machine_ons()
    assert ons, "no answer"
    assert ons[0][0] == pytest.approx(3 * BAR, abs=TICK_TOL)
    assert max(t for t, _ in ons) < 5 * BAR


def test_trading_counts_from_the_bar_line_a_hair_before_the_first_note(tiny_model_dir, library):
    pl = Player(Engine(tiny_model_dir, provider="cpu", background=False), library,
                call_bars=1)
    pl.note(BAR - 2, BAR + Q, 60).note(BAR + Q, BAR + 3 * Q, 64)  # 2 ticks early: on the line
    pl.play()
    assert pl.session.responses[0]["start_tick"] == pl.origin + 2 * BAR


# --- the predicted hand-over never talks over a player who goes on ---------------------------


def _sounded_while_playing(pl: Player, until_tick: int) -> list:
    return [t for t, _ in pl.machine_ons() if t < until_tick]


def test_predicted_handover_never_fires_on_a_held_note(tiny_model_dir, library):
    """Even a predictor that always says "phrase over" must not answer a held note."""
    pl = Player(Engine(tiny_model_dir, provider="cpu", background=False), library,
                handover_threshold=0.0)
    pl.phrase(0, [60, 62, 64, 65, 67, 65])
    pl.note(6 * Q, BAR * 2 + Q, 64)  # across the line into bar 3
    pl.phrase(2 * BAR + Q, [62, 60, 62])  # and on
    pl.play()
    assert not _sounded_while_playing(pl, 2 * BAR + 4 * Q)
    assert pl.session.responses, "the call got no answer at all"


def test_predicted_answer_is_discarded_when_the_player_goes_on_before_the_line(
        tiny_model_dir, library):
    """A breath in the last beat before the line: the answer is prepared, then dropped
    unheard when the player plays on before the line."""
    pl = Player(Engine(tiny_model_dir, provider="cpu", background=False), library,
                handover_threshold=0.0)
    pl.phrase(0, [60, 62, 64, 65, 67, 65, 64])  # releases at beat 3.9 of bar 2
    pl.note(BAR + 3 * Q + Q // 2, 2 * BAR + Q, 62)  # on again at beat 3.5, across the line
    pl.phrase(2 * BAR + Q, [64, 65, 67])
    pl.play()
    assert pl.session.discarded >= 1
    assert "the call goes on" in pl.session.drain_log()
    assert not _sounded_while_playing(pl, 2 * BAR + 4 * Q)


def test_a_breath_mid_bar_is_not_a_hand_over(tiny_model_dir, library):
    """Ending mid-bar (beat 2) and going on in the same bar: nothing sounds."""
    pl = Player(Engine(tiny_model_dir, provider="cpu", background=False), library,
                handover_threshold=0.0)
    pl.phrase(0, [60, 62, 64, 65, 67])  # to beat 2 of bar 2
    pl.phrase(BAR + 2 * Q + Q // 2, [65, 64, 62, 60, 62, 64])  # on from beat 2.5
    pl.play()
    assert not _sounded_while_playing(pl, BAR + 2 * Q + Q // 2 + 6 * Q)


def test_a_pause_on_the_bar_line_is_not_taken_for_a_phrase_end(shipped_engine, library):
    """One bar, a rest on the downbeat, then the phrase goes on: the model's evidence (and
    the length prior) must keep the answer back, while the rules alone would not."""
    def player(threshold):
        pl = Player(shipped_engine, library, handover_threshold=threshold)
        pl.phrase(0, [67, 69, 71, 72], gap=6)  # bar 1, the last note let go at beat 3.75
        pl.phrase(BAR + Q, [74, 72, 71, 69, 67, 69, 71], gap=2)  # on from beat 2 of bar 2
        return pl.play()

    judged = player(library.get("folk song").handover_threshold)
    assert not _sounded_while_playing(judged, BAR + Q + 7 * Q)
    blind = player(0.0)  # the rules alone hand over on that line: the check can fail
    assert _sounded_while_playing(blind, BAR + Q + 7 * Q)


def test_a_phrase_end_is_answered_on_the_next_line(shipped_engine, library):
    """A two-bar phrase let go just before the line is answered on that line, not after
    the silence wait, and the answer is two bars long."""
    pl = Player(shipped_engine, library)
    pl.phrase(0, [60, 62, 64, 65, 67, 65])
    pl.note(6 * Q, 2 * BAR - 3, 64)
    pl.play()
    r = pl.session.responses[0]
    assert r["predicted"]
    assert r["start_tick"] == pl.origin + 2 * BAR
    assert r["end_tick"] - r["start_tick"] == 2 * BAR
    assert pl.machine_ons()[0][0] == pytest.approx(2 * BAR, abs=TICK_TOL)


# --- the answer's length ---------------------------------------------------------------------


def test_answer_lasts_the_call_not_the_silence_wait(tiny_model_dir, library):
    """Silence hand-over: a 2-bar call gets 2 bars, though silence is decided in bar 3."""
    pl = Player(Engine(tiny_model_dir, provider="cpu", background=False), library,
                predict_handover=False, silence_beats=3.0)
    pl.phrase(0, [60, 62, 64, 65, 67, 65, 64], gap=0)
    pl.note(7 * Q, 8 * Q - 1, 62)
    pl.play()
    r = pl.session.responses[0]
    assert r["start_tick"] == pl.origin + 3 * BAR  # silence decided at beat 3 of bar 3
    assert r["end_tick"] - r["start_tick"] == 2 * BAR


def test_call_bars_counts_to_the_bar_of_the_last_note():
    assert call_bars(0, BAR, BAR) == 1  # released on the line
    assert call_bars(0, BAR + 3, BAR) == 1  # a hair late
    assert call_bars(0, BAR + 12, BAR) == 2
    assert call_bars(BAR, 3 * BAR - 5, BAR) == 2


# --- the evidence ----------------------------------------------------------------------------


def test_predictor_follows_the_sets_call_lengths():
    h = HandoverPredictor(threshold=0.2)
    assert h.decide(0.3, 2) and not h.decide(0.3, 3)  # phrase lengths music is made of
    for _ in range(3):
        h.remember(3)
    assert h.decide(0.3, 3)  # this set trades three-bar phrases
    assert h.length_prior(3) > h.length_prior(2)


def test_wrong_guesses_teach_the_predictor_to_wait():
    h = HandoverPredictor(threshold=0.1)
    h.remember(2)
    assert h.decide(0.9, 1)  # a strong phrase end after one bar: it would come in
    h.taken_back(1)
    h.taken_back(1)
    assert not h.decide(0.9, 1)  # twice wrong: it waits
    assert h.decide(0.9, 2)  # other lengths are untouched
    before = h.length_prior(1)
    h.confirmed(1)  # a one-bar call that did end there wins one back
    assert h.length_prior(1) == pytest.approx(2 * before)


def test_turn_probability_is_a_softmax_entry():
    import numpy as np

    x = np.full(307, -1e9)
    x[1] = 0.0
    x[5] = 0.0
    assert turn_probability(x) == pytest.approx(0.5)
    x[1] = -np.inf
    assert turn_probability(x) == 0.0


@pytest.mark.parametrize("mode", ["call_response", "overlap"])
def test_a_wrong_guess_is_taken_back_and_not_made_again(tiny_model_dir, library, mode):
    """The predictor guesses a phrase end at the first line (threshold 0) and the player goes
    on exactly on it: the answer is dropped, the call goes on as one phrase, that line is
    not guessed again, and the answer comes after the whole phrase."""
    pl = Player(Engine(tiny_model_dir, provider="cpu", background=False), library,
                handover_threshold=0.0, mode=mode)
    pl.phrase(0, [60, 62, 64], gap=2).note(3 * Q, 3 * Q + 12, 65)  # let go at beat 3.5
    pl.phrase(BAR, [67, 65, 64], gap=2).note(BAR + 3 * Q, 2 * BAR - 2, 62)  # on the line
    pl.play()
    s = pl.session
    log = s.drain_log()
    assert s.discarded >= 1 and any(x.startswith("the call goes on") for x in log)
    assert sum("answer of" in x and "from bar" in x for x in log) == s.discarded + 1
    last = s.responses[-1]
    assert last["start_tick"] == pl.origin + 2 * BAR
    assert last["end_tick"] - last["start_tick"] == 2 * BAR  # the whole phrase's length
    assert len(_sounded_while_playing(pl, 2 * BAR)) <= 1
