"""Command-line settings a run will not use are named in a note, never dropped silently;
settings the run uses get none."""

from __future__ import annotations

import logging

import pytest

from mtsmart.arguments import build_parser, collect_overrides, parse_args
from mtsmart.setting_notes import note_unused_settings
from mtsmart.tasks import load_task_file
from tiny_tasks import write_tiny_tasks


def notes(tmp_path, caplog, *flags: str, command: str = "train") -> list[str]:
    task_file = write_tiny_tasks(tmp_path)
    argv = (["train", str(task_file), "-o", "out"] if command == "train"
            else ["finetune", "ckpt", "--task", "pairs", "-o", "out"])
    overrides = collect_overrides(parse_args(build_parser(), [*argv, *flags]))
    loaded = load_task_file(str(task_file), overrides)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        note_unused_settings(loaded.tasks, loaded.training, overrides, from_checkpoint=command == "finetune")
    return [record.getMessage() for record in caplog.records]


@pytest.mark.parametrize("flags, says", [
    (["--smart", "off", "--adv-weight", "5"], "--adv-weight does nothing: no task runs the adversarial term"),
    (["--smart", "adversarial", "--teacher-beta", "0.9"], "--teacher-beta does nothing: no task runs the Bregman"),
    (["--smart", "full", "--adv-weight", "0", "--epsilon", "0.1"], "--epsilon does nothing"),
    (["--smart", "off", "--smart-preset", "paper"], "--smart-preset paper does nothing"),
    (["--epochs", "5", "--max-steps", "3"], "--epochs does nothing: --max-steps sets the run's length (3 updates)"),
    (["training.sampler.temperature=7"], "the proportional sampler does not read training.sampler.temperature"),
    (["--keep-last", "3", "training.save_checkpoints=false"], "--keep-last does nothing"),
])
def test_a_setting_the_run_leaves_unused_is_named(tmp_path, caplog, flags, says):
    assert any(says in note for note in notes(tmp_path, caplog, *flags)), notes(tmp_path, caplog, *flags)


def test_finetune_names_an_encoder_it_does_not_load(tmp_path, caplog):
    said = notes(tmp_path, caplog, "training.encoder=/elsewhere", command="finetune")
    assert said == ["training.encoder=/elsewhere does nothing: the encoder comes from the checkpoint"]


@pytest.mark.parametrize("flags", [
    ["--smart", "full", "--adv-weight", "0.5", "--teacher-beta", "0.9", "--epsilon", "0.1"],
    ["--smart", "full", "--adv-weight", "0"],  # how the term is switched off: no note for it
    ["--sampler", "temperature", "training.sampler.temperature=3"],
    ["--max-steps", "3"],
])
def test_settings_the_run_uses_get_no_note(tmp_path, caplog, flags):
    assert notes(tmp_path, caplog, *flags) == []


def test_epochs_over_a_max_steps_set_by_key_value_is_named(tmp_path, caplog):
    said = notes(tmp_path, caplog, "training.max_steps=7", "--epochs", "2")
    assert "training.max_steps=7 does nothing: --epochs sets the run's length (2 epochs)" in said


def test_a_value_yaml_reads_as_text_is_compared_as_the_run_reads_it(tmp_path, caplog):
    """training.smart.epsilon=1e-5 is the string '1e-5' to YAML; a task's own 1e-05 is the
    same value, so no task is said to be missed."""
    task_file = write_tiny_tasks(tmp_path)
    task_file.write_text(task_file.read_text().replace(
        "    target_field: score\n", "    target_field: score\n    smart: {epsilon: 1.0e-5}\n"))
    argv = ["train", str(task_file), "-o", "out", "--smart", "full", "training.smart.epsilon=1e-5"]
    overrides = collect_overrides(parse_args(build_parser(), argv))
    loaded = load_task_file(str(task_file), overrides)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        note_unused_settings(loaded.tasks, loaded.training, overrides)
    assert not caplog.records
