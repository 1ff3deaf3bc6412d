"""How every `improv` command's help ends: a few examples, as written (argparse's own
formatter would fold them into one paragraph)."""

from __future__ import annotations

import argparse


def with_examples(*lines: str) -> dict:
    """ArgumentParser keywords for an ``examples:`` epilog of ``lines`` kept as written."""
    return {"formatter_class": argparse.RawDescriptionHelpFormatter,
            "epilog": "examples:\n" + "\n".join(f"  {line}" for line in lines)}
