"""The `improv` command line: version, and every command's help (examples, every option
explained), checked on the parsers themselves so none can drift."""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata

import pytest

from improv import __version__, cli


def test_version_is_the_packages(capsys):
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"improv {__version__}"
    assert __version__ == importlib.metadata.version("improv")


def _parser_of(name: str, monkeypatch) -> argparse.ArgumentParser:
    """The parser a command builds, caught when it is asked for --help."""
    seen: list[argparse.ArgumentParser] = []

    def catch(self, file=None):
        seen.append(self)

    monkeypatch.setattr(argparse.ArgumentParser, "print_help", catch)
    module = importlib.import_module(cli.COMMANDS[name][0])
    entry = module.recover_main if name == "recover" else module.main
    with pytest.raises(SystemExit):
        entry(["--help"], prog=f"improv {name}")
    return seen[0]


@pytest.mark.parametrize("name", sorted(cli.COMMANDS))
def test_every_command_has_examples_and_every_option_says_what_it_does(name, monkeypatch):
    parser = _parser_of(name, monkeypatch)
    assert parser.epilog and "example" in parser.epilog.lower(), f"improv {name}: no examples"
    assert f"improv {name}" in parser.epilog
    bare = [a.option_strings or [a.dest] for a in parser._actions
            if not isinstance(a, argparse._HelpAction) and not (a.help or "").strip()]
    assert not bare, f"improv {name}: options without help: {bare}"
    nothing = [a.option_strings for a in parser._actions  # "(default: None)" says nothing
               if "%(default)" in (a.help or "") and a.default is None]
    assert not nothing, f"improv {name}: help that would say '(default: None)': {nothing}"


@pytest.mark.parametrize("name", sorted(cli.COMMANDS))
def test_every_example_in_a_commands_help_parses(name, monkeypatch):
    import re
    import shlex

    parser = _parser_of(name, monkeypatch)
    text = re.sub(r"\\\n\s*", " ", parser.epilog)  # continued lines joined
    examples = [line.split("#")[0].strip() for line in text.splitlines()[1:]]
    examples = [e for e in examples if e.startswith(f"improv {name}")]
    assert examples, f"improv {name}: no example starts with 'improv {name}'"
    for example in examples:
        parser.parse_args(shlex.split(example)[2:])  # a bad one exits (SystemExit)
