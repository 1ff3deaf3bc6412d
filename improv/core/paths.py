"""Where improv keeps things on this machine: config, cache, recorded sets, sockets.

This module owns every per-user folder, found once with platformdirs (the XDG folders
on Linux, ~/Library on macOS, %APPDATA% / %LOCALAPPDATA% on Windows), each with an
environment variable that overrides it:

=================  ===========================  ==========================================
folder             override                     holds
=================  ===========================  ==========================================
``config_dir()``   ``IMPROV_CONFIG_DIR``        user presets (``presets/``), MIDI learn
``cache_dir()``    ``IMPROV_CACHE_DIR``         the token corpus, training runs, bench
``corpus_dir()``   ``IMPROV_CORPUS``            ``improv data``'s output (in the cache)
``sessions_dir()`` ``IMPROV_SESSIONS``          recorded sets (.mid), visible to the user
``runtime_dir()``  ``IMPROV_RUNTIME_DIR``       the jam's API socket (0700)
=================  ===========================  ==========================================

Nothing here creates a folder except ``runtime_dir`` (a socket needs it at once).
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

APP = "improv"


def _env(name: str) -> Path | None:
    value = os.environ.get(name)
    return Path(value).expanduser() if value else None


def config_dir() -> Path:
    """Per-user settings: presets of your own, MIDI learn bindings."""
    return _env("IMPROV_CONFIG_DIR") or Path(platformdirs.user_config_dir(APP, appauthor=False))


def cache_dir() -> Path:
    """Rebuildable things: the corpus, training checkpoints, benchmark models."""
    return _env("IMPROV_CACHE_DIR") or Path(platformdirs.user_cache_dir(APP, appauthor=False))


def corpus_dir() -> Path:
    """``improv data``'s token corpus (what ``improv train`` reads by default)."""
    return _env("IMPROV_CORPUS") or cache_dir() / "corpus"


def sessions_dir() -> Path:
    """Recorded sets: a folder the player finds and backs up (not hidden in a cache)."""
    return _env("IMPROV_SESSIONS") or Path(platformdirs.user_music_dir()) / "improv-sessions"


def runtime_dir() -> Path:
    """Sockets and address files, private to the user (0700), created if missing."""
    path = _env("IMPROV_RUNTIME_DIR")
    if path is None:
        xdg = os.environ.get("XDG_RUNTIME_DIR")
        path = Path(xdg) / APP if xdg and Path(xdg).is_dir() else cache_dir() / "run"
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    if os.name != "nt":
        os.chmod(path, 0o700)
    return path
