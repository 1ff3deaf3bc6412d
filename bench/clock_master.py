"""A MIDI beat clock master with +-jitter per pulse, as its own process.

This module owns the jittered master :mod:`bench.clock_follow` measures against. It runs
in a process of its own, as a real master does: a master thread inside the bench's
process shared the GIL with the bench's listener and, at SCHED_FIFO with the bench's
1 ms switch interval, cost the jam under test up to 36 ms of send error (measured with a
30 s follow run: the jam's send p99 0.2-0.3 ms with the master alone in its process).

    python -m bench.clock_master --to 'improv in TAG' --t0 T --bpm 120 --pulses N
        --jitter-ms 1 --seed 11 --out sent.json

Sends Start 10 ms before ``t0`` (``improv.live.clock.now`` seconds, the same clock in
every process), then pulse k at ``t0 + k * tick + uniform(-jitter, +jitter)``; stops on
SIGTERM or after ``--pulses`` and writes ``[[ideal, sent], ...]`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import threading
import time

import mido

from improv.live.clock import now, try_realtime
from improv.live.ports import get_backend, match_port

PPQ = 24


def jittered_pulses(t0: float, tick_s: float, n: int, jitter_s: float,
                    seed: int = 0) -> list[tuple[float, float]]:
    """(ideal, planned send time) of ``n`` pulses, each uniformly ``+-jitter_s`` off."""
    rng = random.Random(seed)
    return [(t0 + k * tick_s, t0 + k * tick_s + rng.uniform(-jitter_s, jitter_s))
            for k in range(n)]


def sleep_until(t: float, stop: threading.Event) -> None:
    """Sleep to 1 ms before ``t``, then yield until it (a master's clock thread)."""
    while not stop.is_set():
        d = t - now()
        if d <= 0:
            return
        if d > 0.002:
            stop.wait(d - 0.001)
        else:
            time.sleep(0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--to", required=True, help="part of the JACK input port's name")
    ap.add_argument("--t0", type=float, required=True, help="the first pulse's ideal time")
    ap.add_argument("--bpm", type=float, default=120.0, help="tempo")
    ap.add_argument("--pulses", type=int, required=True, help="pulses to send at most")
    ap.add_argument("--jitter-ms", type=float, default=1.0, help="+- this, uniform")
    ap.add_argument("--seed", type=int, default=11, help="the jitter's seed")
    ap.add_argument("--out", required=True, help="JSON file of [ideal, sent] pairs")
    args = ap.parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    backend = get_backend("jack")
    port = backend.open_output(match_port(args.to, backend.get_output_names(), "output"))
    plan = jittered_pulses(args.t0, 60.0 / args.bpm / PPQ, args.pulses, args.jitter_ms / 1e3,
                           args.seed)
    try_realtime()  # as a master's clock thread would ask; the jitter is added on purpose
    sent: list[tuple[float, float]] = []
    try:
        sleep_until(args.t0 - 0.01, stop)
        port.send(mido.Message("start"))
        for ideal, at in plan:
            sleep_until(at, stop)
            if stop.is_set():
                break
            t = now()
            port.send(mido.Message("clock"))
            sent.append((ideal, t))
    finally:
        port.close()
        with open(args.out, "w") as f:
            json.dump(sent, f)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
