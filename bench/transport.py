"""Transport between the session and the real-time I/O process: round trip of one message.

Measures, between two processes started with the spawn context (as the I/O process is):

* ``pipe``: a ``multiprocessing.Pipe`` carrying small tuples (what ``improv.live.iolink``
  sends: a tick, three MIDI bytes, a tag);
* ``pipe-bytes``: the same pipe with ``send_bytes`` of a packed 16-byte record (no pickle);
* ``queue``: a ``multiprocessing.Queue`` each way (a feeder thread per queue).

    python bench/transport.py [--n 5000]

Prints p50 / p99 / max of the round trip in microseconds.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import struct
import time

REC = struct.Struct("<dBBBx4s")  # tick, 3 MIDI bytes, tag


def _echo_pipe(conn) -> None:
    while True:
        msg = conn.recv()
        if msg is None:
            return
        conn.send(msg)


def _echo_bytes(conn) -> None:
    while True:
        b = conn.recv_bytes()
        if not b:
            return
        conn.send_bytes(b)


def _echo_queue(qin, qout) -> None:
    while True:
        msg = qin.get()
        if msg is None:
            return
        qout.put(msg)


def _pct(xs: list[float]) -> dict:
    xs = sorted(xs)
    return {"p50_us": round(xs[len(xs) // 2] * 1e6, 1),
            "p99_us": round(xs[int(0.99 * len(xs))] * 1e6, 1), "max_us": round(xs[-1] * 1e6, 1)}


def measure(kind: str, n: int) -> dict:
    ctx = mp.get_context("spawn")
    rtts = []
    if kind == "queue":
        a, b = ctx.Queue(), ctx.Queue()
        p = ctx.Process(target=_echo_queue, args=(a, b), daemon=True)
        p.start()
        for i in range(n + 100):
            t = time.perf_counter()
            a.put(("s", float(i), b"\x90\x3c\x50", "response"))
            b.get()
            if i >= 100:  # the first ones pay for the process start
                rtts.append(time.perf_counter() - t)
        a.put(None)
    else:
        here, there = ctx.Pipe()
        p = ctx.Process(target=_echo_pipe if kind == "pipe" else _echo_bytes, args=(there,),
                        daemon=True)
        p.start()
        there.close()
        rec = REC.pack(1.0, 0x90, 60, 80, b"resp")
        for i in range(n + 100):
            t = time.perf_counter()
            if kind == "pipe":
                here.send(("s", float(i), b"\x90\x3c\x50", "response"))
                here.recv()
            else:
                here.send_bytes(rec)
                here.recv_bytes()
            if i >= 100:
                rtts.append(time.perf_counter() - t)
        here.send(None) if kind == "pipe" else here.send_bytes(b"")
    p.join(timeout=5)
    return {"transport": kind, "n": n, **_pct(rtts)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=5000)
    args = ap.parse_args(argv)
    for kind in ("pipe", "pipe-bytes", "queue"):
        r = measure(kind, args.n)
        print(f"{r['transport']:11} round trip p50 {r['p50_us']:7.1f} us  p99 {r['p99_us']:7.1f} us"
              f"  max {r['max_us']:8.1f} us  (n={r['n']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
