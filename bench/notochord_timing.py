"""Notochord's feed and query per event, run by bench.common inside Notochord's own venv.

Reads events as JSON on stdin ([instrument, pitch, delta seconds, velocity] each) and the
number of warm-up events as argv[1]; prints one JSON line. It never runs in improv's env.
"""

import importlib.metadata
import json
import sys
import time

import torch
from notochord import Notochord

torch.set_num_threads(1)

torch.manual_seed(0)
events, warmup = json.load(sys.stdin), int(sys.argv[1])
model = Notochord()  # the default architecture, random weights
model.eval()
model.reset()
feed, query = [], []
clock = time.perf_counter
for i, (inst, pitch, dt, vel) in enumerate(events):
    t0 = clock()
    model.feed(inst, pitch, dt, vel)
    t1 = clock()
    model.query(next_inst=1)  # one instrument, piano: as improv's single stream
    t2 = clock()
    if i >= warmup:
        feed.append((t1 - t0) * 1e3)
        query.append((t2 - t1) * 1e3)
print(json.dumps({"feed_ms": feed, "query_ms": query, "torch": torch.__version__,
                  "notochord": importlib.metadata.version("notochord"),
                  "threads": torch.get_num_threads(), "query": "query(next_inst=1)",
                  "parameters": sum(p.numel() for p in model.parameters())}))
