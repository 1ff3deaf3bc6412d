"""improv: a real-time MIDI improviser (call and response with a compact transformer)."""

__version__ = "0.1.0"
