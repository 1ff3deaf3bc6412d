"""Stuck-note soak: N randomized sessions on simulated time, every note-on must end.

Each session is a real Session (the model's engine and sampler, the real token
stream) driven by a scripted player: random calls, chords, barge-ins into the
answer, preset switches (at once or at the next phrase) and a stop at a random
moment. Time is simulated (improv.live.simulate), so a thousand sessions take minutes.

It counts, per session:
- notes still sounding once an answer is over and nothing is pending (the session
  itself failed to end them: the bug this hunts);
- a note-on for a key the machine already holds;
- notes sounding after the stop (the panic must end them all).

    python bench/stuck_notes.py --sessions 1000 [--model models/improv-base]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

from improv.commands.jam import default_model_dir
from improv.core.presets import PresetLibrary
from improv.live.answer import RESPONSE
from improv.live.clock import Clock
from improv.live.engine import Engine
from improv.live.session import Session, SessionOptions
from improv.live.simulate import SimScheduler, SimTime, random_script, run


def soak(model_dir: Path, sessions: int, seed: int = 0) -> dict:
    library = PresetLibrary()
    engine = Engine(model_dir, provider="cpu", background=False)
    totals = {"sessions": 0, "answers": 0, "barge_ins": 0, "machine_notes": 0,
              "stuck_after_answer": 0, "double_note_on": 0, "sounding_after_stop": 0,
              "failed_sessions": []}
    t0 = time.perf_counter()
    for i in range(sessions):
        rng = random.Random(seed * 1_000_003 + i)
        sim = SimTime()
        clock = Clock(rng.choice((72.0, 96.0, 120.0, 144.0, 180.0)), time_fn=sim)
        sched = SimScheduler(clock)
        session = Session(engine, clock, sched, library, rng.randint(1, len(library)),
                          options=SessionOptions(seed=i))
        session.start(thread=False)
        stuck = 0

        def check(sess, sc):
            nonlocal stuck
            if sess.answer is None and sc.pending(RESPONSE) == 0 and sc.sounding(RESPONSE):
                stuck += 1

        run(session, sim, sched, random_script(rng, clock.bpm, len(library)), check=check)
        log = session.drain_log()
        totals["sessions"] += 1
        totals["answers"] += len(session.responses)
        totals["barge_ins"] += sum("barge-in" in line for line in log)
        totals["machine_notes"] += sum(
            1 for x in sched.log if x.tag == RESPONSE and x.msg.type == "note_on"
            and x.msg.velocity > 0)
        totals["stuck_after_answer"] += bool(stuck)
        totals["double_note_on"] += len(sched.errors)
        totals["sounding_after_stop"] += len(sched.sounding())
        if stuck or sched.errors or sched.sounding():
            totals["failed_sessions"].append(i)
    totals["seconds"] = round(time.perf_counter() - t0, 1)
    return totals


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sessions", type=int, default=1000)
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None, help="also write the totals here")
    args = ap.parse_args(argv)
    totals = soak(args.model or default_model_dir(), args.sessions, args.seed)
    print(json.dumps(totals, indent=1))
    if args.json:
        args.json.write_text(json.dumps(totals, indent=1) + "\n")
    bad = totals["stuck_after_answer"] + totals["double_note_on"] + totals["sounding_after_stop"]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
