"""Layer 2: the live path: engine, stream, session, clock, scheduler, ports, recording.

Imports core and onnxruntime; never torch, never the UI.
"""
