"""Command-line settings a run will not use are named in a note, never dropped silently;
settings the run uses get none."""

from __future__ import annotations

import dataclasses
import logging

import pytest

from mtsmart.arguments import build_parser, collect_overrides, parse_args
from mtsmart.config import SmartConfig
from mtsmart.setting_notes import note_unused_settings
from mtsmart.tasks import load_task_file
from tiny_tasks import write_tiny_tasks


def notes(tmp_path, caplog, *flags: str, command: str = "train", edit=None) -> list[str]:
    """The notes for ``flags`` on the tiny task file (its text changed by ``edit``)."""
    task_file = write_tiny_tasks(tmp_path)
    if edit:
        task_file.write_text(edit(task_file.read_text()))
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
    (["--smart", "off", "--smart-preset", "paper"], "--smart-preset paper: its adv_weight, epsilon"),
    (["--epochs", "5", "--max-steps", "3"], "--epochs does nothing: --max-steps sets the run's length (3 updates)"),
    (["training.sampler.temperature=7"], "the proportional sampler does not read training.sampler.temperature"),
    (["--keep-last", "3", "training.save_checkpoints=false"], "--keep-last does nothing"),
    (["--lr", "7e-5", "training.optim.lr=9e-5"],
     "training.optim.lr=9e-5 does nothing: --lr sets training.optim.lr too, and wins"),
    (["seed=7", "--batch-size", "4", "seed=8"], "seed=7 does nothing: seed=8 sets training.seed too, and wins"),
    (["epochs=2"], "epochs=2 does nothing: training.max_steps sets the run's length (6 updates); --epochs clears it"),
    (["training.eval_teacher=false"], "training.eval_teacher=false does nothing: no task runs the Bregman term"),
    (["--smart", "full", "--prox-weight", "0", "eval_teacher=true"], "eval_teacher=true does nothing"),
])
def test_a_setting_the_run_leaves_unused_is_named(tmp_path, caplog, flags, says):
    assert any(says in note for note in notes(tmp_path, caplog, *flags)), notes(tmp_path, caplog, *flags)


def test_finetune_names_an_encoder_it_does_not_load(tmp_path, caplog):
    said = notes(tmp_path, caplog, "training.encoder=/elsewhere", command="finetune")
    assert said == ["training.encoder=/elsewhere does nothing: the encoder comes from the checkpoint"]
    assert notes(tmp_path, caplog, "training.encoder=/elsewhere") == []  # train loads it


@pytest.mark.parametrize("flags", [
    ["--smart", "full", "--adv-weight", "0.5", "--teacher-beta", "0.9", "--epsilon", "0.1"],
    ["--smart", "full", "--adv-weight", "0"],  # how the term is switched off: no note for it
    ["--sampler", "temperature", "training.sampler.temperature=3"],
    ["--max-steps", "3"],
    ["--epochs", "2"],  # the flag clears the file's max_steps
    ["--smart-preset", "paper", "--smart", "full", "--epsilon", "0.1"],  # a flag over the preset: by design
    ["--smart", "bregman", "training.eval_teacher=false"],
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


@pytest.mark.parametrize("flags, says", [
    (["--smart", "bregman", "--memory-efficient"], "--memory-efficient does nothing: no task runs the adversarial"),
    (["--smart", "adversarial", "--teacher-horizon-fraction", "0.2"],
     "--teacher-horizon-fraction does nothing: no task runs the Bregman"),
    (["--sampler", "temperature", "training.sampler.anneal_final_alpha=0.5"],
     "the temperature sampler does not read training.sampler.anneal_final_alpha"),
])
def test_every_smart_knob_and_sampler_setting_left_unused_is_named(tmp_path, caplog, flags, says):
    said = notes(tmp_path, caplog, *flags)
    assert any(says in note for note in said), said


def test_every_smart_flag_belongs_to_a_term_the_notes_know():
    """Each run-wide SMART key but the mode is a knob of one term: a new key must join
    config.ADVERSARIAL_KEYS or BREGMAN_KEYS, or a flag for it that does nothing gets no note
    (and summarize would count it as a recipe where it did nothing)."""
    from mtsmart import setting_notes

    knobs = {f.name for f in dataclasses.fields(SmartConfig)} - {"mode"}
    assert set(setting_notes.ADVERSARIAL_KNOBS) | set(setting_notes.BREGMAN_KNOBS) == knobs
    assert not set(setting_notes.ADVERSARIAL_KNOBS) & set(setting_notes.BREGMAN_KNOBS)


def test_a_knob_a_task_runs_through_its_own_mode_gets_no_note(tmp_path, caplog):
    """docs/smart.md: the terms run 'whether the mode and weight come from the run-wide
    settings or the task's own'."""
    said = notes(tmp_path, caplog, "--smart", "off", "tasks.score.smart.mode=full", "--epsilon", "0.02",
                  "--teacher-beta", "0.9")
    assert said == []


def test_a_run_wide_key_a_task_also_overrides_on_the_command_line_is_not_called_shadowed(tmp_path, caplog):
    """Both given on the command line: no surprise, no note."""
    said = notes(tmp_path, caplog, "--smart", "full", "--epsilon", "0.001", "tasks.score.smart.epsilon=0.002",
                 edit=lambda text: text.replace("    target_field: score\n",
                                                "    target_field: score\n    smart: {epsilon: 0.05}\n"))
    assert said == []


@pytest.mark.parametrize("flags, says", [
    (["--smart", "off", "tasks.pairs.smart.epsilon=0.1"], "tasks.pairs.smart.epsilon=0.1 does nothing"),
    (["--smart", "adversarial", "tasks.pairs.smart.prox_weight=2"], "tasks.pairs.smart.prox_weight=2 does nothing"),
])
def test_a_per_task_smart_knob_the_task_leaves_unused_is_named(tmp_path, caplog, flags, says):
    """As `--epsilon 0.1` with --smart off: a task's knob of a term that task does not run."""
    said = notes(tmp_path, caplog, *flags)
    assert any(says in note and "task 'pairs' does not run" in note for note in said), said
    assert notes(tmp_path, caplog, "--smart", "full", *flags[2:]) == []  # the task runs it: no note


def test_a_runs_whole_training_yaml_given_back_as_config_gets_no_note(tmp_path, caplog):
    """README's "run it again" passes a checkpoint's training.yaml, which lists every
    default too (epochs beside max_steps, the sampler's temperature): no note for those,
    as a setting the user typed into such a file still gets one."""
    import yaml

    from mtsmart.config import to_plain

    training = load_task_file(str(write_tiny_tasks(tmp_path))).training
    config = tmp_path / "training.yaml"
    config.write_text(yaml.safe_dump({"training": to_plain(training)}))
    assert notes(tmp_path, caplog, "--config", str(config)) == []
    config.write_text(yaml.safe_dump({"training": {**to_plain(training), "epochs": 5}}))
    assert notes(tmp_path, caplog, "--config", str(config)) == [
        f"training.epochs in --config {config} does nothing: training.max_steps in --config {config} sets the "
        "run's length (6 updates)"]


def own_block(smart: str):
    """An edit giving the tiny file's task 'pairs' its own smart: block."""
    return lambda text: text.replace("    label_field: label\n", f"    label_field: label\n    smart: {smart}\n")


@pytest.mark.parametrize("smart, flags, says", [
    ("{mode: bregman, epsilon: 0.1}", [], "smart.epsilon does nothing: its own smart: block sets mode: bregman, "
                                          "which switches its adversarial term off"),
    ("{prox_weight: 0, prox_warmup_fraction: 0.2}", ["--smart", "full"],
     "smart.prox_warmup_fraction does nothing: its own smart: block sets prox_weight: 0, which switches its Bregman "
     "term off"),
])
def test_a_task_block_that_switches_off_the_term_it_tunes_is_named(tmp_path, caplog, smart, flags, says):
    said = notes(tmp_path, caplog, *flags, edit=own_block(smart))
    assert [note.split(": task 'pairs': ", 1)[1] for note in said] == [says], said
    assert said[0].startswith(str(tmp_path / "tasks.yaml"))


@pytest.mark.parametrize("smart, flags", [
    ("{epsilon: 0.1}", []),  # tuning a file keeps for SMART runs: this run switches SMART off
    ("{epsilon: 0.1, prox_warmup_fraction: 0.2}", ["--smart", "full"]),
    ("{mode: adversarial, epsilon: 0.1}", []),
    ("{mode: full, epsilon: 0.1}", ["tasks.pairs.smart.mode=off"]),  # the command line's choice
    ("{prox_weight: 0}", ["--smart", "full"]),
])
def test_a_task_block_the_run_switches_off_gets_no_note(tmp_path, caplog, smart, flags):
    assert notes(tmp_path, caplog, *flags, edit=own_block(smart)) == []


# ---- proposed by the mutation audit
def test_epochs_clearing_a_typed_max_steps_is_one_note(tmp_path, caplog):
    """--epochs clears max_steps: that is its own note, not also 'given twice'."""
    assert notes(tmp_path, caplog, "training.max_steps=7", "--epochs", "2") == [
        "training.max_steps=7 does nothing: --epochs sets the run's length (2 epochs)"]


def test_a_setting_typed_twice_the_same_way_is_named_once(tmp_path, caplog):
    assert notes(tmp_path, caplog, "seed=7", "seed=7", "seed=8") == [
        "seed=7 does nothing: seed=8 sets training.seed too, and wins"]


def test_keep_last_with_checkpoints_saved_gets_no_note(tmp_path, caplog):
    assert notes(tmp_path, caplog, "--keep-last", "3") == []


@pytest.mark.parametrize("flags", [["--adv-weight", "0"], ["training.smart.adv_weight=0"]])
def test_a_task_block_whose_own_mode_runs_the_term_is_not_blamed_for_a_run_wide_zero_weight(tmp_path, caplog, flags):
    """{mode: full, epsilon: 0.1} does not switch the adversarial term off: the command
    line's weight 0 does, which is the user's choice for this run (no note)."""
    said = notes(tmp_path, caplog, *flags, edit=own_block("{mode: full, epsilon: 0.1}"))
    assert not any("sets mode: full" in note for note in said), said


@pytest.mark.parametrize("flags, says", [
    (["--smart", "adversarial", "--teacher-beta", "0.9"],
     "--teacher-beta does nothing: no task runs the Bregman term (mode adversarial; --smart bregman or full, "
     "with its weight above 0, does)"),
    (["--smart", "bregman", "--epsilon", "0.1"],
     "--epsilon does nothing: no task runs the adversarial term (mode bregman; --smart adversarial or full, "
     "with its weight above 0, does)"),
])
def test_a_run_wide_knob_note_names_the_mode_that_would_run_its_term(tmp_path, caplog, flags, says):
    assert notes(tmp_path, caplog, *flags) == [says]


def test_a_knob_for_a_task_the_run_leaves_out_does_not_stop_the_notes(tmp_path, caplog):
    """--tasks pairs: the notes see only 'pairs', while tasks.score.smart.* may still be given."""
    task_file = write_tiny_tasks(tmp_path)
    argv = ["train", str(task_file), "-o", "out", "--tasks", "pairs", "--smart", "off",
            "tasks.score.smart.epsilon=0.1"]
    overrides = collect_overrides(parse_args(build_parser(), argv))
    loaded = load_task_file(str(task_file), overrides)
    with caplog.at_level(logging.WARNING):
        note_unused_settings({"pairs": loaded.tasks["pairs"]}, loaded.training, overrides)
    assert not any("task 'pairs'" in record.getMessage() for record in caplog.records)


def test_a_whole_smart_block_given_as_one_key_value_gets_no_wrong_note(tmp_path, caplog):
    """training.smart={...} is one override of the whole block, not of a key in it."""
    assert notes(tmp_path, caplog, "training.smart={mode: full, epsilon: 0.1}") == []


@pytest.mark.parametrize("flags", [["--tasks", "pairs"], []])
def test_a_setting_for_a_task_the_run_leaves_out_gets_a_note(tmp_path, caplog, flags):
    task_file = write_tiny_tasks(tmp_path)
    overrides = collect_overrides(parse_args(build_parser(), ["train", str(task_file), "-o", "out", *flags,
                                                             "tasks.score.max_length=64"]))
    loaded = load_task_file(str(task_file), overrides)
    run = {"pairs": loaded.tasks["pairs"]} if flags else loaded.tasks
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        note_unused_settings(run, loaded.training, overrides)
    said = [record.getMessage() for record in caplog.records]
    assert said == (["tasks.score.max_length=64 does nothing: the run leaves out task 'score'"] if flags else [])


ADVERSARIAL_NOTE = ("no task runs the adversarial term (mode bregman; --smart adversarial or full, with its weight "
                    "above 0, does)")


@pytest.mark.parametrize("preset", [["--smart-preset", "paper"], ["training.smart.preset=paper"]])
def test_a_preset_whose_other_term_runs_is_not_said_to_do_nothing(tmp_path, caplog, preset):
    """Its Bregman settings take effect under --smart bregman: only its adversarial ones are named."""
    text = " ".join(preset) if preset[0].startswith("--") else preset[0]
    assert notes(tmp_path, caplog, "--smart", "bregman", *preset) == [
        f"{text}: its adv_weight, epsilon, noise_std, step_size, num_steps, norm, relative_to_embedding_norm "
        f"do nothing: {ADVERSARIAL_NOTE}"]


def test_a_preset_typed_as_a_key_is_a_layer_under_the_flags_as_smart_preset_is(tmp_path, caplog):
    assert notes(tmp_path, caplog, "--smart", "full", "training.smart.preset=paper", "--epsilon", "0.1") == []


def test_a_mapping_names_the_keys_that_do_nothing(tmp_path, caplog):
    assert notes(tmp_path, caplog, "--smart", "bregman", "training.smart={epsilon: 0.2, teacher_beta: 0.99}") == [
        f"training.smart={{epsilon: 0.2, teacher_beta: 0.99}}: its epsilon does nothing: {ADVERSARIAL_NOTE}"]


def test_a_run_of_one_update_is_named_in_the_singular(tmp_path, caplog):
    assert notes(tmp_path, caplog, "--epochs", "5", "--max-steps", "1") == [
        "--epochs does nothing: --max-steps sets the run's length (1 update)"]
