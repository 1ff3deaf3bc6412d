"""How each benchmark of ``improv bench`` runs and what of it goes into the result.

``Suite`` has one method per benchmark name of ``bench.common.BENCHMARKS``; each
returns that benchmark's part of the result (``configs`` of latency distributions
plus whatever else it found) and keeps raw samples in ``samples`` for the plots.
Quick runs (``--quick``) take fewer samples of everything. Loaded by
bench.common.
"""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

import numpy as np

from bench.common import (
    BAR_DECODE_RATIO,
    BAR_FOLLOW_MS,
    BAR_HANDOVER_MS,
    BAR_ISO_ARRIVAL_MS,
    BAR_ISO_SEND_MS,
    BAR_LATE_MS,
    BAR_RATIO,
    BAR_TRADING_MS,
    BenchError,
    ensure_peer_venv,
    load_bench,
    log,
    run_peer,
    summarize,
)


def _decode_figures(run: dict, *more: str) -> dict:
    """The figures a bench/decode.py run adds to a ``configs`` entry (and ``more`` keys)."""
    return {k: run[k] for k in ("median_ms", "p99_ms", "p999_ms", "max_ms", "mean_ms", "steps",
                                *more)}


class Suite:
    """One run: the options, the model, the result being filled, raw samples for the plots."""

    def __init__(self, args: argparse.Namespace, model: Path):
        self.args, self.model, self.quick = args, model, args.quick
        self.samples: dict[str, np.ndarray] = {}
        self.res: dict = {"benchmarks": {}, "skipped": {}}

    def n(self, quick: int, full: int) -> int:
        return quick if self.quick else full

    def decode(self) -> dict:
        dec = load_bench("decode")
        fills = (0.1, 0.5, 1.0) if self.quick else (0.1, 0.25, 0.5, 0.75, 1.0)
        steps = self.n(300, 3000)
        configs, skipped = {}, {}

        def put(name: str, c: dict) -> None:
            configs[name] = c
            log(f"  {name}: median {c['median_ms']:.3f} ms, p99 {c['p99_ms']:.3f} ms")

        for threads in (1,) if self.quick else (1, 2):
            for f in fills:
                put(f"ort_cpu_{threads}t/fill{round(f * 100)}",
                    dec.ort_fixed_fill(self.model, "cpu", threads, f, steps))
            put(f"ort_cpu_{threads}t/roll", dec.ort_roll(self.model, "cpu", threads, steps))
        from improv.live.engine import Engine, ModelError

        try:
            Engine(self.model, provider="cuda", background=False)
            for f in fills:
                put(f"ort_cuda/fill{round(f * 100)}",
                    dec.ort_fixed_fill(self.model, "cuda", 1, f, steps))
        except ModelError as e:
            skipped["ort_cuda"] = str(e)
        try:
            import torch
        except ImportError:
            skipped["torch"] = "torch is not installed (pip install -e '.[train]')"
            return {"configs": configs, "skipped": skipped}
        torch.set_num_threads(1)  # the one core the ORT 1-thread rows get
        for f in fills:
            put(f"torch_cached/fill{round(f * 100)}",
                dec.torch_cached(self.model, f, self.n(200, 1000)))
            put(f"torch_nocache/fill{round(f * 100)}",
                dec.torch_nocache(self.model, f, self.n(8, 40)))
        return {"configs": configs, "skipped": skipped}

    def per_note(self) -> dict:
        mc = load_bench("model_cost")
        toks, source = mc.real_tokens(self.n(260, 2100))
        # The unit is one MIDI note event, as Notochord's: a note-on or a note-off, with the
        # tokens the session feeds for it (its time shifts, bar line, velocity). A note is two.
        events = [[g] for g in mc.split_messages(toks)]
        r = mc.improv_per_note(self.model, events, alternate_every=2)
        self.samples.update({"improv feed / note": r["feed_ms"],
                             "improv generate / note": r["generate_ms"],
                             "decode step (real tokens)": r["step_ms"]})
        out = {"configs": {"improv_feed": summarize(r["feed_ms"]),
                           "improv_generate": summarize(r["generate_ms"]),
                           "improv_step": summarize(r["step_ms"])},
               "source": source, "tokens_per_event": mc.tokens_per_note(events),
               "tokens_per_note": mc.tokens_per_note(mc.note_events(toks)),
               "rolls": r["rolls"], "roll_waits": r["roll_waits"]}
        # An event is fed (the player's) or generated (the machine's): the dearer of the two.
        out["improv_ms"] = max(out["configs"]["improv_feed"]["median_ms"],
                               out["configs"]["improv_generate"]["median_ms"])
        if self.args.no_peer:
            self.res["skipped"]["notochord"] = "--no-peer"
            return out
        try:
            py = ensure_peer_venv(Path(self.args.peer_venv).expanduser())
            noto_events = mc.notochord_events(events)[: self.n(240, 1200)]
            p = run_peer(py, noto_events)
        except (BenchError, subprocess.TimeoutExpired, OSError) as e:
            self.res["skipped"]["notochord"] = str(e)
            return out
        self.samples.update({"Notochord feed / event": np.array(p["feed_ms"]),
                             "Notochord query / event": np.array(p["query_ms"])})
        out["configs"]["notochord_feed"] = summarize(p["feed_ms"])
        out["configs"]["notochord_query"] = summarize(p["query_ms"])
        out["notochord_ms"] = (out["configs"]["notochord_feed"]["median_ms"]
                               + out["configs"]["notochord_query"]["median_ms"])
        out.update(notochord=p["notochord"], notochord_torch=p["torch"], notochord_query=p["query"],
                   notochord_parameters=p["parameters"], notochord_threads=p["threads"])
        out["ratio"] = out["improv_ms"] / out["notochord_ms"]
        out["ratio_feed"] = (out["configs"]["improv_feed"]["median_ms"]
                             / out["configs"]["notochord_feed"]["median_ms"])
        out["ratio_generate"] = out["configs"]["improv_generate"]["median_ms"] / out["notochord_ms"]
        out["bar_ok"] = out["ratio"] <= BAR_RATIO
        return out

    def generation(self) -> dict:
        mc = load_bench("model_cost")
        toks, source = mc.real_tokens(self.n(400, 2000), seed=1)
        g = mc.generation_speed(self.model, toks, self.n(300, 3000))
        return {**g, "source": source, "configs": {}}

    def ingest(self) -> dict:
        r = load_bench("live").ingest(self.model, self.n(4.0, 24.0))
        self.samples["note in -> tokens fed"] = r["ms"]
        return {"configs": {"note_in_to_fed": summarize(r["ms"])}, "calls": r["calls"],
                "answers": r["answers"]}

    def schedule(self) -> dict:
        live = load_bench("live")
        out: dict = {"configs": {}, "seconds": self.args.sched_seconds}
        for cond in ("idle", "loaded"):
            log(f"  {cond} ({self.args.sched_seconds:g} s)")
            r = live.schedule_grid(self.args.sched_seconds, loaded=cond == "loaded")
            self.samples[f"schedule error via JACK, {cond}"] = r["receive_ms"]
            out["configs"][f"jack_{cond}"] = summarize(r["receive_ms"])
            out["configs"][f"send_{cond}"] = summarize(r["send_ms"])
            out[f"stats_{cond}_p99_ms"] = r["stats_p99_ms"]
            out[f"{cond}_counts"] = {k: r[k] for k in ("planned", "received", "late")}
            out["realtime"] = r["realtime"]
        return out

    def jam(self) -> dict:
        r = load_bench("live").jam_e2e(self.model, self.args.calls, log=log)
        late = [c["lateness_ms"] for c in r["calls"]]
        r["configs"] = {
            "first_note_lateness": summarize(late),
            "call_end_to_first_note": summarize([c["call_end_to_first_note_ms"]
                                                 for c in r["calls"]])}
        r["bar_ok"] = max(late) <= BAR_LATE_MS
        return r

    def trading(self) -> dict:
        return self._trades(predicted=False)

    def handover(self) -> dict:
        return self._trades(predicted=True)

    def _trades(self, predicted: bool) -> dict:
        """2-bar calls into a jam: trading on fixed lines, or the predicted hand-over."""
        bar_ms = BAR_HANDOVER_MS if predicted else BAR_TRADING_MS
        r = load_bench("trading").trading(self.model, self.args.trades, bar_ms=bar_ms, log=log,
                                          predicted=predicted)
        answered = [c for c in r["calls"] if c["lateness_ms"] is not None]
        fmt = lambda x: "-" if x is None else f"{x:+.2f} ms"  # noqa: E731
        for k, c in enumerate(r["calls"], 1):
            log(f"  call {k} ({c['ending']}): first answer note {fmt(c['lateness_ms'])} against "
                f"its bar line, last note-off {fmt(c['last_off_vs_end_line_ms'])} against the "
                f"line 2 bars on; the jam: {'; '.join(c['jam_said']) or 'nothing'}")
        if not answered:
            raise BenchError("no call was answered: " + " / ".join(r["jam_log"][-3:]))
        late = [c["lateness_ms"] for c in answered]
        what = "predicted hand-over" if predicted else "trading"
        self.samples[f"{what}: first answer note - its bar line"] = np.array(late)
        r["configs"] = {"answer_on_line": summarize(late)}
        r["bar_ok"] = r["on_line"] == r["trades"] and not r["stuck_notes"]
        return r

    # --- issue 11: real-time isolation ---------------------------------------------------------

    def isolation(self) -> dict:
        """A real jam with its UI at 160x48 during dense answers: I/O process + CPU hog,
        --in-process + CPU hog, I/O process without the hog; the decode step in each jam
        next to bench/decode.py's figure for the same model, measured first in this run."""
        iso = load_bench("isolation")
        seconds = self.args.iso_seconds
        dec = iso.isolated_decode(self.model, self.n(500, 3000))
        dec_mod = load_bench("decode")
        configs = {"decode_isolated_roll": _decode_figures(dec["roll"]),
                   "decode_isolated_fill50": _decode_figures(dec["fill50"])}
        iso_ms = configs["decode_isolated_roll"]["median_ms"]
        log(f"  decode step alone (bench/decode.py, 1 thread): median {iso_ms:.3f} ms (roll), "
            f"{configs['decode_isolated_fill50']['median_ms']:.3f} ms (fill 50%)")
        out: dict = {"configs": configs, "seconds": seconds, "runs": {}, "skipped": {}}
        for name, in_process, hog in (("io_ui_hog", False, True), ("inproc_ui_hog", True, True),
                                      ("io_ui", False, False)):
            log(f"  {name}: {seconds:g} s of calls and dense answers")
            try:
                r = iso.isolation_run(self.model, seconds, in_process=in_process, hog=hog,
                                      log=log)
            except Exception as e:  # one jam that cannot run must not lose the others
                out["skipped"][name] = f"{type(e).__name__}: {e}"
                log(f"    failed: {out['skipped'][name]}")
                continue
            arr = summarize(r["arrival_ms"])
            configs[f"{name}/arrival"] = arr
            self.samples[f"isolation {name}: arrival - deadline"] = r["arrival_ms"]
            lat = r["jam_latency"]
            send = lat.get("schedule_p99_ms")
            dmed = lat.get("decode_median_ms")
            run = {k: r[k] for k in ("notes", "messages", "late_here", "answers", "in_process",
                                     "hog_cpu", "ui", "ui_latency_mentions", "exit_code",
                                     "pulses", "stuck_notes", "double_strikes", "steal_ms",
                                     "unpaired_note_ons", "jam_restarts")}
            # The same steps alone, each after the idle time the jam left before its steps:
            # what isolation can be asked to match (a paused step reads its weights from
            # memory; bench/decode.py's gap rows).
            gap = lat.get("decode_gap_ms")
            paced_ms = None
            if gap is not None:
                paced = dec_mod.ort_roll(self.model, "cpu", 1, self.n(300, 1500), gap_ms=gap)
                configs[f"{name}/decode_alone_gap"] = _decode_figures(paced, "gap_ms")
                paced_ms = paced["median_ms"]
                log(f"    decode alone after {gap:.2f} ms idle (the jam's median gap): median "
                    f"{paced_ms:.3f} ms")
            run.update(jam_latency=lat, pulse_p99_ms=float(np.percentile(r["pulse_ms"], 99)),
                       decode_ratio=None if dmed is None or paced_ms is None else dmed / paced_ms,
                       decode_ratio_flat=None if dmed is None else dmed / iso_ms,
                       bar_arrival_ok=arr["p99_ms"] <= BAR_ISO_ARRIVAL_MS,
                       bar_send_ok=send is not None and send <= BAR_ISO_SEND_MS,
                       bar_decode_ok=dmed is not None and paced_ms is not None
                       and dmed <= BAR_DECODE_RATIO * paced_ms)
            out["runs"][name] = run
            log(f"    arrival - deadline p50 {arr['median_ms']:.3f} p99 {arr['p99_ms']:.3f} "
                f"max {arr['max_ms']:.3f} ms over {arr['n']} messages; jam: send p99 "
                f"{send} ms, late {lat.get('late')}, decode median {dmed} ms")
        if not out["runs"]:
            raise BenchError("no isolation jam ran: " + "; ".join(out["skipped"].values()))
        return out

    def clock_follow(self) -> dict:
        """`improv jam --clock midi` following a +-1 ms jittered master, and jack_midi_clock
        with the default offset and with the one for a master inside JACK's cycle."""
        from improv.live.jack_info import jack_period_s

        follow = load_bench("clock_follow")
        seconds = self.args.iso_seconds
        half = (jack_period_s() or 0.0) * 1e3 / 2  # what the jam applies on this server
        out: dict = {"configs": {}, "seconds": seconds, "runs": {}, "skipped": {},
                     "half_period_ms": half}
        for name, master, extra in (
                ("jitter", "jitter", ()), ("jack_midi_clock", "jack_midi_clock", ()),
                ("jack_midi_clock_inside", "jack_midi_clock",
                 ("--clock-offset-ms", f"{-half:.3f}"))):
            log(f"  following {name} {' '.join(extra)}: {seconds:g} s of calls and dense answers")
            try:
                r = follow.follow_run(self.model, seconds, master=master, log=log, extra=extra)
            except Exception as e:
                out["skipped"][name] = f"{type(e).__name__}: {e}"
                log(f"    failed: {out['skipped'][name]}")
                continue
            off = summarize(r["offset_ms"])
            # early and late alike: the bar is on the distance from the grid
            off["abs_p99_ms"] = float(np.percentile(np.abs(r["offset_ms"]), 99))
            out["configs"][f"{name}/offset"] = off
            self.samples[f"clock follow {name}: note - master grid"] = r["offset_ms"]
            run = {k: v for k, v in r.items() if k not in ("offset_ms",
                                                            "master_send_minus_ideal_ms")}
            if "master_send_minus_ideal_ms" in r:
                out["configs"]["jitter/master_send_minus_ideal"] = summarize(
                    r["master_send_minus_ideal_ms"])
                run["master_send_min_ms"] = float(r["master_send_minus_ideal_ms"].min())
            run["extra"] = list(extra)
            run["bar_ok"] = off["abs_p99_ms"] <= BAR_FOLLOW_MS
            out["runs"][name] = run
            log(f"    note - master grid p50 {off['median_ms']:.3f} p99 {off['p99_ms']:.3f} "
                f"max {off['max_ms']:.3f} ms over {off['n']} messages")
        if not out["runs"]:
            raise BenchError("no clock-follow jam ran: " + "; ".join(out["skipped"].values()))
        return out
