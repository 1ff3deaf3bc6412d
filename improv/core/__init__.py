"""Layer 1: what every other layer shares: tokens, keys, MIDI files, presets.

Imports numpy, mido and the standard library only.
"""
