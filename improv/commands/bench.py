"""`improv bench`: the latency benchmarks of the repository's bench/ package.

The suite lives in bench/ at the top of a checkout (it imports improv, never the other
way round); this command finds it and runs ``bench.common.main``.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    if not (ROOT / "bench" / "common.py").is_file():
        print("improv bench: the benchmarks live in the repository's bench/ folder; run this "
              "from a checkout (git clone, then pip install -e .)", file=sys.stderr)
        return 2
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from bench.common import main as bench_main

    return bench_main(argv, prog=prog or "improv bench")
