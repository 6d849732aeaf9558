"""Domain adaptation with data fractions: fine-tune every start point (a checkpoint or a
raw encoder) on deterministic, label-stratified subsets of a task's training pool, several
seeds each, and report results.csv, table.md and plot.png.

Must not import cli.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import shutil
import statistics
from dataclasses import asdict, dataclass, replace
from typing import Optional, Sequence

import numpy as np

from mtsmart.atomic_files import replacing
from mtsmart.checkpoint import ENCODER_DIR, is_checkpoint
from mtsmart.config import TrainConfig, flatten_settings, settings_without_effect
from mtsmart.data import check_max_length, default_cache_dir, load_tokenized, stratified_subset
from mtsmart.errors import ConfigError
from mtsmart.metric_logging import MetricLogger, write_json
from mtsmart.tasks import TaskDef

logger = logging.getLogger(__name__)

RESULTS_CSV = "results.csv"
TABLE_MD = "table.md"
PLOT_PNG = "plot.png"
RECIPE_JSON = "recipe.json"  # the settings behind results.csv's recipe column, to name a change
# TrainConfig fields that do not change what a run learns (or that each run sets itself).
_NOT_RECIPE = ("encoder", "seed", "max_steps", "eval_every", "eval_batch_size", "log_every",
               "num_threads", "eval_teacher", "save_checkpoints", "keep_last")
_INT_COLUMNS = ("n_train", "seed", "steps")
_TEXT_COLUMNS = ("start", "start_path", "task", "size", "recipe")


@dataclass(frozen=True)
class StartPoint:
    label: str
    path: str

    @property
    def is_checkpoint(self) -> bool:
        return is_checkpoint(self.path)

    @property
    def key(self) -> str:
        """What identifies the start point: the same folder however its path is written."""
        return same_path_key(self.path)


def same_path_key(path: str) -> str:
    """A local path resolved (``runs/x/best/``, ``./runs/x/best`` and its absolute form are
    one); a hub name as it is."""
    return os.path.realpath(path) if os.path.exists(path) else path


def parse_start(text: str) -> StartPoint:
    """``LABEL=PATH`` or ``PATH`` (labelled by its folder names)."""
    if "=" in text:
        label, path = text.split("=", 1)
    else:
        path = text
        parts = [p for p in os.path.normpath(path).split(os.sep) if p not in ("", ".", "..")]
        label = "-".join(parts[-2:]) if parts and parts[-1] in ("best", "last") else (parts[-1] if parts else path)
    if not label or label in (".", "..") or "/" in label or os.sep in label:
        # the label names the start's row and its run folder (runs/LABEL/...)
        raise ConfigError(f"START {text}: {label!r} is no label; give LABEL=PATH with a LABEL that "
                          "can name a folder (not empty, '.' or '..', no '/')")
    return StartPoint(label=label, path=path)


def check_size_specs(specs: Sequence[str]) -> None:
    """The form of every --train-sizes entry, before any data is read."""
    for spec in specs:
        _size_of(spec.strip(), reference=1)


def resolve_sizes(specs: list[str], reference_size: Optional[int], pool_size: int) -> list[tuple[str, int]]:
    """A spec with a decimal point (``0.001``, ``1.0``) is a fraction of ``reference_size``
    (default: the pool), an integer is a count; both are capped at the pool size."""
    reference = reference_size or pool_size
    sizes = []
    for spec in specs:
        spec = spec.strip()
        asked = _size_of(spec, reference)
        n = min(asked, pool_size)
        if asked > pool_size:
            logger.warning("--train-sizes: %s is %d examples, more than the pool's %d: the whole pool",
                           spec, asked, pool_size)
        same = next((earlier for earlier, m in sizes if m == n), None)
        if same is not None:  # e.g. 10% and 100% of a reference larger than the pool
            logger.warning("--train-sizes: %s and %s are both n=%d (the pool has %d): run once",
                           same, spec, n, pool_size)
            continue
        sizes.append((spec, n))
    return sizes


def _size_of(spec: str, reference: int) -> int:
    try:
        if any(c in spec for c in ".eE"):
            fraction = float(spec)
            if not 0 < fraction <= 1:
                raise ValueError
            return max(1, round(fraction * reference))
        n = int(spec)
        if n < 1:
            raise ValueError
        return n
    except ValueError:
        raise ConfigError(f"--train-sizes: {spec!r} is neither a fraction in (0, 1] nor a "
                          "positive count") from None


def run_adaptation(starts: list[StartPoint], task: TaskDef, cfg: TrainConfig, data_dir: str,
                   size_specs: list[str], seeds: list[int], output_dir: str,
                   reference_size: Optional[int] = None, min_steps: int = 0,
                   show_progress: bool = True, command: Optional[Sequence[str]] = None,
                   cache_dir: Optional[str] = None) -> list[dict]:
    """Fine-tune each start on each subset with each seed; write the report files."""
    from mtsmart.train import Trainer

    # Every start's limit is checked before any run: a later start with a shorter position
    # table would otherwise stop the sweep after the earlier starts had trained.
    tokenizers = [start_tokenizer(start, task, cfg.trust_remote_code) for start in starts]
    # The pool is tokenized with the first start's tokenizer only to learn its size and
    # labels; every run tokenizes with its own start's tokenizer.
    cache_dir = cache_dir or default_cache_dir()
    pool = load_tokenized(task, task.train_split, tokenizers[0], data_dir, cache_dir)
    sizes = resolve_sizes(size_specs, reference_size, len(pool))
    is_classification = task.type == "classification"
    summary_logger = None  # made with the first write into output_dir
    csv_path = os.path.join(output_dir, RESULTS_CSV)
    rows, settings = read_previous_runs(csv_path, task.name, recipe_settings(task, cfg, min_steps))
    recipe = recipe_fingerprint(settings)
    check_labels(starts, rows, csv_path)
    done = {(r["start"], same_path_key(r["start_path"]), r["n_train"], r["seed"]) for r in rows}
    for start in starts:
        for spec, n in sizes:
            for seed in seeds:
                if (start.label, start.key, n, seed) in done:
                    print(f"adapt {task.name}: start={start.label} n={n} seed={seed} already in "
                          f"{csv_path}, kept", flush=True)
                    continue
                indices = stratified_subset(pool.targets, n, seed, stratify=is_classification)
                batches_per_epoch = -(-n // cfg.batch_size)
                steps = max(min_steps, int(np.ceil(cfg.epochs * batches_per_epoch)))
                # config.ADAPT_SETS_PER_RUN: the settings set here, refused on the command line
                run_cfg = replace(cfg, seed=seed, max_steps=steps, eval_every=steps,
                                  eval_teacher=False, save_checkpoints=False,
                                  encoder=cfg.encoder if start.is_checkpoint else start.path)
                run_dir = os.path.join(output_dir, "runs", start.label, f"n{n}", f"seed{seed}")
                trainer = Trainer({task.name: task}, run_cfg, data_dir, run_dir,
                                  init_from=start.path if start.is_checkpoint else None,
                                  show_progress=show_progress, cache_dir=cache_dir,
                                  train_indices={task.name: indices}, command=command)
                try:
                    # settings, start and data checked before anything is written: a refused
                    # setting (fp16 on CPU) left recipe.json, runs/ and an event file behind
                    trainer.prepare()
                    write_json(os.path.join(output_dir, RECIPE_JSON), settings)
                    shutil.rmtree(run_dir, ignore_errors=True)  # a killed attempt's logs would double its curves
                    os.makedirs(run_dir)
                    trainer.setup()
                    summary = trainer.train()
                finally:
                    trainer.cleanup()
                metrics = summary["last"]["results"][task.name]
                row = {"start": start.label, "start_path": start.path, "task": task.name,
                       "size": spec, "n_train": n, "seed": seed, "steps": steps, "recipe": recipe,
                       **{m: round(v, 6) for m, v in metrics.items()},
                       "train_seconds": round(summary["train_seconds"], 1)}
                rows.append(row)
                done.add((start.label, start.key, n, seed))
                _write_csv(csv_path, rows)
                print(f"adapt {task.name}: start={start.label} n={n} seed={seed} "
                      + " ".join(f"{m}={100 * v:.2f}" for m, v in metrics.items()), flush=True)
        summary_logger = summary_logger or MetricLogger(os.path.join(output_dir, "tensorboard"))
        for spec, n in sizes:
            values = [r[task.selection_metric] for r in rows
                      if r["start"] == start.label and r["n_train"] == n]
            summary_logger.log_dict({f"adapt/{task.name}/{start.label}/{task.selection_metric}":
                                     float(np.mean(values))}, n)
    summary_logger.close()
    write_json(os.path.join(output_dir, RECIPE_JSON), settings)
    write_table(os.path.join(output_dir, TABLE_MD), rows, task)
    write_plot(os.path.join(output_dir, PLOT_PNG), rows, task)
    return rows


def start_tokenizer(start: StartPoint, task: TaskDef, trust_remote_code: bool = False):
    """The start's tokenizer, its limit lowered to the encoder's position table; a task
    max_length beyond it is refused naming the start."""
    from mtsmart.model import encoder_skeleton, fit_tokenizer_to_positions, load_tokenizer, vocabulary_problem

    encoder_dir = os.path.join(start.path, ENCODER_DIR) if start.is_checkpoint else start.path
    tokenizer = load_tokenizer(encoder_dir, trust_remote_code=trust_remote_code)
    skeleton = encoder_skeleton(encoder_dir, trust_remote_code)
    problem = vocabulary_problem(tokenizer, skeleton)
    if problem:
        raise ConfigError(f"START {start.label}'s encoder ({encoder_dir}): {problem}")
    fit_tokenizer_to_positions(tokenizer, skeleton)
    check_max_length(task, tokenizer, f"START {start.label}'s encoder")
    return tokenizer


def check_labels(starts: Sequence[StartPoint], rows: Sequence[dict] = (), csv_path: str = "") -> None:
    """One label, one start point: the table, the plot and the run folders go by the label,
    so two paths under one label would be averaged as if they were seeds of one start.

    Raises:
        ConfigError: a label given twice, or tied to another path in results.csv.
    """
    by_label = {}
    for start in starts:
        if start.label in by_label:
            raise ConfigError(f"START {start.label}: the label is given twice; name each start "
                              "point once (LABEL=PATH)")
        by_label[start.label] = start
    for row in rows:
        start = by_label.get(row["start"])
        if start is not None and start.key != same_path_key(row["start_path"]):
            recorded = row["start_path"]
            hint = ""
            if not os.path.isabs(recorded) and not os.path.exists(recorded) and os.path.exists(start.path):
                # a relative path is recorded as given, so it resolves only from the folder it was given in
                hint = (f" (if {recorded} is a path relative to the folder adapt ran in when it wrote "
                        "that row, run adapt from there)")
            raise ConfigError(f"START {start.label}={start.path}: {csv_path} has label {start.label} "
                              f"for {recorded}; give this start point another label{hint}")


def recipe_settings(task: TaskDef, cfg: TrainConfig, min_steps: int) -> dict:
    """Everything that decides what a run learns besides its start point, size and seed,
    as plain JSON values."""
    settings = {k: v for k, v in asdict(cfg).items() if k not in _NOT_RECIPE}
    task_settings = {k: v for k, v in asdict(task).items() if k != "defined_in"}
    return json.loads(json.dumps({"training": settings, "task": task_settings, "min_steps": min_steps},
                                 default=str))


def recipe_fingerprint(settings: dict) -> str:
    """A short hash of a recipe: a results.csv only ever mixes runs of one recipe."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


def _in_effect(settings: dict) -> dict:
    """A recipe's settings, flattened, without those that do nothing in its runs."""
    unused = settings_without_effect(settings["training"], [settings["task"].get("smart") or {}])
    return {k: v for k, v in flatten_settings(settings).items() if k.partition(".")[2] not in unused
            or not k.startswith("training.")}


def read_previous_runs(path: str, task_name: str, settings: dict) -> tuple[list[dict], dict]:
    """The rows of an earlier (perhaps interrupted) adapt into the same folder, so that
    runs already done are kept and not run again, and the recipe the folder goes on with:
    its own where ``settings`` differ from it only in settings without effect (an
    ``--epsilon`` with SMART off). Rows of another task or recipe are an error: reusing
    them would silently mix two experiments in one table."""
    if not os.path.exists(path):
        return [], settings
    recorded = _recorded_recipe(os.path.join(os.path.dirname(path), RECIPE_JSON))
    if recorded is not None and _in_effect(recorded) == _in_effect(settings):
        settings = recorded
    recipe = recipe_fingerprint(settings)
    with open(path, newline="", encoding="utf-8") as handle:
        previous = list(csv.DictReader(handle))
    rows = []
    for line, raw in enumerate(previous, start=2):
        if any(value in (None, "") for value in raw.values()) or None in raw:
            raise ConfigError(f"{path}: line {line} is not a complete results row; "
                              "remove that line to run it again")
        if raw.get("task") != task_name or raw.get("recipe") != recipe:
            changes = _recipe_changes(os.path.join(os.path.dirname(path), RECIPE_JSON), settings)
            raise ConfigError(
                f"{path}: line {line} is a run of task {raw.get('task')!r} with recipe "
                f"{raw.get('recipe')!r}, this command is task {task_name!r} with recipe {recipe!r} "
                f"({changes}); give a new --output or remove that file")
        try:
            rows.append({k: (v if k in _TEXT_COLUMNS else int(v) if k in _INT_COLUMNS else float(v))
                         for k, v in raw.items()})
        except (TypeError, ValueError):
            raise ConfigError(f"{path}: line {line} is not a complete results row; "
                              "remove that line to run it again") from None
    return rows, settings


def _recorded_recipe(path: str) -> Optional[dict]:
    """The settings recipe.json holds, or None (an older folder, or a damaged file)."""
    try:
        with open(path, encoding="utf-8") as handle:
            recorded = json.load(handle)
        _in_effect(recorded)  # the shape a recipe has
    except (OSError, ValueError, LookupError, TypeError, AttributeError):
        return None
    return recorded


def _recipe_changes(path: str, settings: dict) -> str:
    """The settings that differ from the recipe saved beside results.csv, as --resume names
    them (a folder written before recipe.json was kept only knows "other settings")."""
    if not os.path.exists(path):
        return "other settings"
    try:
        with open(path, encoding="utf-8") as handle:
            before = flatten_settings(json.load(handle))
    except (ValueError, TypeError, AttributeError):  # damaged: the hashes still tell them apart
        return "other settings"
    now = flatten_settings(settings)
    changed = [f"{key} was {before.get(key)}, now {now.get(key)}" for key in sorted(set(before) | set(now))
               if before.get(key) != now.get(key)]
    return "; ".join(changed[:3]) + (f"; {len(changed) - 3} more" if len(changed) > 3 else "") or "other settings"


def _write_csv(path: str, rows: list[dict]) -> None:
    with replacing(path, newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _grouped(rows: list[dict], metric: str):
    starts = list(dict.fromkeys(r["start"] for r in rows))
    sizes = sorted({r["n_train"] for r in rows})
    cells = {(s, n): [r[metric] for r in rows if r["start"] == s and r["n_train"] == n]
             for s in starts for n in sizes}
    return starts, sizes, cells


def _mean_std_cell(values: list[float]) -> str:
    if not values:
        return "–"
    if len(values) == 1:  # a "± 0.00" would claim a spread nobody measured
        return f"{100 * values[0]:.2f} (1 seed)"
    return f"{100 * statistics.mean(values):.2f} ± {100 * statistics.stdev(values):.2f}"


def write_table(path: str, rows: list[dict], task: TaskDef) -> None:
    """Mean ± std (percent) over seeds per start point and training size."""
    metric = task.selection_metric
    starts, sizes, cells = _grouped(rows, metric)
    lines = [f"{task.name} ({metric}, %, mean ± std over seeds; n = training examples)", "",
             "| start | " + " | ".join(f"n={n}" for n in sizes) + " |",
             "|" + "---|" * (1 + len(sizes))]
    for start in starts:
        out = []
        for n in sizes:
            out.append(_mean_std_cell(cells[(start, n)]))
        lines.append(f"| {start} | " + " | ".join(out) + " |")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")


def write_plot(path: str, rows: list[dict], task: TaskDef) -> None:
    """Metric vs training size (log x), one line per start point, std error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    metric = task.selection_metric
    starts, sizes, cells = _grouped(rows, metric)
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for start in starts:
        xs = [n for n in sizes if cells[(start, n)]]
        means = [100 * statistics.mean(cells[(start, n)]) for n in xs]
        stds = [100 * (statistics.stdev(cells[(start, n)]) if len(cells[(start, n)]) > 1 else 0.0)
                for n in xs]
        ax.errorbar(xs, means, yerr=stds, marker="o", capsize=3, label=start)
    ax.set_xscale("log")
    # the sizes that ran, as counts: log-scale ticks like 3×10^1 name none of them
    ax.set_xticks(sizes, [str(n) for n in sizes])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("training examples (log scale)")
    ax.set_ylabel(f"{task.name} {metric} (%)")
    ax.set_title(f"Domain adaptation: {task.name}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
