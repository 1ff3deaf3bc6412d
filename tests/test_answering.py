"""What the answer takes from the call: dynamics, register, and guidance towards the call."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import BAR, Player, Q

from improv.core import tokens as tk
from improv.live.dynamics import Dynamics
from improv.live.engine import Engine
from improv.live.guidance import Guide, log_softmax
from improv.live.sampler import Constraints, Sampler

# --- dynamics --------------------------------------------------------------------------------


def test_louder_call_louder_answer(tiny_model_dir, library):
    def mean_answer_velocity(v):
        pl = Player(Engine(tiny_model_dir, provider="cpu", background=False), library,
                    call_bars=2, velocity_curve=[], velocity_scale=1.0, velocity_offset=0)
        pl.phrase(0, [60, 62, 64, 65, 67, 65, 64, 62], velocity=v)
        pl.play()
        vs = [vel for _, vel in pl.machine_ons()]
        assert vs
        return sum(vs) / len(vs)

    soft, loud = mean_answer_velocity(30), mean_answer_velocity(115)
    assert loud - soft > 40  # at least half the calls' difference (85), whatever the model plays


def test_dynamics_carry_the_calls_accents():
    notes = [(t, 110 if t % BAR == 0 else 60) for t in range(0, 2 * BAR, Q)]
    d = Dynamics.of_call(notes, 0, BAR)
    assert d.level == pytest.approx(72.5)
    down, off = d.velocity(4 * BAR, 80), d.velocity(4 * BAR + Q, 80)
    assert down > d.level > off
    assert d.velocity(4 * BAR, 80, amount=0.0) == 80
    assert Dynamics().velocity(0, 64) == 64  # nothing heard: the model's velocity stands


# --- register --------------------------------------------------------------------------------


def _sampler_after(pitches, **constraints) -> Sampler:
    s = Sampler(Constraints(**constraints), seed=0)
    s.observe(tk.BAR)
    for p in pitches:
        s.observe(tk.note_on_token(p), human=True)
        s.observe(tk.note_off_token(p), human=True)
    return s


def test_register_follows_the_player():
    s = _sampler_after([72, 74, 76], register_low=36, register_high=96, register_follow=7)
    assert s.register() == (67, 81)
    s.observe(tk.velocity_token(8))
    on = np.flatnonzero(s.allowed()[tk.NOTE_ON_BASE: tk.NOTE_OFF_BASE]) + tk.LOWEST_PITCH
    assert on.min() == 67 and on.max() == 81
    off = _sampler_after([72, 74, 76], register_low=36, register_high=96)
    assert off.register() == (36, 96)


def test_a_player_outside_the_range_gets_its_nearest_octave():
    s = _sampler_after([38, 40, 43], register_low=55, register_high=88, register_follow=9)
    assert s.register() == (55, 67)


# --- guidance --------------------------------------------------------------------------------


def test_guidance_mix_pushes_along_the_difference():
    g = Guide(engine=None)
    cond = np.log(np.array([0.5, 0.3, 0.2]))
    g.logits = cond.copy()
    np.testing.assert_allclose(g.mix(cond, 2.0), log_softmax(cond))  # nothing to push along
    g.logits = np.log(np.array([0.2, 0.3, 0.5]))  # without the call, the third is likelier
    out = g.mix(cond, 1.0)
    assert np.argmax(out) == 0 and out[0] - out[2] > cond[0] - cond[2]
    assert g.mix(cond, 0.0) is cond
    masked = cond.copy()
    masked[1] = -np.inf
    assert g.mix(masked, 1.0)[1] == -np.inf  # a token the grammar forbids stays forbidden


def test_the_guide_stream_holds_the_answer_but_not_the_call(tiny_model_dir, library):
    pl = Player(Engine(tiny_model_dir, provider="cpu", background=False), library,
                call_bars=1, guidance=1.5)
    pl.phrase(0, [60, 62, 64, 65])
    pl.play(bars_after=3)
    s = pl.session
    assert s.responses and s.answering.guide is not None
    ctx = s.answering.guide.engine.context_tokens
    # STYLE, BAR, VELOCITY, then every answer token, in step with the main stream
    assert ctx[1] == tk.BAR and tk.is_velocity(ctx[2])
    answer, main = ctx[3:], s.engine.context_tokens
    assert len(answer) > 4 and any(tk.is_note_on(t) for t in answer)
    assert tk.TURN not in ctx  # no call and no hand-over: only the answer
    turn = main.index(tk.TURN)  # the call ends here in the main stream
    starts = [i for i in range(turn, len(main)) if main[i : i + len(answer)] == answer]
    assert starts, "the guide's answer tokens are not the answer the session played"


# --- motifs ----------------------------------------------------------------------------------


def test_echo_favours_the_pitch_that_completes_a_call_shape():
    from improv.live.motifs import MotifMemory

    m = MotifMemory()
    for i, p in enumerate([60, 62, 64, 60, 62, 64]):  # shape (+2, +2) and (+2, -4)
        m.observe(p, i * Q, human=True)
    assert m.bias() is None  # the answer has not begun
    m.observe(67, 10 * Q, human=False)
    m.observe(69, 11 * Q, human=False)  # +2: the call went on by +2 (twice) or -4 (once)
    w = m.bias()
    assert w[71 - tk.LOWEST_PITCH] == 1.0 and w[65 - tk.LOWEST_PITCH] == pytest.approx(0.5)
    assert w.sum() == pytest.approx(1.5)
    m.turn()
    assert m.bias() is None


def test_a_chord_counts_once_on_the_top_line():
    from improv.live.motifs import MotifMemory

    m = MotifMemory()
    m.observe(60, 0, human=True)
    m.observe(67, 0, human=True)
    m.observe(64, 0, human=True)
    assert list(m.human) == [(0, 67)]


def test_a_pitch_struck_four_times_running_is_not_struck_again():
    s = Sampler(Constraints(), seed=0)
    s.observe(tk.BAR)
    s.observe(tk.velocity_token(8))
    for _ in range(4):
        s.observe(tk.note_on_token(62))
        s.observe(tk.time_shift_token(6))
        s.observe(tk.note_off_token(62))
    ons = s.allowed()[tk.NOTE_ON_BASE: tk.NOTE_OFF_BASE]
    assert not ons[62 - tk.LOWEST_PITCH] and ons[64 - tk.LOWEST_PITCH]


def test_echo_reaches_the_sampled_answer(tiny_model_dir, library):
    """The same call and seed, with and without echo: echo makes the answer's top line
    take up more of the call's shapes (the live path, not only the bias)."""
    from improv.learn.conversation import interval_shapes

    def shapes_shared(echo):
        pl = Player(Engine(tiny_model_dir, provider="cpu", background=False), library,
                    call_bars=2, echo=echo, max_polyphony=1, scale_lock=False, key="off")
        pl.phrase(0, [60, 62, 64, 60, 62, 64, 60, 62], step=Q)
        pl.play()
        answer = [n for _, n in pl.machine_pitches()]
        call = [60, 62, 64, 60, 62, 64, 60, 62]
        mine, theirs = interval_shapes(answer, 2), set(interval_shapes(call, 2))
        return sum(s in theirs for s in mine) / max(1, len(mine))

    assert shapes_shared(6.0) > shapes_shared(0.0) + 0.2


# --- quantize --------------------------------------------------------------------------------


def test_quantize_to_sixteenths_and_triplets():
    from improv.live.quantize import quantize_tick

    assert quantize_tick(94) == 96 and quantize_tick(98, origin=96) == 96
    assert quantize_tick(9) == 8 and quantize_tick(17) == 16 and quantize_tick(13) == 12
    assert quantize_tick(7) == 6  # a tie goes to the sixteenth
    assert quantize_tick(101, origin=96) == 102


def test_a_player_off_the_grid_reaches_the_model_on_it(tiny_model_dir, library):
    pl = Player(Engine(tiny_model_dir, provider="cpu", background=False), library)
    pl.note(1, 22, 60).note(25, 45, 62).note(47, 70, 64)  # a tick or three off, each way
    pl.play(bars_after=0)
    ctx = pl.session.engine.context_tokens
    shifts = [tk.shift_ticks(t) for t in ctx if tk.is_time_shift(t)]
    assert shifts and all(s % 6 == 0 or s % 8 == 0 for s in shifts), shifts
    raw = Player(Engine(tiny_model_dir, provider="cpu", background=False), library,
                 quantize=False)
    raw.note(1, 22, 60).note(25, 45, 62).note(47, 70, 64)
    raw.play(bars_after=0)
    assert any(tk.shift_ticks(t) % 6 and tk.shift_ticks(t) % 8
               for t in raw.session.engine.context_tokens if tk.is_time_shift(t))


def test_echo_picks_which_note_not_whether_one():
    """The boost keeps the allowed NOTE_ONs' total probability: echo must not make the
    answer denser than the model would play it."""
    from improv.live.sampler import _reweigh

    rng = np.random.default_rng(0)
    on = rng.normal(size=tk.N_PITCHES)
    allowed = rng.random(tk.N_PITCHES) < 0.5
    allowed[40] = True
    boost = np.zeros(tk.N_PITCHES)
    boost[40] = 3.0
    out = _reweigh(on, boost, allowed)
    mass = lambda v: np.exp(v[allowed]).sum()  # noqa: E731
    assert mass(out) == pytest.approx(mass(on))
    assert out[40] - out[41] > on[40] - on[41] + 2.9  # the boosted key gained on the rest
    assert mass(on + boost) > 1.05 * mass(on)  # a plain boost would have added note-on mass


def test_notes_under_a_held_top_note_are_not_the_top_line():
    """The top line is a skyline: a G held over moving lower notes, then struck again four
    times, is four repeats, and a fifth is barred."""
    s = Sampler(Constraints(), seed=0)
    s.observe(tk.BAR)
    s.observe(tk.velocity_token(8))
    for _ in range(4):
        s.observe(tk.note_on_token(67))
        s.observe(tk.note_on_token(48))  # under the G: not on the top line
        s.observe(tk.time_shift_token(6))
        s.observe(tk.note_off_token(48))
        s.observe(tk.note_off_token(67))
    assert [p for _, p in s.motifs.machine] == [67] * 4  # the C under it is not there
    ons = s.allowed()[tk.NOTE_ON_BASE: tk.NOTE_OFF_BASE]
    assert not ons[67 - tk.LOWEST_PITCH] and ons[48 - tk.LOWEST_PITCH]


def test_a_release_just_short_of_a_note_value_is_that_value():
    from improv.live.quantize import quantize_release

    assert quantize_release(0, 22) == 24  # a quarter let go a little early
    assert quantize_release(96, 96 + 43) == 96 + 48  # a half note at 90%
    assert quantize_release(0, 27) == 24  # far short of a value (36): the nearest grid position
    assert quantize_release(0, 1) == 6  # never shorter than a sixteenth
