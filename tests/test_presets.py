"""Presets: the shipped files, validation errors that point at the line, library and reload."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from improv.core import presets as P
from improv.core.presets import Preset, PresetError, PresetLibrary

SHIPPED = Path(__file__).resolve().parent.parent / "presets"
SHIPPED_FILES = sorted(SHIPPED.glob("*.toml"))
# keys the brief asks every shipped preset to set explicitly
REQUIRED = ("style", "temperature", "top_p", "density", "register_low", "register_high",
            "response_bars", "silence_beats", "swing", "humanize_ms", "channel", "program")


def write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


# --- shipped presets -----------------------------------------------------------------------


def test_at_least_six_shipped_presets_with_unique_names():
    assert len(SHIPPED_FILES) >= 6
    names = [P.load_preset(f).name for f in SHIPPED_FILES]
    assert len(set(names)) == len(names)


@pytest.mark.parametrize("path", SHIPPED_FILES, ids=lambda p: p.name)
def test_shipped_preset_loads_and_sets_the_essentials(path):
    preset = P.load_preset(path)
    text = path.read_text()
    assert text.lstrip().startswith("#"), "each preset starts with a comment saying what it is for"
    for key in REQUIRED:
        assert P._line_of(text, key) > 1 or text.splitlines()[0].startswith(key), key
    assert any(P._line_of(text, k) > 1 for k in ("velocity_scale", "velocity_curve"))
    assert preset.style in P.CORPUS_STYLES
    assert preset.description
    assert P.parse_preset(P.to_toml(preset)) == preset  # the TOML writer round-trips


def test_shipped_presets_span_sparse_and_busy():
    loaded = [P.load_preset(f) for f in SHIPPED_FILES]
    sparse = min(loaded, key=lambda p: p.density)
    busy = max(loaded, key=lambda p: p.density)
    assert sparse.density <= -0.5 and sparse.max_note_beats >= 4 and sparse.temperature < 0.7
    assert busy.density >= 0.5 and busy.max_note_beats <= 1


def test_corpus_styles_match_the_vocabulary():
    from improv.core.tokens import CORPUS_STYLES

    assert P.CORPUS_STYLES == CORPUS_STYLES


# --- validation ----------------------------------------------------------------------------


def test_toml_syntax_error_names_file_and_line(tmp_path):
    path = write(tmp_path, "bad.toml", 'name = "x"\ntemperature = 0.5\nstyle = "folk\n')
    with pytest.raises(PresetError) as e:
        P.load_preset(path)
    assert str(e.value).startswith(f"{path}:3: TOML syntax error")
    assert e.value.line == 3


def test_unknown_key_names_its_line_and_suggests(tmp_path):
    path = write(tmp_path, "typo.toml", '# c\nname = "x"\ntemprature = 0.5\n')
    with pytest.raises(PresetError, match=r"typo\.toml:3: unknown key 'temprature'") as e:
        P.load_preset(path)
    assert "did you mean 'temperature'" in str(e.value)


def test_unknown_table_names_its_line(tmp_path):
    path = write(tmp_path, "t.toml", 'name = "x"\n\n[sampling]\ntemperature = 0.5\n')
    with pytest.raises(PresetError, match=r"t\.toml:3: unknown key 'sampling'"):
        P.load_preset(path)


@pytest.mark.parametrize(
    "line, reason",
    [
        ('temperature = "0.7"', "temperature must be a number"),
        ("top_k = 1.5", "top_k must be a whole number"),
        ("scale_lock = 1", "scale_lock must be true or false"),
        ("style = 3", "style must be a string"),
        ("velocity_curve = 64", "velocity_curve must be a list"),
        ("program = true", "program must be a number"),
    ],
)
def test_wrong_type_names_line_and_reason(tmp_path, line, reason):
    path = write(tmp_path, "w.toml", f'# comment\nname = "x"\n\n{line}\n')
    with pytest.raises(PresetError) as e:
        P.load_preset(path)
    assert str(e.value).startswith(f"{path}:4: {reason}")


@pytest.mark.parametrize(
    "line",
    [
        "temperature = 0.01", "temperature = 2.5", "top_p = 1.5", "density = -1.2",
        "register_low = 10", "register_high = 120", "swing = 0.6", "channel = 0",
        "channel = 17", "program = 128", "end_call_cc = -1", "max_polyphony = 0",
        "velocity_curve = [1, 200]", 'response_start = "now"', 'mode = "solo"',
        'key = "H major"', 'key = "C bebop"', 'style = "Folk Song!"', "humanize_ms = -1",
        'key = "D"', 'key = ""',  # a preset names the mode; the sampler alone reads "D" as major
    ],
)
def test_out_of_range_names_line_and_what_to_use(tmp_path, line):
    path = write(tmp_path, "r.toml", f'name = "x"\n{line}\n')
    with pytest.raises(PresetError) as e:
        P.load_preset(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}:2: ")
    assert "use" in msg  # every message says what to do


def test_register_order_is_checked(tmp_path):
    path = write(tmp_path, "reg.toml", "register_low = 80\nregister_high = 60\n")
    with pytest.raises(PresetError, match=r"reg\.toml:2: register_low \(80\) is above"):
        P.load_preset(path)


def test_defaults_fill_missing_keys_and_name_comes_from_file(tmp_path):
    path = write(tmp_path, "my-tune.toml", "temperature = 1\n")
    p = P.load_preset(path)
    assert p.name == "my-tune"
    assert p.temperature == 1.0 and isinstance(p.temperature, float)
    assert dataclasses.replace(p, name="default", temperature=0.9) == Preset()


def test_key_and_none_values_are_normalised():
    p = P.parse_preset('key = "bb DORIAN"\nprogram = "none"\nend_call_cc = 64\n')
    assert p.key == "Bb dorian" and p.program is None and p.end_call_cc == 64
    assert p.scale_pitch_classes() == frozenset({10, 0, 1, 3, 5, 7, 8})
    assert P.parse_preset('key = "auto"').scale_pitch_classes() is None


def test_velocity_shaping_stays_in_midi_range_and_follows_the_curve():
    p = P.parse_preset("velocity_curve = [1, 30, 60]\nvelocity_scale = 1.0\n")
    assert p.shape_velocity(0) == 1 and p.shape_velocity(127) == 60
    assert p.shape_velocity(64) == pytest.approx(30, abs=1)
    out = [p.shape_velocity(v) for v in range(128)]
    assert out == sorted(out)
    loud = P.parse_preset("velocity_scale = 2.0\nvelocity_offset = 20\n")
    assert loud.shape_velocity(100) == 127 and loud.shape_velocity(1) == 22


# --- overrides -----------------------------------------------------------------------------


def test_overrides_return_a_validated_copy():
    base = Preset(name="base")
    changed = P.apply_overrides(base, temperature=1.3, key="a minor", channel=10)
    assert (changed.temperature, changed.key, changed.channel) == (1.3, "A minor", 10)
    assert base.temperature == 0.9  # the original is untouched
    with pytest.raises(PresetError, match="temperature = 5 is out of range"):
        P.apply_overrides(base, temperature=5)
    with pytest.raises(PresetError, match="unknown key 'tempo'"):
        P.apply_overrides(base, tempo=120)
    with pytest.raises(PresetError, match="above register_high"):
        P.apply_overrides(base, register_low=100, register_high=50)


def test_parse_overrides_reads_toml_values_and_bare_strings():
    got = P.parse_overrides(["temperature=0.7", "key=D dorian", "scale_lock=true",
                             "velocity_curve=[1, 127]"])
    assert got == {"temperature": 0.7, "key": "D dorian", "scale_lock": True,
                   "velocity_curve": [1, 127]}
    with pytest.raises(PresetError, match="not KEY=VALUE"):
        P.parse_overrides(["temperature"])


# --- the library ---------------------------------------------------------------------------


def test_user_preset_overrides_shipped_one_in_place(tmp_path):
    shipped, user = tmp_path / "shipped", tmp_path / "user"
    write(shipped, "a.toml", 'name = "alpha"\ntemperature = 0.5\n')
    write(shipped, "b.toml", 'name = "beta"\n')
    write(user, "mine.toml", 'name = "alpha"\ntemperature = 1.5\n')
    write(user, "extra.toml", 'name = "gamma"\n')
    lib = PresetLibrary([shipped, user])
    assert lib.names() == ["alpha", "beta", "gamma"]
    assert lib.get("alpha").temperature == 1.5
    assert lib.sources["alpha"] == user / "mine.toml"
    assert lib.by_number(3).name == "gamma"
    with pytest.raises(PresetError, match="use 1 to 3"):
        lib.by_number(4)
    with pytest.raises(PresetError, match="no preset named 'delta'"):
        lib.get("delta")


def test_reload_keeps_previous_version_of_a_broken_file(tmp_path):
    path = write(tmp_path, "a.toml", 'name = "alpha"\ntemperature = 0.5\n')
    write(tmp_path, "b.toml", 'name = "beta"\n')
    lib = PresetLibrary([tmp_path])
    assert lib.errors == []
    path.write_text('name = "alpha"\ntemperature = 9\n')
    errors = lib.reload()
    assert len(errors) == 1 and str(errors[0]).startswith(f"{path}:2:")
    assert lib.get("alpha").temperature == 0.5 and lib.names() == ["alpha", "beta"]
    path.write_text('name = "alpha"\ntemperature = 0.6\n')
    assert lib.reload() == []
    assert lib.get("alpha").temperature == 0.6


def test_new_broken_file_is_reported_and_skipped(tmp_path):
    write(tmp_path, "a.toml", 'name = "alpha"\n')
    write(tmp_path, "b.toml", "name = \n")
    write(tmp_path, "c.toml", 'name = "alpha"\n')  # a duplicate name in one folder
    lib = PresetLibrary([tmp_path])
    assert lib.names() == ["alpha"]
    assert sorted(Path(e.source).name for e in lib.errors) == ["b.toml", "c.toml"]


def test_empty_library_falls_back_to_defaults(tmp_path):
    lib = PresetLibrary([tmp_path / "missing"])
    assert list(lib) == [Preset()] and lib.sources["default"] is None


def test_folders_come_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("IMPROV_PRESETS", str(tmp_path / "s"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    monkeypatch.setenv("APPDATA", str(tmp_path / "cfg"))
    assert P.shipped_preset_dir() == tmp_path / "s"
    if P.sys.platform != "darwin":
        assert P.user_preset_dir() == tmp_path / "cfg" / "improv" / "presets"
    monkeypatch.delenv("IMPROV_PRESETS")
    assert P.shipped_preset_dir() == SHIPPED


def test_cli_lists_presets_and_reports_malformed_ones(tmp_path, capsys):
    write(tmp_path, "a.toml", 'name = "alpha"\nstyle = "celtic"\n')
    bad = write(tmp_path, "z.toml", 'name = "zed"\n\nswing = 0.9\n')
    assert P.main(["--dir", str(tmp_path)]) == 2
    out, err = capsys.readouterr()
    assert "alpha" in out and "celtic" in out and str(tmp_path / "a.toml") in out
    assert f"{bad}:3: swing = 0.9 is out of range" in err


def test_cli_lists_shipped_presets_and_shows_one(capsys):
    assert P.main(["--dir", str(SHIPPED)]) == 0
    out = capsys.readouterr().out
    assert len(out.strip().splitlines()) == len(SHIPPED_FILES) + 1
    assert P.main(["--dir", str(SHIPPED), "--show", "1"]) == 0
    shown = capsys.readouterr().out
    assert P.parse_preset(shown) == P.PresetLibrary([SHIPPED]).by_number(1)
    assert P.main(["--dir", str(SHIPPED), "--show", "nope"]) == 2
    assert P.main(["--keys"]) == 0
    assert "temperature = 0.9" in capsys.readouterr().out


def test_the_default_preset_is_the_one_marked_else_the_first(tmp_path):
    write(tmp_path, "a.toml", 'name = "a"\n')
    write(tmp_path, "b.toml", 'name = "b"\n')
    assert PresetLibrary([tmp_path]).default().name == "a"
    write(tmp_path, "b.toml", 'name = "b"\ndefault = true\n')
    assert PresetLibrary([tmp_path]).default().name == "b"
    shipped = PresetLibrary()
    assert shipped.default().name == "folk song"
    assert sum(p.default for p in shipped) == 1


def test_a_preset_is_found_by_number_inner_name_or_file_name():
    lib = P.PresetLibrary([SHIPPED])
    by_name = lib.find("celtic reel")
    assert lib.find("celtic-reel") is by_name  # the file's name, as the README writes it
    assert lib.find("celtic-reel.toml") is by_name
    assert lib.find(str(lib.names().index("celtic reel") + 1)) is by_name
    assert lib.find(lib.names().index("celtic reel") + 1) is by_name
    with pytest.raises(P.PresetError, match="no preset named 'nope'"):
        lib.find("nope")
    with pytest.raises(P.PresetError, match="no preset number 99"):
        lib.find("99")
