"""The `improv` command: one entry point, one module per subcommand.

Each subcommand lives in the module that owns its concept and exposes
``main(argv) -> int`` with its own argument parser, so ``python -m improv.learn.data``
and ``improv data`` are the same program. Modules are imported only when their
command runs, which keeps torch out of ``improv jam``.
"""

from __future__ import annotations

import importlib
import sys

# name -> (module, one-line help). The module's main() parses the rest.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("improv.commands.demo", "the whole loop with no hardware: a call in, a response out"),
    "jam": ("improv.commands.jam", "play live: call and response with your keyboard"),
    "ui": ("improv.commands.ui", "attach the stage UI to a running jam (another terminal, SSH)"),
    "ports": ("improv.live.ports", "list MIDI inputs and outputs"),
    "presets": ("improv.core.presets", "list style presets"),
    "recover": ("improv.live.recording", "turn a partial session recording into a playable .mid"),
    "data": ("improv.learn.data", "build the token corpus (music21 and your .mid files)"),
    "train": ("improv.learn.train", "train or fine-tune a model"),
    "export": ("improv.learn.export", "export a trained model to ONNX"),
    "eval": ("improv.learn.evaluate", "evaluate a model against the n-gram baseline"),
    "bench": ("improv.commands.bench", "run the latency benchmarks"),
}


def usage() -> str:
    width = max(len(n) for n in COMMANDS)
    lines = ["usage: improv COMMAND [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run 'improv COMMAND --help' for a command's options and examples;",
              "'improv --version' for the version.", "", "examples:",
              "  improv demo                     # hear the whole loop, no MIDI hardware",
              "  improv ports                    # which MIDI inputs and outputs there are",
              "  improv jam --in Keystation --out FluidSynth",
              "  improv jam --virtual --backend jack --preset celtic-reel"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from improv import __version__

        print(f"improv {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"improv: unknown command '{name}'; run 'improv --help' for the list",
              file=sys.stderr)
        return 2
    module_name = COMMANDS[name][0]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and e.name.split(".")[0] in ("torch", "music21", "onnx", "safetensors"):
            print(
                f"improv {name}: needs the training extras ({e.name} is missing). "
                "Install them with: pip install -e '.[train]'",
                file=sys.stderr,
            )
            return 2
        raise
    prog = f"improv {name}"
    entry = module.recover_main if name == "recover" else module.main
    try:
        return int(entry(rest, prog=prog) or 0)
    except BrokenPipeError:  # `improv presets | head`: the reader left, nothing is wrong
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
