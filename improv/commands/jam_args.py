"""The command line of ``improv jam`` (and the rig options ``improv demo`` shares): every option
with its help and its checked type (:mod:`improv.commands.checks`), so a bad value is refused
by the parser in one line before anything starts.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from improv.commands.checks import OneLineParser, bpm_arg, channel_arg, meter_arg, number_arg
from improv.core import knobs
from improv.core.cli_help import with_examples

DESCRIPTION = ("`improv jam`: play live. Builds the rig (ports, clock, scheduler, engine, "
               "session, recording), runs the stage UI or a plain headless printer, and takes it "
               "all down again so that every note the machine started is ended, whatever ends "
               "the set.")


def add_rig_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--model", type=Path, help="model folder (default: the shipped model)")
    ap.add_argument("--provider", default="auto", choices=("auto", "cpu", "cuda"),
                    help="where the model runs (default auto: CUDA when it starts, else CPU)")
    ap.add_argument("--threads", type=number_arg("--threads", 1, 64, integer=True), default=1,
                    help="ONNX Runtime threads (default 1)")
    ap.add_argument("--preset", default=None, help="preset name or number (see 'improv presets')")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a preset field, e.g. --set temperature=0.7 (repeatable)")
    ap.add_argument("--bpm", type=bpm_arg, default=None,
                    help="tempo, 30 to 300 (default: the preset's, or 120)")
    ap.add_argument("--meter", type=meter_arg, default="4/4", help="meter, e.g. 3/4 (default 4/4)")
    ap.add_argument("--seed", type=int, default=None, help="seed the sampler (reproducible)")
    ap.add_argument("--mode", choices=knobs.FIELDS["mode"].choices, default=None,
                    help="stop the answer when you play (call_response) or play over it")
    ap.add_argument("--record", type=Path, default=None, help="recording path (.mid)")
    ap.add_argument("--no-record", action="store_true", help="do not record the session")
    ap.add_argument("--seconds", type=number_arg("--seconds", 0, 1e7, lo_open=True),
                    default=None, help="stop by itself after N seconds")
    ap.add_argument("--lookahead", type=number_arg("--lookahead", 0, 8, lo_open=True),
                    default=1.0, help="beats generated ahead of playback, more than 0 up to 8 "
                    "(default 1)")



# One typed flag per live knob (--temperature 0.7); bpm has --bpm above (it sets the clock).
# And --count-in BARS: bars of click before the set listens.
KNOB_FLAGS = (*(n for n in knobs.LIVE if n != "bpm"), "count_in")


def parser(prog: str | None = None) -> argparse.ArgumentParser:
    ap = OneLineParser(
        prog=prog or "improv jam", description=DESCRIPTION,
        **with_examples(
            "improv jam --in Keystation --out FluidSynth    # your keyboard, your synth",
            "improv jam --virtual --backend jack            # ports for a DAW to connect",
            "improv jam --preset celtic-reel --bpm 112 --set call_bars=2   # trading 2 bars",
            "improv jam --clock midi --in 'DAW out' --out 'DAW in'   # follow the DAW",
            "improv jam --no-tui --seconds 600 --record set.mid"))
    ap.add_argument("--in", dest="inp", default=None, help="input port (name or part of it)")
    ap.add_argument("--out", default=None, help="output port (name or part of it)")
    ap.add_argument("--virtual", action="store_true",
                    help="create virtual ports 'improv in' / 'improv out' (the default "
                    "when no --in/--out is given)")
    ap.add_argument("--backend", choices=("alsa", "jack", "coremidi", "winmm"), default=None,
                    help="MIDI API (default: the platform's)")
    ap.add_argument("--in-channel", type=channel_arg("--in-channel"), default=None,
                    help="listen on this channel only (1-16)")
    ap.add_argument("--control-channel", type=channel_arg("--control-channel"), default=None,
                    metavar="N", help="a channel (1-16) for switching presets: a note there "
                    "picks preset (note mod 12) + 1 and is not part of the call")
    ap.add_argument("--program-change", action="store_true",
                    help="program changes switch presets (on --control-channel when given, "
                    "else on any channel); off by default, so a keyboard's own program "
                    "changes do not")
    ap.add_argument("--thru", action="store_true", help="pass your notes to the output too")
    ap.add_argument("--latency-ms", type=number_arg("--latency-ms", 0, 500), default=0.0,
                    help="send this much early, for a slow synth or a DAW's monitoring")
    ap.add_argument("--clock", choices=("internal", "midi"), default="internal",
                    help="internal tempo, or follow incoming MIDI beat clock")
    ap.add_argument("--clock-offset-ms", type=number_arg("--clock-offset-ms", -50, 50),
                    default=None, metavar="MS",
                    help="with --clock midi: how late the master's pulses reach improv; "
                    "default: half a period on JACK (a master writing between JACK's "
                    "cycles: hardware, an app's own thread), 0 elsewhere; for a master "
                    "writing inside JACK's cycle (jack_midi_clock, a DAW on JACK) give "
                    "minus half a period")
    ap.add_argument("--clock-out", action="store_true", help="send MIDI clock as master")
    ap.add_argument("--no-tui", action="store_true", help="plain text instead of the stage UI "
                    "('improv ui' can still attach one)")
    ap.add_argument("--socket", default=None, metavar="PATH",
                    help="the API socket for 'improv ui' (default: in the runtime folder)")
    ap.add_argument("--in-process", action="store_true",
                    help="MIDI I/O in the jam's own process, not the real-time I/O process")
    add_rig_arguments(ap)
    knobs.add_flags(ap, KNOB_FLAGS)
    return ap


__all__ = ["KNOB_FLAGS", "add_rig_arguments", "parser"]
