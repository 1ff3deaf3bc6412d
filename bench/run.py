"""Run every benchmark: ``python bench/run.py [--quick]`` is ``improv bench [--quick]``.

Writes ``bench/results/HOST-DATE.json``, ``HOST-DATE.md`` (the README's Performance
section for this machine) and PNG plots. The suite lives in ``bench.common``.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a checkout without pip install

from bench.common import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(prog="bench/run.py"))
