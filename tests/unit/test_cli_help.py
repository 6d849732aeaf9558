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


@pytest.mark.parametrize("command", ["train", "finetune", "adapt"])
def test_every_smart_setting_has_a_flag_that_sets_it(command):
    """SMART.md: every knob is settable from the command line. Each SmartConfig field is
    given through its flag and read back from the parsed settings."""
    import dataclasses

    from mtsmart.arguments import collect_overrides, parse_args
    from mtsmart.config import SmartConfig, parse_smart

    base = SmartConfig(mode="full")
    given = {"mode": "bregman", "norm": "inf"}  # the choices other than base's
    argv = {"train": ["train", "tasks.yaml", "-o", "out"], "finetune": ["finetune", "ckpt", "--task", "t", "-o", "out"],
            "adapt": ["adapt", "enc", "--task", "t", "--train-sizes", "2", "-o", "out"]}[command]
    flags = {"mode": "--smart", "relative_to_embedding_norm": "--relative-epsilon"}
    for field in dataclasses.fields(SmartConfig):
        value = getattr(base, field.name)
        flag = flags.get(field.name, "--" + field.name.replace("_", "-"))
        if isinstance(value, bool):
            argv += [flag if not value else "--no-" + flag[2:]]
            given[field.name] = not value
        elif field.name not in given:
            given[field.name] = 0.5 if isinstance(value, float) or value is None else value + 1
            argv += [flag, str(given[field.name])]
        else:
            argv += [flag, given[field.name]]
    smart = {path[-1]: value for path, value, _ in collect_overrides(parse_args(build_parser(), argv))
             if path[:2] == ["training", "smart"]}
    assert dataclasses.asdict(parse_smart(smart, "flags", base)) == given


@pytest.mark.parametrize("flag, key", [("gradient-checkpointing", "gradient_checkpointing"),
                                       ("trust-remote-code", "trust_remote_code")])
def test_an_inherited_switch_can_be_turned_off(flag, key):
    """finetune inherits its checkpoint's settings: a switch that was on must be able to go off."""
    from mtsmart.arguments import collect_overrides, parse_args

    for given, value in ((f"--{flag}", True), (f"--no-{flag}", False)):
        args = parse_args(build_parser(), ["finetune", "ckpt", "--task", "t", "-o", "out", given])
        assert (["training", key], value) in [(path, v) for path, v, _ in collect_overrides(args)]


def test_adapt_help_offers_no_setting_adapt_sets_for_each_run(capsys):
    from mtsmart.cli import main

    with pytest.raises(SystemExit):
        main(["adapt", "--help"])
    shown = capsys.readouterr().out
    assert "--seeds" in shown and "--min-steps" in shown
    for flag in ("--seed ", "--max-steps", "--eval-every", "--patience", "--keep-last"):
        assert flag not in shown, flag


def test_a_preset_in_a_config_file_comes_before_the_files_own_keys(tmp_path):
    """As in a task file's smart: block, whatever order the file lists them in."""
    import yaml

    from mtsmart.arguments import collect_overrides, parse_args
    from mtsmart.tasks import load_task_file
    from tiny_tasks import write_tiny_tasks

    task_file = write_tiny_tasks(tmp_path)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"training": {"smart": {"epsilon": 0.001, "preset": "paper"}}}, sort_keys=False))
    args = parse_args(build_parser(), ["train", str(task_file), "-o", "out", "--config", str(config)])
    smart = load_task_file(str(task_file), collect_overrides(args)).training.smart
    assert smart.epsilon == 0.001 and smart.norm == "inf"  # the key over the preset; the preset's norm


def test_the_command_line_answers_help_without_importing_torch():
    """`mtsmart --help` took 2.8 s, nearly all of it importing torch, scipy and scikit-learn."""
    import subprocess
    import sys

    code = "import sys, mtsmart.cli; print(sorted(m for m in ('torch', 'scipy', 'sklearn') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
