"""The benchmark results: checking a results dict and writing it as the markdown table.

This module owns how bench/results/*.md read: one row per measured figure with its
bar, and the paragraphs that say how each was measured (``markdown``), and the
schema check of a results dict (``validate``).
"""

from __future__ import annotations

import math

from bench.common import (
    BAR_DECODE_RATIO,
    BAR_FOLLOW_MS,
    BAR_HANDOVER_MS,
    BAR_ISO_ARRIVAL_MS,
    BAR_ISO_SEND_MS,
    BAR_LATE_MS,
    BAR_RATIO,
    BAR_TRADING_MS,
    BENCHMARKS,
    hardware_line,
)


def validate(res: dict) -> list[str]:
    """Problems with a result against the schema; empty when it is sound."""
    problems = []
    for key in ("schema", "host", "date", "command", "machine", "model", "benchmarks"):
        if key not in res:
            problems.append(f"missing {key}")
    for name, bench in res.get("benchmarks", {}).items():
        if name not in BENCHMARKS:
            problems.append(f"unknown benchmark {name}")
        for cname, c in bench.get("configs", {}).items():
            for k in ("median_ms", "p99_ms", "p999_ms", "max_ms"):
                v = c.get(k)
                if not isinstance(v, (int, float)) or not math.isfinite(v):
                    problems.append(f"{name}/{cname}: {k} is {v!r}")
            if all(isinstance(c.get(k), (int, float)) for k in ("median_ms", "p99_ms", "p999_ms")):
                if not c["median_ms"] <= c["p99_ms"] <= c["p999_ms"]:
                    problems.append(f"{name}/{cname}: percentiles out of order")
    return problems


def _row(label: str, c: dict | None, bar: str = "") -> str | None:
    if not c:
        return None
    return (f"| {label} | {c['median_ms']:.3f} | {c['p99_ms']:.3f} | {c['p999_ms']:.3f} | "
            f"{c['max_ms']:.3f} | {bar} |")


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f} ms"


def markdown(res: dict) -> str:
    """The README's "Performance" section for the machine that made ``res``."""
    m, b = res["machine"], res["benchmarks"]
    mod = res["model"]
    cfg = lambda bench, name: b.get(bench, {}).get("configs", {}).get(name)  # noqa: E731
    lines = [
        "## Performance", "",
        f"Measured with `{res['command']}` on {res['date'][:10]} ({res['elapsed_s']:.0f} s).",
        f"Hardware: {hardware_line(m)}.",
        f"Model: {mod['dir']} ({mod.get('n_layer')} layers, d_model {mod.get('d_model')}, "
        f"context {mod.get('context')}{', random weights' if mod.get('random_weights') else ''}).",
    ]
    if m["loadavg_before"] > 0.5 * (m["cpus"] or 1):
        lines.append(f"**Measured with other work on the machine** (load average "
                     f"{m['loadavg_before']:.1f} before, {m.get('loadavg_after', 0):.1f} after "
                     f"on {m['cpus']} cores): figures are pessimistic.")
    lines += ["", "| what | median ms | p99 ms | p99.9 ms | max ms | bar |",
              "|---|---:|---:|---:|---:|---|"]
    dec = b.get("decode", {}).get("configs", {})
    for name in sorted(dec):
        if name.startswith(("ort_", "torch_")) and ("fill50" in name or name.endswith("/roll")):
            lines.append(_row(f"decode step, {name}", dec[name]))
    lines.append(_row("note in -> tokens in the engine", cfg("ingest", "note_in_to_fed")))
    j = b.get("jam", {})
    late = cfg("jam", "first_note_lateness")
    if late:
        lines.append(_row("call end: first answer note - its planned beat (JACK, MIDI clock)",
                          late, f"<= {BAR_LATE_MS:g} ms: {j.get('bar_ok')}"))
    lines.append(_row("call end (silence) -> first answer note", cfg("jam",
                                                                     "call_end_to_first_note")))
    tr = b.get("trading", {})
    on_line = cfg("trading", "answer_on_line")
    if on_line:
        lines.append(_row("trading: first answer note - its bar line (JACK, MIDI clock)", on_line,
                          f"<= {BAR_TRADING_MS:g} ms: {tr['on_line']}/{tr['trades']} "
                          f"({100 * tr['on_line_share']:.0f}%)"))
    ho = b.get("handover", {})
    on_line = cfg("handover", "answer_on_line")
    if on_line:
        lines.append(_row("predicted hand-over: first answer note - the bar line after the call "
                          "(JACK)", on_line, f"<= {BAR_HANDOVER_MS:g} ms: {ho['on_line']}/"
                          f"{ho['trades']} ({100 * ho['on_line_share']:.0f}%)"))
    for cond in ("idle", "loaded"):
        lines.append(_row(f"scheduling error via JACK, {cond}", cfg("schedule", f"jack_{cond}")))
    lines += isolation_rows(b)
    pn = b.get("per_note", {})
    lines.append(_row("improv per event: feed a played event", cfg("per_note", "improv_feed")))
    lines.append(_row("improv per event: generate one", cfg("per_note", "improv_generate")))
    lines.append(_row("Notochord per event: feed", cfg("per_note", "notochord_feed")))
    lines.append(_row("Notochord per event: query", cfg("per_note", "notochord_query")))
    lines = [ln for ln in lines if ln is not None]
    lines.append("")
    if "ratio" in pn:
        lines.append(
            f"Model cost per note event (medians; an event is a note-on or a note-off, as in "
            f"Notochord): improv {pn['improv_ms']:.3f} ms (the dearer of feeding a played event "
            f"and generating one: all the tokens of the event, {pn['tokens_per_event']:.2f} on "
            f"average, {pn['tokens_per_note']:.2f} per note) against Notochord "
            f"{pn['notochord']} {pn['notochord_ms']:.3f} ms (feed + {pn['notochord_query']} per "
            f"event; default architecture, {pn['notochord_parameters'] / 1e6:.1f}M parameters, "
            f"torch {pn['notochord_torch']}): ratio {pn['ratio']:.3f}, bar <= {BAR_RATIO:g}: "
            f"{pn['bar_ok']}. Feed against feed {pn['ratio_feed']:.3f}; generate against feed + "
            f"query {pn['ratio_generate']:.3f}. One torch thread, one ORT thread.")
    g = b.get("generation", {})
    for kind, what in (("corpus_paced", "stepping real music"), ("free", "free sampling")):
        if kind in g:
            lines.append(f"Generation speed, {what}: {g[kind]['realtime_factor']:.1f} s of "
                         f"music per s of compute ({g[kind]['tokens']} tokens).")
    if "startup" in j:
        s, mem = j["startup"], j.get("memory_after_start", {})
        lines.append(f"`improv jam` start-up: ports after {s['ports_s']:.2f} s, ready (first "
                     f"state printed) after {s['ready_s']:.2f} s; resident memory "
                     f"{mem.get('VmRSS', float('nan')):.0f} MiB after start-up, peak "
                     f"{j.get('memory_after_calls', {}).get('VmHWM', float('nan')):.0f} MiB.")
    if tr.get("configs", {}).get("answer_on_line"):
        lines.append(
            f"Trading (`call_bars=2`, {tr['bpm']:g} BPM, `improv jam --clock-out` over JACK): "
            f"{tr['trades']} two-bar calls played from the jam's bar lines, some held across the "
            f"hand-over line; {tr['on_line']} of {tr['trades']} answers started within "
            f"{BAR_TRADING_MS:g} ms of their planned bar line's clock pulse, {tr['right_length']} "
            f"of {tr['trades']} ended by the bar line 2 bars later "
            f"(+{tr['end_tolerance_ms']:g} ms); stuck notes at the end: "
            f"{len(tr['stuck_notes'])}; clock pulses lost on the way: "
            f"{tr.get('pulses_missing')}."
            + (f" {len(tr['jam_restarts'])} jam(s) that did not hear the player's probe note "
               f"were replaced." if tr.get("jam_restarts") else ""))
    if ho.get("configs", {}).get("answer_on_line"):
        late = ho["configs"]["answer_on_line"]
        lines.append(
            f"Predicted hand-over (the default, `call_bars=0`, {ho['bpm']:g} BPM, over JACK): "
            f"{ho['trades']} two-bar calls whose last note ends before the line, some a moment "
            f"before it; {ho['on_line']} of {ho['trades']} answers came in within "
            f"{BAR_HANDOVER_MS:g} ms of the bar line after the call (median "
            f"{late['median_ms']:+.1f} ms), {ho['right_length']} of {ho['trades']} lasted the "
            f"call's 2 bars; stuck notes at the end: {len(ho['stuck_notes'])}.")
    sch = b.get("schedule", {})
    if sch:
        lines.append(
            f"Scheduling: one message per tick (24 a beat, 120 BPM) for {sch['seconds']:g} s "
            f"per condition; error = arrival at a JACK client - deadline, so it includes JACK's "
            f"period (64 frames at 48 kHz = 1.33 ms). The scheduler's own stats() (send time - "
            f"deadline): p99 idle {_ms(sch.get('stats_idle_p99_ms'))}, loaded "
            f"{_ms(sch.get('stats_loaded_p99_ms'))}; real-time priority: {sch.get('realtime')}.")
    lines += isolation_notes(b)
    for name, why in res.get("skipped", {}).items():
        lines.append(f"Not measured: {name} ({why}).")
    if res.get("plots"):
        lines.append("Plots: " + ", ".join(f"`{p}`" for p in res["plots"]) + ".")
    return "\n".join(lines) + "\n"


ISO_RUNS = (("io_ui_hog", "I/O process, UI 160x48, CPU hog"),
            ("inproc_ui_hog", "--in-process, UI 160x48, CPU hog"),
            ("io_ui", "I/O process, UI 160x48, no hog"))


def isolation_rows(b: dict) -> list[str | None]:
    """Table rows of the isolation and clock_follow benchmarks (issue 11)."""
    iso, fol = b.get("isolation", {}), b.get("clock_follow", {})
    rows: list[str | None] = []
    for name, what in ISO_RUNS:
        c = iso.get("configs", {}).get(f"{name}/arrival")
        run = iso.get("runs", {}).get(name)
        if not c or not run:
            continue
        send = run["jam_latency"].get("schedule_p99_ms")
        rows.append(_row(f"isolation: answer arrival at JACK - deadline ({what}, dense answers)",
                         c, f"p99 <= {BAR_ISO_ARRIVAL_MS:g} ms: {run['bar_arrival_ok']}; send "
                         f"p99 {_ms(send)} <= {BAR_ISO_SEND_MS:g} ms: {run['bar_send_ok']}"))
    for name, what in (("decode_isolated_roll", "bench/decode.py, 1 thread, across rolls"),
                       ("decode_isolated_fill50", "bench/decode.py, 1 thread, fill 50%")):
        rows.append(_row(f"decode step alone, same run ({what})", iso.get("configs", {}).get(name)))
    for name, what in ISO_RUNS:
        c = iso.get("configs", {}).get(f"{name}/decode_alone_gap")
        run = iso.get("runs", {}).get(name)
        if c and run:
            rows.append(_row(f"decode step alone after the idle time the jam left ({what}: "
                             f"{c['gap_ms']:.2f} ms)", c,
                             f"jam median {_ms(run['jam_latency'].get('decode_median_ms'))} = "
                             f"{_ratio(run['decode_ratio'])}; bar <= {BAR_DECODE_RATIO:g}x: "
                             f"{run['bar_decode_ok']}"))
    for name, what in (("jitter", "a master with +-1 ms uniform jitter per pulse"),
                       ("jack_midi_clock", "jack_midi_clock (sample accurate), default offset"),
                       ("jack_midi_clock_inside", "jack_midi_clock, `--clock-offset-ms` minus "
                        "half a period")):
        c = fol.get("configs", {}).get(f"{name}/offset")
        run = fol.get("runs", {}).get(name)
        if c and run:
            far = c.get("abs_p99_ms")
            parts = [] if far is None else [f"early or late: p99 {far:.3f} ms"]
            if name == "jitter":
                parts.append(f"bar <= {BAR_FOLLOW_MS:g} ms: {run['bar_ok']}")
            if run.get("steal_ms") is not None:
                parts.append(f"CPU stolen by the hypervisor in the jam {run['steal_ms']:.0f} ms")
            rows.append(_row(f"clock follow: answer note at JACK - master's grid ({what})", c,
                             "; ".join(parts)))
    return rows


def _ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def isolation_notes(b: dict) -> list[str]:
    """The paragraph under the table for the issue-11 rows."""
    iso, fol = b.get("isolation", {}), b.get("clock_follow", {})
    out = []
    if iso.get("runs"):
        alone = iso["configs"]["decode_isolated_roll"]["median_ms"]
        parts = []
        for name, what in ISO_RUNS:
            run = iso["runs"].get(name)
            if not run:
                continue
            lat = run["jam_latency"]
            parts.append(
                f"{what}: decode median {_ms(lat.get('decode_median_ms'))} "
                f"({_ratio(run['decode_ratio'])} alone after the same idle time; bar <= "
                f"{BAR_DECODE_RATIO:g}x: {run['bar_decode_ok']}; "
                f"{_ratio(run.get('decode_ratio_flat'))} alone flat out), decode p99 "
                f"{_ms(lat.get('decode_p99_ms'))}, send "
                f"error p99 {_ms(lat.get('schedule_p99_ms'))}, late (jam) {lat.get('late')}, "
                f"note in -> tokens fed median {_ms(lat.get('ingest_median_ms'))} p99 "
                f"{_ms(lat.get('ingest_p99_ms'))}, dropped {lat.get('dropped')}, "
                f"arrivals > 5 ms here {run['late_here']}, {run['notes']} notes in "
                f"{run['answers']} answers, keys left down {len(run['stuck_notes'])}, "
                f"double strikes {run.get('double_strikes')}"
                + (f", CPU stolen by the hypervisor during the jam {run['steal_ms']:.0f} ms"
                   if run.get("steal_ms") is not None else "")
                + (f", {len(run['jam_restarts'])} deaf jam(s) replaced"
                   if run.get("jam_restarts") else ""))
        out.append(
            f"Real-time isolation ({iso['seconds']:g} s of calls per jam; `improv jam` at 120 "
            f"BPM with `--clock-out`, density 1, notes <= a 16th, no humanize or swing; the "
            f"deadline grid is fitted to the earliest arrivals of the jam's own clock pulses, "
            f"so arrival - deadline includes JACK's 1.33 ms period; the jam's own figures from "
            f"its session API socket). Decode step alone (bench/decode.py, same run): median "
            f"{alone:.3f} ms. " + "; ".join(parts) + ".")
    if fol.get("runs"):
        parts = []
        j = fol["runs"].get("jitter")
        if j:
            m = fol["configs"]["jitter/master_send_minus_ideal"]
            parts.append(f"our master sent its pulses {m['median_ms']:+.2f} ms (median), "
                         f"p99 {m['p99_ms']:+.2f} ms, min {j['master_send_min_ms']:+.2f} ms off "
                         f"their ideal times (+-{j['jitter_ms']:g} ms asked; bench/clock_master.py"
                         f", a process of its own at SCHED_FIFO), the grid being its ideal "
                         f"times")
        k = fol["runs"].get("jack_midi_clock") or fol["runs"].get("jack_midi_clock_inside")
        if k:
            parts.append(f"jack_midi_clock's grid is the line through its pulses heard here "
                         f"within 0.5 s of each note, placed on the 90th percentile of their "
                         f"arrivals (pulse "
                         f"gap median {k['pulse_gap_ms']['median']:.3f} ms: JACK's dummy "
                         f"driver runs off the system clock; gap max "
                         f"{k['pulse_gap_ms']['max']:.1f} ms: JACK itself stalled; fit spread p99 "
                         f"{k['pulse_spread_ms']:.2f} ms)")
        half = fol.get("half_period_ms")
        if half:
            parts.append(f"the jam sends {half:.3f} ms (half JACK's period) early and takes the "
                         f"master's pulses as {half:.3f} ms earlier than heard (improv.live."
                         f"jack_info); the last row gives `--clock-offset-ms {-half:.3f}`, "
                         f"the setting for a master writing inside JACK's cycle")
        out.append(f"Clock follow (`improv jam --clock midi --no-tui`, 120 BPM, the same dense "
                   f"answers, {fol['seconds']:g} s of calls): " + "; ".join(parts) + ".")
    for bench, what in ((iso, "isolation"), (fol, "clock_follow")):
        for name, why in bench.get("skipped", {}).items():
            out.append(f"Not measured: {what} {name} ({why[:300]}).")
    return out


