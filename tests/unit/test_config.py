"""config.py: strict loading, coercion, presets, overrides, and that every SMART setting
is actually read by the code that trains."""

from __future__ import annotations

import dataclasses
import inspect
import re
from pathlib import Path

import pytest
import yaml

from mtsmart import config
from mtsmart.config import (
    OptimConfig,
    SamplerConfig,
    SmartConfig,
    TrainConfig,
    apply_override,
    from_mapping,
    load_yaml,
    parse_override,
    parse_smart,
    parse_train_config,
)
from mtsmart.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
WHERE = "run.yaml: training"


def train_from_yaml(text: str) -> TrainConfig:
    return parse_train_config(yaml.safe_load(text), WHERE)


# ----------------------------------------------------------------------------- strictness


def test_unknown_key_names_the_key_and_lists_every_valid_key():
    with pytest.raises(ConfigError) as err:
        parse_train_config({"batch_sise": 8}, WHERE)
    msg = str(err.value)
    assert msg.startswith(WHERE)
    assert "'batch_sise'" in msg
    for f in dataclasses.fields(TrainConfig):
        assert f.name in msg


def test_unknown_nested_key_names_the_full_path_and_valid_keys():
    with pytest.raises(ConfigError) as err:
        parse_train_config({"optim": {"learning_rate": 1e-3}}, WHERE)
    msg = str(err.value)
    assert f"{WHERE}.optim" in msg and "'learning_rate'" in msg
    for f in dataclasses.fields(OptimConfig):
        assert f.name in msg


def test_unknown_smart_key_lists_smart_keys():
    with pytest.raises(ConfigError) as err:
        parse_train_config({"smart": {"adv_wieght": 1.0}}, WHERE)
    msg = str(err.value)
    assert f"{WHERE}.smart" in msg and "'adv_wieght'" in msg
    for f in dataclasses.fields(SmartConfig):
        assert f.name in msg


@pytest.mark.parametrize("data, key, expected", [
    ({"batch_size": "big"}, "batch_size", "integer"),
    ({"batch_size": 8.5}, "batch_size", "integer"),
    ({"batch_size": True}, "batch_size", "integer"),  # a bool is not an int here
    ({"length_grouped": "yes please"}, "length_grouped", "true or false"),
    ({"length_grouped": 1}, "length_grouped", "true or false"),
    ({"encoder": 12}, "encoder", "string"),
    ({"optim": {"lr": "fast"}}, "optim.lr", "number"),
    ({"optim": {"betas": [0.9]}}, "optim.betas", "list of 2"),
    ({"precision": "fp8"}, "precision", "fp32"),
    ({"sampler": {"name": "random"}}, "sampler.name", "proportional"),
    ({"max_steps": "ten"}, "max_steps", "int"),
    ({"smart": {"norm": "l3"}}, "smart.norm", "inf"),
    ({"smart": {"num_steps": 1.5}}, "smart.num_steps", "integer"),
])
def test_type_mismatch_names_the_key(data, key, expected):
    with pytest.raises(ConfigError) as err:
        parse_train_config(data, WHERE)
    msg = str(err.value)
    assert f"{WHERE}.{key}" in msg
    assert expected in msg
    assert "\n" not in msg


def test_int_is_coerced_to_float():
    cfg = train_from_yaml("epochs: 3\noptim: {lr: 1, warmup_fraction: 0}\nsmart: {epsilon: 1}")
    assert cfg.epochs == 3.0 and type(cfg.epochs) is float
    assert type(cfg.optim.lr) is float and cfg.optim.warmup_fraction == 0.0
    assert type(cfg.smart.epsilon) is float


def test_yaml_exponent_without_dot_is_accepted_as_float():
    raw = yaml.safe_load("optim:\n  lr: 1e-5\nsmart:\n  epsilon: 2e-4")
    assert raw["optim"]["lr"] == "1e-5"  # what YAML 1.1 gives: a string
    cfg = parse_train_config(raw, WHERE)
    assert cfg.optim.lr == pytest.approx(1e-5) and type(cfg.optim.lr) is float
    assert cfg.smart.epsilon == pytest.approx(2e-4)


def test_non_numeric_string_is_not_a_float():
    with pytest.raises(ConfigError, match="expected a finite number"):
        parse_train_config({"optim": {"lr": "1e-5x"}}, WHERE)


@pytest.mark.parametrize("text", ["nan", ".nan", "inf"])
def test_non_finite_numbers_are_rejected(text):
    with pytest.raises(ConfigError, match="finite"):
        parse_train_config(yaml.safe_load(f"smart:\n  epsilon: {text}"), WHERE)


def test_list_becomes_tuple():
    cfg = parse_train_config({"optim": {"betas": [0.8, 0.9]}}, WHERE)
    assert cfg.optim.betas == (0.8, 0.9) and isinstance(cfg.optim.betas, tuple)


def test_optional_accepts_null_and_value():
    assert parse_train_config({"max_steps": None}, WHERE).max_steps is None
    assert parse_train_config({"max_steps": 7}, WHERE).max_steps == 7


@pytest.mark.parametrize("text", ["smart:\n  mode: off", "smart:\n  mode: \"off\"", "smart: {mode: OFF}"])
def test_yaml_off_is_read_as_the_off_mode(text):
    raw = yaml.safe_load(text)
    cfg = parse_train_config(raw, WHERE)
    assert cfg.smart.mode == "off"
    assert not cfg.smart.use_adversarial and not cfg.smart.use_bregman


def test_yaml_on_is_not_a_mode():
    with pytest.raises(ConfigError) as err:
        train_from_yaml("smart:\n  mode: on")
    assert "smart.mode" in str(err.value) and "full" in str(err.value)


@pytest.mark.parametrize("mode, adv, breg", [
    ("adversarial", True, False), ("bregman", False, True), ("full", True, True), ("off", False, False),
])
def test_smart_mode_switches(mode, adv, breg):
    cfg = parse_train_config({"smart": {"mode": mode}}, WHERE)
    assert (cfg.smart.use_adversarial, cfg.smart.use_bregman) == (adv, breg)
    zero = parse_train_config({"smart": {"mode": mode, "adv_weight": 0, "prox_weight": 0}}, WHERE)
    assert not zero.smart.use_adversarial and not zero.smart.use_bregman


@pytest.mark.parametrize("data, key", [
    ({"batch_size": 0}, "batch_size"),
    ({"epochs": 0}, "epochs"),
    ({"max_steps": 0}, "max_steps"),
    ({"eval_every": -1}, "eval_every"),
    ({"num_threads": 0}, "num_threads"),  # not a silent "torch's default"
    ({"patience": 0}, "patience"),
    ({"optim": {"lr": 0}}, "optim.lr"),
    ({"optim": {"layer_decay": 0}}, "optim.layer_decay"),
    ({"optim": {"layer_decay": 1.2}}, "optim.layer_decay"),
    ({"optim": {"head_lr_scale": 0}}, "optim.head_lr_scale"),
    ({"optim": {"max_grad_norm": -1}}, "optim.max_grad_norm"),  # would flip every gradient
    ({"optim": {"max_grad_norm": 0}}, "optim.max_grad_norm"),
    ({"optim": {"weight_decay": -5}}, "optim.weight_decay"),
    ({"optim": {"betas": [0.9, 1.5]}}, "optim.betas"),
    ({"optim": {"betas": [0.9]}}, "optim.betas"),
    ({"optim": {"eps": -1}}, "optim.eps"),
    ({"seed": -1}, "seed"),
    ({"seed": 2 ** 40}, "seed"),
    ({"num_hidden_layers": 0}, "num_hidden_layers"),
    ({"optim": {"schedule": "exponential"}}, "optim.schedule"),
    ({"optim": {"warmup_fraction": 1.0}}, "optim.warmup_fraction"),
    ({"sampler": {"temperature": 0}}, "sampler.temperature"),
    ({"smart": {"epsilon": -1e-5}}, "smart.epsilon"),
    ({"smart": {"num_steps": 0}}, "smart.num_steps"),
    ({"smart": {"teacher_beta": 1.5}}, "smart.teacher_beta"),
])
def test_out_of_range_values_are_rejected(data, key):
    with pytest.raises(ConfigError) as err:
        parse_train_config(data, WHERE)
    assert f"{WHERE}.{key}" in str(err.value)


def test_max_steps_makes_epochs_irrelevant():
    cfg = parse_train_config({"epochs": 0, "max_steps": 5}, WHERE)
    assert cfg.max_steps == 5


def test_non_mapping_block_is_rejected():
    with pytest.raises(ConfigError, match="expected a mapping"):
        parse_train_config(["lr", 1], WHERE)
    with pytest.raises(ConfigError, match="expected a mapping"):
        parse_train_config({"smart": "full"}, WHERE)


# ----------------------------------------------------------------------------- presets


def test_preset_then_explicit_keys_win(monkeypatch):
    monkeypatch.setitem(config.SMART_PRESETS, "strong",
                        dict(adv_weight=5.0, epsilon=1e-3, num_steps=3, norm="l2"))
    # The explicit key wins whatever its position in the mapping.
    for data in ({"preset": "strong", "adv_weight": 2.0}, {"adv_weight": 2.0, "preset": "strong"}):
        cfg = parse_train_config({"smart": data}, WHERE).smart
        assert cfg.adv_weight == 2.0
        assert cfg.epsilon == 1e-3 and cfg.num_steps == 3 and cfg.norm == "l2"
        assert cfg.prox_weight == SmartConfig().prox_weight  # untouched by the preset


def test_paper_preset_overrides_the_base_and_keys_override_it():
    base = SmartConfig(epsilon=0.5, noise_std=0.5, teacher_beta=0.5, num_steps=4)
    cfg = parse_smart({"preset": "paper", "num_steps": 2}, "x.smart", base=base)
    paper = config.SMART_PRESETS["paper"]
    assert cfg.epsilon == paper["epsilon"] and cfg.noise_std == paper["noise_std"]
    assert cfg.teacher_beta == paper["teacher_beta"]
    assert cfg.num_steps == 2
    # Without the preset the base stays.
    assert parse_smart({}, "x.smart", base=base).epsilon == 0.5


def test_paper_preset_matches_the_paper():
    cfg = parse_smart({"preset": "paper", "mode": "full"}, "x.smart")
    assert (cfg.adv_weight, cfg.prox_weight, cfg.epsilon, cfg.noise_std, cfg.step_size,
            cfg.num_steps, cfg.norm) == (1.0, 1.0, 1e-5, 1e-5, 1e-3, 1, "inf")
    assert (cfg.teacher_beta, cfg.teacher_beta_early) == (0.999, 0.99)
    assert cfg.mode == "full"


def test_paper_preset_only_names_smart_fields():
    names = {f.name for f in dataclasses.fields(SmartConfig)}
    for preset in config.SMART_PRESETS.values():
        assert set(preset) <= names


def test_unknown_preset_lists_presets():
    with pytest.raises(ConfigError) as err:
        parse_train_config({"smart": {"preset": "papr"}}, WHERE)
    assert "smart.preset" in str(err.value) and "'papr'" in str(err.value) and "paper" in str(err.value)


@pytest.mark.parametrize("preset", [["paper"], {"name": "paper"}])
def test_unhashable_preset_is_a_config_error(preset):
    with pytest.raises(ConfigError, match="preset"):
        parse_train_config({"smart": {"preset": preset}}, WHERE)


# ----------------------------------------------------------------------------- overrides


@pytest.mark.parametrize("text, path, value", [
    ("training.optim.lr=2e-5", ["training", "optim", "lr"], "2e-5"),
    ("training.batch_size=16", ["training", "batch_size"], 16),
    ("tasks.rte.smart.adv_weight=0", ["tasks", "rte", "smart", "adv_weight"], 0),
    ("training.length_grouped=false", ["training", "length_grouped"], False),
    ("training.encoder=a/b=c", ["training", "encoder"], "a/b=c"),
    ("training.optim.betas=[0.8, 0.9]", ["training", "optim", "betas"], [0.8, 0.9]),
    ("training.max_steps=null", ["training", "max_steps"], None),
    ("training.encoder=", ["training", "encoder"], ""),
    (" training.seed = 3", ["training", "seed"], 3),
    ("seed=3", ["training", "seed"], 3),  # a bare key is a training setting
    ("data_dir=/d", ["data_dir"], "/d"),
    ("training.encoder=[unclosed", ["training", "encoder"], "[unclosed"),
])
def test_parse_override(text, path, value):
    assert parse_override(text) == (path, value)


@pytest.mark.parametrize("text", ["training.optim.lr", "=3", "...=3"])
def test_parse_override_rejects_bad_syntax(text):
    with pytest.raises(ConfigError) as err:
        parse_override(text)
    assert repr(text) in str(err.value)


def test_apply_override_creates_and_replaces():
    tree = {"training": {"optim": {"lr": 1.0}, "seed": 1}}
    apply_override(tree, ["training", "optim", "lr"], 2.0, "t")
    apply_override(tree, ["training", "smart", "mode"], "full", "t")
    apply_override(tree, ["tasks", "rte", "max_length"], 64, "t")
    assert tree == {"training": {"optim": {"lr": 2.0}, "seed": 1, "smart": {"mode": "full"}},
                    "tasks": {"rte": {"max_length": 64}}}


def test_apply_override_through_a_scalar_is_an_error():
    tree = {"training": {"seed": 1}}
    with pytest.raises(ConfigError) as err:
        apply_override(tree, ["training", "seed", "x"], 2, "training.seed.x=2")
    assert "'training.seed.x=2'" in str(err.value) and "'seed'" in str(err.value)


def test_override_round_trip_through_the_loader():
    tree = {"training": {"optim": {"lr": 1e-4}}}
    for text in ("optim.lr=3e-5", "smart.mode=off", "smart.preset=paper", "smart.adv_weight=2"):
        path, value = parse_override(text)  # bare keys are training settings
        apply_override(tree, path, value, text)
    cfg = parse_train_config(tree["training"], WHERE)
    assert cfg.optim.lr == pytest.approx(3e-5)
    assert cfg.smart.mode == "off" and cfg.smart.adv_weight == 2.0


def test_override_with_unknown_key_is_caught_by_the_loader():
    tree = {}
    path, value = parse_override("optim.lrr=1")
    apply_override(tree, path, value, "optim.lrr=1")
    with pytest.raises(ConfigError, match="'lrr'"):
        parse_train_config(tree["training"], WHERE)


# ----------------------------------------------------------------------------- YAML files


def test_load_yaml_errors_name_the_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="file not found") as err:
        load_yaml(str(missing))
    assert str(missing) in str(err.value)
    bad = tmp_path / "bad.yaml"
    bad.write_text("training:\n  lr: 1\n   seed: [\n", encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_yaml(str(bad))
    assert str(bad) in str(err.value) and re.search(r"line \d+", str(err.value))
    with pytest.raises(ConfigError, match="directory"):
        load_yaml(str(tmp_path))
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"training:\n  encoder: caf\xe9\n")
    with pytest.raises(ConfigError, match="UTF-8"):
        load_yaml(str(latin))


def test_to_plain_round_trips():
    cfg = parse_train_config({"smart": {"mode": "full", "epsilon": 1e-4}, "optim": {"betas": [0.8, 0.9]}}, WHERE)
    plain = config.to_plain(cfg)
    assert plain["optim"]["betas"] == [0.8, 0.9]
    assert parse_train_config(yaml.safe_load(yaml.safe_dump(plain)), WHERE) == cfg


# ----------------------------------------------------------------------------- settings are read


TRAINING_CODE = ("objective.py", "train.py", "smart.py", "optim.py")


def _training_source() -> str:
    return "\n".join((REPO / "mtsmart" / name).read_text(encoding="utf-8") for name in TRAINING_CODE)


def _reads(source: str, name: str) -> bool:
    return re.search(rf"\.{re.escape(name)}\b", source) is not None


def _fields_read_by_used_properties(source: str) -> set[str]:
    """Fields read through a SmartConfig property (``use_adversarial`` reads ``mode``) that
    the training code itself reads."""
    found = set()
    for name, member in inspect.getmembers(SmartConfig):
        if isinstance(member, property) and _reads(source, name):
            body = inspect.getsource(member.fget)
            found |= set(re.findall(r"self\.(\w+)", body))
    return found


def test_every_smart_setting_is_read_by_the_training_code():
    source = _training_source()
    via_properties = _fields_read_by_used_properties(source)
    unread = [f.name for f in dataclasses.fields(SmartConfig)
              if not _reads(source, f.name) and f.name not in via_properties]
    assert unread == [], f"SmartConfig fields parsed but never read: {unread}"


def test_the_read_check_can_fail():
    # A name no code reads must be reported as unread.
    assert not _reads(_training_source(), "teacher_beta_late")
    assert _reads("x.teacher_beta_early", "teacher_beta_early")
    assert not _reads("x.teacher_beta_early", "teacher_beta")


@pytest.mark.parametrize("cls", [OptimConfig, SamplerConfig])
def test_optim_and_sampler_settings_are_read(cls):
    source = _training_source() + (REPO / "mtsmart" / "sampling.py").read_text(encoding="utf-8")
    unread = [f.name for f in dataclasses.fields(cls) if not _reads(source, f.name)]
    assert unread == []


def test_from_mapping_accepts_an_instance_and_none():
    assert from_mapping(SmartConfig, None, "x") == SmartConfig()
    cfg = SmartConfig(mode="full")
    assert config.coerce(cfg, SmartConfig, "x") is cfg


def test_a_bare_on_for_a_mode_says_to_quote_it():
    with pytest.raises(ConfigError, match="YAML reads a bare on/yes/true as true: quote the word"):
        parse_train_config({"smart": {"mode": True}}, WHERE)


# ----------------------------------------------------------------------------- defaults and ranges


def test_the_paper_preset_is_the_whole_paper_recipe():
    """docs/smart.md: the preset is 'absolute ε, β = 0.99 for the first 10% of updates then
    0.999, no horizon cap, no μ ramp', not only its weights and radii."""
    cfg = parse_smart({"preset": "paper"}, "x.smart")
    assert cfg.relative_to_embedding_norm is False
    assert cfg.teacher_horizon_fraction is None
    assert cfg.prox_warmup_fraction == 0.0
    assert cfg.teacher_early_fraction == 0.1
    assert cfg.mode == "off"  # the preset never switches SMART on by itself
    assert set(config.SMART_PRESETS["paper"]) | {"mode", "same_dropout_masks", "memory_efficient"} == \
        {f.name for f in dataclasses.fields(SmartConfig)}


def test_the_defaults_are_the_documented_ones():
    """docs/task-definitions.md ('Training settings') and docs/smart.md ('Defaults'): a
    changed default changes every run that relies on it."""
    train = TrainConfig()
    assert (train.encoder, train.pooling, train.batch_size, train.eval_batch_size, train.epochs,
            train.max_steps, train.grad_accum_steps, train.seed, train.eval_every, train.log_every,
            train.select_metric, train.patience, train.length_grouped, train.precision,
            train.eval_teacher, train.save_checkpoints, train.keep_last, train.trust_remote_code,
            train.gradient_checkpointing) == (
        "sentence-transformers/all-MiniLM-L6-v2", "mean", 32, 64, 3.0, None, 1, 1, 0, 10,
        "average", None, True, "fp32", True, True, 1, False, False)
    assert OptimConfig() == OptimConfig(lr=5e-5, weight_decay=0.01, betas=(0.9, 0.999), eps=1e-8,
                                        warmup_fraction=0.1, schedule="linear", max_grad_norm=1.0,
                                        layer_decay=1.0, head_lr_scale=1.0, fused=True)
    assert SamplerConfig() == SamplerConfig(name="proportional", temperature=2.0, anneal_final_alpha=0.0)
    assert SmartConfig() == SmartConfig(
        mode="off", adv_weight=0.3, prox_weight=0.3, epsilon=0.01, noise_std=5e-4, step_size=1.0,
        num_steps=1, norm="l2", relative_to_embedding_norm=True, teacher_beta=0.999,
        teacher_beta_early=0.99, teacher_early_fraction=0.1, teacher_horizon_fraction=0.1,
        prox_warmup_fraction=0.1, memory_efficient=False, same_dropout_masks=False)


@pytest.mark.parametrize("data, key", [
    ({"_comment": "x"}, "'_comment'"),
    ({"optim": {"_lr": 1}}, "'_lr'"),
    ({"sampler": {"_name": "uniform"}}, "'_name'"),
    ({"smart": {"_mode": "full"}}, "'_mode'"),
    ({"Seed": 2}, "'Seed'"),
])
def test_any_unknown_key_is_refused_at_every_level(data, key):
    """Not only near-miss spellings: any key the schema lacks."""
    with pytest.raises(ConfigError, match="unknown key") as err:
        parse_train_config(data, WHERE)
    assert key in str(err.value)


@pytest.mark.parametrize("data, key", [
    ({"smart": {"prox_warmup_fraction": -0.1}}, "smart.prox_warmup_fraction"),
    ({"smart": {"prox_warmup_fraction": 1.5}}, "smart.prox_warmup_fraction"),  # μ never reached
    ({"smart": {"teacher_early_fraction": 1.5}}, "smart.teacher_early_fraction"),
    ({"smart": {"teacher_beta_early": -0.1}}, "smart.teacher_beta_early"),
    ({"smart": {"teacher_horizon_fraction": 0}}, "smart.teacher_horizon_fraction"),
    ({"smart": {"teacher_horizon_fraction": 1.5}}, "smart.teacher_horizon_fraction"),
    ({"keep_last": 0}, "keep_last"),
    ({"eval_batch_size": 0}, "eval_batch_size"),
    ({"grad_accum_steps": 0}, "grad_accum_steps"),
    ({"log_every": 0}, "log_every"),
    ({"seed": 2 ** 32}, "seed"),  # numpy takes at most 2**32 - 1
    ({"encoder_dropout": 1.0}, "encoder_dropout"),  # every activation dropped
    ({"encoder_dropout": -0.1}, "encoder_dropout"),
    ({"optim": {"weight_decay": -0.5}}, "optim.weight_decay"),
    ({"optim": {"warmup_fraction": -0.1}}, "optim.warmup_fraction"),
    ({"optim": {"betas": [-0.1, 0.9]}}, "optim.betas"),
    ({"smart": {"adv_weight": -1}}, "smart.adv_weight"),
    ({"smart": {"prox_weight": -1}}, "smart.prox_weight"),
])
def test_more_out_of_range_values_are_rejected(data, key):
    with pytest.raises(ConfigError) as err:
        parse_train_config(data, WHERE)
    assert f"{WHERE}.{key}" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("data", [
    {"smart": {"teacher_beta": 1.0, "teacher_beta_early": 0.0}},  # the closed ends of [0, 1]
    {"smart": {"teacher_early_fraction": 1.0}},
    {"smart": {"teacher_horizon_fraction": 1.0}},
    {"smart": {"prox_warmup_fraction": 0.0, "adv_weight": 0, "prox_weight": 0, "epsilon": 0}},
    {"seed": 0}, {"seed": 2 ** 32 - 1},
    {"optim": {"weight_decay": 0, "warmup_fraction": 0, "layer_decay": 1.0, "betas": [0, 0.999]}},
    {"encoder_dropout": 0.0},
    {"keep_last": 1, "eval_batch_size": 1, "patience": 1, "num_threads": 1, "num_hidden_layers": 1},
])
def test_values_on_the_edge_of_their_range_are_accepted(data):
    """The documented ranges are closed where they say so: an off-by-one in a bound would
    refuse a valid setting."""
    parse_train_config(data, WHERE)


def test_a_key_given_twice_in_a_yaml_file_is_refused(tmp_path):
    """YAML keeps the last of two equal keys silently."""
    path = tmp_path / "t.yaml"
    path.write_text("training:\n  seed: 1\n  batch_size: 8\n  seed: 2\n", encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_yaml(str(path))
    assert str(path) in str(err.value) and "duplicate key 'seed'" in str(err.value)
    assert "line 4" in str(err.value)


def test_invalid_yaml_names_the_exact_line(tmp_path):
    """The line PyYAML marks, not one beside it (1-based, as editors count)."""
    path = tmp_path / "bad.yaml"
    path.write_text("training:\n  seed: 1\n  batch_size: 8\n  lr: [1\n  optim: 2\n", encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_yaml(str(path))
    line = int(re.search(r"line (\d+)", str(err.value)).group(1))
    # PyYAML marks where it found the problem: the ',' or ']' it expected, on line 5
    assert line == 5, str(err.value)
    dup = tmp_path / "dup.yaml"
    dup.write_text("a: 1\nb: 2\na: 3\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"dup.yaml: line 3: "):
        load_yaml(str(dup))




@pytest.mark.parametrize("data, key, expected", [
    ({"optim": {"lr": True}}, "optim.lr", "finite number"),  # a bool is not a number either
    ({"smart": {"epsilon": False}}, "smart.epsilon", "finite number"),
])
def test_a_bool_is_not_a_number(data, key, expected):
    with pytest.raises(ConfigError) as err:
        parse_train_config(data, WHERE)
    assert f"{WHERE}.{key}" in str(err.value) and expected in str(err.value)


def test_an_optional_setting_of_the_wrong_type_names_the_type_alone():
    """Optional[int] reads 'expected int', not Python's 'int or NoneType'."""
    with pytest.raises(ConfigError) as err:
        parse_train_config({"num_threads": "many"}, WHERE)
    assert str(err.value) == f"{WHERE}.num_threads: expected int, got 'many'"


@pytest.mark.parametrize("data, key", [({"optim": 5}, "optim"), ({"sampler": "uniform"}, "sampler")])
def test_a_nested_block_that_is_not_a_mapping_is_rejected(data, key):
    with pytest.raises(ConfigError) as err:
        parse_train_config(data, WHERE)
    assert str(err.value).startswith(f"{WHERE}.{key}: expected a mapping of settings")


def test_a_mapping_field_given_something_else_is_a_config_error():
    with pytest.raises(ConfigError) as err:
        config.coerce(["train.tsv"], dict[str, str], "t.yaml: task 'x'.splits")
    assert str(err.value) == "t.yaml: task 'x'.splits: expected a mapping, got ['train.tsv']"


@pytest.mark.parametrize("data, key", [
    ({"smart": {"step_size": -1}}, "smart.step_size"),
    ({"smart": {"noise_std": -1e-4}}, "smart.noise_std"),
    ({"optim": {"betas": [0.9, 1.0]}}, "optim.betas"),  # [0, 1): a β of 1 never forgets
    ({"optim": {"eps": 0}}, "optim.eps"),  # > 0: Adam divides by it
])
def test_the_open_ends_and_the_other_smart_radii_are_rejected(data, key):
    with pytest.raises(ConfigError) as err:
        parse_train_config(data, WHERE)
    assert f"{WHERE}.{key}" in str(err.value) and "\n" not in str(err.value)


def test_differences_names_a_key_on_either_side_only():
    """A task added on resume is a difference, as is one left out."""
    assert config.differences({"a": 1, "b": {"x": 1}}, {"a": 1, "b": {"x": 1, "y": 2}, "c": 3}) == [
        ("b.y", None, 2), ("c", None, 3)]
    assert config.differences({"a": 1, "c": 3}, {"a": 2}) == [("a", 1, 2), ("c", 3, None)]


def test_flatten_settings_writes_booleans_and_lists_as_text_and_leaves_out_unset():
    """TensorBoard would show a boolean as 0 or 1; an unset value is no setting."""
    flat = config.flatten_settings({"length_grouped": True, "max_steps": None, "seed": 3,
                                    "optim": {"betas": (0.9, 0.999), "fused": False}})
    assert flat == {"length_grouped": "true", "seed": 3, "optim.betas": "0.9, 0.999", "optim.fused": "false"}


def test_a_terms_weight_is_a_setting_without_effect_where_no_task_runs_the_term():
    """summarize: runs that differ only in --adv-weight with SMART off are one recipe."""
    unused = config.settings_without_effect({"smart": {"mode": "off", "adv_weight": 0.5}}, [])
    assert {"smart.adv_weight", "smart.epsilon", "smart.prox_weight", "smart.teacher_beta", "eval_teacher"} <= unused
    used = config.settings_without_effect({"smart": {"mode": "full"}}, [])
    assert not {"smart.adv_weight", "smart.prox_weight"} & used
