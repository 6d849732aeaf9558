"""`--help` documents every option of every command."""

from __future__ import annotations

import argparse

import pytest

from mtsmart.cli import COMMANDS, build_parser


def subparsers() -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_command_has_a_parser():
    assert set(subparsers()) == set(COMMANDS)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_option_has_help_text(command):
    parser = subparsers()[command]
    undocumented = [a.option_strings or [a.dest] for a in parser._actions if not a.help]
    assert not undocumented, f"mtsmart {command}: no help for {undocumented}"
    assert parser.description, f"mtsmart {command} has no description"


def test_version_names_mtsmart_and_the_libraries_a_bug_report_needs(capsys):
    from importlib import metadata

    import torch

    from mtsmart.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    line = capsys.readouterr().out.strip()
    # the installed distribution's version: pyproject reads it from mtsmart.__version__
    assert line.startswith(f"mtsmart {metadata.version('mtsmart')} (")
    assert f"torch {torch.__version__}" in line and "transformers " in line
