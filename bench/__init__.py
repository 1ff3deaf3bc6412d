"""improv's benchmarks: `improv bench` / `python bench/run.py` (see bench/common.py)."""
