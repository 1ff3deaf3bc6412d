"""Layer 4: the command-line entry points that wire the layers together.

Imports everything, lazily (torch only in learn commands).
"""
