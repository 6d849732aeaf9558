"""arguments.py: every flag, KEY=VALUE and --config setting reaches the run's settings,
in the documented order (the task file, then --config, --smart-preset, KEY=VALUE, the
flags; a later one wins)."""

from __future__ import annotations

import dataclasses

import pytest

from mtsmart.arguments import TRAIN_FLAGS, build_parser, collect_overrides, parse_args
from mtsmart.config import TrainConfig
from mtsmart.errors import ConfigError
from mtsmart.tasks import load_task_file
from tiny_tasks import write_tiny_tasks


def loaded(tmp_path, *argv: str):
    """The tiny task file loaded with ``mtsmart train``'s command line ``argv``."""
    task_file = write_tiny_tasks(tmp_path)
    # -o last: KEY=VALUE typed before the first flag and after it take argparse's two paths
    args = parse_args(build_parser(), ["train", str(task_file), *argv, "-o", "out"])
    overrides = collect_overrides(args)
    return load_task_file(str(task_file), overrides), overrides


FLAG_VALUES = {  # flag: a value other than the tiny task file's and the default, and the setting it sets
    "encoder": ("some/encoder", "encoder"), "num_hidden_layers": (1, "num_hidden_layers"),
    "pooling": ("cls", "pooling"), "encoder_dropout": (0.2, "encoder_dropout"),
    "gradient_checkpointing": (True, "gradient_checkpointing"), "max_steps": (9, "max_steps"),
    "epochs": (2.5, "epochs"), "batch_size": (5, "batch_size"), "grad_accum_steps": (3, "grad_accum_steps"),
    "lr": (2e-4, "optim.lr"), "lr_schedule": ("cosine", "optim.schedule"), "layer_decay": (0.8, "optim.layer_decay"),
    "head_lr_scale": (4.0, "optim.head_lr_scale"), "seed": (11, "seed"), "eval_every": (7, "eval_every"),
    "select_metric": ("pairs/accuracy", "select_metric"), "patience": (4, "patience"),
    "sampler": ("uniform", "sampler.name"), "precision": ("bf16", "precision"), "num_threads": (2, "num_threads"),
    "keep_last": (3, "keep_last"), "trust_remote_code": (True, "trust_remote_code"),
}


def _setting(training: TrainConfig, path: str):
    value = training
    for part in path.split("."):
        value = getattr(value, part)
    return value


@pytest.mark.parametrize("flag", sorted(FLAG_VALUES))
def test_every_training_flag_reaches_its_setting(tmp_path, flag):
    """The SMART flags have test_every_smart_setting_has_a_flag_that_sets_it; the other
    flags had none. The setting each flag must reach is spelled out here, not read from
    TRAIN_FLAGS, so a wrong entry there shows."""
    assert set(FLAG_VALUES) | {k for k in TRAIN_FLAGS if TRAIN_FLAGS[k].startswith("training.smart.")} \
        == set(TRAIN_FLAGS), "a new flag: give it a value here"
    value, setting = FLAG_VALUES[flag]
    option = "--" + flag.replace("_", "-")
    argv = [option] if value is True else [option, str(value)]
    if flag == "epochs":
        argv += ["--max-steps", "9"]  # --epochs alone would also clear max_steps
    task_file, _ = loaded(tmp_path, *argv)
    assert _setting(task_file.training, setting) == value
    untouched = TrainConfig() if flag != "epochs" else None
    if untouched is not None:  # and nothing else moved but what the tiny file sets
        before = load_task_file(str(tmp_path / "tasks.yaml")).training
        moved = {f.name for f in dataclasses.fields(TrainConfig)
                 if getattr(before, f.name) != getattr(task_file.training, f.name)}
        assert moved == {setting.split(".")[0]}, moved


def test_flags_win_over_key_value_which_wins_over_config_and_the_task_file(tmp_path):
    """arguments.py: '--config's, --smart-preset's, KEY=VALUE, then the flags', a later one
    winning; whichever order they are typed in."""
    config = tmp_path / "c.yaml"
    config.write_text("training:\n  seed: 5\n  batch_size: 6\n  optim: {lr: 3.0e-4, weight_decay: 0.2}\n")
    for argv in (["--config", str(config), "seed=7", "optim.lr=4e-4", "--lr", "5e-4"],
                 ["--lr", "5e-4", "--config", str(config), "seed=7", "optim.lr=4e-4"]):
        training = loaded(tmp_path, *argv)[0].training
        assert training.optim.lr == 5e-4  # the flag
        assert training.seed == 7  # KEY=VALUE over --config
        assert training.batch_size == 6 and training.optim.weight_decay == 0.2  # --config over the file
        assert training.max_steps == 6  # the file's own, untouched
    training = loaded(tmp_path, "seed=7", "--lr", "5e-4", "seed=8")[0].training
    assert training.seed == 8  # of two KEY=VALUE, the later one, after the flags or not


def test_key_value_and_flags_win_over_the_smart_preset(tmp_path):
    """--smart-preset's help: 'flags and KEY=VALUE still win over it'."""
    smart = loaded(tmp_path, "--smart-preset", "paper", "smart.epsilon=0.002", "--noise-std", "0.003")[0].training.smart
    assert smart.epsilon == 0.002 and smart.noise_std == 0.003
    assert smart.norm == "inf" and smart.adv_weight == 1.0  # the rest is the preset's


def test_a_config_file_with_an_unknown_top_level_key_is_refused(tmp_path):
    """A --config file holds a 'training:' mapping and nothing else: a second block (a
    pasted tasks: or a typo such as 'trainig:') would be dropped silently."""
    config = tmp_path / "c.yaml"
    config.write_text("training:\n  seed: 5\ntrainig:\n  lr: 1\n")
    with pytest.raises(ConfigError) as err:
        loaded(tmp_path, "--config", str(config))
    assert str(config) in str(err.value) and "'trainig'" in str(err.value)


@pytest.mark.parametrize("text", ["", "training:\n", "training: {}\n",
                                  "training:\n  optim: {}\n", "training:\n  smart:\n#    epsilon: 0.1\n"])
def test_an_empty_config_file_or_block_changes_nothing(tmp_path, text):
    """settings_as_overrides: 'A mapping from --config is applied key by key, so it merges
    with the task file's own training settings instead of replacing them.' An empty
    mapping (or a block whose keys are all commented out, YAML null) is applied as one
    override of the whole block: the task file's batch_size 8, max_steps 6, lr 1e-3 and
    seed 3 (or its smart: block) silently become the defaults."""
    task_file = write_tiny_tasks(tmp_path)
    task_file.write_text(task_file.read_text() + "  smart: {mode: full, epsilon: 0.05}\n")
    before = load_task_file(str(task_file)).training
    config = tmp_path / "c.yaml"
    config.write_text(text)
    args = parse_args(build_parser(), ["train", str(task_file), "-o", "out", "--config", str(config)])
    assert load_task_file(str(task_file), collect_overrides(args)).training == before


def test_an_override_reaches_a_training_block_the_file_left_empty(tmp_path):
    """A task file whose `training:` has every key commented out (YAML null) still takes
    flags and KEY=VALUE."""
    task_file = write_tiny_tasks(tmp_path)
    text = task_file.read_text()
    task_file.write_text(text[:text.index("training:")] + "training:\n#  batch_size: 8\n")
    args = parse_args(build_parser(), ["train", str(task_file), "-o", "out", "--lr", "2e-4",
                                       "smart.mode=full", "training.sampler.name=uniform"])
    training = load_task_file(str(task_file), collect_overrides(args)).training
    assert training.optim.lr == 2e-4 and training.smart.mode == "full" and training.sampler.name == "uniform"


@pytest.mark.parametrize("argv, unknown", [
    (["finetune", "ckpt", "--task", "t", "-o", "o", "--encoder", "0.1"], "--encoder 0.1"),
    (["train", "tasks.yaml", "-o", "o", "--lr-sched", "cosine"], "--lr-sched cosine"),
])
def test_a_flag_is_never_taken_for_a_longer_one_it_begins(argv, unknown, capsys):
    """argparse reads a prefix as the flag it starts: finetune, which has no --encoder (the
    encoder is the checkpoint's), read `--encoder 0.1` as --encoder-dropout 0.1."""
    with pytest.raises(SystemExit) as exit_info:
        parse_args(build_parser(), argv)
    assert exit_info.value.code == 2
    assert f"unrecognized arguments: {unknown}" in capsys.readouterr().err


def test_a_flag_given_twice_names_the_one_that_does_nothing():
    from mtsmart.arguments import build_parser, repeated_flags

    parser = build_parser()
    argv = ["train", "t.yaml", "-o", "a", "--lr", "1e-4", "--smart", "full", "--lr=2e-4", "--quiet", "--quiet",
            "--output", "b", "--smart", "off", "--seed", "3", "--seed", "3"]
    assert repeated_flags(parser, "train", argv) == [
        "-o a does nothing: --output b comes later, and the last one wins",
        "--lr 1e-4 does nothing: --lr 2e-4 comes later, and the last one wins",
        "--smart full does nothing: --smart off comes later, and the last one wins"]
    assert repeated_flags(parser, "evaluate", ["evaluate", "ckpt", "--bootstrap", "100", "--bootstrap", "200"]) == [
        "--bootstrap 100 does nothing: --bootstrap 200 comes later, and the last one wins"]
    assert repeated_flags(parser, "train", ["train", "t.yaml", "-o", "a", "--lr", "1e-4", "lr=2e-4"]) == []
    # an on/off flag and its --no- form set one setting
    assert repeated_flags(parser, "train", ["train", "t.yaml", "-o", "a", "--memory-efficient",
                                            "--no-memory-efficient", "--relative-epsilon", "--relative-epsilon"]) == [
        "--memory-efficient does nothing: --no-memory-efficient comes later, and the last one wins"]


@pytest.mark.parametrize("block, kept", [
    ("training.optim={weight_decay: 0}", {"optim.lr": 1e-3}),  # the task file's lr
    ("optim={weight_decay: 0}", {"optim.lr": 1e-3}),  # a bare key is a training key
    ("training={optim: {weight_decay: 0}}", {"optim.lr": 1e-3, "max_steps": 6}),
])
def test_a_block_given_as_one_key_value_merges_with_the_task_files_like_config_does(tmp_path, block, kept):
    task_file, overrides = loaded(tmp_path, block)
    assert [(path, value) for path, value, _ in overrides] == [(["training", "optim", "weight_decay"], 0)]
    for key, value in kept.items():
        node = task_file.training
        for part in key.split("."):
            node = getattr(node, part)
        assert node == value, key
    assert task_file.training.optim.weight_decay == 0


def test_a_tasks_smart_block_given_as_one_key_value_merges_with_its_own(tmp_path):
    task_file, _ = loaded(tmp_path, "tasks.pairs.smart={epsilon: 0.2}", "tasks.pairs.smart={adv_weight: 0.5}")
    assert task_file.tasks["pairs"].smart == {"epsilon": 0.2, "adv_weight": 0.5}


def test_an_on_off_flag_set_off_is_named_as_typed():
    args = parse_args(build_parser(), ["train", "t.yaml", "-o", "out", "--no-memory-efficient"])
    assert collect_overrides(args) == [(["training", "smart", "memory_efficient"], False, "--no-memory-efficient")]


def test_an_unknown_flag_gets_the_closest_one(capsys):
    from mtsmart.arguments import build_parser, parse_args

    for argv, hint in ((["train", "t.yaml", "-o", "a", "--lr-sched", "cosine"], "(did you mean '--lr-schedule'?)"),
                       (["evaluate", "ckpt", "--bootsrap=100"], "(did you mean '--bootstrap'?)")):
        with pytest.raises(SystemExit) as exit_:
            parse_args(build_parser(), argv)
        assert exit_.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.startswith("mtsmart: error: unrecognized arguments:") and err.endswith(hint), err


@pytest.mark.parametrize("text", ["smart.preset=papr", "training.smart.preset=papr"])
def test_an_unknown_preset_in_key_value_is_a_one_line_error(tmp_path, text):
    with pytest.raises(ConfigError) as err:
        loaded(tmp_path, text)
    assert str(err.value) == f"{text}: unknown preset 'papr' (valid: paper)"


def test_an_unknown_preset_in_a_config_file_names_the_file(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("training:\n  smart: {preset: papr}\n")
    with pytest.raises(ConfigError) as err:
        loaded(tmp_path, "--config", str(config))
    assert str(err.value) == f"--config {config}: unknown preset 'papr' (valid: paper)"


def test_a_preset_under_a_task_is_not_taken_for_the_run_wide_one(tmp_path):
    """Only training.smart.preset (or smart.preset) names a preset; a task's smart: block has
    no preset key, and its loader says so, instead of the preset reaching every task."""
    overrides = collect_overrides(parse_args(build_parser(), ["train", "t.yaml", "-o", "out",
                                                             "tasks.pairs.smart.preset=paper"]))
    assert overrides == [(["tasks", "pairs", "smart", "preset"], "paper", "tasks.pairs.smart.preset=paper")]
    with pytest.raises(ConfigError, match="unknown key 'preset'"):
        loaded(tmp_path, "tasks.pairs.smart.preset=paper")


@pytest.mark.parametrize("text", ["5\n", "- seed: 5\n", "training\n"])
def test_a_config_file_that_is_not_a_mapping_is_refused(tmp_path, text):
    config = tmp_path / "c.yaml"
    config.write_text(text)
    with pytest.raises(ConfigError) as err:
        loaded(tmp_path, "--config", str(config))
    assert str(err.value) == f"{config}: expected a mapping of training settings"


@pytest.mark.parametrize("command", [["train", "t.yaml"], ["finetune", "ckpt", "--task", "pairs"],
                                     ["adapt", "enc", "--task", "pairs", "--train-sizes", "8"]])
def test_a_command_line_without_settings_sets_nothing(command):
    """A flag left out must not set its setting (to False, say): the task file's or the
    checkpoint's own value, trust_remote_code: true among them, would be lost silently."""
    assert collect_overrides(parse_args(build_parser(), [*command, "-o", "out"])) == []


def test_a_bad_flag_value_is_one_line_naming_the_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(build_parser(), ["train", "t.yaml", "-o", "out", "--lr", "fast"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "mtsmart train: error: argument --lr: invalid float value: 'fast'\n"


def test_the_documented_defaults_of_the_other_commands():
    """Each help names its default: adapt's --min-steps 30 and --seeds 1,2,3, compare's
    --bootstrap 1000, summarize's --which last, the student's weights, batches of 64."""
    parser = build_parser()
    adapt = parse_args(parser, ["adapt", "enc", "--task", "pairs", "--train-sizes", "8", "-o", "out"])
    assert (adapt.min_steps, adapt.seeds) == (30, "1,2,3")
    compare = parse_args(parser, ["compare", "a", "b"])
    assert (compare.bootstrap, compare.weights_a, compare.weights_b, compare.batch_size) == (1000, "student", "student", 64)
    summarize = parse_args(parser, ["summarize", "runs"])
    assert (summarize.which, summarize.weights) == ("last", "student")
    evaluate = parse_args(parser, ["evaluate", "ckpt"])
    assert (evaluate.bootstrap, evaluate.batch_size, evaluate.weights) == (0, 64, "student")


def test_key_value_to_a_command_that_takes_none_is_a_usage_error(capsys):
    """evaluate has no settings to override: KEY=VALUE there is an unrecognized argument."""
    with pytest.raises(SystemExit) as exit_info:
        parse_args(build_parser(), ["evaluate", "ckpt", "training.seed=3"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "mtsmart: error: unrecognized arguments: training.seed=3\n"
