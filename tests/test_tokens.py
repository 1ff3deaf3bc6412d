"""Property tests for the token vocabulary: round trips, the bar grid, streaming equivalence."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from improv.core.tokens import (
    BAR,
    HIGHEST_PITCH,
    LOWEST_PITCH,
    MAX_SHIFT,
    N_STYLES,
    TURN,
    VELOCITY_BASE,
    VOCAB_SIZE,
    Event,
    Note,
    StreamEncoder,
    decode_notes,
    decode_tokens,
    encode_events,
    fold_pitch,
    is_note_off,
    is_note_on,
    is_time_shift,
    is_velocity,
    note_off_token,
    note_on_token,
    notes_to_events,
    shift_ticks,
    sort_key,
    time_shift_token,
    velocity_bin,
)

FAST = settings(max_examples=80, deadline=None)

METERS = [(4, 4), (3, 4), (6, 8), (5, 4), (7, 8), (2, 4), (2, 2), (12, 8), (1, 4), (9, 16)]


@st.composite
def note_lists(draw, lo: int = LOWEST_PITCH, hi: int = HIGHEST_PITCH, max_notes: int = 40):
    """Several voices; per key the notes never overlap but may touch (end == next start)."""
    pool = draw(st.lists(st.integers(lo, hi), min_size=1, max_size=6, unique=True))
    # A few shared velocities make repeated bins common (where VELOCITY must be left out).
    velocity = st.one_of(
        st.integers(1, 127),
        st.sampled_from(draw(st.lists(st.integers(1, 127), min_size=1, max_size=3))),
    )
    cursor: dict[int, int] = {}
    notes = []
    for _ in range(draw(st.integers(0, max_notes))):
        p = draw(st.sampled_from(pool))
        gap = draw(st.one_of(st.just(0), st.integers(0, 300)))
        start = cursor.get(p, 0) + gap
        end = start + draw(st.one_of(st.integers(1, 6), st.integers(1, 250)))
        cursor[p] = end
        notes.append(Note(start, end, p, draw(velocity)))
    return notes


@st.composite
def meter_lists(draw):
    """``(tick, num, den)`` changes at distinct ticks, not necessarily on old bar lines."""
    ticks = draw(st.lists(st.integers(1, 1500), max_size=4, unique=True))
    if draw(st.booleans()):
        ticks.append(0)
    return [(t, *draw(st.sampled_from(METERS))) for t in sorted(ticks)]


def bar_lines(meters: list[tuple[int, int, int]], until: int) -> set[int]:
    """The bar grid, worked out from the meters alone: each change starts a bar."""
    changes = sorted(meters)
    if not changes or changes[0][0] != 0:
        changes.insert(0, (0, 4, 4))
    lines = set()
    for i, (t, num, den) in enumerate(changes):
        stop = changes[i + 1][0] if i + 1 < len(changes) else until + 1
        bar = num * 96 // den
        lines.update(range(t, min(stop, until + 1), bar))
    return lines


def replay(tokens: list[int]) -> list[tuple[int, int]]:
    """``(tick, token)`` for every token: the tick the stream is at when it occurs."""
    tick, out = 0, []
    for tok in tokens:
        if is_time_shift(tok):
            tick += shift_ticks(tok)
        out.append((tick, tok))
    return out


def key(n: Note) -> tuple[int, int, int, int]:
    return (n.start, n.pitch, n.end, velocity_bin(n.velocity))


# --- round trips ---------------------------------------------------------------------------


@FAST
@given(note_lists(), meter_lists(), st.integers(0, 500), st.one_of(st.none(), st.integers(0, 15)))
def test_encode_decode_reproduces_every_note(notes, meters, pad, style):
    end = max([n.end for n in notes], default=0) + pad
    tokens = encode_events(notes_to_events(notes), style=style, meters=meters, end_tick=end)
    assert all(0 <= t < VOCAB_SIZE for t in tokens)
    decoded = decode_notes(tokens)
    assert sorted(map(key, decoded)) == sorted(map(key, notes))
    assert replay(tokens)[-1][0] == end


@FAST
@given(note_lists(), meter_lists(), st.integers(0, 200), st.one_of(st.none(), st.integers(0, 15)))
def test_stream_encoder_matches_file_encoder(notes, meters, pad, style):
    events = notes_to_events(notes)
    end = max([n.end for n in notes], default=0) + pad
    enc = StreamEncoder()
    for tick, num, den in meters:
        enc.set_meter(tick, num, den)
    out = enc.start(style)
    for ev in sorted(events, key=sort_key):
        if ev.velocity > 0:
            out += enc.note_on(ev.tick, ev.pitch, ev.velocity)
        else:
            out += enc.note_off(ev.tick, ev.pitch)
    out += enc.close(end)
    assert out == encode_events(events, style=style, meters=meters, end_tick=end)


# --- the decoder accepts anything ----------------------------------------------------------


def check_well_formed(events: list[Event]) -> None:
    ticks = [e.tick for e in events]
    assert ticks == sorted(ticks)
    state: dict[int, bool] = {}
    for e in events:
        on = e.velocity > 0
        # Every pitch alternates on/off, starting with on.
        assert state.get(e.pitch, False) != on, f"pitch {e.pitch}: {'on' if on else 'off'} twice"
        state[e.pitch] = on
    assert not any(state.values()), "a note was left sounding"


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(0, VOCAB_SIZE - 1), max_size=300))
def test_decoding_any_tokens_is_well_formed(tokens):
    check_well_formed(decode_tokens(tokens))


ADVERSARIAL = st.one_of(
    st.sampled_from([60, 61, 108, 21]).map(note_on_token),
    st.sampled_from([60, 61, 108, 21]).map(note_off_token),
    st.integers(1, MAX_SHIFT).map(time_shift_token),
    st.sampled_from([BAR, TURN, VELOCITY_BASE, VELOCITY_BASE + 15]),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(ADVERSARIAL, max_size=200))
def test_decoding_repeated_ons_and_stray_offs_is_well_formed(tokens):
    events = decode_tokens(tokens)
    check_well_formed(events)
    # Every NOTE_ON token yields exactly one note-on.
    assert sum(e.velocity > 0 for e in events) == sum(is_note_on(t) for t in tokens)


def test_decoder_repeated_on_closes_first():
    on, off, shift = note_on_token(60), note_off_token(60), time_shift_token(5)
    events = decode_tokens([off, on, shift, on, shift, off, off])
    assert [(e.tick, e.velocity > 0) for e in events] == [
        (0, True),
        (5, False),
        (5, True),
        (10, False),
    ]


# --- the bar grid --------------------------------------------------------------------------


@FAST
@given(note_lists(), meter_lists(), st.integers(0, 400))
def test_time_shifts_never_cross_a_bar_line(notes, meters, pad):
    end = max([n.end for n in notes], default=0) + pad
    tokens = encode_events(notes_to_events(notes), meters=meters, end_tick=end)
    lines = bar_lines(meters, end)
    tick, bars = 0, []
    for tok in tokens:
        if is_time_shift(tok):
            n = shift_ticks(tok)
            assert n <= MAX_SHIFT
            crossed = [t for t in lines if tick < t < tick + n]
            assert not crossed, f"shift {tick}->{tick + n} crosses bar line(s) {crossed}"
            tick += n
        elif tok == BAR:
            assert tick in lines, f"BAR at {tick} is not on the grid"
            bars.append(tick)
    assert tick == end
    assert sorted(bars) == sorted(lines), "every bar line gets exactly one BAR"


def test_live_meter_change_on_a_marked_line_does_not_repeat_bar():
    enc = StreamEncoder()
    tokens = enc.start() + enc.advance(96)
    enc.set_meter(96, 3, 4)  # set live, at the line just marked
    tokens += enc.note_on(96, 60, 80) + enc.advance(96 + 72)
    assert [t for t, tok in replay(tokens) if tok == BAR] == [0, 96, 168]


def test_bar_grid_with_meter_change_example():
    # 3/4 from the start, 6/8 from tick 144 (two bars of 72): lines 0, 72, 144, 216.
    tokens = encode_events([], meters=[(0, 3, 4), (144, 6, 8)], end_tick=216)
    assert [(t, tok) for t, tok in replay(tokens) if tok == BAR] == [
        (0, BAR),
        (72, BAR),
        (144, BAR),
        (216, BAR),
    ]


# --- velocity, folding, turns --------------------------------------------------------------


@FAST
@given(note_lists(), meter_lists())
def test_velocity_token_only_when_bin_changes(notes, meters):
    events = sorted(notes_to_events(notes), key=sort_key)
    tokens = encode_events(events, meters=meters)
    vel_tokens = [t for t in tokens if is_velocity(t)]
    bins = [velocity_bin(e.velocity) for e in events if e.velocity > 0]
    changes = sum(1 for i, b in enumerate(bins) if i == 0 or b != bins[i - 1])
    assert len(vel_tokens) == changes
    assert all(a != b for a, b in zip(vel_tokens, vel_tokens[1:], strict=False))
    for i, t in enumerate(tokens):
        if is_velocity(t):
            assert is_note_on(tokens[i + 1]), "a VELOCITY is always followed by its NOTE_ON"


@FAST
@given(note_lists(lo=0, hi=127, max_notes=30))
def test_out_of_range_pitches_are_folded_and_counted(notes):
    enc = StreamEncoder()
    tokens = enc.start()
    for ev in sorted(notes_to_events(notes), key=sort_key):
        tokens += enc.event(ev)
    tokens += enc.close(max([n.end for n in notes], default=0))
    outside = sum(not LOWEST_PITCH <= n.pitch <= HIGHEST_PITCH for n in notes)
    assert enc.stats.folded == outside
    ons = [e.pitch for e in decode_tokens(tokens) if e.velocity > 0]
    assert Counter(ons) == Counter(fold_pitch(n.pitch) for n in notes)
    assert all(LOWEST_PITCH <= p <= HIGHEST_PITCH for p in ons)


def test_fold_pitch_keeps_pitch_class():
    for p in range(128):
        f = fold_pitch(p)
        assert LOWEST_PITCH <= f <= HIGHEST_PITCH and f % 12 == p % 12


@FAST
@given(
    note_lists(max_notes=25), meter_lists(), st.lists(st.integers(0, 1500), max_size=5), st.data()
)
def test_turns_go_between_the_offs_and_ons_of_their_tick(notes, meters, turns, data):
    events = notes_to_events(notes)
    if events:  # turns that coincide with events are the interesting ones
        turns += data.draw(st.lists(st.sampled_from([e.tick for e in events]), max_size=3))
    tokens = encode_events(events, meters=meters, turns=turns)
    timed = replay(tokens)
    turn_at = [(i, t) for i, (t, tok) in enumerate(timed) if tok == TURN]
    assert [t for _, t in turn_at] == sorted(turns)
    for i, t in turn_at:
        # The caller's last note ends, then the answer starts.
        assert all(tk < t for tk, tok in timed[:i] if is_note_on(tok))
        assert all(tk <= t for tk, tok in timed[:i] if is_note_off(tok))
        assert all(tk >= t for tk, tok in timed[i + 1 :] if is_note_on(tok))
        assert all(tk > t for tk, tok in timed[i + 1 :] if is_note_off(tok))
    # Markers never disturb the music.
    assert decode_tokens(tokens) == decode_tokens(encode_events(events, meters=meters))


# --- observe keeps a second encoder in step ------------------------------------------------


@FAST
@given(
    note_lists(),
    meter_lists(),
    st.floats(0, 1),
    st.integers(0, 200),
    st.one_of(st.none(), st.integers(0, N_STYLES - 1)),
)
def test_observe_keeps_state_in_step(notes, meters, cut, pad, style):
    events = sorted(notes_to_events(notes), key=sort_key)
    end = max([n.end for n in notes], default=0) + pad

    def fresh() -> StreamEncoder:
        enc = StreamEncoder()
        for tick, num, den in meters:
            enc.set_meter(tick, num, den)
        return enc

    a = fresh()
    head = a.start(style)
    chunks = [a.event(ev) for ev in events]
    tail = a.close(end)

    k = int(cut * len(events))
    b = fresh()
    for tok in head + [t for c in chunks[:k] for t in c]:
        b.observe(tok)
    assert [b.event(ev) for ev in events[k:]] == chunks[k:]
    assert b.close(end) == tail
