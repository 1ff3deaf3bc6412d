"""improv's per-user folders: platformdirs by default, each overridable, found in one place."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import platformdirs

from improv.core import paths
from improv.core.presets import user_preset_dir
from improv.learn.dataset import default_corpus_dir
from improv.live.midi_learn import bindings_path


def test_defaults_come_from_platformdirs(monkeypatch):
    for name in ("IMPROV_CONFIG_DIR", "IMPROV_CACHE_DIR", "IMPROV_CORPUS", "IMPROV_SESSIONS"):
        monkeypatch.delenv(name, raising=False)
    assert paths.config_dir() == Path(platformdirs.user_config_dir("improv", appauthor=False))
    assert paths.cache_dir() == Path(platformdirs.user_cache_dir("improv", appauthor=False))
    assert paths.corpus_dir() == paths.cache_dir() / "corpus"
    assert paths.sessions_dir() == Path(platformdirs.user_music_dir()) / "improv-sessions"
    # every user of a folder asks this module
    assert user_preset_dir() == paths.config_dir() / "presets"
    assert bindings_path().parent == paths.config_dir()
    assert default_corpus_dir() == paths.corpus_dir()


def test_each_folder_has_an_override(monkeypatch, tmp_path):
    monkeypatch.setenv("IMPROV_CONFIG_DIR", str(tmp_path / "cfg"))
    monkeypatch.setenv("IMPROV_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("IMPROV_SESSIONS", str(tmp_path / "sets"))
    monkeypatch.setenv("IMPROV_RUNTIME_DIR", str(tmp_path / "run"))
    monkeypatch.delenv("IMPROV_CORPUS", raising=False)
    assert user_preset_dir() == tmp_path / "cfg" / "presets"
    assert default_corpus_dir() == tmp_path / "cache" / "corpus"
    assert paths.sessions_dir() == tmp_path / "sets"
    run = paths.runtime_dir()
    assert run == tmp_path / "run" and run.is_dir()
    if os.name != "nt":
        assert stat.S_IMODE(run.stat().st_mode) == 0o700
    assert not (tmp_path / "cfg").exists()  # nothing else is created by asking
