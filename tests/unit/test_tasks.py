"""tasks.py: task definitions are validated with one-line errors that name the file, the
task and the field."""

from __future__ import annotations

import copy
import dataclasses
import re

import pytest
import yaml

from mtsmart.config import SmartConfig
from mtsmart.errors import ConfigError
from mtsmart.tasks import (
    FileSource,
    HubSource,
    check_same_head,
    load_task_file,
    parse_task,
    resolve_data_dir,
    select_tasks,
    task_to_plain,
)

FILE = "defs/tasks.yaml"

CLS = {
    "type": "classification",
    "text_fields": ["sentence1", "sentence2"],
    "label_field": "label",
    "labels": ["entailment", "not_entailment"],
    "splits": {"train": "train.tsv", "dev": {"path": "dev.tsv", "quoting": "none"}},
}
REG = {
    "type": "regression",
    "text_fields": ["sentence1", "sentence2"],
    "target_field": "score",
    "splits": {"train": "train.tsv", "dev": "dev.tsv"},
}


def spec(base: dict, **changes) -> dict:
    out = copy.deepcopy(base)
    for key, value in changes.items():
        if value is DELETE:
            out.pop(key)
        else:
            out[key] = value
    return out


DELETE = object()


def write_yaml(tmp_path, data, name="tasks.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data, encoding="utf-8")
    return str(path)


# ----------------------------------------------------------------------------- valid tasks


def test_classification_task_defaults():
    task = parse_task("rte", CLS, FILE)
    assert task.name == "rte" and task.type == "classification"
    assert task.text_fields == ("sentence1", "sentence2")
    assert task.labels == ("entailment", "not_entailment")
    assert task.metrics == ("accuracy",) and task.selection_metric == "accuracy"
    assert task.target_column == "label"
    assert task.fields_used == ("sentence1", "sentence2", "label")
    assert task.train_split == "train" and task.eval_split == "dev"
    assert task.defined_in == FILE
    assert task.task_type.output_size(task.labels) == 2
    assert task.splits["train"] == FileSource(path="train.tsv")
    assert task.splits["dev"].quoting == "none"


def test_regression_task_defaults():
    task = parse_task("stsb", REG, FILE)
    assert task.labels is None and task.target_column == "score"
    assert task.metrics == ("pearson", "spearman")
    assert task.task_type.output_size(task.labels) == 1


def test_single_text_field_as_string_and_numeric_labels():
    task = parse_task("sst2", spec(CLS, text_fields="sentence", labels=[0, 1]), FILE)
    assert task.text_fields == ("sentence",)
    assert task.labels == ("0", "1")


def test_a_single_metric_may_be_given_as_a_string():
    task = parse_task("rte", spec(CLS, metrics="f1"), FILE)
    assert task.metrics == ("f1",) and task.selection_metric == "f1"


def test_main_metric_and_per_task_smart():
    task = parse_task("mrpc", spec(CLS, metrics=["accuracy", "f1"], main_metric="f1",
                                   smart={"adv_weight": 0, "epsilon": "1e-4"}), FILE)
    assert task.selection_metric == "f1"
    cfg = task.smart_config(SmartConfig(mode="full", adv_weight=1.0, teacher_beta=0.9))
    assert cfg.adv_weight == 0.0 and cfg.epsilon == pytest.approx(1e-4)
    assert cfg.teacher_beta == 0.9 and cfg.mode == "full"


def test_hub_source_and_format_from_extension():
    task = parse_task("x", spec(CLS, splits={"train": {"hub": "nyu-mll/glue", "name": "rte", "split": "train"},
                                             "dev": "d/dev.jsonl", "test": "t.CSV", "other": "o.txt"}), FILE)
    assert isinstance(task.splits["train"], HubSource)
    assert task.splits["dev"].resolved_format == "jsonl"
    assert task.splits["test"].resolved_format == "csv"
    assert task.splits["other"].resolved_format == "tsv"


@pytest.mark.parametrize("source, message", [
    ({"hub": "nyu-mll/glue", "name": "rte"}, r"task 'x'.*: missing key 'split' \(required: hub, split\)"),
    ({"hub": "nyu-mll/glue", "path": "t.tsv", "split": "train"}, r"give 'path' .* or 'hub' .*, not both"),
])
def test_hub_source_mistakes_are_one_line(source, message):
    with pytest.raises(ConfigError, match=message):
        parse_task("x", spec(CLS, splits={"train": source, "dev": "d.tsv"}), FILE)


@pytest.mark.parametrize("weights, expected", [("balanced", "balanced"), ([2, 0.5], (2.0, 0.5))])
def test_class_weights_balanced_or_one_per_label_and_round_trip(weights, expected):
    task = parse_task("rte", spec(CLS, class_weights=weights), FILE)
    assert task.class_weights == expected
    assert parse_task("rte", yaml.safe_load(yaml.safe_dump(task_to_plain(task))), FILE) == task


def test_task_to_plain_round_trips():
    task = parse_task("mrpc", spec(CLS, metrics=["accuracy", "f1"], smart={"num_steps": 2},
                                   splits={"train": {"path": "t.tsv", "columns": {"label": -1}}}), FILE)
    again = parse_task("mrpc", yaml.safe_load(yaml.safe_dump(task_to_plain(task))), FILE)
    assert again == task


def test_task_to_plain_leaves_out_unset_settings():
    # checkpoints hold what the user could have written: no 'smart: {}', no 'format: null'
    plain = task_to_plain(parse_task("rte", CLS, FILE))
    assert "smart" not in plain and "class_weights" not in plain and "target_field" not in plain
    assert plain["splits"]["train"] == {"path": "train.tsv", "header": True, "quoting": "minimal",
                                        "encoding": "utf-8-sig"}


# ----------------------------------------------------------------------------- bad tasks


def assert_names(err, *parts):
    msg = str(err.value)
    assert "\n" not in msg
    for part in parts:
        assert part in msg, f"{part!r} not in {msg!r}"


@pytest.mark.parametrize("raw, field", [
    (spec(CLS, lables=["a", "b"]), "'lables'"),
    (spec(CLS, type=DELETE), "'type'"),
    (spec(CLS, text_fields=DELETE), "'text_fields'"),
    (spec(CLS, splits=DELETE), "'splits'"),
    (spec(CLS, type="classifcation"), "'type'"),
    (spec(CLS, type=["classification"]), "'type'"),
    (spec(CLS, labels=DELETE), "'labels'"),
    (spec(CLS, label_field=DELETE), "'label_field'"),
    (spec(CLS, labels=["only"]), "'labels'"),
    (spec(CLS, labels=["a", "a"]), "'labels'"),
    (spec(CLS, labels=[None, "a", "b"]), "an empty label"),
    (spec(CLS, text_fields=["sentence1", "sentence1"]), "'sentence1' twice"),
    (spec(CLS, smart=[]), "field 'smart'"),
    (spec(CLS, splits={"train": {"path": "t.tsv", "columns": {"sentence1": True}}}), "columns.sentence1"),
    (spec(CLS, target_field="score"), "'target_field'"),
    (spec(REG, labels=["a", "b"]), "'labels'"),
    (spec(REG, label_field="label"), "'label_field'"),
    (spec(REG, target_field=DELETE), "'target_field'"),
    (spec(CLS, metrics=["accuracy", "pearson"]), "'metrics'"),
    (spec(REG, metrics=["accuracy"]), "'metrics'"),
    (spec(CLS, metrics=[{"name": "accuracy"}]), "'metrics'"),
    (spec(CLS, metrics=[]), "'metrics'"),
    (spec(CLS, metrics=["accuracy", "f1", "accuracy"]), "field 'metrics': 'accuracy' twice"),
    (spec(CLS, metrics=["accuracy"], main_metric="f1"), "'main_metric'"),
    (spec(CLS, smart={"teacher_beta": 0.9}), "'teacher_beta'"),
    (spec(CLS, smart={"mode": "sometimes"}), "mode"),
    (spec(CLS, smart={"num_steps": 0}), "num_steps"),
    (spec(CLS, smart={"norm": "l1"}), "norm"),
    (spec(CLS, smart="full"), "'smart'"),
    (spec(CLS, text_fields=["a", "b", "c"]), "'text_fields'"),
    (spec(CLS, text_fields=[]), "'text_fields'"),
    (spec(CLS, splits={}), "'splits'"),
    (spec(CLS, splits={"train": {"file": "x.tsv"}}), "'train'"),
    (spec(CLS, splits={"train": {"path": "x.tsv", "quoting": "all"}}), "'train'"),
    (spec(CLS, splits={"train": {"path": "x.tsv", "colums": {}}}), "'colums'"),
    (spec(CLS, splits={"train": {"path": "x.tsv", "columns": {"lable": 3}}}), "'lable'"),
    (spec(CLS, max_length=4), "'max_length'"),
    (spec(CLS, max_length="long"), "'max_length'"),
    (spec(CLS, head_dropout=1.0), "'head_dropout'"),
    (spec(CLS, sampling_weight=-1), "field 'sampling_weight': must be >= 0"),  # which one, and its value
    (spec(CLS, sampling_weight=-1), "got -1"),
    (spec(CLS, class_weights="balance"), "'class_weights'"),
    (spec(CLS, class_weights=[1.0]), "'class_weights'"),
    (spec(CLS, class_weights=[1.0, 0.0]), "'class_weights'"),
    (spec(CLS, class_weights=[1.0, float("nan")]), "'class_weights'"),
    (spec(CLS, class_weights=[1.0, True]), "'class_weights'"),
    (spec(CLS, class_weights=[1.0, float("inf")]), "'class_weights'"),  # YAML's .inf
    (spec(CLS, class_weights=[1.0, 2.0, 3.0]), "'class_weights'"),  # one too many, not cut short
    (spec(CLS, labels=["", "a"]), "an empty label"),  # '' as well as null
    (spec(CLS, text_fields=["sentence1", 2]), "'text_fields'"),  # a field name is text
    (spec(REG, class_weights="balanced"), "'class_weights'"),
])
def test_bad_task_names_file_task_and_field(raw, field):
    with pytest.raises(ConfigError) as err:
        parse_task("rte", raw, FILE)
    assert_names(err, FILE, "'rte'", field)


def test_unknown_task_key_lists_valid_keys():
    with pytest.raises(ConfigError) as err:
        parse_task("rte", spec(CLS, lables=["a", "b"]), FILE)
    for key in ("label_field", "labels", "metrics", "splits", "max_length", "smart"):
        assert key in str(err.value)
    assert "defined_in" not in str(err.value)


def test_bad_task_name():
    with pytest.raises(ConfigError) as err:
        parse_task("RTE task", CLS, FILE)
    assert_names(err, FILE, "'RTE task'")


# ----------------------------------------------------------------------------- whole files


GOOD = {"tasks": {"rte": CLS, "stsb": REG}, "training": {"batch_size": 4}}


def test_load_task_file(tmp_path):
    path = write_yaml(tmp_path, {**GOOD, "data_dir": "data"})
    tf = load_task_file(path)
    assert list(tf.tasks) == ["rte", "stsb"]
    assert tf.training.batch_size == 4
    assert tf.tasks["rte"].defined_in == path
    assert tf.data_dir == str(tmp_path / "data")


def test_load_task_file_applies_overrides(tmp_path):
    path = write_yaml(tmp_path, GOOD)
    tf = load_task_file(path, [
        (["tasks", "rte", "max_length"], 64, "tasks.rte.max_length=64"),
        (["training", "batch_size"], 16, "batch_size=16"),  # parse_override reads bare keys so
        (["training", "smart", "mode"], False, "training.smart.mode=off"),
    ])
    assert tf.tasks["rte"].max_length == 64 and tf.training.batch_size == 16
    assert tf.training.smart.mode == "off"


def test_override_to_unknown_task_key_names_it(tmp_path):
    path = write_yaml(tmp_path, GOOD)
    with pytest.raises(ConfigError) as err:
        load_task_file(path, [(["tasks", "rte", "max_len"], 64, "tasks.rte.max_len=64")])
    assert_names(err, path, "'rte'", "'max_len'")


def test_unknown_top_level_key(tmp_path):
    path = write_yaml(tmp_path, {**GOOD, "trainig": {}})
    with pytest.raises(ConfigError) as err:
        load_task_file(path)
    assert_names(err, path, "'trainig'", "did you mean 'training'?", "tasks", "training", "data_dir")


def test_unknown_task_key_in_file(tmp_path):
    path = write_yaml(tmp_path, {"tasks": {"rte": spec(CLS, lables=["a", "b"])}})
    with pytest.raises(ConfigError) as err:
        load_task_file(path)
    assert_names(err, path, "'rte'", "'lables'")


def test_training_error_names_the_file(tmp_path):
    path = write_yaml(tmp_path, {**GOOD, "training": {"optim": {"lr": "fast"}}})
    with pytest.raises(ConfigError) as err:
        load_task_file(path)
    assert_names(err, path, "training.optim.lr")


@pytest.mark.parametrize("text, expected", [
    ("", "the file is empty"),  # not just "empty": this test's tmp_path holds that word
    ("# only a comment\n", "the file is empty"),
    ("- a\n- b\n", "mapping"),
    ("tasks: {}\n", "'tasks'"),
    ("tasks: [rte]\n", "'tasks'"),
    ("training: {}\n", "'tasks'"),
])
def test_empty_or_shapeless_files(tmp_path, text, expected):
    path = write_yaml(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_task_file(path)
    assert_names(err, path, expected)


def test_invalid_yaml_names_the_line(tmp_path):
    text = "tasks:\n  rte:\n    type: classification\n    labels: [a, b\n    metrics: [accuracy]\n"
    path = write_yaml(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_task_file(path)
    msg = str(err.value)
    assert path in msg and "invalid YAML" in msg and "\n" not in msg
    line = int(re.search(r"line (\d+)", msg).group(1))
    assert 4 <= line <= 6


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_task_file(str(tmp_path / "none.yaml"))


def test_data_dir_must_be_a_path(tmp_path):
    path = write_yaml(tmp_path, {**GOOD, "data_dir": 3})
    with pytest.raises(ConfigError, match="data_dir"):
        load_task_file(path)


def test_resolve_data_dir_order(tmp_path, monkeypatch):
    path = write_yaml(tmp_path, GOOD)
    tf = load_task_file(path)
    monkeypatch.delenv("MTSMART_DATA_DIR", raising=False)
    assert resolve_data_dir(None, tf) == str(tmp_path)
    monkeypatch.setenv("MTSMART_DATA_DIR", "/env")
    assert resolve_data_dir(None, tf) == "/env"
    assert resolve_data_dir("/cli", tf) == "/cli"


# ----------------------------------------------------------------------------- select_tasks


def test_select_tasks():
    tasks = {"rte": parse_task("rte", CLS, FILE), "stsb": parse_task("stsb", REG, FILE)}
    assert list(select_tasks(tasks, None, "--tasks")) == ["rte", "stsb"]
    assert list(select_tasks(tasks, "stsb, rte", "--tasks")) == ["stsb", "rte"]
    with pytest.raises(ConfigError) as err:
        select_tasks(tasks, "rte,qnli", "--tasks")
    assert_names(err, "--tasks", "'qnli'", "rte", "stsb")


def test_boolean_looking_labels_must_be_quoted(tmp_path):
    from mtsmart.tasks import load_task_file

    path = tmp_path / "t.yaml"
    path.write_text("tasks:\n  q:\n    type: classification\n    text_fields: [a]\n"
                    "    label_field: l\n    labels: [yes, no]\n    splits: {train: x.tsv}\n")
    with pytest.raises(ConfigError, match=r"t.yaml: task 'q': field 'labels': .*quote"):
        load_task_file(str(path))


def test_select_tasks_with_no_names_says_so():
    from mtsmart.tasks import select_tasks

    with pytest.raises(ConfigError) as err:
        select_tasks({"rte": None, "mrpc": None}, " , ", "--tasks")
    assert_names(err, "--tasks", "no task names", "tasks: rte, mrpc")


@pytest.mark.parametrize("changes, message", [
    ({"lables": ["0", "1"]}, r"unknown key 'lables' \(did you mean 'labels'\?\)"),
    ({"label_field": "sentence1"}, r"field 'label_field': 'sentence1' is also a text field"),
])
def test_task_key_mistakes_name_the_likely_fix(changes, message):
    raw = spec(CLS, **changes)
    if "lables" in changes:
        raw.pop("labels")
    with pytest.raises(ConfigError, match=message):
        parse_task("x", raw, FILE)


def test_every_smart_key_but_the_teachers_may_be_set_per_task():
    """docs/smart.md: 'The four teacher settings are run-wide ... Every other key may also be
    set per task.'"""
    base = SmartConfig(mode="full")
    for f in dataclasses.fields(SmartConfig):
        if f.name.startswith("teacher_"):
            continue
        value = getattr(base, f.name)
        other = {"mode": "bregman", "norm": "inf", "prox_warmup_fraction": 0.5}.get(f.name)  # a fraction
        if other is None:
            other = (not value) if isinstance(value, bool) else value + 1
        task = parse_task("rte", {**CLS, "smart": {f.name: other}}, FILE)
        assert getattr(task.smart_config(base), f.name) == other, f.name


@pytest.mark.parametrize("key, value", [
    ("loss_weight", 0.25), ("sampling_weight", 3.0), ("head_dropout", 0.0), ("max_length", 64),
    ("train_split", "dev"), ("eval_split", "train"), ("main_metric", "f1"),
])
def test_every_task_setting_given_is_the_one_used(key, value):
    """A task key that is accepted but not read would silently do nothing."""
    raw = {**CLS, "metrics": ["accuracy", "f1"], key: value}
    assert getattr(parse_task("rte", raw, FILE), key) == value


@pytest.mark.parametrize("changes, field", [
    ({"loss_weight": -1.5}, "field 'loss_weight': must be >= 0 (0 leaves the task out of the loss), got -1.5"),
    ({"head_dropout": -0.1}, "'head_dropout'"),
    ({"max_length": 7}, "'max_length'"),
])
def test_more_bad_task_numbers_name_file_task_and_field(changes, field):
    with pytest.raises(ConfigError) as err:
        parse_task("rte", {**CLS, **changes}, FILE)
    msg = str(err.value)
    assert FILE in msg and "'rte'" in msg and field in msg and "\n" not in msg
    parse_task("rte", {**CLS, "max_length": 8, "loss_weight": 0, "head_dropout": 0}, FILE)  # the edges are valid


@pytest.mark.parametrize("name", ["Rte", "RTE", "rte2B", "1rte", "_rte"])
def test_a_task_name_with_upper_case_or_not_starting_with_a_letter_is_refused(name):
    """docs/task-definitions.md: a lower-case letter, then lower-case letters, digits, _ or -;
    the message says both rules (a name starting with a digit broke only the unsaid one)."""
    with pytest.raises(ConfigError, match="a task name is a lower-case letter, then lower-case letters"):
        parse_task(name, CLS, FILE)


def test_the_environment_wins_over_the_files_data_dir(tmp_path, monkeypatch):
    """docs: --data-dir, else $MTSMART_DATA_DIR, else the file's data_dir, else its folder;
    here with a file that names a data_dir."""
    path = tmp_path / "tasks.yaml"
    path.write_text(yaml.safe_dump({"tasks": {"rte": CLS}, "data_dir": "mine"}), encoding="utf-8")
    task_file = load_task_file(str(path))
    monkeypatch.delenv("MTSMART_DATA_DIR", raising=False)
    assert resolve_data_dir(None, task_file) == str(tmp_path / "mine")
    monkeypatch.setenv("MTSMART_DATA_DIR", "/env")
    assert resolve_data_dir(None, task_file) == "/env"
    assert resolve_data_dir("/cli", task_file) == "/cli"


def test_a_head_is_reused_only_with_the_same_type_and_labels_in_order():
    """"""
    trained = parse_task("rte", CLS, FILE)
    check_same_head(parse_task("rte", {**CLS, "max_length": 64}, "other.yaml"), trained, "ckpt")
    flipped = parse_task("rte", {**CLS, "labels": ["not_entailment", "entailment"]}, "other.yaml")
    with pytest.raises(ConfigError, match="differs from the labels"):
        check_same_head(flipped, trained, "ckpt")
    regression = parse_task("rte", {**{k: v for k, v in CLS.items() if k not in ("label_field", "labels")},
                                    "type": "regression", "target_field": "label"}, "other.yaml")
    with pytest.raises(ConfigError, match="was trained as 'classification'"):
        check_same_head(regression, parse_task("rte", {**CLS, "labels": ["a", "b"]}, FILE), "ckpt")


def test_a_misspelled_per_task_smart_key_is_unknown_not_global(tmp_path):
    """'epsilion' is no global key: "cannot be set per task" would send the user to the
    training block; a global key in a task's block still gets that answer."""
    path = write_yaml(tmp_path, {"tasks": {"rte": spec(CLS, smart={"epsilion": 0.1})}})
    with pytest.raises(ConfigError) as err:
        load_task_file(path)
    assert_names(err, path, "'rte'", "unknown key 'epsilion' (did you mean 'epsilon'?)")
    path = write_yaml(tmp_path, {"tasks": {"rte": spec(CLS, smart={"teacher_beta": 0.9})}})
    with pytest.raises(ConfigError, match="'teacher_beta' cannot be set per task"):
        load_task_file(path)


def test_an_unknown_task_key_set_on_the_command_line_names_the_override(tmp_path):
    path = write_yaml(tmp_path, GOOD)
    for key_path, text in ((["tasks", "rte", "lables"], "tasks.rte.lables=3"),
                           (["tasks", "rte", "smart", "epsilion"], "tasks.rte.smart.epsilion=3")):
        with pytest.raises(ConfigError) as err:
            load_task_file(path, [(key_path, 3, text)])
        assert str(err.value).endswith(f"(set by {text})"), err.value
