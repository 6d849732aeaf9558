"""The command line's grammar: every subcommand's flags with their help (``build_parser``),
the flag → setting table, and ``collect_overrides``, which turns flags, KEY=VALUE,
--config and --smart-preset into settings overrides in the order they apply.

Must not import the trainer; the CLI hands it the arguments.
"""

from __future__ import annotations

import argparse
import typing
from dataclasses import is_dataclass
from typing import Any, Optional, Sequence

from mtsmart.config import (ADAPT_SETS_PER_RUN, CHECKPOINT_WEIGHTS, LR_SCHEDULES, NORMS, PRECISIONS,
                            RUN_ONLY_SETTINGS, SAMPLERS, SMART_MODES, SMART_PRESETS, SamplerConfig,
                            SmartConfig, TrainConfig, did_you_mean, load_yaml, parse_override)
from mtsmart.errors import ConfigError, report_error

EXIT_USAGE = 2

# Command-line flag → the setting it sets. Flags win over the YAML and KEY=VALUE overrides.
TRAIN_FLAGS: dict[str, str] = {
    "encoder": "training.encoder",
    "num_hidden_layers": "training.num_hidden_layers",
    "pooling": "training.pooling",
    "encoder_dropout": "training.encoder_dropout",
    "gradient_checkpointing": "training.gradient_checkpointing",
    "max_steps": "training.max_steps",
    "epochs": "training.epochs",
    "batch_size": "training.batch_size",
    "grad_accum_steps": "training.grad_accum_steps",
    "lr": "training.optim.lr",
    "lr_schedule": "training.optim.schedule",
    "layer_decay": "training.optim.layer_decay",
    "head_lr_scale": "training.optim.head_lr_scale",
    "seed": "training.seed",
    "eval_every": "training.eval_every",
    "select_metric": "training.select_metric",
    "patience": "training.patience",
    "sampler": "training.sampler.name",
    "precision": "training.precision",
    "num_threads": "training.num_threads",
    "keep_last": "training.keep_last",
    "trust_remote_code": "training.trust_remote_code",
    "smart": "training.smart.mode",
    "adv_weight": "training.smart.adv_weight",
    "prox_weight": "training.smart.prox_weight",
    "epsilon": "training.smart.epsilon",
    "noise_std": "training.smart.noise_std",
    "step_size": "training.smart.step_size",
    "num_steps": "training.smart.num_steps",
    "norm": "training.smart.norm",
    "teacher_beta": "training.smart.teacher_beta",
    "teacher_beta_early": "training.smart.teacher_beta_early",
    "teacher_early_fraction": "training.smart.teacher_early_fraction",
    "prox_warmup_fraction": "training.smart.prox_warmup_fraction",
    "teacher_horizon_fraction": "training.smart.teacher_horizon_fraction",
    "relative_epsilon": "training.smart.relative_to_embedding_norm",
    "same_dropout_masks": "training.smart.same_dropout_masks",
    "memory_efficient": "training.smart.memory_efficient",
}


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
    def __init__(self, *args: Any, **kwargs: Any):
        # argparse's default takes a prefix for the flag it starts: finetune, which has no
        # --encoder, read `--encoder 0.1` as --encoder-dropout 0.1
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # one line and exit 2, like every other error
        report_error(message, prog=self.prog)  # under torchrun, the first replica of each node prints it
        self.exit(EXIT_USAGE)


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
                            f"(λ_s·R_s only), bregman (μ·D_Breg only) or full (default {SmartConfig().mode}, "
                            "or the task file's training.smart.mode)")
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
                        help="check everything a run needs (settings, encoder, the train and dev splits read and "
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
                             "current directory; a --task-defs file's own data_dir comes before the run's)")


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
                          help="JSON file of this evaluation (default: CHECKPOINT/eval_SPLIT.json, or "
                               "eval_SPLIT_teacher.json with --weights teacher, where --tasks updates its "
                               "tasks and keeps the others)")
    evaluate.add_argument("--bootstrap", type=int, default=0, metavar="N",
                          help="also a 95%% interval of each metric from N resamples of the examples "
                               "(at least 40, e.g. 1000; seeded, so reproducible)")
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
                         help="a .tsv file (one task) or a directory (one TASK.tsv per task); a file "
                              "already there is replaced, and the output says so")
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
    finetune.add_argument("--resume", action="store_true",
                          help="finish an interrupted finetune in --output: a task with results is kept, one "
                               "with a checkpoint continues from last/, one with neither (of several) starts "
                               "again; give "
                               "the command it started with (other settings are refused, except the run-only "
                               f"{', '.join(RUN_ONLY_SETTINGS)})")
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
                            "optionally labelled LABEL=PATH (default: the folder's name, RUN-best for a "
                            "checkpoint); a label names a table row and the folder runs/LABEL, so it is a "
                            "folder name and stays with one path")
    adapt.add_argument("--task", required=True, metavar="NAME", help="the target task")
    adapt.add_argument("--task-defs", metavar="FILE",
                       help="task-definition file holding the task (and the training recipe)")
    adapt.add_argument("--train-sizes", required=True, metavar="S,S",
                       help="fractions of --reference-size (with a decimal point: 0.001,0.01,1.0) "
                            "or absolute counts (24,236); capped at the pool size, and two that land on "
                            "one count run once")
    adapt.add_argument("--reference-size", type=positive_int, metavar="N",
                       help="the size fractions refer to (e.g. the original training set's; "
                            "default: the pool)")
    adapt.add_argument("--seeds", default="1,2,3", metavar="S,S", help="distinct seeds in [0, 2**32), for the subset and the training (default 1,2,3)")
    adapt.add_argument("--min-steps", type=positive_int, default=30, metavar="N",
                       help="at least this many updates per run, so tiny subsets train too (default 30)")
    adapt.add_argument("--output", "-o", required=True, metavar="DIR",
                       help="DIR/runs/LABEL/nN/seedS for each run (metrics only, no checkpoints; a run "
                            "not yet in results.csv restarts from an empty folder), plus results.csv, "
                            "recipe.json, table.md, plot.png and tensorboard/")
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
                         help="resamples of the examples (default 1000, at least 40; seeded, so reproducible)")
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
                    "(runs whose settings, tasks' own settings, data and main metrics differ only in "
                    "the seed or in how they ran), each task's main metric as "
                    "mean ± std over the seeds with every seed's value; recipes are labelled by "
                    "the settings that differ between them.")
    summarize.add_argument("runs", nargs="+", metavar="RUN",
                           help="run directories, or folders searched at any depth for finished runs "
                                "(adapt folders and unfinished runs are left out, with a note)")
    summarize.add_argument("--which", choices=("last", "best"), default="last",
                           help="the last evaluation (default) or the best one, which is selected "
                                "on the same dev set and so reads high")
    summarize.add_argument("--weights", choices=CHECKPOINT_WEIGHTS, default="student",
                           help="the student's scores (default) or the SMART teacher's")
    return parser


def collect_overrides(args: argparse.Namespace) -> list[tuple[list[str], Any, str]]:
    """The settings the command line gives, in the order they apply (a later one wins):
    --config's, --smart-preset's, KEY=VALUE, then the flags. Each comes with the text that
    set it, for error messages."""
    overrides = [override for text in args.overrides for override in _key_by_key(*parse_override(text), text)]
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
        overrides[:0] = _preset_first(settings_as_overrides(["training"], raw, f"--config {args.config}"))
    for flag, path in TRAIN_FLAGS.items():
        value = getattr(args, flag, None)
        if value is not None:  # an on/off flag is named as typed: --no-memory-efficient sets False
            overrides.append((path.split("."), value, f"--{'no-' if value is False else ''}{flag.replace('_', '-')}"))
    if args.epochs is not None and args.max_steps is None:
        # --epochs alone means epochs: an inherited max_steps would otherwise win silently.
        overrides.append((["training", "max_steps"], None, "--epochs"))
    return [expanded for override in overrides for expanded in _expand_preset(*override)]


def _preset_first(overrides: list) -> list:
    # inside one mapping, as in a task file's smart: block, a preset comes before the keys
    return sorted(overrides, key=lambda override: override[0][-1] != "preset")


def _key_by_key(path: list[str], value: Any, text: str) -> list[tuple[list[str], Any, str]]:
    """A mapping given as one KEY=VALUE (``training.optim={weight_decay: 0}``) is set key by
    key, as --config's are: as one value it would reset the block's other keys, the task
    file's among them, to their defaults without a word. An empty mapping still resets."""
    if not (isinstance(value, dict) and value):
        return [(path, value, text)]
    if path[0] == "training":
        block: Any = TrainConfig
        for key in path[1:]:
            block = typing.get_type_hints(block).get(key) if is_dataclass(block) else None
        return _preset_first(settings_as_overrides(path, value, text, block))
    if len(path) == 3 and path[0] == "tasks" and path[2] == "smart":  # a task's own SMART knobs
        return _preset_first([([*path, str(key)], sub, text) for key, sub in value.items()])
    return [(path, value, text)]


def _expand_preset(path: list[str], value: Any, text: str) -> list[tuple[list[str], Any, str]]:
    """A preset named on the command line is its keys, set where it stands: over the task
    file's (or an inherited checkpoint's) SMART settings, under the flags and KEY=VALUE."""
    if [*path[-2:]] != ["smart", "preset"] or path[:-2] not in ([], ["training"]):
        return [(path, value, text)]
    if value not in SMART_PRESETS:
        raise ConfigError(f"{text}: unknown preset {value!r} (valid: {', '.join(SMART_PRESETS)})")
    where = f"{text} {value}" if text.startswith("--") else text
    return [(["training", "smart", key], preset_value, where) for key, preset_value in SMART_PRESETS[value].items()]


def settings_as_overrides(prefix: list[str], value: Any, text: str,
                          block: Optional[type] = TrainConfig) -> list[tuple[list[str], Any, str]]:
    """A mapping from --config is applied key by key, so it merges with the task file's
    own training settings instead of replacing them. A block of settings (``block``, a
    config dataclass) left empty or null, its keys all commented out, sets nothing: as
    one override it would have reset the task file's block to the defaults."""
    if block is not None and is_dataclass(block) and (value is None or isinstance(value, dict)):
        hints = typing.get_type_hints(block)
        items = []
        for key, sub in (value or {}).items():
            items.extend(settings_as_overrides([*prefix, str(key)], sub, text, hints.get(str(key))))
        return items
    return [(prefix, value, text)]


def parse_args(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]]) -> argparse.Namespace:
    """argparse's parse_args, except that KEY=VALUE overrides may also follow the flags
    (``mtsmart train tasks.yaml --lr 1e-4 training.seed=2``): argparse alone takes
    positionals only before the first flag. Anything else left over is an error."""
    args, extra = parser.parse_known_args(argv)
    stray = [a for a in extra if a.startswith("-") or "=" not in a]
    if extra and (stray or not hasattr(args, "overrides")):
        flags = [a.partition("=")[0] for a in stray if a.startswith("--")]
        options = [o for action in _command_parser(parser, args.command)._actions for o in action.option_strings]
        hint = did_you_mean(flags[0], options) if flags else ""
        parser.error(f"unrecognized arguments: {' '.join(stray or extra)}{hint}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    return args


def _command_parser(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    sub = next(action for action in parser._actions if isinstance(action, argparse._SubParsersAction))
    return sub.choices[command]


def repeated_flags(parser: argparse.ArgumentParser, command: str, argv: Sequence[str]) -> list[str]:
    """A note for each flag given more than once (`--lr 1e-4 ... --lr 2e-4`): argparse keeps
    the last without a word, so every earlier one does nothing."""
    options = {option: action for action in _command_parser(parser, command)._actions
               for option in action.option_strings
               if isinstance(action, (argparse._StoreAction, argparse._StoreTrueAction, argparse._StoreConstAction,
                                      argparse.BooleanOptionalAction))}
    given: dict[str, list[str]] = {}  # dest -> each time it was given, as typed
    for at, token in enumerate(argv):
        option, equals, value = token.partition("=")
        if option in options:
            action = options[option]
            if not equals and action.nargs != 0 and at + 1 < len(argv):
                value = argv[at + 1]
            given.setdefault(action.dest, []).append(f"{option} {value}".strip() if action.nargs != 0 else option)
    return [f"{earlier} does nothing: {typed[-1]} comes later, and the last one wins"
            for typed in given.values() for earlier in typed[:-1] if earlier != typed[-1]]

