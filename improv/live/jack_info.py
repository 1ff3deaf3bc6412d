"""What a JACK server says of itself: its period, and what improv makes of it.

This module owns the one JACK fact the timing needs and rtmidi does not give: the period
(buffer size / sample rate). JACK moves MIDI once a period. A message written between two
cycles (improv's output, an app sending from its own thread, a hardware controller coming in
through JACK's MIDI driver or a2jmidid) waits for the next cycle: on average half a period
late. rtmidi stamps what comes in when the cycle runs, so a master whose pulses were
written between cycles is heard half a period late too. improv therefore sends half a
period early (the note lands in the cycle nearest its deadline, not always the one after)
and, when following a master, takes its pulses as half a period earlier than heard. A
master that writes its pulses sample-accurately inside JACK's cycle (jack_midi_clock,
a DAW running on JACK) is stamped early instead: ``--clock-offset-ms`` says so.

Asked once at start through libjack (the copy python-rtmidi loads, else the system's),
with a client that never activates: it costs a few milliseconds and no cycle.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os

JACK_NO_START_SERVER = 0x01


def _libjack() -> ctypes.CDLL | None:
    try:
        import rtmidi

        here = os.path.dirname(rtmidi.__file__)
        bundled = sorted(glob.glob(os.path.join(here, "..", "python_rtmidi.libs", "libjack*")))
    except ImportError:
        bundled = []
    for path in [*bundled, ctypes.util.find_library("jack")]:
        if not path:
            continue
        try:
            return ctypes.CDLL(path)
        except OSError:
            continue
    return None


def jack_period_s() -> float | None:
    """The running JACK server's period in seconds, or None (no server, no libjack)."""
    lib = _libjack()
    if lib is None:
        return None
    lib.jack_client_open.restype = ctypes.c_void_p
    lib.jack_get_buffer_size.argtypes = [ctypes.c_void_p]
    lib.jack_get_buffer_size.restype = ctypes.c_uint32
    lib.jack_get_sample_rate.argtypes = [ctypes.c_void_p]
    lib.jack_get_sample_rate.restype = ctypes.c_uint32
    lib.jack_client_close.argtypes = [ctypes.c_void_p]
    status = ctypes.c_int(0)
    client = lib.jack_client_open(b"improv-period", JACK_NO_START_SERVER, ctypes.byref(status))
    if not client:
        return None
    try:
        frames, rate = lib.jack_get_buffer_size(client), lib.jack_get_sample_rate(client)
    finally:
        lib.jack_client_close(client)
    return frames / rate if frames and rate else None


def half_period_ms(api: str | None) -> float:
    """Half of JACK's period in ms when ``api`` (an rtmidi API name) is JACK's, else 0:
    ALSA and CoreMIDI deliver when asked, with no period to wait for."""
    if not api or "JACK" not in api.upper():
        return 0.0
    period = jack_period_s()
    return 0.0 if period is None else period * 1e3 / 2
