"""Command line: ``mtsmart train | evaluate | predict | finetune | adapt | export | compare |
summarize``. The only reader of sys.argv.

Every user error ends as one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from typing import Any, Optional, Sequence

from mtsmart.config import (CHECKPOINT_WEIGHTS, LR_SCHEDULES, NORMS, PRECISIONS, SAMPLERS, SMART_MODES,
                            ADAPT_SETS_PER_RUN, RUN_ONLY_SETTINGS, SMART_PRESETS, SamplerConfig, SmartConfig, load_yaml,
                            parse_override)
from mtsmart.errors import ConfigError, MtsmartError
from mtsmart.setting_notes import note_unused_settings

EXIT_USAGE = 2

# Command-line flag → (config path, type). Flags win over the YAML and KEY=VALUE overrides.
TRAIN_FLAGS: dict[str, tuple[str, type]] = {
    "encoder": ("training.encoder", str),
    "num_hidden_layers": ("training.num_hidden_layers", int),
    "pooling": ("training.pooling", str),
    "encoder_dropout": ("training.encoder_dropout", float),
    "gradient_checkpointing": ("training.gradient_checkpointing", bool),
    "max_steps": ("training.max_steps", int),
    "epochs": ("training.epochs", float),
    "batch_size": ("training.batch_size", int),
    "grad_accum_steps": ("training.grad_accum_steps", int),
    "lr": ("training.optim.lr", float),
    "lr_schedule": ("training.optim.schedule", str),
    "layer_decay": ("training.optim.layer_decay", float),
    "head_lr_scale": ("training.optim.head_lr_scale", float),
    "seed": ("training.seed", int),
    "eval_every": ("training.eval_every", int),
    "select_metric": ("training.select_metric", str),
    "patience": ("training.patience", int),
    "sampler": ("training.sampler.name", str),
    "precision": ("training.precision", str),
    "num_threads": ("training.num_threads", int),
    "keep_last": ("training.keep_last", int),
    "trust_remote_code": ("training.trust_remote_code", bool),
    "smart": ("training.smart.mode", str),
    "adv_weight": ("training.smart.adv_weight", float),
    "prox_weight": ("training.smart.prox_weight", float),
    "epsilon": ("training.smart.epsilon", float),
    "noise_std": ("training.smart.noise_std", float),
    "step_size": ("training.smart.step_size", float),
    "num_steps": ("training.smart.num_steps", int),
    "norm": ("training.smart.norm", str),
    "teacher_beta": ("training.smart.teacher_beta", float),
    "teacher_beta_early": ("training.smart.teacher_beta_early", float),
    "teacher_early_fraction": ("training.smart.teacher_early_fraction", float),
    "prox_warmup_fraction": ("training.smart.prox_warmup_fraction", float),
    "teacher_horizon_fraction": ("training.smart.teacher_horizon_fraction", float),
    "relative_epsilon": ("training.smart.relative_to_embedding_norm", bool),
    "same_dropout_masks": ("training.smart.same_dropout_masks", bool),
    "memory_efficient": ("training.smart.memory_efficient", bool),
}


def check_writable(path: str, flag: str = "--out") -> None:
    """Refuse an output path that cannot be written, before any work: a file where a folder
    would have to be, or a folder this process may not write in."""
    ancestor = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(ancestor):
        ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor):
        raise ConfigError(f"{flag} {path}: cannot write there ({ancestor} is a file)")
    if not os.access(ancestor, os.W_OK):
        raise ConfigError(f"{flag} {path}: cannot write there (no permission in {ancestor})")


def positive_int(text: str) -> int:
    """An argparse type: a whole number >= 1 (a batch of 0 would loop forever or crash)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line and exit 2, like every other error
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


class VersionAction(argparse.Action):
    """``--version``: mtsmart's version and those of the libraries that can change a result,
    the lines a bug report needs (the same ones every run records in run.json)."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, **kwargs: Any):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *args: Any) -> None:
        from mtsmart.provenance import software_versions  # imports torch: only when asked
        versions = software_versions()
        others = ", ".join(f"{name} {version}" for name, version in versions.items() if name != "mtsmart")
        print(f"mtsmart {versions['mtsmart']} ({others})")  # stdout, as argparse's own version action
        parser.exit(0)


def add_smart_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "SMART (see docs/smart.md; flags override training.smart; a task's own smart: keys "
        "win for that task, with a note naming it)")
    group.add_argument("--smart", choices=SMART_MODES,
                       help="which SMART terms to use: off (plain fine-tuning), adversarial "
                            "(λ_s·R_s only), bregman (μ·D_Breg only) or full")
    group.add_argument("--smart-preset", choices=sorted(SMART_PRESETS),
                       help="replace the task file's (or the checkpoint's) SMART settings with a named "
                            "preset (paper: Jiang et al. 2020); flags and KEY=VALUE still win over it")
    default = SmartConfig()  # the help shows the defaults: several differ from the paper's
    group.add_argument("--adv-weight", type=float, metavar="λ_s",
                       help=f"weight of the adversarial term (default {default.adv_weight:g})")
    group.add_argument("--prox-weight", type=float, metavar="μ",
                       help=f"weight of the Bregman term (default {default.prox_weight:g})")
    group.add_argument("--epsilon", type=float, metavar="ε",
                       help=f"radius of each token's perturbation ball (default {default.epsilon:g})")
    group.add_argument("--noise-std", type=float, metavar="σ",
                       help=f"std of the initial noise (default {default.noise_std:g})")
    group.add_argument("--step-size", type=float, metavar="η", help=f"ascent step size (default {default.step_size:g})")
    group.add_argument("--num-steps", type=int, metavar="K", help=f"ascent steps (default {default.num_steps})")
    group.add_argument("--norm", choices=NORMS,
                       help=f"per-token norm for normalisation and projection (default {default.norm})")
    group.add_argument("--teacher-beta", type=float, metavar="β",
                       help=f"teacher momentum after the early phase (default {default.teacher_beta:g})")
    group.add_argument("--teacher-beta-early", type=float, metavar="β0",
                       help=f"teacher momentum during the early phase (default {default.teacher_beta_early:g})")
    group.add_argument("--teacher-early-fraction", type=float, metavar="F",
                       help=f"the early phase: this fraction of the updates (default {default.teacher_early_fraction:g})")
    group.add_argument("--prox-warmup-fraction", type=float, metavar="F",
                       help=f"ramp μ from 0 over this fraction of the updates (default {default.prox_warmup_fraction:g})")
    group.add_argument("--teacher-horizon-fraction", type=float, metavar="H",
                       help="cap β at 1 - 1/(H x total updates): the teacher averages over ~H of the run "
                            f"(default {default.teacher_horizon_fraction:g}; "
                            "training.smart.teacher_horizon_fraction=null: no cap)")
    group.add_argument("--relative-epsilon", action=argparse.BooleanOptionalAction, default=None,
                       help="measure ε, σ and η in units of the mean per-token word-embedding norm "
                            f"(default: {'on' if default.relative_to_embedding_norm else 'off'})")
    group.add_argument("--same-dropout-masks", action=argparse.BooleanOptionalAction, default=None,
                       help="run the perturbed passes with the clean pass's dropout masks "
                            f"(default: {'on' if default.same_dropout_masks else 'off'})")
    group.add_argument("--memory-efficient", action=argparse.BooleanOptionalAction, default=None,
                       help="run each batch with the adversarial term in two halves: about 1.14x "
                            "plain's peak memory instead of 2x, for about 3%% more time "
                            f"(default: {'on' if default.memory_efficient else 'off'})")


def add_common_training_flags(parser: argparse.ArgumentParser) -> None:
    """Flags shared by train, finetune and adapt."""
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="override any setting, e.g. training.optim.weight_decay=0 or "
                             "tasks.rte.max_length=256 (bare keys mean training.KEY)")
    parser.add_argument("--config", metavar="FILE",
                        help="a YAML file of training settings (a 'training:' mapping), "
                             "applied over the task file's own")
    parser.add_argument("--data-dir", metavar="DIR",
                        help="where data paths are relative to (default: $MTSMART_DATA_DIR, the "
                             "file's data_dir, or the task file's directory)")
    parser.add_argument("--num-hidden-layers", type=int, metavar="N",
                        help="keep only the first N encoder layers of a raw encoder (fast smoke runs); "
                             "a checkpoint keeps its own")
    parser.add_argument("--pooling", choices=("cls", "mean", "pooler"),
                        help="one vector per example from the encoder: first token, mean of "
                             "tokens, or the encoder's pooler (needed by export); a checkpoint keeps its own")
    parser.add_argument("--encoder-dropout", type=float, metavar="P",
                        help="dropout inside the encoder (default: the encoder's own, 0.1 for "
                             "BERT-like models); heads keep their task's head_dropout")
    parser.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=None,
                        help="recompute encoder activations in the backward pass: less memory, "
                             "a slower step, the same gradients")
    parser.add_argument("--max-steps", type=int, metavar="N", help="optimizer updates (wins over --epochs)")
    parser.add_argument("--epochs", type=float, metavar="N",
                        help="passes over the training data (one pass = every task's batches once); "
                             "given alone, it clears an inherited max_steps")
    parser.add_argument("--batch-size", type=int, metavar="N",
                        help="examples per micro-batch, summed over all processes under torchrun")
    parser.add_argument("--grad-accum-steps", type=int, metavar="N",
                        help="micro-batches per optimizer update")
    parser.add_argument("--lr", type=float, metavar="X", help="peak learning rate")
    parser.add_argument("--lr-schedule", choices=LR_SCHEDULES,
                        help="after the warm-up: linear decay to 0 (default), cosine decay to 0, or constant")
    parser.add_argument("--layer-decay", type=float, metavar="D",
                        help="layer-wise learning-rate decay: layer i of L trains at lr·D^(L+1−i), "
                             "the embeddings at lr·D^(L+1), the heads at lr (default 1: off)")
    parser.add_argument("--head-lr-scale", type=float, metavar="S",
                        help="the task heads train at S times the learning rate (default 1)")
    parser.add_argument("--seed", type=int, metavar="N",
                        help="seeds initialisation, data order, task order, dropout and noise")
    parser.add_argument("--eval-every", type=int, metavar="N",
                        help="evaluate every N updates (0: at the end of each epoch)")
    parser.add_argument("--select-metric", metavar="M",
                        help="'average' or TASK/METRIC: picks the best checkpoint")
    parser.add_argument("--patience", type=int, metavar="N",
                        help="stop early after N evaluations in a row without a better "
                             "--select-metric score (default: train to the end)")
    parser.add_argument("--sampler", choices=SAMPLERS,
                        help="which task each batch comes from, with n_k a task's batches and w_k its "
                             "sampling_weight: proportional ∝ n_k·w_k (default), temperature ∝ "
                             f"(n_k·w_k)^(1/T) (training.sampler.temperature, {SamplerConfig().temperature:g}), "
                             "uniform ∝ w_k, annealed ∝ n_k^α·w_k with α from 1 to "
                             f"training.sampler.anneal_final_alpha ({SamplerConfig().anneal_final_alpha:g})")
    parser.add_argument("--precision", choices=PRECISIONS,
                        help="bf16: autocast on CPU or GPU; fp16: autocast with a gradient "
                             "scaler, GPU only; losses and divergences stay float32")
    parser.add_argument("--num-threads", type=int, metavar="N", help="torch CPU threads")
    parser.add_argument("--cache-dir", metavar="DIR",
                        help="tokenized-data cache (default: $MTSMART_CACHE, else ~/.cache/mtsmart)")
    parser.add_argument("--keep-last", type=int, metavar="N",
                        help="resumable checkpoints to keep: last/ plus N-1 under checkpoints/")
    parser.add_argument("--trust-remote-code", action=argparse.BooleanOptionalAction, default=None,
                        help="allow an encoder's own Python code from the hub (off unless given)")
    parser.add_argument("--quiet", action="store_true",
                        help="no progress bar and no line per evaluation (metrics.jsonl and "
                             "TensorBoard still get every one)")
    add_smart_flags(parser)


def add_train_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("task_file", help="task-definition YAML (e.g. task_defs/glue.yaml)")
    parser.add_argument("--output", "-o", required=True, metavar="DIR",
                        help="run directory: best/, last/, tensorboard/, metrics.jsonl, results.json")
    parser.add_argument("--tasks", metavar="A,B", help="train only these tasks (comma-separated)")
    parser.add_argument("--encoder", help="Hugging Face model name or local directory")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")
    parser.add_argument("--dry-run", action="store_true",
                        help="check everything a run needs (settings, encoder, every split read and "
                             "tokenized, the output folder) and print the plan; trains nothing and "
                             "writes nothing but the tokenization cache")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --output from last/; give the command it started with "
                             "(other settings are refused, except the run-only "
                             f"{', '.join(RUN_ONLY_SETTINGS)})")
    add_common_training_flags(parser)


def add_weights_flag(parser: argparse.ArgumentParser, use: str) -> None:
    parser.add_argument("--weights", choices=CHECKPOINT_WEIGHTS, default="student",
                        help=f"{use} the trained model (student, the default) or the SMART mean "
                             "teacher saved beside it (runs with the Bregman term)")


def add_checkpoint_data_dir_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", metavar="DIR",
                        help="where the tasks' data paths are relative to (default: $MTSMART_DATA_DIR, "
                             "else where the run that wrote the checkpoint read its data, else the "
                             "current directory)")


def add_task_defs_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task-defs", metavar="FILE",
                        help="a task-definition file whose tasks replace the checkpoint's own of "
                             "the same name (other data or splits; the labels must match the heads)")


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="mtsmart", description=(
        "Multi-task fine-tuning of pre-trained transformer encoders with SMART."))
    parser.add_argument("--version", action=VersionAction,
                        help="print the versions of mtsmart, Python and the libraries, and exit")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=ArgumentParser)

    train = sub.add_parser("train", help="multi-task training from a task-definition file",
                           description="Train one shared encoder with a head per task. "
                                       "Under torchrun (torchrun --nproc_per_node N -m mtsmart "
                                       "train ...) every process trains a slice of each global "
                                       "batch (--batch-size is the global batch).")
    add_train_flags(train)

    evaluate = sub.add_parser("evaluate", help="score a checkpoint on each task's split",
                              description="Print a per-task metrics table and write it as JSON.")
    evaluate.add_argument("checkpoint", help="a checkpoint directory (e.g. runs/x/best)")
    add_checkpoint_data_dir_flag(evaluate)
    evaluate.add_argument("--tasks", metavar="A,B", help="only these tasks")
    evaluate.add_argument("--split", default=None, metavar="NAME",
                          help="split to score (default: each task's eval_split)")
    evaluate.add_argument("--out", metavar="FILE",
                          help="JSON file (default: CHECKPOINT/eval_SPLIT.json; "
                               "eval_SPLIT_teacher.json with --weights teacher)")
    evaluate.add_argument("--bootstrap", type=int, default=0, metavar="N",
                          help="also a 95%% interval of each metric from N resamples of the examples "
                               "(e.g. 1000; seeded, so reproducible)")
    evaluate.add_argument("--batch-size", type=positive_int, default=64, metavar="N",
                          help="examples per forward pass (default 64)")
    add_weights_flag(evaluate, "score")
    add_task_defs_flag(evaluate)

    predict = sub.add_parser("predict", help="write predictions of a checkpoint",
                             description="Write one TSV per task: index and predicted label or score.")
    predict.add_argument("checkpoint", help="a checkpoint directory")
    predict.add_argument("--task", required=True, metavar="NAME",
                         help="task name, comma-separated names, or 'all'")
    predict.add_argument("--split", metavar="NAME", help="split to predict (default: each task's eval_split)")
    predict.add_argument("--input", metavar="FILE",
                         help="predict a file of your own instead of a split: tsv, csv or jsonl "
                              "(by extension) whose header names the task's text fields; "
                              "one task; other columns are ignored")
    predict.add_argument("--quoting", choices=("minimal", "none"),
                         help="--input's quotes: minimal (csv quoting) or none (quotes are text, as in "
                              "GLUE's tsv files); default: as the task's own eval split is read")
    add_checkpoint_data_dir_flag(predict)
    predict.add_argument("--out", required=True, metavar="PATH",
                         help="a .tsv file (one task) or a directory (one TASK.tsv per task)")
    predict.add_argument("--batch-size", type=positive_int, default=64, metavar="N",
                         help="examples per forward pass (default 64)")
    add_weights_flag(predict, "predict with")
    add_task_defs_flag(predict)
    finetune = sub.add_parser(
        "finetune", help="fine-tune tasks starting from a multi-task checkpoint",
        description="Start from a checkpoint's encoder (and the task's head where it has one; a "
                    "fresh head otherwise) with a fresh optimizer. With SMART, the teacher starts "
                    "as a copy of the loaded weights. Training settings: the checkpoint's, then "
                    "--task-defs' training block, then --config, KEY=VALUE and flags.")
    finetune.add_argument("checkpoint", help="a checkpoint directory (e.g. runs/glue-mt/best)")
    finetune.add_argument("--task", required=True, metavar="NAME",
                          help="task to fine-tune, comma-separated tasks, or 'all' (each in turn)")
    finetune.add_argument("--task-defs", metavar="FILE",
                          help="task-definition file for tasks the checkpoint lacks (a new domain)")
    finetune.add_argument("--output", "-o", required=True, metavar="DIR",
                          help="run directory (with several tasks: DIR/TASK for each)")
    finetune.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")
    add_weights_flag(finetune, "start from")
    add_common_training_flags(finetune)

    adapt = sub.add_parser(
        "adapt", help="domain adaptation: fine-tune start points on fractions of a task's data",
        description="For every start point, training size and seed: draw a deterministic, "
                    "label-stratified subset of the task's training pool, fine-tune, evaluate on "
                    "its eval split. Each run's seed comes from --seeds, its updates from --epochs "
                    "(at least --min-steps), and it is evaluated once, at its end. Writes "
                    "DIR/results.csv, DIR/table.md, DIR/plot.png and TensorBoard scalars under "
                    "DIR/tensorboard.")
    adapt.add_argument("starts", nargs="+", metavar="START",
                       help="checkpoint directories or raw encoders (name or directory), "
                            "optionally labelled LABEL=PATH")
    adapt.add_argument("--task", required=True, metavar="NAME", help="the target task")
    adapt.add_argument("--task-defs", metavar="FILE",
                       help="task-definition file holding the task (and the training recipe)")
    adapt.add_argument("--train-sizes", required=True, metavar="S,S",
                       help="fractions of --reference-size (with a decimal point: 0.001,0.01,1.0) "
                            "or absolute counts (24,236); capped at the pool size")
    adapt.add_argument("--reference-size", type=positive_int, metavar="N",
                       help="the size fractions refer to (e.g. the original training set's; "
                            "default: the pool)")
    adapt.add_argument("--seeds", default="1,2,3", metavar="S,S", help="seeds (subset and training)")
    adapt.add_argument("--min-steps", type=positive_int, default=30, metavar="N",
                       help="at least this many updates per run, so tiny subsets train too")
    adapt.add_argument("--output", "-o", required=True, metavar="DIR",
                       help="one run folder per start point, size and seed, plus results.csv, "
                            "table.md and plot.png")
    add_common_training_flags(adapt)
    for action in adapt._actions:  # set for each run by adapt: hidden here, refused with the reason
        if action.dest in ADAPT_SETS_PER_RUN:
            action.help = argparse.SUPPRESS

    export = sub.add_parser(
        "export", help="export one task as a Hugging Face sequence-classification model",
        description="Write a standard model directory (config with id2label / label2id, weights, "
                    "tokenizer) that transformers.pipeline('text-classification', model=DIR) loads "
                    "offline and that predicts what `mtsmart predict` predicts.")
    export.add_argument("checkpoint", help="a checkpoint directory")
    export.add_argument("--task", required=True, metavar="NAME", help="the task whose head to export")
    export.add_argument("--out", required=True, metavar="DIR",
                        help="the Hugging Face model directory to write")
    export.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")
    add_weights_flag(export, "export")

    compare = sub.add_parser(
        "compare", help="is checkpoint B better than A? a paired bootstrap on the same examples",
        description="Score two checkpoints on the same split and resample its examples: for each "
                    "metric, A, B, B − A with its 95% interval, and the share of resamples in which "
                    "B does not beat A (a one-sided p-value). The same checkpoint twice with "
                    "--weights-b teacher compares a SMART run's student with its teacher.")
    compare.add_argument("checkpoint", help="checkpoint A (the baseline)")
    compare.add_argument("other", metavar="checkpoint_b", help="checkpoint B")
    compare.add_argument("--tasks", metavar="A,B", help="only these tasks (default: all of A's)")
    compare.add_argument("--split", metavar="NAME", help="the split to score (default: each task's eval split)")
    add_checkpoint_data_dir_flag(compare)
    compare.add_argument("--bootstrap", type=int, default=1000, metavar="N",
                         help="resamples of the examples (default 1000; seeded, so reproducible)")
    compare.add_argument("--weights-a", choices=CHECKPOINT_WEIGHTS, default="student",
                         help="A's student (default) or its SMART teacher")
    compare.add_argument("--weights-b", choices=CHECKPOINT_WEIGHTS, default="student",
                         help="B's student (default) or its SMART teacher")
    compare.add_argument("--out", metavar="FILE", help="also write the comparison as JSON")
    compare.add_argument("--batch-size", type=positive_int, default=64, metavar="N",
                         help="examples per forward pass (default 64)")
    add_task_defs_flag(compare)

    summarize = sub.add_parser(
        "summarize", help="finished runs as one table, seeds of a recipe pooled",
        description="Read each run's results.json and print a markdown table: one row per recipe "
                    "(runs whose settings differ only in the seed), each task's main metric as "
                    "mean ± std over the seeds with every seed's value; recipes are labelled by "
                    "the settings that differ between them.")
    summarize.add_argument("runs", nargs="+", metavar="RUN",
                           help="run directories, or a directory whose sub-directories are runs")
    summarize.add_argument("--which", choices=("last", "best"), default="last",
                           help="the last evaluation (default) or the best one, which is selected "
                                "on the same dev set and so reads high")
    summarize.add_argument("--weights", choices=CHECKPOINT_WEIGHTS, default="student",
                           help="the student's scores (default) or the SMART teacher's")
    return parser


# ------------------------------------------------------------------------- commands
def collect_overrides(args: argparse.Namespace) -> list[tuple[list[str], Any, str]]:
    """The settings the command line gives, in the order they apply (a later one wins):
    --config's, --smart-preset's, KEY=VALUE, then the flags. Each comes with the text that
    set it, for error messages."""
    overrides = [(*parse_override(text), text) for text in args.overrides]
    if args.smart_preset:
        overrides.insert(0, (["training", "smart", "preset"], args.smart_preset, "--smart-preset"))
    if args.config:
        raw = load_yaml(args.config)
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{args.config}: expected a mapping of training settings")
        if "training" in raw:
            extra = sorted(set(raw) - {"training"})
            if extra:
                raise ConfigError(f"{args.config}: unknown top-level key {extra[0]!r} (valid: training)")
            raw = raw["training"] or {}
        overrides[:0] = _flatten(["training"], raw, f"--config {args.config}")
    for flag, (path, _) in TRAIN_FLAGS.items():
        value = getattr(args, flag, None)
        if value is not None:
            overrides.append((path.split("."), value, f"--{flag.replace('_', '-')}"))
    if args.epochs is not None and args.max_steps is None:
        # --epochs alone means epochs: an inherited max_steps would otherwise win silently.
        overrides.append((["training", "max_steps"], None, "--epochs"))
    return [expanded for override in overrides for expanded in _expand_preset(*override)]


def _expand_preset(path: list[str], value: Any, text: str) -> list[tuple[list[str], Any, str]]:
    """A preset named on the command line is its keys, set where it stands: over the task
    file's (or an inherited checkpoint's) SMART settings, under the flags and KEY=VALUE."""
    if [*path[-2:]] != ["smart", "preset"] or path[:-2] not in ([], ["training"]):
        return [(path, value, text)]
    if value not in SMART_PRESETS:
        raise ConfigError(f"{text}: unknown preset {value!r} (valid: {', '.join(SMART_PRESETS)})")
    where = f"{text} {value}" if text.startswith("--") else text
    return [(["training", "smart", key], preset_value, where) for key, preset_value in SMART_PRESETS[value].items()]


def _flatten(prefix, value, text):
    """A mapping from --config is applied key by key, so it merges with the task file's
    own training settings instead of replacing them."""
    if isinstance(value, dict) and value:
        items = []
        for key, sub in value.items():
            items.extend(_flatten([*prefix, str(key)], sub, text))
        return items
    return [(prefix, value, text)]


def command_train(args: argparse.Namespace) -> int:
    from mtsmart.distributed import Replicas
    from mtsmart.tasks import load_task_file, resolve_data_dir, select_tasks
    from mtsmart.train import Trainer, check_output_dir, check_resume_settings, prepare_output_dir

    if args.resume and args.overwrite:
        raise ConfigError("--resume continues the run in --output, --overwrite replaces it: give one")
    overrides = collect_overrides(args)
    task_file = load_task_file(args.task_file, overrides)
    tasks = select_tasks(task_file.tasks, args.tasks, "--tasks")
    note_unused_settings(tasks, task_file.training, overrides)
    data_dir = resolve_data_dir(args.data_dir, task_file)
    if args.dry_run:
        return dry_run(args, task_file.training, tasks, data_dir)
    replicas = Replicas.from_environment()
    try:
        # Only the main replica touches the output directory; the others learn its verdict.
        problem = None
        if replicas.is_main:
            try:
                if args.resume:  # finishes an interrupted save, then compares the settings
                    prepare_output_dir(args.output, overwrite=args.overwrite, resume=True)
                    check_resume_settings(args.output, task_file.training, tasks)
                else:
                    check_output_dir(args.output, overwrite=args.overwrite, resume=False)
            except ConfigError as err:
                problem = str(err)
        problem = replicas.broadcast(problem)
        if problem:
            raise ConfigError(problem)
        trainer = Trainer(tasks, task_file.training, data_dir, args.output, resume=args.resume,
                          cache_dir=args.cache_dir, show_progress=not args.quiet, replicas=replicas,
                          command=args.command_line)
        try:
            # every setting, the encoder and every split checked before an old run is cleared
            trainer.prepare()
            if replicas.is_main and not args.resume:
                prepare_output_dir(args.output, overwrite=args.overwrite, resume=False)
            trainer.setup()
            summary = trainer.train()
        finally:
            trainer.cleanup()
    finally:
        replicas.close()
    if summary is None:
        return 0  # not the main replica: it prints nothing
    from mtsmart.evaluation import format_table

    print(f"\nbest checkpoint (step {summary['best']['global_step']}, "
          f"{summary['select_metric']}={100 * summary['best']['selection_score']:.2f}):")
    print(format_table(summary["best"]["results"], {n: t.eval_split for n, t in tasks.items()}))
    if summary["stopped_early"]:
        print(f"\nstopped early at step {summary['stopped_at']} of {summary['total_updates']}: "
              f"no better {summary['select_metric']} in the last {summary['patience']} evaluations")
    print(f"\n{steps_trained(summary['first_step'], summary['stopped_at'])} in "
          f"{summary['train_seconds']:.0f} s; checkpoints in {args.output}/best and {args.output}/last")
    print(f"watch it in TensorBoard:  tensorboard --logdir {args.output}")
    return 0


def steps_trained(first_step: int, stopped_at: int) -> str:
    """What this session trained: a resumed run counts only its own updates."""
    if first_step == 0:
        return f"trained {stopped_at} steps"
    if stopped_at > first_step:
        return f"trained steps {first_step + 1}-{stopped_at} ({stopped_at - first_step} this session)"
    return f"trained nothing: the run had finished at step {stopped_at}"


def dry_run(args: argparse.Namespace, training, tasks, data_dir: str) -> int:
    """Everything ``mtsmart train`` would check and build before its first step, then the
    plan; the output folder is only inspected."""
    from mtsmart.dry_run import describe
    from mtsmart.train import Trainer, check_output_dir, check_resume_settings, resume_checkpoint

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("--dry-run runs as a single process: run it without torchrun")
    check_output_dir(args.output, overwrite=args.overwrite, resume=args.resume)
    if args.resume:
        check_resume_settings(args.output, training, tasks)
    trainer = Trainer(tasks, training, data_dir, args.output, resume=args.resume,
                      cache_dir=args.cache_dir, show_progress=False)
    trainer.prepare()
    print(describe(trainer, resume_checkpoint(args.output) if args.resume else training.encoder))
    print(f"\ndry run: every setting, the encoder and every split checked; nothing trained, "
          f"{args.output} untouched")
    return 0


def _checkpoint_tasks(loaded, args: argparse.Namespace, names: Optional[str], where: str):
    """The tasks to run, and where their data paths are relative to. With --task-defs the
    file's definitions (data sources, fields, lengths) replace the checkpoint's own for the
    tasks both have, provided the heads' outputs mean the same."""
    from mtsmart.tasks import DATA_DIR_ENV, check_same_head, load_task_file, resolve_data_dir, select_tasks

    tasks = dict(loaded.tasks)
    data_dir = args.data_dir or os.environ.get(DATA_DIR_ENV) or loaded.data_dir or os.getcwd()
    if args.task_defs:
        task_file = load_task_file(args.task_defs)
        for name, task in task_file.tasks.items():
            if name in tasks:
                check_same_head(task, tasks[name], loaded.path)
                tasks[name] = task
        data_dir = resolve_data_dir(args.data_dir, task_file)
    return select_tasks(tasks, None if names == "all" else names, where), data_dir


def _predict(loaded, task, split_name: str, data_dir: str, batch_size: int, device, labeled: bool = True):
    """A loaded checkpoint's predictions on one task's split (file order), and the split."""
    from mtsmart.data import default_cache_dir, load_tokenized
    from mtsmart.evaluation import predict_split

    split = load_tokenized(task, split_name, loaded.tokenizer, data_dir, default_cache_dir(), labeled=labeled)
    return predict_split(loaded.model, task, split, batch_size, loaded.tokenizer.pad_token_id or 0, device), split


def command_evaluate(args: argparse.Namespace) -> int:
    from mtsmart.checkpoint import load_checkpoint
    from mtsmart.evaluation import bootstrap_intervals, format_table, score_split
    from mtsmart.metric_logging import write_json
    from mtsmart.train import pick_device

    if args.bootstrap < 0:
        raise ConfigError(f"--bootstrap: the number of resamples must be >= 0 (0 is off), got {args.bootstrap}")
    if args.out:
        check_writable(args.out)
    device = pick_device()
    loaded = load_checkpoint(args.checkpoint, device, weights=args.weights)
    tasks, data_dir = _checkpoint_tasks(loaded, args, args.tasks, "--tasks")
    results, split_names, intervals = {}, {}, {}
    for name, task in tasks.items():
        split_name = args.split or task.eval_split
        preds, split = _predict(loaded, task, split_name, data_dir, args.batch_size, device)
        results[name] = score_split(task, preds, split)
        split_names[name] = split_name
        if args.bootstrap:
            intervals[name] = bootstrap_intervals(task, preds, split.targets, args.bootstrap)
    # the file is named after the split: each task's own, when they all share one name
    label = args.split or "+".join(sorted(set(split_names.values())))
    teacher = args.weights == "teacher"
    if teacher:
        print(f"{args.checkpoint}: the SMART mean teacher's weights")
    print(format_table(results, split_names, intervals))
    if intervals:
        print(f"\n[95% interval: percentile bootstrap over {args.bootstrap} resamples of each split's examples]")
    out = args.out or os.path.join(args.checkpoint, f"eval_{label}{'_teacher' if teacher else ''}.json")
    write_json(out, {"checkpoint": args.checkpoint, "weights": args.weights, "splits": split_names,
                     "results": results,
                     **({"intervals_95": intervals, "bootstrap_resamples": args.bootstrap} if intervals else {})})
    print(f"\nwrote {out}")
    return 0


def command_predict(args: argparse.Namespace) -> int:
    from mtsmart.checkpoint import load_checkpoint
    from mtsmart.train import pick_device

    if args.input is not None and args.split is not None:
        raise ConfigError("--input and --split: predict either a file of your own or a split, not both")
    if args.input is not None and not os.path.isfile(args.input):
        raise ConfigError(f"--input {args.input}: " + ("a directory, expected a file" if os.path.isdir(args.input)
                                                       else "no such file"))
    check_writable(args.out)
    device = pick_device()
    loaded = load_checkpoint(args.checkpoint, device, weights=args.weights)
    tasks, data_dir = _checkpoint_tasks(loaded, args, args.task, "--task")
    if args.input is not None:
        tasks = _with_input_split(tasks, args.input, args.quoting)
    elif args.quoting is not None:
        raise ConfigError("--quoting applies to --input: a split is read as its task definition says")
    extension = os.path.splitext(args.out.rstrip("/"))[1].lower()
    single_file = extension in (".tsv", ".txt")
    if extension and not single_file:
        raise ConfigError(f"--out {args.out}: predictions are written as tsv; give a .tsv file (one task) "
                          "or a directory")
    if single_file and len(tasks) > 1:
        raise ConfigError(f"--out {args.out}: one file, for {len(tasks)} tasks ({', '.join(tasks)}); "
                          "give a directory, which gets one TASK.tsv per task")
    if not single_file:
        os.makedirs(args.out, exist_ok=True)
    for name, task in tasks.items():
        # Labels are not needed to predict: a test split without them reads too.
        split_name = INPUT_SPLIT if args.input is not None else args.split or task.eval_split
        preds, _ = _predict(loaded, task, split_name, data_dir, args.batch_size, device, labeled=False)
        path = args.out if single_file else os.path.join(args.out, f"{name}.tsv")
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        tmp = f"{path}.tmp"
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write("index\tprediction\n")
            for index, value in enumerate(preds):
                handle.write(f"{index}\t{task.task_type.format_prediction(value, task.labels)}\n")
        os.replace(tmp, path)
        print(f"{name}: {len(preds)} predictions → {path}")
    return 0


INPUT_SPLIT = "--input"  # named after the flag, so it does not shadow a split a task file declares


def _with_input_split(tasks: dict, path: str, quoting: Optional[str]) -> dict:
    """The one task, with ``path`` as an extra split read by its header's column names and,
    unless ``quoting`` says otherwise, with the quoting of the task's own eval split."""
    from dataclasses import replace

    from mtsmart.tasks import FileSource

    if len(tasks) != 1:
        raise ConfigError(f"--input predicts one task; --task names {len(tasks)} ({', '.join(tasks)})")
    (name, task), = tasks.items()
    own = task.splits.get(task.eval_split)
    quoting = quoting or (own.quoting if isinstance(own, FileSource) else FileSource.quoting)
    source = FileSource(path=os.path.abspath(path), quoting=quoting)
    return {name: replace(task, splits={**task.splits, INPUT_SPLIT: source})}


def _load_finetune_tasks(args: argparse.Namespace):
    """Tasks and training settings for fine-tuning: the checkpoint's training settings,
    then the task-definition file's training block, then --config / KEY=VALUE / flags."""
    from mtsmart.checkpoint import TASKS_FILE, TRAINING_FILE, read_meta
    from mtsmart.tasks import build_task_file

    read_meta(args.checkpoint)
    inherited = load_yaml(os.path.join(args.checkpoint, TRAINING_FILE))["training"]
    source = args.task_defs or os.path.join(args.checkpoint, TASKS_FILE)
    raw = load_yaml(source)
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping with 'tasks:' at the top level")
    training = _flatten(["training"], inherited, f"{args.checkpoint}/{TRAINING_FILE}")
    own = raw.pop("training", None) or {}
    raw["training"] = {}
    training += _flatten(["training"], own, source) if own else []
    return build_task_file(raw, source, training + collect_overrides(args))


def command_finetune(args: argparse.Namespace) -> int:
    from mtsmart.checkpoint import load_checkpoint_tasks
    from mtsmart.tasks import check_same_head, resolve_data_dir, select_tasks
    from mtsmart.train import Trainer, check_output_dir, prepare_output_dir

    task_file = _load_finetune_tasks(args)
    checkpoint_tasks = load_checkpoint_tasks(args.checkpoint)
    names = ",".join(checkpoint_tasks) if args.task == "all" else args.task
    tasks = select_tasks(task_file.tasks, names, "--task")
    for name, task in tasks.items():
        if name in checkpoint_tasks:  # the trained head is reused: its outputs must mean the same
            check_same_head(task, checkpoint_tasks[name], args.checkpoint)
    note_unused_settings(tasks, task_file.training, collect_overrides(args), from_checkpoint=True)
    data_dir = resolve_data_dir(args.data_dir, task_file)
    several = len(tasks) > 1
    check_output_dir(args.output, overwrite=args.overwrite, resume=False)
    summaries = {}
    for name, task in tasks.items():
        out = os.path.join(args.output, name) if several else args.output
        trainer = Trainer({name: task}, task_file.training, data_dir, out, init_from=args.checkpoint,
                          init_weights=args.weights, cache_dir=args.cache_dir, show_progress=not args.quiet,
                          command=args.command_line)
        try:
            trainer.prepare()  # the checkpoint, the settings and the task's data, before any folder is touched
            if not summaries:
                prepare_output_dir(args.output, overwrite=args.overwrite, resume=False)
            os.makedirs(out, exist_ok=True)
            trainer.setup()
            summaries[name] = trainer.train()
        finally:
            trainer.cleanup()
    from mtsmart.evaluation import format_table

    print(format_table({n: s["best"]["results"][n] for n, s in summaries.items()},
                       {n: t.eval_split for n, t in tasks.items()}))
    print(f"\nfine-tuned checkpoints in {args.output}" + ("/TASK/best" if several else "/best"))
    return 0


def command_adapt(args: argparse.Namespace) -> int:
    from mtsmart.adaptation import parse_start, run_adaptation
    from mtsmart.checkpoint import TASKS_FILE, encoder_source_problem
    from mtsmart.tasks import build_task_file, load_task_file, resolve_data_dir

    # argparse hands every positional before the first flag to START; one that sets a
    # dotted key (training.optim.lr=2e-5, tasks.NAME.KEY=...) is an override, as elsewhere.
    is_override = [text.split("=", 1)[0].startswith(("training.", "tasks.")) for text in args.starts]
    args.overrides = [t for t, moved in zip(args.starts, is_override) if moved] + args.overrides
    args.starts = [t for t, moved in zip(args.starts, is_override) if not moved]
    if not args.starts:
        raise ConfigError("adapt: no START given (checkpoint directories or encoders, before the flags)")
    starts = [parse_start(text) for text in args.starts]
    overrides = collect_overrides(args)
    for path, value, text in overrides:
        path = path if path[0] in ("training", "tasks", "data_dir") else ["training", *path]
        if (len(path) == 2 and path[0] == "training" and path[1] in ADAPT_SETS_PER_RUN
                and not (text == "--epochs" and value is None)):  # --epochs clearing max_steps
            raise ConfigError(f"{text}: adapt sets training.{path[1]} for each run itself "
                              f"({ADAPT_SETS_PER_RUN[path[1]]})")
    if args.task_defs:
        task_file = load_task_file(args.task_defs, overrides)
    else:
        holder = next((s for s in starts if s.is_checkpoint), None)
        if holder is None:
            raise ConfigError("--task-defs is needed: no START is a checkpoint to take the task from")
        source = os.path.join(holder.path, TASKS_FILE)
        raw = load_yaml(source)
        raw.pop("training", None)
        task_file = build_task_file(raw, source, overrides)
    if args.task not in task_file.tasks:
        raise ConfigError(f"--task: no task {args.task!r} in {task_file.path} "
                          f"(tasks: {', '.join(task_file.tasks)})")
    note_unused_settings({args.task: task_file.tasks[args.task]}, task_file.training, overrides)
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        if not seeds:
            raise ValueError
    except ValueError:
        raise ConfigError(f"--seeds: expected comma-separated integers, got {args.seeds!r}") from None
    for start in starts:
        problem = None if start.is_checkpoint else encoder_source_problem(start.path)
        if problem:
            raise ConfigError(f"START {start.label}: {problem}")
    os.makedirs(args.output, exist_ok=True)
    rows = run_adaptation(starts, task_file.tasks[args.task], task_file.training,
                          resolve_data_dir(args.data_dir, task_file), args.train_sizes.split(","),
                          seeds, args.output, reference_size=args.reference_size,
                          min_steps=args.min_steps, show_progress=not args.quiet,
                          command=args.command_line)
    with open(os.path.join(args.output, "table.md"), encoding="utf-8") as handle:
        print("\n" + handle.read())
    print(f"{len(rows)} runs: {args.output}/results.csv, table.md, plot.png")
    return 0


def command_export(args: argparse.Namespace) -> int:
    from mtsmart.export import export_task

    check_writable(args.out)
    out = export_task(args.checkpoint, args.task, args.out, weights=args.weights, overwrite=args.overwrite)
    print(f"exported {args.task} to {out}: transformers.pipeline('text-classification', "
          f"model='{out}', truncation=True)")
    return 0


def command_compare(args: argparse.Namespace) -> int:
    from mtsmart.checkpoint import load_checkpoint
    from mtsmart.evaluation import paired_bootstrap
    from mtsmart.metric_logging import write_json
    from mtsmart.tasks import check_same_head
    from mtsmart.train import pick_device

    if args.bootstrap < 1:
        raise ConfigError(f"--bootstrap: the number of resamples must be >= 1, got {args.bootstrap}")
    if args.out:
        check_writable(args.out)
    device = pick_device()
    loaded_a = load_checkpoint(args.checkpoint, device, weights=args.weights_a)
    loaded_b = load_checkpoint(args.other, device, weights=args.weights_b)
    tasks, data_dir = _checkpoint_tasks(loaded_a, args, args.tasks, "--tasks")
    for name, task in tasks.items():
        if name not in loaded_b.tasks:
            raise ConfigError(f"{args.other}: has no head for task {name!r} (its tasks: "
                              f"{', '.join(loaded_b.tasks)}); pick shared tasks with --tasks")
        check_same_head(task, loaded_b.tasks[name], args.other)
    report = {}
    for name, task in tasks.items():
        split_name = args.split or task.eval_split
        # each with its own tokenizer: the encoders may differ
        (preds_a, split), (preds_b, _) = (_predict(loaded, task, split_name, data_dir, args.batch_size, device)
                                          for loaded in (loaded_a, loaded_b))
        report[name] = paired_bootstrap(task, preds_a, preds_b, split.targets, args.bootstrap)
        for metric, r in report[name].items():
            print(f"{name} {split_name} {metric}: A {100 * r['a']:.2f}, B {100 * r['b']:.2f}, "
                  f"B − A {100 * r['b_minus_a']:+.2f} [{100 * r['low']:+.2f}, {100 * r['high']:+.2f}], "
                  f"P(B − A ≤ 0) = {r['p_b_not_better']:.3f}")
    print(f"\nA = {args.checkpoint} ({args.weights_a}), B = {args.other} ({args.weights_b}); 95% "
          f"intervals and P from a paired bootstrap over {args.bootstrap} resamples of the examples")
    if args.out:
        write_json(args.out, {"a": args.checkpoint, "b": args.other, "weights_a": args.weights_a,
                              "weights_b": args.weights_b, "bootstrap_resamples": args.bootstrap,
                              "results": report})
        print(f"wrote {args.out}")
    return 0


def command_summarize(args: argparse.Namespace) -> int:
    from mtsmart.summary import RESULTS_FILE, read_run, summarize

    paths = []
    for path in args.runs:
        if not os.path.isdir(path):
            raise ConfigError(f"{path}: not a directory (give run directories)")
        children = sorted(os.path.join(path, name) for name in os.listdir(path)
                          if os.path.isdir(os.path.join(path, name)))
        finished = [child for child in children if os.path.isfile(os.path.join(child, RESULTS_FILE))]
        if finished and not os.path.isfile(os.path.join(path, RESULTS_FILE)):
            paths += finished
            for child in children:  # a run folder not finished yet: said, not silently dropped
                if child not in finished and os.path.isfile(os.path.join(child, "run.json")):
                    logging.warning("%s: left out, not finished (no %s)", child, RESULTS_FILE)
        else:
            paths.append(path)
    runs = [read_run(path, args.which, args.weights) for path in paths]
    print(summarize(runs))
    note = "last evaluation" if args.which == "last" else "best evaluation, selected on the same dev set"
    print(f"\n{len(runs)} runs; {args.weights}'s main metric per task (×100) at the {note}; "
          "mean ± sample std over seeds, every seed in brackets")
    return 0


COMMANDS = {"train": command_train, "evaluate": command_evaluate, "predict": command_predict,
            "finetune": command_finetune, "adapt": command_adapt, "export": command_export,
            "compare": command_compare, "summarize": command_summarize}


def _parse(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]]) -> argparse.Namespace:
    """parse_args, except that KEY=VALUE overrides may also follow the flags
    (``mtsmart train tasks.yaml --lr 1e-4 training.seed=2``): argparse alone takes
    positionals only before the first flag. Anything else left over is an error."""
    args, extra = parser.parse_known_args(argv)
    stray = [a for a in extra if a.startswith("-") or "=" not in a]
    if extra and (stray or not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(stray or extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    return args


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's or ``docker stop``'s), handled as Ctrl-C is: what a save had
    half-written is removed on the way out, and one line says so."""


def _terminate(signum, frame) -> None:
    raise Terminated()


def main(argv: Optional[Sequence[str]] = None) -> int:
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if in_main_thread else None
    try:
        return _main(argv)
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)


def _main(argv: Optional[Sequence[str]]) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(format="mtsmart: note: %(message)s", level=logging.WARNING)
    parser = build_parser()
    args = _parse(parser, argv)
    args.command_line = ["mtsmart", *(sys.argv[1:] if argv is None else argv)]  # kept in run.json
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and args.command != "train":
        print(f"mtsmart: error: only 'mtsmart train' runs under torchrun; run "
              f"'mtsmart {args.command}' as a single process", file=sys.stderr)
        return EXIT_USAGE
    try:
        return COMMANDS[args.command](args)
    except MtsmartError as err:
        print(f"mtsmart: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as err:  # a disk that fills up, a folder that vanished: one line, not a traceback
        where = f"{err.filename}: " if err.filename else ""
        print(f"mtsmart: error: {where}{err.strerror or err}", file=sys.stderr)
        return 1
    except Terminated:
        print("mtsmart: terminated (SIGTERM); a train run continues with --resume", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("mtsmart: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
