"""Task definitions: the ``tasks:`` block of a task-definition YAML file, validated into
frozen ``TaskDef`` objects, and the whole file (tasks + optional ``training:``) into a
``TaskFile``.

Does: schema and validation only; reading the data is ``data.py``'s job.
Must not import torch models, the trainer or the CLI.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping, Optional, Union

from mtsmart.config import (
    PER_TASK_SMART_KEYS,
    SmartConfig,
    TrainConfig,
    apply_override,
    coerce,
    did_you_mean,
    from_mapping,
    load_yaml,
    parse_train_config,
    validate_smart,
)
from mtsmart.errors import ConfigError
from mtsmart.task_types import TASK_TYPES, get_task_type

DATA_DIR_ENV = "MTSMART_DATA_DIR"
TASK_NAME = re.compile(r"^[a-z][a-z0-9_\-]*$")


@dataclass(frozen=True)
class FileSource:
    """A local tsv / csv / jsonl file. ``columns`` maps each field the task uses (its text
    fields and label or target field) to a column name or a 0-based index; negative
    indices count from the end (RTE's train file has a line with an extra field, so its
    label is best taken as the last one). Without ``columns`` the field names are the
    column names of the header (or the keys of each JSON object)."""

    path: str
    format: Optional[Literal["tsv", "csv", "jsonl"]] = None  # default: from the extension
    header: bool = True
    quoting: Literal["minimal", "none"] = "minimal"  # "none": quotes are plain text
    encoding: str = "utf-8-sig"  # utf-8-sig also reads files with or without a BOM
    columns: Optional[dict[str, Union[int, str]]] = None

    @property
    def resolved_format(self) -> str:
        if self.format:
            return self.format
        ext = os.path.splitext(self.path)[1].lower()
        return {".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl"}.get(ext, "tsv")

    def describe(self) -> str:
        return self.path


@dataclass(frozen=True)
class HubSource:
    """A Hugging Face dataset (needs network access or a local datasets cache)."""

    hub: str  # dataset path, e.g. "nyu-mll/glue"
    split: str
    name: Optional[str] = None  # configuration, e.g. "rte"
    revision: Optional[str] = None
    columns: Optional[dict[str, Union[int, str]]] = None

    def describe(self) -> str:
        return f"hub:{self.hub}/{self.name or ''}[{self.split}]"


Source = Union[FileSource, HubSource]


@dataclass(frozen=True)
class TaskDef:
    """One task: what to read, how to score it, and its per-task training settings."""

    name: str
    type: str
    text_fields: tuple[str, ...]
    splits: dict[str, Source]
    label_field: Optional[str] = None  # classification
    labels: Optional[tuple[str, ...]] = None  # classification, in head-output order
    target_field: Optional[str] = None  # regression
    metrics: tuple[str, ...] = ()
    main_metric: Optional[str] = None  # for model selection; default: the first metric
    train_split: str = "train"
    eval_split: str = "dev"
    max_length: int = 128
    sampling_weight: float = 1.0
    loss_weight: float = 1.0
    head_dropout: float = 0.1
    # classification: a weight per label (in ``labels`` order) for the cross-entropy, or
    # "balanced" (n / (classes · n_class), from the training split actually used)
    class_weights: Optional[Union[str, tuple[float, ...]]] = None
    smart: dict[str, Any] = field(default_factory=dict)  # per-task SmartConfig overrides
    defined_in: str = ""  # the YAML file, for error messages

    @property
    def task_type(self):
        return get_task_type(self.type)

    @property
    def target_column(self) -> str:
        return self.label_field if self.type == "classification" else self.target_field

    @property
    def fields_used(self) -> tuple[str, ...]:
        return self.text_fields + (self.target_column,)

    @property
    def selection_metric(self) -> str:
        return self.main_metric or self.metrics[0]

    def smart_config(self, global_cfg: SmartConfig) -> SmartConfig:
        """The global SMART settings with this task's overrides applied."""
        if not self.smart:
            return global_cfg
        cfg = dataclasses.replace(global_cfg, **self.smart)
        validate_smart(cfg, f"{self.defined_in}: task {self.name!r}: smart")
        return cfg

    def where(self, key: str = "") -> str:
        suffix = f": field {key!r}" if key else ""
        return f"{self.defined_in}: task {self.name!r}{suffix}"


_TASK_KEYS = [f.name for f in dataclasses.fields(TaskDef) if f.name not in ("name", "defined_in")]


def _parse_source(raw: Any, where: str) -> Source:
    if isinstance(raw, str):
        raw = {"path": raw}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: expected a file path or a mapping with 'path' or 'hub'")
    if "hub" in raw and "path" in raw:
        raise ConfigError(f"{where}: give 'path' (a local file) or 'hub' (a dataset), not both")
    if "hub" in raw:
        return from_mapping(HubSource, raw, where)
    if "path" in raw:
        return from_mapping(FileSource, raw, where)
    raise ConfigError(f"{where}: a data source needs 'path' (a local file) or 'hub' (a dataset)")


def _parse_class_weights(raw: Any, labels: tuple[str, ...], where: str) -> Union[str, tuple[float, ...]]:
    where = f"{where}: field 'class_weights'"
    if raw == "balanced":
        return raw
    valid = f"'balanced' or a list of {len(labels)} positive numbers, one per label ({', '.join(labels)})"
    if not isinstance(raw, list) or len(raw) != len(labels):
        raise ConfigError(f"{where}: expected {valid}, got {raw!r}")
    if not all(isinstance(w, (int, float)) and not isinstance(w, bool)
               and math.isfinite(w) and w > 0 for w in raw):
        raise ConfigError(f"{where}: expected {valid}, got {raw!r}")
    return tuple(float(w) for w in raw)


def parse_task(name: str, raw: Any, defined_in: str) -> TaskDef:
    where = f"{defined_in}: task {name!r}"
    if not TASK_NAME.match(str(name)):
        raise ConfigError(f"{where}: a task name is a lower-case letter, then lower-case letters, digits, "
                          "'_' or '-'")
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: expected a mapping of settings")
    unknown = [k for k in raw if k not in _TASK_KEYS]
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}{did_you_mean(str(unknown[0]), _TASK_KEYS)} "
                          f"(valid: {', '.join(_TASK_KEYS)})")
    for required in ("type", "text_fields", "splits"):
        if required not in raw:
            raise ConfigError(f"{where}: missing required key {required!r}")
    task_type_name = raw["type"]
    if not isinstance(task_type_name, str) or task_type_name not in TASK_TYPES:
        raise ConfigError(
            f"{where}: field 'type': {task_type_name!r} is not a task type "
            f"(valid: {', '.join(TASK_TYPES)})"
        )
    task_type = get_task_type(task_type_name)

    text_fields = raw["text_fields"]
    if isinstance(text_fields, str):
        text_fields = [text_fields]
    if (not isinstance(text_fields, list) or not 1 <= len(text_fields) <= 2
            or not all(isinstance(f, str) for f in text_fields)):
        raise ConfigError(f"{where}: field 'text_fields': expected one or two field names")
    if len(set(text_fields)) != len(text_fields):
        raise ConfigError(f"{where}: field 'text_fields': {text_fields[0]!r} twice; a pair needs two fields")

    splits_raw = raw["splits"]
    if not isinstance(splits_raw, Mapping) or not splits_raw:
        raise ConfigError(f"{where}: field 'splits': expected a mapping of split name to source")
    splits = {str(s): _parse_source(src, f"{where}: split {s!r}") for s, src in splits_raw.items()}

    kwargs: dict[str, Any] = dict(
        name=name, type=task_type_name, text_fields=tuple(text_fields), splits=splits,
        defined_in=defined_in,
    )
    type_hints = typing.get_type_hints(TaskDef)
    for key in ("label_field", "target_field", "main_metric", "train_split", "eval_split",
                "max_length", "sampling_weight", "loss_weight", "head_dropout"):
        if key in raw:
            kwargs[key] = coerce(raw[key], type_hints[key], f"{where}: field {key!r}")
    for key in ("label_field", "target_field"):
        if kwargs.get(key) in text_fields:
            raise ConfigError(f"{where}: field {key!r}: {kwargs[key]!r} is also a text field; the "
                              "target is read from its own column")

    if task_type_name == "classification":
        if "target_field" in raw:
            raise ConfigError(f"{where}: 'target_field' is for regression tasks; "
                              "classification tasks use 'label_field' and 'labels'")
        if "label_field" not in raw or "labels" not in raw:
            raise ConfigError(f"{where}: classification tasks need 'label_field' and 'labels'")
        labels = raw["labels"]
        if not isinstance(labels, list) or len(labels) < 2:
            raise ConfigError(f"{where}: field 'labels': expected a list of at least two labels")
        if any(label is None or label == "" for label in labels):
            raise ConfigError(f"{where}: field 'labels': an empty label (YAML reads ~ and a bare - "
                              "entry as null); give every label a name")
        if any(isinstance(label, bool) for label in labels):
            raise ConfigError(f"{where}: field 'labels': YAML reads yes/no/on/off/true/false as "
                              "booleans; quote such labels, e.g. labels: ['yes', 'no']")
        labels = tuple(str(label) for label in labels)
        if len(set(labels)) != len(labels):
            raise ConfigError(f"{where}: field 'labels': labels must be distinct")
        kwargs["labels"] = labels
        if "class_weights" in raw:
            kwargs["class_weights"] = _parse_class_weights(raw["class_weights"], labels, where)
    else:
        if "class_weights" in raw:
            raise ConfigError(f"{where}: field 'class_weights' is for classification tasks")
        if "labels" in raw or "label_field" in raw:
            raise ConfigError(f"{where}: regression tasks use 'target_field', not 'label_field'/'labels'")
        if "target_field" not in raw:
            raise ConfigError(f"{where}: regression tasks need 'target_field'")

    metrics = raw.get("metrics", list(task_type.default_metrics))
    if isinstance(metrics, str):
        metrics = [metrics]
    if not isinstance(metrics, list) or not metrics:
        raise ConfigError(f"{where}: field 'metrics': expected a non-empty list")
    for metric in metrics:
        if not isinstance(metric, str) or metric not in task_type.metric_table:
            raise ConfigError(
                f"{where}: field 'metrics': {metric!r} is not a {task_type_name} metric "
                f"(valid: {', '.join(task_type.metric_table)})"
            )
    if len(set(metrics)) != len(metrics):
        raise ConfigError(f"{where}: field 'metrics': {next(m for m in metrics if metrics.count(m) > 1)!r} twice")
    kwargs["metrics"] = tuple(metrics)
    main_metric = kwargs.get("main_metric")
    if main_metric is not None and main_metric not in metrics:
        raise ConfigError(
            f"{where}: field 'main_metric': {main_metric!r} is not one of the task's metrics "
            f"(valid: {', '.join(metrics)})"
        )

    smart = raw.get("smart")
    smart = {} if smart is None else smart  # an empty list or 0 is a mistake, not "no overrides"
    if not isinstance(smart, Mapping):
        raise ConfigError(f"{where}: field 'smart': expected a mapping of SMART settings")
    for key in smart:
        if key not in PER_TASK_SMART_KEYS:
            # a global key is a misplaced setting; anything else, most likely a typo
            what = (f"{key!r} cannot be set per task" if key in (f.name for f in dataclasses.fields(SmartConfig))
                    else f"unknown key {key!r}{did_you_mean(str(key), list(PER_TASK_SMART_KEYS))}")
            raise ConfigError(
                f"{where}: field 'smart': {what} "
                f"(per-task keys: {', '.join(PER_TASK_SMART_KEYS)}; the rest is global)"
            )
    smart_hints = typing.get_type_hints(SmartConfig)
    kwargs["smart"] = {k: coerce(v, smart_hints[k], f"{where}: smart.{k}") for k, v in smart.items()}

    task = TaskDef(**kwargs)
    for split_name, src in splits.items():
        for column_key in src.columns or {}:
            if column_key not in task.fields_used:  # a typo would silently be ignored
                raise ConfigError(
                    f"{where}: split {split_name!r}: field 'columns': {column_key!r} is not a "
                    f"field of the task (fields: {', '.join(task.fields_used)})"
                )
    if task.max_length < 8:
        raise ConfigError(f"{where}: field 'max_length': must be at least 8")
    for key in ("sampling_weight", "loss_weight"):
        if getattr(task, key) < 0:
            raise ConfigError(f"{where}: field {key!r}: must be >= 0 (0 leaves the task out of "
                              f"{'the draws' if key == 'sampling_weight' else 'the loss'}), got {getattr(task, key):g}")
    if not 0 <= task.head_dropout < 1:
        raise ConfigError(f"{where}: field 'head_dropout': must be in [0, 1)")
    task.smart_config(SmartConfig())  # validates the override values
    return task


@dataclass(frozen=True)
class TaskFile:
    """A parsed task-definition file: its tasks, its training settings, its data dir."""

    path: str
    tasks: dict[str, TaskDef]
    training: TrainConfig
    data_dir: Optional[str]


def load_task_file(path: str, overrides: list[tuple[list[str], Any, str]] = ()) -> TaskFile:
    """Read and validate a task-definition file, applying command-line overrides.

    Args:
        path: the YAML file.
        overrides: (key path, value, original text) triples, e.g. from
            ``config.parse_override``; paths start with ``training`` or ``tasks``.
    Raises:
        ConfigError: unknown keys, wrong types, no tasks, bad overrides.
    """
    raw = load_yaml(path)
    if raw is None:
        raise ConfigError(f"{path}: the file is empty (expected a 'tasks:' mapping)")
    return build_task_file(raw, path, overrides)


def build_task_file(raw: Any, path: str, overrides: list[tuple[list[str], Any, str]] = ()) -> TaskFile:
    """Validate an already-read task-definition mapping; ``path`` names it in errors."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with 'tasks:' at the top level")
    set_by: dict[tuple[str, ...], str] = {}
    for key_path, value, text in overrides:
        tasks = raw.get("tasks")
        if (key_path[0] == "tasks" and len(key_path) > 2 and isinstance(tasks, dict)
                and key_path[1] not in tasks):
            # a typo in the task's name would otherwise read as a new task missing its 'type'
            raise ConfigError(f"{text}: no task {key_path[1]!r} in {path} (tasks: {', '.join(map(str, tasks))})")
        apply_override(raw, key_path, value, text)
        set_by[tuple(key_path)] = text  # a later override wins, and is the one to blame
    try:
        return _validate_task_file(raw, path)
    except ConfigError as error:
        raise _name_the_override(error, set_by) from None


def _name_the_override(error: ConfigError, set_by: dict[tuple[str, ...], str]) -> ConfigError:
    """An invalid value that came from a flag, KEY=VALUE or --config says so: the error
    names the task file, which alone would send the user to a file that does not hold it."""
    message = str(error)
    for key_path, text in set_by.items():
        if key_path[0] == "tasks" and len(key_path) > 2:
            # Only the start of the task's own complaint counts: its list of valid keys
            # may name a key that an override set correctly.
            _, marker, complaint = message.partition(f"task {key_path[1]!r}: ")
            rest = key_path[2:]
            named = bool(marker) and (
                complaint.startswith((f"{'.'.join(rest)}:", f"{rest[0]} ", f"unknown key {rest[0]!r}"))
                or (complaint.startswith(f"field {rest[0]!r}")
                    and (len(rest) == 1 or f"{rest[-1]!r}" in complaint)))
        else:
            named = (f"{'.'.join(key_path)}:" in message
                     or f"{'.'.join(key_path[:-1])}: unknown key {key_path[-1]!r}" in message)
        if named:
            return ConfigError(f"{message} (set by {text})")
    return error


def _validate_task_file(raw: dict, path: str) -> TaskFile:
    allowed = ("tasks", "training", "data_dir")
    unknown = [k for k in raw if k not in allowed]
    if unknown:
        raise ConfigError(f"{path}: unknown top-level key {unknown[0]!r}"
                          f"{did_you_mean(str(unknown[0]), list(allowed))} (valid: {', '.join(allowed)})")
    tasks_raw = raw.get("tasks")
    if not isinstance(tasks_raw, Mapping) or not tasks_raw:
        raise ConfigError(f"{path}: 'tasks' must be a non-empty mapping of task name to definition")
    tasks = {str(name): parse_task(str(name), spec, path) for name, spec in tasks_raw.items()}
    training = parse_train_config(raw.get("training"), f"{path}: training")
    data_dir = raw.get("data_dir")
    if data_dir is not None and not isinstance(data_dir, str):
        raise ConfigError(f"{path}: 'data_dir' must be a path")
    if data_dir is not None and not os.path.isabs(data_dir):
        data_dir = os.path.join(os.path.dirname(os.path.abspath(path)), data_dir)
    return TaskFile(path=path, tasks=tasks, training=training, data_dir=data_dir)


def resolve_data_dir(cli_value: Optional[str], task_file: TaskFile, checkpoint_data: Optional[str] = None) -> str:
    """--data-dir, else $MTSMART_DATA_DIR, else the file's ``data_dir``, else (a file
    standing in for a checkpoint's tasks) the folder the checkpoint's run read, else the
    directory that holds the task file."""
    return (cli_value or os.environ.get(DATA_DIR_ENV) or task_file.data_dir or checkpoint_data
            or os.path.dirname(os.path.abspath(task_file.path)))


def check_same_head(task: TaskDef, trained: TaskDef, checkpoint: str) -> None:
    """``task`` may stand in for the checkpoint's ``trained`` definition (other data,
    fields or lengths) only if the head's outputs mean the same: type and labels in order."""
    if task.type != trained.type:
        raise ConfigError(f"{task.where('type')}: {task.type!r}, but the head for {task.name!r} in "
                          f"{checkpoint} was trained as {trained.type!r}")
    if task.labels != trained.labels:
        raise ConfigError(f"{task.where('labels')}: [{', '.join(task.labels)}] differs from the labels "
                          f"the head in {checkpoint} was trained with, in its output order: "
                          f"[{', '.join(trained.labels)}]")


def select_tasks(tasks: dict[str, TaskDef], names: Optional[str], where: str,
                 elsewhere: str = "") -> dict[str, TaskDef]:
    """Keep the comma-separated subset ``names`` (all when None), in the given order.
    ``elsewhere``: where a task missing here may be defined, said when one is."""
    if not names:
        return dict(tasks)
    chosen = [n.strip() for n in names.split(",") if n.strip()]
    if not chosen:
        raise ConfigError(f"{where}: no task names in {names!r} (tasks: {', '.join(tasks)})")
    for name in chosen:
        if name not in tasks:
            raise ConfigError(f"{where}: no task {name!r}{did_you_mean(name, list(tasks))} (tasks: "
                              f"{', '.join(tasks)}){elsewhere}")
    return {name: tasks[name] for name in chosen}


def task_to_plain(task: TaskDef) -> dict[str, Any]:
    """The YAML form of a task, as written into checkpoints."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(TaskDef):
        if f.name in ("name", "defined_in"):
            continue
        value = getattr(task, f.name)
        if value is None or (f.name == "smart" and not value):
            continue
        if f.name == "splits":
            value = {s: {k: v for k, v in dataclasses.asdict(src).items() if v is not None}
                     for s, src in value.items()}
        elif isinstance(value, tuple):
            value = list(value)
        out[f.name] = value
    return out
