"""Typed, frozen run configuration: loading from YAML mappings, overrides, validation.

Does: turn plain mappings (from YAML or the command line) into frozen dataclasses,
rejecting unknown keys and wrong types with one line that names the file and the key.
Must not import torch, transformers or any other mtsmart module but ``errors``.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field, fields, is_dataclass, replace
from typing import Any, Literal, Mapping, Optional, Sequence, Union

import yaml

from mtsmart.errors import ConfigError

SMART_MODES = ("off", "adversarial", "bregman", "full")
SAMPLERS = ("proportional", "temperature", "uniform", "annealed")
NORMS = ("inf", "l2")
PRECISIONS = ("fp32", "bf16", "fp16")
LR_SCHEDULES = ("linear", "cosine", "constant")
# Which weights of a checkpoint to run: the trained model, or SMART's mean teacher saved
# beside it (with the Bregman term on).
CHECKPOINT_WEIGHTS = ("student", "teacher")
# Training settings that change how a run runs and reports, not what it computes: a
# resumed run may set them anew, and `mtsmart summarize` groups runs across them. A larger
# patience trains a run that stopped early on from its stop; gradient checkpointing trades
# memory for time and leaves the gradients as they were.
RUN_ONLY_SETTINGS = ("num_threads", "eval_batch_size", "eval_every", "eval_teacher", "log_every",
                     "keep_last", "patience", "gradient_checkpointing")


# The settings `adapt` sets for each of its runs (adaptation.run_adaptation), and why a
# value the user gives for one would do nothing: its command line refuses them.
ADAPT_SETS_PER_RUN = {
    "seed": "each run's seed is one of --seeds",
    "max_steps": "each run's updates come from --epochs and --min-steps",
    "eval_every": "each run is evaluated once, at its end",
    "patience": "each run is evaluated once, at its end",
    "eval_teacher": "it scores the student only",
    "save_checkpoints": "it keeps no checkpoints",
    "keep_last": "it keeps no checkpoints",
}


@dataclass(frozen=True)
class SmartConfig:
    """SMART settings (see docs/smart.md). Names are the YAML keys.

    ``adv_weight`` is λ_s, ``prox_weight`` μ, ``epsilon`` ε, ``noise_std`` σ,
    ``step_size`` η, ``num_steps`` K; ``teacher_beta`` is β after the first
    ``teacher_early_fraction`` of the updates, ``teacher_beta_early`` before.
    """

    mode: Literal["off", "adversarial", "bregman", "full"] = "off"
    # The defaults are the recipe measured on the project's benchmark (docs/smart.md,
    # "Defaults"); the paper's values are the `paper` preset. The weights are below the
    # paper's 1 because 0.3 lost less on the small classification tasks, and averaged
    # higher over the benchmark, with and without the encoder's dropout.
    adv_weight: float = 0.3
    prox_weight: float = 0.3
    epsilon: float = 0.01
    noise_std: float = 5e-4
    step_size: float = 1.0
    num_steps: int = 1
    norm: Literal["inf", "l2"] = "l2"
    # epsilon, noise_std and step_size are multiplied by the encoder's mean per-token
    # word-embedding norm (in `norm`) when true, so one setting means the same on every
    # encoder.
    relative_to_embedding_norm: bool = True
    teacher_beta: float = 0.999
    teacher_beta_early: float = 0.99
    teacher_early_fraction: float = 0.1
    # Caps β at 1 − 1/(fraction·total updates) (see smart.teacher_momentum); None: fixed β.
    # With the paper's fixed 0.999 a run of a few hundred updates keeps its teacher at the
    # random starting head (at chance on RTE), an anchor that pulls toward uniform outputs.
    teacher_horizon_fraction: Optional[float] = 0.1
    # The Bregman weight ramps linearly from 0 to prox_weight over this fraction of the
    # updates: a teacher that is still the random head is no anchor worth pulling to.
    prox_warmup_fraction: float = 0.1
    # Run each SMART batch in two halves, each back-propagated before the next is built:
    # two half-batch graphs hold about what plain training's one graph holds (peak 1.14×
    # plain instead of 2×, for about 3% more time). Same objective; dropout masks and the
    # starting noise are drawn per half.
    memory_efficient: bool = False
    # The perturbed passes (ascent and R_s) reuse the clean pass's dropout masks, so R_s
    # measures what the perturbation changes. With independent masks (false) R_s also
    # penalises two dropout samples' disagreement, which dominates it at small ε.
    same_dropout_masks: bool = False

    @property
    def use_adversarial(self) -> bool:
        return self.mode in ("adversarial", "full") and self.adv_weight > 0

    @property
    def use_bregman(self) -> bool:
        return self.mode in ("bregman", "full") and self.prox_weight > 0


# The knobs of each SMART term (their weights apart): what a run that does not run the
# term leaves unused.
ADVERSARIAL_KEYS = ("epsilon", "noise_std", "step_size", "num_steps", "norm", "relative_to_embedding_norm",
                    "same_dropout_masks", "memory_efficient")
BREGMAN_KEYS = ("prox_warmup_fraction", "teacher_beta", "teacher_beta_early", "teacher_early_fraction",
                "teacher_horizon_fraction")

# The fields a task may override: every knob but the teacher's momentum schedule, which
# belongs to the one teacher every task shares.
PER_TASK_SMART_KEYS = (
    "mode",
    "adv_weight",
    "prox_weight",
    "prox_warmup_fraction",
    "epsilon",
    "noise_std",
    "step_size",
    "num_steps",
    "norm",
    "relative_to_embedding_norm",
    "same_dropout_masks",
    "memory_efficient",
)

SMART_PRESETS: dict[str, dict[str, Any]] = {
    # Jiang et al. 2020, section 4.1.
    "paper": dict(
        adv_weight=1.0,
        prox_weight=1.0,
        epsilon=1e-5,
        noise_std=1e-5,
        step_size=1e-3,
        num_steps=1,
        norm="inf",
        relative_to_embedding_norm=False,
        teacher_beta=0.999,
        teacher_beta_early=0.99,
        teacher_early_fraction=0.1,
        teacher_horizon_fraction=None,
        prox_warmup_fraction=0.0,
    ),
}


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with linear warm-up and decay."""

    lr: float = 5e-5
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_fraction: float = 0.1
    # after the warm-up: linear decay to 0, cosine decay to 0, or constant
    schedule: Literal["linear", "cosine", "constant"] = "linear"
    max_grad_norm: float = 1.0
    # Layer-wise decay: layer i of L trains at layer_decay^(L + 1 − i) times lr, the
    # embeddings at layer_decay^(L + 1), the heads at lr (mtsmart/optim.py). 1 is off.
    layer_decay: float = 1.0
    head_lr_scale: float = 1.0  # the heads' rate is lr times this
    fused: bool = True  # use torch's fused AdamW kernel where the device supports it


@dataclass(frozen=True)
class SamplerConfig:
    """How the next task is chosen. p_k ∝ n_k·w_k (proportional), (n_k·w_k)^(1/T)
    (temperature), w_k (uniform), or n_k^α·w_k with α annealed from 1 to
    ``anneal_final_alpha`` over training (annealed)."""

    name: Literal["proportional", "temperature", "uniform", "annealed"] = "proportional"
    temperature: float = 2.0
    anneal_final_alpha: float = 0.0


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs besides the task definitions."""

    encoder: str = "sentence-transformers/all-MiniLM-L6-v2"
    num_hidden_layers: Optional[int] = None  # truncate the encoder (fast smoke runs)
    trust_remote_code: bool = False
    # How the encoder output becomes one vector per example: "mean" (mean over real
    # tokens), "cls" (first token) or "pooler" (the encoder's own pooler; what export
    # needs). Mean by default: on RTE with all-MiniLM-L6-v2 it gave 59.6% dev accuracy
    # against 54.2% (pooler) and 53.8% (cls), see docs/RESULTS.md.
    pooling: Literal["cls", "mean", "pooler"] = "mean"
    # Dropout inside the encoder (embeddings, attention, feed-forward); None keeps the
    # encoder's own (0.1 for BERT-like models). A head's dropout is the task's head_dropout.
    encoder_dropout: Optional[float] = None
    # Recompute each encoder layer in the backward pass instead of keeping its activations:
    # less memory for a longer step. SMART's perturbed passes keep activations too, so
    # this is what fits a large encoder on a small accelerator. The gradients are the same.
    gradient_checkpointing: bool = False
    batch_size: int = 32
    eval_batch_size: int = 64
    epochs: float = 3.0
    max_steps: Optional[int] = None  # optimizer updates; wins over epochs when set
    grad_accum_steps: int = 1
    seed: int = 1
    eval_every: int = 0  # optimizer updates between evaluations; 0 = end of each epoch
    log_every: int = 10
    select_metric: str = "average"  # "average" or "TASK/METRIC", e.g. "rte/accuracy"
    # Stop after this many evaluations in a row without a better selection score; None
    # trains to the end. The learning-rate schedule still spans the whole run, so
    # patience only cuts a run short, it never changes the steps taken before the stop.
    patience: Optional[int] = None
    length_grouped: bool = True
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    num_threads: Optional[int] = None
    eval_teacher: bool = True  # also score the SMART teacher at each evaluation
    save_checkpoints: bool = True  # false: metrics only (data-fraction grids)
    keep_last: int = 1  # resumable checkpoints kept: last/ plus N-1 in checkpoints/
    optim: OptimConfig = field(default_factory=OptimConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    smart: SmartConfig = field(default_factory=SmartConfig)


# ---------------------------------------------------------------------------------------
# Strict conversion from mappings


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp) if a is not type(None))
    if origin in (tuple, list):
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    return getattr(tp, "__name__", str(tp))


def coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and convert it (int → float, list →
    tuple, mapping → dataclass). Raises ConfigError naming ``where``."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        failures = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, where)
            except ConfigError as err:
                failures.append((arg, err))
        for arg, err in failures:
            # a mapping or list of the right shape: its own error names the bad element
            shape = typing.get_origin(arg)
            if ((shape is dict or is_dataclass(arg)) and isinstance(value, Mapping)) or \
                    (shape in (list, tuple) and isinstance(value, (list, tuple))):
                raise err
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value is False and "off" in allowed:  # YAML 1.1 reads a bare `off` as false
            value = "off"
        if value not in allowed:
            hint = ("; YAML reads a bare on/yes/true as true: quote the word" if isinstance(value, bool) else "")
            raise ConfigError(
                f"{where}: {value!r} is not valid (valid: {', '.join(map(str, allowed))}){hint}"
            )
        return value
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{where}: expected a list of {len(args)} numbers, got {value!r}")
        return tuple(coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin is list:
        (arg,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [coerce(v, arg, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        key_tp, value_tp = typing.get_args(tp)
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return {coerce(k, key_tp, f"{where} key"): coerce(v, value_tp, f"{where}.{k}")
                for k, v in value.items()}
    if is_dataclass(tp):
        if isinstance(value, tp):
            return value
        return from_mapping(tp, value, where)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):  # YAML 1.1 reads "1e-5" as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if number is None or not math.isfinite(number):
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        return number
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    if tp is Any:
        return value
    raise TypeError(f"unsupported annotation {tp!r} at {where}")


def from_mapping(cls: type, data: Any, where: str):
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping of settings, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in fields(cls)]
    unknown = [k for k in data if k not in names]
    if unknown:
        raise ConfigError(
            f"{where}: unknown key {unknown[0]!r}{_did_you_mean(cls, str(unknown[0]))} (valid: {', '.join(names)})"
        )
    required = [f.name for f in fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [name for name in required if name not in data]
    if missing:
        raise ConfigError(f"{where}: missing key {missing[0]!r} (required: {', '.join(required)})")
    kwargs = {k: coerce(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    return cls(**kwargs)


def _did_you_mean(cls: type, key: str) -> str:
    """A likely meant key: the same key one level down (``lr`` under training is
    ``optim.lr``), or a close spelling."""
    nested = [f"{name}.{key}" for name, hint in typing.get_type_hints(cls).items()
              if is_dataclass(hint) and key in {f.name for f in fields(hint)}]
    return did_you_mean(key, [f.name for f in fields(cls)], nested)


def did_you_mean(text: str, valid: list[str], likelier: list[str] = ()) -> str:
    """`` (did you mean 'x'?)`` for the first of ``likelier``, else the closest spelling
    among ``valid``; empty when nothing is close."""
    suggestion = (list(likelier) or difflib.get_close_matches(text, valid, n=1) or [""])[0]
    return f" (did you mean {suggestion!r}?)" if suggestion else ""


def parse_smart(data: Any, where: str, base: SmartConfig | None = None) -> SmartConfig:
    """A ``smart:`` block: an optional ``preset`` first, then explicit keys over it."""
    base = base or SmartConfig()
    if data is None:
        return base
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping of settings, got {data!r}")
    data = dict(data)
    preset = data.pop("preset", None)
    if preset is not None:
        if not isinstance(preset, str) or preset not in SMART_PRESETS:
            raise ConfigError(
                f"{where}.preset: unknown preset {preset!r} (valid: {', '.join(SMART_PRESETS)})"
            )
        base = replace(base, **SMART_PRESETS[preset])
    merged = {**dataclasses.asdict(base), **data}
    cfg = from_mapping(SmartConfig, merged, where)
    validate_smart(cfg, where)
    return cfg


def validate_smart(cfg: SmartConfig, where: str) -> None:
    for name in ("adv_weight", "prox_weight", "epsilon", "noise_std", "step_size"):
        if getattr(cfg, name) < 0:
            raise ConfigError(f"{where}.{name}: must be >= 0, got {getattr(cfg, name)}")
    if cfg.num_steps < 1:
        raise ConfigError(f"{where}.num_steps: must be >= 1, got {cfg.num_steps}")
    # a ramp longer than the run would never reach μ
    for name in ("prox_warmup_fraction", "teacher_beta", "teacher_beta_early", "teacher_early_fraction"):
        if not 0.0 <= getattr(cfg, name) <= 1.0:
            raise ConfigError(f"{where}.{name}: must be in [0, 1], got {getattr(cfg, name)}")
    if cfg.teacher_horizon_fraction is not None and not 0 < cfg.teacher_horizon_fraction <= 1:
        raise ConfigError(f"{where}.teacher_horizon_fraction: must be in (0, 1] or null")


def parse_train_config(data: Any, where: str) -> TrainConfig:
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping of settings, got {data!r}")
    data = dict(data)
    smart = parse_smart(data.pop("smart", None), f"{where}.smart")
    cfg = from_mapping(TrainConfig, {**data, "smart": smart}, where)
    validate_train(cfg, where)
    return cfg


def validate_train(cfg: TrainConfig, where: str) -> None:
    positive = ("batch_size", "eval_batch_size", "grad_accum_steps", "log_every", "keep_last")
    for name in positive:
        if getattr(cfg, name) < 1:
            raise ConfigError(f"{where}.{name}: must be >= 1, got {getattr(cfg, name)}")
    if cfg.num_threads is not None and cfg.num_threads < 1:
        raise ConfigError(f"{where}.num_threads: must be >= 1, got {cfg.num_threads} "
                          "(leave it unset for torch's default)")
    if cfg.num_hidden_layers is not None and cfg.num_hidden_layers < 1:
        raise ConfigError(f"{where}.num_hidden_layers: must be >= 1, got {cfg.num_hidden_layers} "
                          "(leave it unset to keep every layer)")
    if cfg.patience is not None and cfg.patience < 1:
        raise ConfigError(f"{where}.patience: must be >= 1 evaluation, got {cfg.patience} "
                          "(leave it unset to train to the end)")
    if cfg.max_steps is None and cfg.epochs <= 0:
        raise ConfigError(f"{where}.epochs: must be > 0 when max_steps is not set")
    if cfg.max_steps is not None and cfg.max_steps < 1:
        raise ConfigError(f"{where}.max_steps: must be >= 1, got {cfg.max_steps}")
    if cfg.eval_every < 0:
        raise ConfigError(f"{where}.eval_every: must be >= 0, got {cfg.eval_every}")
    if cfg.optim.lr <= 0:
        raise ConfigError(f"{where}.optim.lr: must be > 0, got {cfg.optim.lr}")
    if not 0 <= cfg.optim.warmup_fraction < 1:
        raise ConfigError(f"{where}.optim.warmup_fraction: must be in [0, 1)")
    if not 0 < cfg.optim.layer_decay <= 1:
        raise ConfigError(f"{where}.optim.layer_decay: must be in (0, 1] (1 is off), got {cfg.optim.layer_decay}")
    if cfg.optim.head_lr_scale <= 0:
        raise ConfigError(f"{where}.optim.head_lr_scale: must be > 0, got {cfg.optim.head_lr_scale}")
    if cfg.optim.max_grad_norm <= 0:  # clip_grad_norm_ with -1 flips every gradient, 0 zeroes them
        raise ConfigError(f"{where}.optim.max_grad_norm: must be > 0, got {cfg.optim.max_grad_norm}")
    if cfg.optim.weight_decay < 0:
        raise ConfigError(f"{where}.optim.weight_decay: must be >= 0, got {cfg.optim.weight_decay}")
    if len(cfg.optim.betas) != 2 or not all(0 <= beta < 1 for beta in cfg.optim.betas):
        raise ConfigError(f"{where}.optim.betas: two numbers in [0, 1), got {list(cfg.optim.betas)}")
    if cfg.optim.eps <= 0:
        raise ConfigError(f"{where}.optim.eps: must be > 0, got {cfg.optim.eps}")
    if not 0 <= cfg.seed < 2 ** 32:  # numpy's generators take no other seed
        raise ConfigError(f"{where}.seed: must be in [0, 2**32), got {cfg.seed}")
    if cfg.sampler.temperature <= 0:
        raise ConfigError(f"{where}.sampler.temperature: must be > 0")
    if cfg.encoder_dropout is not None and not 0 <= cfg.encoder_dropout < 1:
        raise ConfigError(f"{where}.encoder_dropout: must be in [0, 1) or null, "
                          f"got {cfg.encoder_dropout}")
    validate_smart(cfg.smart, f"{where}.smart")


# ---------------------------------------------------------------------------------------
# Command-line overrides: "training.optim.lr=2e-5", "tasks.rte.smart.adv_weight=0"


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` → (["a", "b", "c"], value), the value read as YAML. A bare key is a
    training setting: ``seed=3`` is ``training.seed=3``."""
    if "=" not in text:
        raise ConfigError(
            f"override {text!r}: expected KEY=VALUE, e.g. training.optim.lr=2e-5"
        )
    key, raw = text.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"override {text!r}: empty key")
    if parts[0] not in ("training", "tasks", "data_dir"):
        parts = ["training", *parts]
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return parts, value


def apply_override(tree: dict, path: list[str], value: Any, text: str) -> None:
    """Set ``tree[path[0]]...[path[-1]] = value``, creating mappings on the way.
    Unknown keys are caught later by the strict loaders, which name the full path."""
    node = tree
    for part in path[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"override {text!r}: {part!r} is not a mapping")
        node = child
    node[path[-1]] = value


class _StrictLoader(yaml.SafeLoader):
    """The safe loader, refusing duplicate keys: YAML keeps the last silently, which turns
    a copy-paste slip into a setting that does nothing."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r}", key_node.start_mark)
                seen.add(key)
            except TypeError:
                pass  # an unhashable key: the base class reports it
        return super().construct_mapping(node, deep=deep)


def load_yaml(path: str) -> Any:
    """Read a YAML file with the safe loader; one-line errors for missing or bad files."""
    try:
        with open(path, encoding="utf-8") as handle:
            return yaml.load(handle, Loader=_StrictLoader)
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, expected a YAML file") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not valid UTF-8 text ({err.reason} at byte {err.start})") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f": line {mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{path}{line}: invalid YAML: {problem}") from None


def differences(before: Any, after: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted key, before, after) for every leaf that differs between two plain nestings
    of dicts; a key on one side only counts as a difference (the other side is None)."""
    if isinstance(before, dict) and isinstance(after, dict):
        out = []
        for key in list(before) + [k for k in after if k not in before]:
            out += differences(before.get(key), after.get(key), f"{prefix}.{key}" if prefix else str(key))
        return out
    return [] if before == after else [(prefix, before, after)]


def settings_without_effect(training: Mapping[str, Any], task_smart: Sequence[Mapping[str, Any]]) -> set[str]:
    """The flattened keys of ``training`` (plain nested values) that do nothing in a run
    whose tasks' own smart: blocks are ``task_smart``: epochs beside max_steps, a sampler
    setting another sampler ignores, the knobs of a SMART term no task runs (the notes name
    them when they are given). Runs that differ only there are the same runs."""
    unused = {"epochs"} if training.get("max_steps") is not None else set()
    sampler = (training.get("sampler") or {}).get("name")
    unused |= {f"sampler.{key}" for key, name in (("temperature", "temperature"), ("anneal_final_alpha", "annealed"))
               if sampler != name}
    run_wide = training.get("smart") or {}
    known = {f.name for f in dataclasses.fields(SmartConfig)}  # plain settings may be older or newer
    smart = [SmartConfig(**{k: v for k, v in {**run_wide, **own}.items() if k in known})
             for own in task_smart or [{}]]
    if not any(cfg.use_adversarial for cfg in smart):
        unused |= {f"smart.{key}" for key in ("adv_weight", *ADVERSARIAL_KEYS)}
    if not any(cfg.use_bregman for cfg in smart):
        unused |= {f"smart.{key}" for key in ("prox_weight", *BREGMAN_KEYS)} | {"eval_teacher"}
    return unused


def flatten_settings(settings: Mapping[str, object], prefix: str = "") -> dict[str, object]:
    """Nested settings → {"optim.lr": 1e-4, "smart.mode": "full", ...}: numbers and strings
    as they are, booleans and lists as text (TensorBoard would show a boolean as 0 or 1);
    unset (None) values are left out."""
    flat: dict[str, object] = {}
    for key, value in settings.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_settings(value, f"{name}."))
        elif isinstance(value, bool):
            flat[name] = str(value).lower()
        elif isinstance(value, (list, tuple)):
            flat[name] = ", ".join(map(str, value))
        elif value is not None:
            flat[name] = value
    return flat


def to_plain(obj: Any) -> Any:
    """Dataclasses → plain dicts/lists for YAML or JSON."""
    if is_dataclass(obj):
        return {f.name: to_plain(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    return obj
