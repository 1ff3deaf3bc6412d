"""`improv ui`: the stage UI attached to a running jam, from a second terminal or an SSH session.

It finds the jam through the address file the jam's API server writes (``--socket`` names a
socket instead), and runs the Textual app over a ``RemoteSession``. The jam does not depend on
it: quitting (q) detaches and the jam plays on; a UI killed or hung costs the jam nothing.
``improv jam`` runs this same command as its own UI (``--owner``: there q ends the set).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from improv.core.cli_help import with_examples
from improv.live.api_server import Address, find_jam, runtime_dir


def parser(prog: str | None = None) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog=prog or "improv ui", description=__doc__.split("\n\n")[0],
        **with_examples(
            "improv ui                     # the stage of the jam running on this machine",
            "ssh stage-pc -t improv ui     # from another computer"))
    ap.add_argument("--socket", default=None, metavar="PATH",
                    help="the jam's API socket (default: the newest running jam's)")
    ap.add_argument("--backend", choices=("alsa", "jack", "coremidi", "winmm"), default=None,
                    help="MIDI API the ports screen lists: the jam's --backend (default: the "
                    "platform's)")
    # the UI that `improv jam` starts for itself: q ends the set there
    ap.add_argument("--owner", action="store_true", help=argparse.SUPPRESS)
    return ap


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    args = parser(prog).parse_args(argv)
    me = prog or "improv ui"
    if args.socket:
        address = Address.from_socket_path(args.socket)
    else:
        address = find_jam()
        if address is None:
            print(f"{me}: no jam is running (none has an address in {runtime_dir()}); "
                  "start one with 'improv jam'", file=sys.stderr)
            return 2
    from improv.stage.remote import JamGone, RemoteSession

    try:
        remote = RemoteSession(address)
    except JamGone as e:
        print(f"{me}: {e}; is the jam still running?", file=sys.stderr)
        return 2
    remote.wait_first(3.0)  # the first frame shows the jam, not defaults
    from improv.stage.tui import ImprovApp

    _yield_to_the_set()
    app = ImprovApp(remote, presets=remote.snapshot().presets, quit_ends_set=args.owner,
                    list_ports=port_lister(args.backend))
    try:
        app.run()
    finally:
        remote.close()
    return app.return_code or 0


if __name__ == "__main__":
    sys.exit(main())


def port_lister(backend: str | None) -> Callable[[], tuple[list[str], list[str]]]:
    """What the ports screen lists: the ports of ``backend`` (the set's ``--backend``; None:
    mido's default), asked each time the screen opens."""

    def list_ports() -> tuple[list[str], list[str]]:
        from improv.live.ports import get_backend, input_names, output_names

        b = get_backend(backend)
        return input_names(b), output_names(b)

    return list_ports


def _yield_to_the_set() -> None:
    """The UI is never on the timing path: on a machine with few cores its redraws give way
    to the session (the model) and the I/O process, not the other way round."""
    try:
        os.nice(10)
    except (AttributeError, OSError):  # Windows has no nice(); a refusal changes nothing
        pass
