"""Layer 3: the Textual stage UI: reads snapshots, sends intents.

Imports core and the session API (improv.live.session_api) only.
"""
