"""improv bench: result schema, markdown writer, the peer's venv (no install), a small run."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench import common as bm
from bench import report
from improv.core import tokens as tk

# --- summaries and the schema ----------------------------------------------------------------


def test_summarize_is_a_latency_distribution():
    x = np.arange(1, 1001, dtype=float)
    s = bm.summarize(x)
    assert s["median_ms"] == pytest.approx(500.5)
    assert s["p99_ms"] == pytest.approx(np.percentile(x, 99))
    assert s["p999_ms"] == pytest.approx(np.percentile(x, 99.9))
    assert s["max_ms"] == 1000.0 and s["n"] == 1000
    with pytest.raises(bm.BenchError):
        bm.summarize([])


def sample_result(**machine) -> dict:
    rng = np.random.default_rng(0)
    conf = lambda scale: bm.summarize(rng.gamma(2.0, scale, 500))  # noqa: E731
    return {
        "schema": bm.SCHEMA, "host": "box", "date": "2026-11-25 12:00:00",
        "command": "python bench/run.py --quick", "elapsed_s": 42.0, "quick": True,
        "machine": {"host": "box", "cpu": "Test CPU", "cpus": 2, "memory_gib": 24.0,
                    "platform": "Linux", "python": "3.11", "onnxruntime": "1.31",
                    "torch": "2.13", "gpu": None, "loadavg_before": 0.1,
                    "loadavg_after": 0.2, **machine},
        "model": {"dir": "models/x", "random_weights": False, "n_layer": 5, "d_model": 192,
                  "context": 512},
        "benchmarks": {
            "decode": {"configs": {"ort_cpu_1t/fill50": {**conf(0.2), "position": 255}},
                       "skipped": {}},
            "ingest": {"configs": {"note_in_to_fed": conf(0.5)}},
            "per_note": {"configs": {"improv_feed": conf(0.3), "improv_generate": conf(0.4),
                                     "notochord_feed": conf(1.5),
                                     "notochord_query": conf(0.4)},
                         "improv_ms": 0.8, "notochord_ms": 3.6, "ratio": 0.8 / 3.6,
                         "ratio_feed": 0.2, "ratio_generate": 0.22, "bar_ok": True,
                         "tokens_per_note": 2.94, "tokens_per_event": 1.47, "notochord": "0.8.0",
                         "notochord_query": "query(next_inst=1)",
                         "notochord_parameters": 17_744_100, "notochord_torch": "2.13.0"},
            "jam": {"configs": {"first_note_lateness": conf(0.1)}, "bar_ok": True,
                    "startup": {"ports_s": 0.5, "first_state_s": 0.7, "ready_s": 0.7},
                    "memory_after_start": {"VmRSS": 200.0},
                    "memory_after_calls": {"VmHWM": 210.0}},
        },
        "skipped": {"schedule": "no JACK server"},
        "plots": ["box-2026-11-25-hist.png"],
    }


def test_validate_accepts_a_sound_result_and_names_each_fault():
    res = sample_result()
    assert report.validate(res) == []
    del res["benchmarks"]["ingest"]["configs"]["note_in_to_fed"]["p999_ms"]
    res["benchmarks"]["decode"]["configs"]["ort_cpu_1t/fill50"]["median_ms"] = math.nan
    res["benchmarks"]["jam"]["configs"]["first_note_lateness"]["p99_ms"] = -1.0
    res["benchmarks"]["nonsense"] = {"configs": {}}
    del res["command"]
    problems = report.validate(res)
    joined = "\n".join(problems)
    assert "ingest/note_in_to_fed: p999_ms" in joined
    assert "decode/ort_cpu_1t/fill50: median_ms is nan" in joined
    assert "jam/first_note_lateness: percentiles out of order" in joined
    assert "unknown benchmark nonsense" in joined
    assert "missing command" in joined


def test_markdown_is_the_performance_section():
    res = sample_result()
    md = report.markdown(res)
    assert md.startswith("## Performance\n")
    assert "`python bench/run.py --quick`" in md
    assert "Test CPU (2 logical cores), 24 GiB RAM; GPU: none" in md
    table = [ln for ln in md.splitlines() if ln.startswith("|")]
    assert table[0].startswith("| what | median ms | p99 ms | p99.9 ms")
    feed = res["benchmarks"]["per_note"]["configs"]["improv_feed"]
    assert f"| improv per event: feed a played event | {feed['median_ms']:.3f} | " \
           f"{feed['p99_ms']:.3f} | {feed['p999_ms']:.3f} |" in md
    assert "<= 5 ms: True" in md
    assert "ratio 0.222, bar <= 0.25: True" in md
    assert "Not measured: schedule (no JACK server)." in md
    assert "Measured with other work" not in md
    busy = report.markdown(sample_result(loadavg_before=3.5))
    assert "**Measured with other work on the machine** (load average 3.5" in busy


def test_result_stem_is_a_safe_file_name():
    import datetime as dt

    assert bm.result_stem("my box/α", dt.date(2026, 1, 2)) == "my-box-2026-01-02"


# --- the peer's virtual environment, with subprocess mocked -------------------------------------


class FakeRun:
    """Stands in for subprocess.run: records commands, answers by the rules given."""

    def __init__(self, venv: Path, imports_ok=(False, True), fail_on: str | None = None):
        self.venv, self.calls = venv, []
        self.imports_ok = list(imports_ok)
        self.fail_on = fail_on

    def __call__(self, cmd, **kw):
        cmd = [str(c) for c in cmd]
        self.calls.append((cmd, kw))
        rc, out = 0, ""
        if cmd[1:3] == ["-m", "venv"]:
            py = bm.venv_python(Path(cmd[3]))
            py.parent.mkdir(parents=True, exist_ok=True)
            py.touch()
        elif cmd[1] == "-c":
            rc = 0 if self.imports_ok.pop(0) else 1
        if self.fail_on and any(self.fail_on in c for c in cmd):
            rc = 1
        return subprocess.CompletedProcess(cmd, rc, out, "ERROR: no matching distribution\n")


def test_peer_venv_is_made_torch_first_and_notochord_without_its_pins(tmp_path, monkeypatch):
    monkeypatch.setattr(bm, "torch_pin", lambda: "torch==2.13.0")
    venv = tmp_path / "notochord-venv"
    run = FakeRun(venv, imports_ok=(True,))
    py = bm.ensure_peer_venv(venv, run=run, python="/usr/bin/python3")
    assert py == bm.venv_python(venv)
    cmds = [c for c, _ in run.calls]
    assert cmds[0] == ["/usr/bin/python3", "-m", "venv", str(venv)]
    installs = [c for c in cmds if "install" in c]
    assert installs[0][-1] == "torch==2.13.0"  # torch first, pinned
    assert installs[1][-2:] == ["--no-deps", f"notochord=={bm.NOTOCHORD_VERSION}"]
    assert "torch==2.13.0" in installs[2] and "pandas>=2,<3" in installs[2]
    for c in installs:  # never an unpinned torch, which would pull a CUDA build
        assert all(not a.startswith("torch") or a == "torch==2.13.0" for a in c)
        assert c[0] == str(py)
    assert cmds[-1][:2] == [str(py), "-c"] and "import notochord" in cmds[-1][2]


def test_peer_venv_that_works_is_reused(tmp_path):
    venv = tmp_path / "v"
    py = bm.venv_python(venv)
    py.parent.mkdir(parents=True)
    py.touch()
    run = FakeRun(venv, imports_ok=(True,))
    assert bm.ensure_peer_venv(venv, run=run) == py
    assert len(run.calls) == 1 and run.calls[0][0][1] == "-c"


def test_peer_venv_failure_says_what_to_do(tmp_path):
    venv = tmp_path / "v"
    run = FakeRun(venv, fail_on="notochord==")
    with pytest.raises(bm.BenchError, match=r"installing notochord .*no matching.*--no-peer"):
        bm.ensure_peer_venv(venv, run=run)
    run = FakeRun(venv, imports_ok=(False, False))
    with pytest.raises(bm.BenchError, match="does not import"):
        bm.ensure_peer_venv(venv, run=run)


def test_run_peer_feeds_events_and_reads_json(tmp_path):
    seen = {}

    def run(cmd, input=None, **kw):
        seen["script"] = Path(cmd[1]).read_text()
        seen["events"] = json.loads(input)
        body = {"feed_ms": [2.0, 3.0], "query_ms": [0.5], "torch": "2.13.0",
                "notochord": "0.8.0", "threads": 1, "parameters": 5, "query": "q"}
        return subprocess.CompletedProcess(cmd, 0, "noise\n" + json.dumps(body) + "\n", "")

    events = [[1, 60, 0.0, 80], [1, 60, 0.5, 0]]
    out = bm.run_peer(Path("py"), events, run=run)
    assert out["feed_ms"] == [2.0, 3.0] and seen["events"] == events
    assert "torch.set_num_threads(1)" in seen["script"] and "Notochord()" in seen["script"]
    bad = lambda cmd, **kw: subprocess.CompletedProcess(cmd, 1, "", "Traceback\nBoom\n")  # noqa
    with pytest.raises(bm.BenchError, match="Boom"):
        bm.run_peer(Path("py"), events, run=bad)
    silent = lambda cmd, **kw: subprocess.CompletedProcess(cmd, 0, "not json\n", "")  # noqa
    with pytest.raises(bm.BenchError, match="no JSON"):
        bm.run_peer(Path("py"), events, run=silent)


# --- note events ---------------------------------------------------------------------------------


def test_note_events_group_tokens_as_the_session_feeds_them():
    mc = bm.load_bench("model_cost")
    events = [tk.Event(0, 60, 80), tk.Event(0, 64, 80), tk.Event(24, 60, 0), tk.Event(24, 64, 0),
              tk.Event(48, 67, 100), tk.Event(72, 67, 0)]
    toks = tk.encode_events(events)  # BAR VEL ON60 ON64 TS24 OFF60 OFF64 TS24 VEL ON67 TS OFF
    msgs = mc.split_messages(toks)
    assert [len(g) for g in msgs] == [3, 1, 2, 1, 3, 2]
    notes = mc.note_events(toks)
    assert len(notes) == 3 and sum(map(len, notes)) == 5  # the trailing off is no note event
    assert mc.tokens_per_note(notes) == pytest.approx(10 / 3)
    noto = mc.notochord_events(notes, bpm=120.0)
    assert [e[1] for e in noto] == [60, 64, 60, 64, 67, 67]
    assert noto[2][2] == pytest.approx(0.5) and noto[4][2] == pytest.approx(0.5)
    assert [e[3] > 0 for e in noto] == [True, True, False, False, True, False]


def test_synthetic_tokens_hold_the_notes_asked_for():
    mc = bm.load_bench("model_cost")
    toks = mc.synthetic_tokens(50)
    assert not any(tk.is_style(t) for t in toks)
    assert len(mc.note_events(toks)) >= 50


def test_planned_beat_is_the_first_after_the_lead_unless_too_close_to_call():
    live = bm.load_bench("live")
    beats = [10.0, 10.5, 11.0, 11.5]
    assert live.planned_beat(beats, 10.2, t_note=10.5012) == 10.5
    assert live.planned_beat(beats, 10.2, t_note=10.53) == 10.5  # late notes stay late
    # The decision is stamped early: a beat 2 ms before it is a candidate, the nearer wins.
    assert live.planned_beat(beats, 10.502, t_note=10.5003) == 10.5
    assert live.planned_beat(beats, 10.502, t_note=11.0004) == 11.0
    assert live.planned_beat(beats, 10.49, t_note=11.2) == 10.5  # clear of the line: first
    with pytest.raises(live.LiveError):
        live.planned_beat(beats, 12.0, t_note=12.1)


def test_markdown_has_the_trading_row_and_its_count():
    res = sample_result()
    res["benchmarks"]["trading"] = {
        "configs": {"answer_on_line": bm.summarize([-0.1, 0.2, 1.1, 2.5])}, "bpm": 120.0,
        "trades": 4, "on_line": 3, "on_line_share": 0.75, "right_length": 4,
        "end_tolerance_ms": 5.0, "stuck_notes": [], "pulses_missing": 0,
        "jam_restarts": ["the jam did not hear our output"]}
    md = report.markdown(res)
    row = next(ln for ln in md.splitlines() if ln.startswith("| trading:"))
    assert row.startswith("| trading: first answer note - its bar line (JACK, MIDI clock) | ")
    assert row.endswith("| <= 2 ms: 3/4 (75%) |") and "| 2.500 |" in row
    assert "3 of 4 answers started within 2 ms of their planned bar line" in md
    assert "4 of 4 ended by the bar line 2 bars later (+5 ms); stuck notes at the end: 0; " \
           "clock pulses lost on the way: 0. 1 jam(s) that did not hear" in md
    assert report.validate({**res, "command": "x"}) == []
    assert "trading" in bm.BENCHMARKS


# --- trading: the jam's bar lines from its clock, one answer against its line ----------------

TICK = 0.5 / 24  # 120 BPM


def test_pulses_are_indexed_by_time_so_a_lost_one_does_not_shift_the_grid():
    tr = bm.load_bench("trading")
    times = [10.0 + i * TICK + 0.0004 * (-1) ** i for i in range(200) if i != 50]
    index = tr.index_pulses(times, 10.0 - 0.0001, TICK)
    assert index[49] == 49 and index[50] == 51 and index[-1] == 199
    late = list(times)
    late[10] += 0.004  # one pulse 4 ms late does not move the grid
    assert tr.grid_origin(late, index, TICK) == pytest.approx(10.0, abs=0.0005)
    assert tr.pulse_time(times, index, 96, 10.0, TICK) == (times[95], True)
    t, arrived = tr.pulse_time(times, index, 50, 10.0, TICK)  # the lost one: the grid's time
    assert not arrived and t == pytest.approx(10.0 + 50 * TICK)


def test_jack_stamps_go_on_our_clock_by_the_quickest_poll_nearby():
    tr = bm.load_bench("trading")
    rng = np.random.default_rng(1)
    jack = np.arange(3000) * TICK  # JACK's seconds since the first message
    # Our clock: 100 s ahead, running 200 ppm faster; each poll 0-3 ms late, a few at once.
    ours = 100.0 + jack * (1 + 2e-4)
    delay = rng.uniform(0.0, 0.003, jack.size)
    delay[::25] = 0.0
    got = np.array(tr.jack_to_now(jack.tolist(), (ours + delay).tolist(), 50))
    assert np.abs(got - ours).max() < 0.0003  # the drift across a window: 0.2 ms
    # One offset for all (the whole run as the window) would be off by the drift.
    whole = np.array(tr.jack_to_now(jack.tolist(), (ours + delay).tolist(), 3000))
    assert np.abs(whole - ours).max() > 0.005


def test_planned_line_is_call_bars_after_the_bar_line_of_the_first_note():
    tr = bm.load_bench("trading")
    bar = 96
    at = lambda pulse, ms=0.0: 10.0 + pulse * TICK + ms / 1000  # noqa: E731
    assert tr.bar_line_of(at(192), 10.0, TICK, bar) == 192
    assert tr.bar_line_of(at(192, 30.0), 10.0, TICK, bar) == 192  # late: still its line
    assert tr.bar_line_of(at(190), 10.0, TICK, bar) == 192  # a hair early belongs to it
    assert tr.bar_line_of(at(186), 10.0, TICK, bar) == 96  # clearly early: the bar before
    assert tr.bar_line_of(at(250), 10.0, TICK, bar) == 192
    assert tr.planned_line(192, 2, bar) == 384
    assert tr.planned_line(0, 1, bar) == 96


def test_stuck_notes_pairs_note_ons_with_note_offs():
    import mido

    tr = bm.load_bench("trading")
    on = lambda n, ch=0: (0.0, mido.Message("note_on", note=n, velocity=80, channel=ch))  # noqa
    off = lambda n: (0.0, mido.Message("note_off", note=n))  # noqa: E731
    zero = lambda n: (0.0, mido.Message("note_on", note=n, velocity=0))  # noqa: E731
    assert tr.stuck_notes([on(60), off(60), on(62), zero(62), off(64)]) == []
    assert tr.stuck_notes([on(60), on(60), off(60), on(61, ch=2)]) == [(0, 60), (2, 61)]
    assert tr.stuck_notes([(0.0, mido.Message("clock"))]) == []


def test_calls_start_on_their_line_and_end_before_on_or_across_the_hand_over():
    tr = bm.load_bench("trading")
    beat = 0.5
    for ending, (_, last_off) in tr.ENDINGS.items():
        msgs = tr.call_messages(100.0, beat, ending, transpose=1)
        assert msgs[0][0] == 100.0 and msgs[0][1].type == "note_on" and msgs[0][1].note == 61
        assert [t for t, _ in msgs] == sorted(t for t, _ in msgs)
        assert sum(m.type == "note_on" for _, m in msgs) == 8
        assert tr.stuck_notes(msgs) == []
        assert msgs[-1][0] == pytest.approx(100.0 + last_off * beat)
    held = tr.call_messages(0.0, beat, "held across")
    assert held[-1][0] > 2 * 4 * beat  # released after the hand-over line
    assert tr.call_messages(0.0, beat, "early")[-1][0] < 2 * 4 * beat - beat


def _answer(first_ms: float, last_off_ms: float, unended: bool = False):
    """A call from pulse 96 (0.25 ms late) and its answer, against a grid from 10.0."""
    import mido

    times = [10.0 + i * TICK for i in range(700)]
    index = list(range(700))
    grid = (times, index, 10.0, TICK, 96)
    line, end = times[288], times[480]  # the planned line and the answer's end line
    window = [(line + first_ms / 1000, mido.Message("note_on", note=60, velocity=70)),
              (line + 0.3, mido.Message("note_off", note=60)),
              (line + 0.4, mido.Message("note_on", note=64, velocity=70))]
    if not unended:
        window.append((end + last_off_ms / 1000, mido.Message("note_off", note=64)))
    call = {"ending": "early", "bar": 1, "t_first": times[96] + 0.00025}
    said = [(line, "[ 12.00] call ended (trading); answer of 2 bar(s) from bar 4")]
    return bm.load_bench("trading").trade_result(call, window, grid, said)


def test_one_answer_is_timed_against_its_planned_line_and_its_end():
    r = _answer(first_ms=0.7, last_off_ms=0.1)
    assert r["lateness_ms"] == pytest.approx(0.7) and r["line_pulse_arrived"]
    assert r["call_on_planned_bar"] and r["first_note_vs_bar_ms"] == pytest.approx(0.25)
    assert r["right_length"] and r["reaches_last_bar"] and r["notes"] == 2
    assert r["jam_bars_answered"] == [2] and r["jam_bar_minus_ours"] == [1]
    early = _answer(first_ms=-2000.0, last_off_ms=0.0)  # a bar early: not on its line
    assert early["lateness_ms"] == pytest.approx(-2000.0)
    too_long = _answer(first_ms=0.0, last_off_ms=30.0)
    assert not too_long["right_length"] and too_long["last_off_vs_end_line_ms"] == \
        pytest.approx(30.0)
    unended = _answer(first_ms=0.0, last_off_ms=0.0, unended=True)
    assert not unended["right_length"] and unended["unended"] == [(0, 64)]


def test_trades_count_answers_on_their_line_and_of_the_right_length():
    tr = bm.load_bench("trading")
    calls = [{"lateness_ms": 0.5, "right_length": True},
             {"lateness_ms": -1.9, "right_length": True},
             {"lateness_ms": 2.4, "right_length": False},
             {"lateness_ms": None, "right_length": False}]
    s = tr.summarize_trades(calls, 2.0)
    assert (s["trades"], s["answered"], s["on_line"], s["right_length"]) == (4, 3, 2, 2)
    assert s["on_line_share"] == 0.5 and s["right_length_share"] == 0.5


# --- a small real run ---------------------------------------------------------------------------


def test_quick_run_writes_a_valid_result(tiny_model_dir, tmp_path, capsys):
    rc = bm.main(["--quick", "--only", "per_note,generation", "--no-peer", "--no-plots",
                  "--model", str(tiny_model_dir), "--out", str(tmp_path)])
    assert rc == 0
    [js] = tmp_path.glob("*.json")
    res = json.loads(js.read_text())
    assert report.validate(res) == []
    pn = res["benchmarks"]["per_note"]
    assert set(pn["configs"]) == {"improv_feed", "improv_generate", "improv_step"}
    assert pn["configs"]["improv_feed"]["n"] > 100 and 1.5 < pn["tokens_per_note"] < 6
    assert res["skipped"]["notochord"] == "--no-peer"
    g = res["benchmarks"]["generation"]
    assert g["free"]["tokens"] == 300 and g["corpus_paced"]["realtime_factor"] > 0
    md = js.with_suffix(".md").read_text()
    assert md == capsys.readouterr().out
    assert "| improv per event: generate one |" in md


def test_plots_are_written_when_matplotlib_is_there(tmp_path):
    res = sample_result()
    res["benchmarks"]["decode"]["configs"]["torch_nocache/fill50"] = {
        **bm.summarize([30.0, 31.0]), "position": 255}
    samples = {"a": np.array([1.0, 2.0, 3.0]), "empty": np.array([])}
    written = bm.load_bench("plots").plot_all(res, samples, tmp_path, "s")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert written == []
        return
    assert written == ["s-hist.png", "s-context.png"]  # no GPU ran: no CPU/GPU plot
    assert all((tmp_path / w).stat().st_size > 1000 for w in written)


def test_unknown_benchmark_is_a_clear_error(capsys):
    from improv.cli import main

    assert main(["bench", "--only", "decode,warp"]) == 2
    assert "unknown benchmark warp; choose from decode" in capsys.readouterr().err


def test_session_records_note_in_to_tokens_fed(tiny_model_dir):
    import mido

    from improv.live.clock import Clock
    from improv.live.engine import Engine
    from improv.live.session import Session
    from improv.live.simulate import SimScheduler, SimTime

    sim = SimTime()
    clock = Clock(120.0, time_fn=sim)
    s = Session(Engine(tiny_model_dir, provider="cpu", background=False), clock,
                SimScheduler(clock))
    s.start(thread=False)
    s.submit(mido.Message("note_on", note=60, velocity=80), t=sim() - 0.004)
    s.submit(mido.Message("note_off", note=60), t=sim())
    s.tick_once(0.0)
    assert len(s.ingest_ms) == 2
    assert s.ingest_ms[0] == pytest.approx(4.0) and s.ingest_ms[1] == pytest.approx(0.0)


# --- issue 11: isolation and clock-follow analysis ---------------------------------------------


def test_grid_offsets_take_the_tick_at_or_before_so_a_very_late_note_stays_late():
    iso = bm.load_bench("isolation")
    origin = 5.0
    ticks = [3, 10, 11, 40]
    late_s = [0.0004, -0.001, 0.015, 0.0013]  # one 1 ms early, one 15 ms late (> half a tick)
    arrivals = [origin + k * TICK + d for k, d in zip(ticks, late_s, strict=True)]
    off = iso.grid_offsets(arrivals, origin, TICK)
    assert off == pytest.approx(late_s, abs=1e-9)
    # nearest-tick rounding would have called the 15 ms late note 5.8 ms early
    assert round((arrivals[2] - origin) / TICK) == 12


def test_grid_origin_from_earliest_or_latest_pulse_arrivals():
    iso = bm.load_bench("isolation")
    rng = np.random.default_rng(0)
    period = 64 / 48000
    ideal = 3.0 + np.arange(2000) * TICK
    heard = np.delete(ideal + rng.uniform(0, period, ideal.size), 700)  # one pulse lost
    origin = iso.fit_origin(heard, heard[0], TICK, 0.5)
    assert origin == pytest.approx(3.0, abs=0.05e-3)  # the send grid, not a period late
    assert iso.fit_origin(heard, heard[0], TICK, 50) == pytest.approx(3.0 + period / 2,
                                                                      abs=0.1e-3)
    # stamped up to a period early (sample-accurate pulses): the latest arrivals
    early = ideal - rng.uniform(0, period, ideal.size)
    assert iso.fit_origin(early, early[0], TICK, 99.5) == pytest.approx(3.0, abs=0.05e-3)
    with pytest.raises(bm.load_bench("live").LiveError):
        iso.fit_origin([], 0.0, TICK, 0.5)


def test_a_master_slower_than_its_nominal_tempo_is_followed_by_a_local_grid():
    iso, follow = bm.load_bench("isolation"), bm.load_bench("clock_follow")
    tick = TICK * 1.024  # JACK's dummy driver ran 2.4% slow against the system clock
    pulses = 1.0 + np.arange(600) * tick
    a, b = iso.fit_line(pulses, TICK)
    assert a == pytest.approx(1.0) and b == pytest.approx(tick)
    notes = 1.0 + np.array([100, 300, 550]) * tick + np.array([0.0002, 0.0011, 0.0007])
    rng = np.random.default_rng(1)
    period = 64 / 48000
    heard = pulses - rng.uniform(0, period, pulses.size)  # stamped up to a period early
    heard[298] += 0.007  # one pulse a late JACK cycle held back 7 ms, next to a note
    off, spread = follow.local_grid_offsets(notes, heard, TICK)
    assert off == pytest.approx([0.2, 1.1, 0.7], abs=0.2)  # not wrapped a tick round
    assert spread[1] > 7.0 and spread[0] < 1.5
    # the nominal grid would drift by 2.4% of the time since the origin
    assert abs(iso.grid_offsets(notes[-1:], 1.0, TICK)[0] * 1e3 - 0.7) > 1.0


def test_jittered_pulses_stay_within_the_jitter_and_repeat_with_the_seed():
    iso, follow = bm.load_bench("isolation"), bm.load_bench("clock_master")
    plan = follow.jittered_pulses(2.0, TICK, 500, 0.001, seed=3)
    ideal = np.array([i for i, _ in plan])
    at = np.array([t for _, t in plan])
    assert ideal == pytest.approx(2.0 + np.arange(500) * TICK)
    assert np.abs(at - ideal).max() <= 0.001 and np.abs(at - ideal).max() > 0.0009
    assert abs(np.mean(at - ideal)) < 0.0001
    assert plan == follow.jittered_pulses(2.0, TICK, 500, 0.001, seed=3)
    assert iso.latency_of({"latency": {"schedule_p99_ms": 0.2}}) == {"schedule_p99_ms": 0.2}
    assert iso.latency_of(None) == {}


def test_markdown_has_the_isolation_and_clock_follow_rows_with_their_bars():
    res = sample_result()
    dist = bm.summarize([0.4, 0.6, 1.5])
    res["benchmarks"]["isolation"] = {
        "seconds": 60, "configs": {"io_ui_hog/arrival": dist,
                                   "decode_isolated_roll": dist, "decode_isolated_fill50": dist,
                                   "io_ui_hog/decode_alone_gap": {**dist, "gap_ms": 2.5}},
        "runs": {"io_ui_hog": {
            "jam_latency": {"schedule_p99_ms": 0.6, "decode_median_ms": 0.9, "late": 0},
            "bar_arrival_ok": True, "bar_send_ok": False, "bar_decode_ok": True,
            "decode_ratio": 1.2, "decode_ratio_flat": 2.25, "late_here": 0, "notes": 100,
            "answers": 5,
            "stuck_notes": [], "double_strikes": 0}}}
    res["benchmarks"]["clock_follow"] = {
        "seconds": 60, "configs": {"jitter/offset": dist,
                                   "jitter/master_send_minus_ideal": dist},
        "runs": {"jitter": {"bar_ok": False, "jitter_ms": 1.0, "master_send_min_ms": -1.0}}}
    md = report.markdown(res)
    assert ("| isolation: answer arrival at JACK - deadline (I/O process, UI 160x48, CPU hog, "
            "dense answers) |") in md
    assert "p99 <= 2 ms: True; send p99 0.600 ms <= 0.5 ms: False |" in md
    assert ("decode median 0.900 ms (1.20x alone after the same idle time; bar <= 1.5x: True; "
            "2.25x alone flat out)") in md
    assert ("| decode step alone after the idle time the jam left (I/O process, UI 160x48, CPU "
            "hog: 2.50 ms) | 0.600 |") in md
    assert "jam median 0.900 ms = 1.20x; bar <= 1.5x: True |" in md
    assert "keys left down 0, double strikes 0" in md
    assert "(a master with +-1 ms uniform jitter per pulse) |" in md
    assert "bar <= 1.5 ms: False |" in md
    assert "--in-process" not in md  # a run that did not happen has no row
    assert report.validate(res) == []


def test_key_faults_hear_the_notes_as_a_synth_does():
    import mido

    iso = bm.load_bench("isolation")
    on = lambda n: (0.0, mido.Message("note_on", note=n, velocity=80))  # noqa: E731
    off = lambda n: (0.0, mido.Message("note_off", note=n))  # noqa: E731
    zero = (0.0, mido.Message("note_on", note=64, velocity=0))
    msgs = [on(60), on(60), off(60), on(62), on(64), zero, (0.0, mido.Message("clock"))]
    assert iso.key_faults(msgs) == ([(0, 62)], 1)  # 60 struck twice, ended by one note-off
    assert bm.load_bench("trading").stuck_notes(msgs) == [(0, 60), (0, 62)]


def test_cpu_steal_is_read_from_proc_stat_and_only_grows():
    a = bm.cpu_steal_s()
    b = bm.cpu_steal_s()
    if sys.platform.startswith("linux"):  # the VMs this project runs on
        assert a is not None and b is not None and 0.0 <= a <= b
    else:
        assert a is None or a <= b
