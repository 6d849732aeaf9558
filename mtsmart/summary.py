"""`mtsmart summarize`: finished runs as one table, seeds of the same recipe pooled.

Runs whose settings differ only in the seed (and in how they ran: threads, logging,
gradient checkpointing) are one recipe; each recipe's row gives every task's main metric as mean ±
sample standard deviation over its seeds, with every seed's value, so a single lucky seed
is never read as a result. Recipes are labelled by the settings that tell them apart.

Must not import the trainer or the CLI.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from statistics import mean, stdev

from mtsmart.adaptation import RECIPE_JSON as ADAPT_RECIPE
from mtsmart.adaptation import RESULTS_CSV as ADAPT_RESULTS
from mtsmart.checkpoint import TRAINING_FILE, is_checkpoint, load_checkpoint_tasks
from mtsmart.config import RUN_ONLY_SETTINGS, flatten_settings, load_yaml, settings_without_effect
from mtsmart.errors import ConfigError, MtsmartError
from mtsmart.provenance import RUN_FILE
from mtsmart.run_folder import RESULTS_FILE
from mtsmart.tasks import task_to_plain

logger = logging.getLogger(__name__)

# Not part of a recipe: the seed, and what changes how a run runs but not its numbers.
# Patience (where a run stops) and evaluation cadence (which evaluation is best, where
# patience counts) do change them, though --resume may reset both.
NOT_RECIPE = {"seed", *RUN_ONLY_SETTINGS} - {"patience", "eval_every"}
TASK_KEY = "tasks."  # a recipe's keys for a task's own settings: tasks.NAME.max_length, ...
# A task's training settings, part of a recipe beside what it trains on and how it is
# scored (_task_recipe); splits the run never reads and metrics besides the main one are not.
# A setting the run's other settings left without effect (the run noted it when it was
# given: epochs beside max_steps, SMART knobs with SMART off) is no other recipe.
NO_EFFECT = "(no effect)"
TASK_RECIPE_KEYS = ("type", "text_fields", "label_field", "target_field", "labels", "max_length",
                    "sampling_weight", "loss_weight", "head_dropout", "class_weights", "smart")


@dataclass(frozen=True)
class FinishedRun:
    path: str
    seed: int
    recipe: dict  # flattened settings, the seed and run-only settings left out
    scores: dict[str, float]  # task -> main metric
    metrics: dict[str, str]  # task -> the main metric's name
    # task -> its flattened _task_recipe (its own smart: block, max_length, data, ...); empty
    # where a run from an older mtsmart kept neither it nor a checkpoint
    task_settings: dict[str, dict] = field(default_factory=dict)


def find_runs(path: str) -> list[str]:
    """``path`` if it is a run folder (or a checkpoint, which read_run explains), else the
    finished run folders at any depth beneath it, in name order; an unfinished one is named
    in a note, not silently dropped.

    Raises:
        ConfigError: ``path`` is no directory, or holds no finished run.
    """
    if not os.path.isdir(path):
        raise ConfigError(f"{path}: not a directory (give run directories)")
    if any(os.path.isfile(os.path.join(path, name)) for name in (RESULTS_FILE, RUN_FILE)) or is_checkpoint(path):
        return [path]
    found = []
    for folder, children, files in os.walk(path):
        children.sort()
        if ADAPT_RESULTS in files and ADAPT_RECIPE in files:
            logger.warning("%s: an adapt folder, left out (its %s and table.md summarise it)", folder, ADAPT_RESULTS)
        elif RESULTS_FILE in files:
            found.append(folder)
        elif RUN_FILE in files:
            logger.warning("%s: left out, not finished (no %s)", folder, RESULTS_FILE)
        else:
            continue
        children.clear()  # a run's own checkpoints and logs hold no further runs
    if not found:
        raise ConfigError(f"{path}: no finished run in it or in its sub-folders (a run folder holds "
                          f"{RESULTS_FILE} once its training ends)")
    return found


def read_run(path: str, which: str = "last", weights: str = "student") -> FinishedRun:
    """One finished run's main metric per task, from its ``results.json``: the ``last``
    evaluation or the ``best`` one (selected on the same dev set, so optimistic)."""
    results_path = os.path.join(path, RESULTS_FILE)
    if is_checkpoint(path) and not os.path.isfile(results_path):
        raise ConfigError(f"{path}: a checkpoint, not a run; give its run folder "
                          f"({os.path.dirname(os.path.abspath(path))})")
    if not os.path.isfile(results_path):
        raise ConfigError(f"{path}: no {RESULTS_FILE}, so not a finished run (finish it with "
                          "--resume, or leave it out)")
    try:
        with open(results_path, encoding="utf-8") as handle:
            summary = json.load(handle)
        if not all(isinstance(summary.get(which), dict) for which in ("last", "best")):
            raise ValueError("no 'last' and 'best' evaluations")
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise ConfigError(f"{results_path}: damaged ({err}); leave the run out or train it again") from None
    training = summary.get("training") or _training_from_checkpoint(path)
    metrics = summary.get("main_metrics") or _main_metrics_from_checkpoint(path)
    # A run without the Bregman term has no teacher (nor, for the best evaluation, a run
    # written before results.json kept it there): its row shows – for the teacher
    results = summary[which].get("teacher_results" if weights == "teacher" else "results", {})
    settings = flatten_settings(training)
    tasks = summary.get("tasks")
    tasks = _tasks_from_checkpoint(path) if tasks is None else tasks
    unused = settings_without_effect(training, [task.get("smart") or {} for task in tasks.values()])
    recipe = {k: NO_EFFECT if k in unused else v for k, v in settings.items() if k not in NOT_RECIPE}
    # Single-task runs of one recipe share a row, a column per task; a multi-task run's
    # task set is part of its recipe.
    recipe["tasks"] = ",".join(sorted(metrics)) if len(metrics) > 1 else "one each"
    start = summary.get("start")
    if start:  # fine-tuned from a checkpoint: another recipe than training.encoder's weights
        recipe["start"] = start["checkpoint"] + ("" if start.get("weights") == "student" else f" ({start['weights']})")
    # a run that kept neither: pooled only with its like, never with known ones
    recipe["task settings"] = "recorded" if tasks else "not recorded"
    task_settings = {name: _task_recipe(plain) for name, plain in tasks.items()}
    return FinishedRun(path, int(training.get("seed", 0)), recipe,
                       {task: 100 * results[task][metric] for task, metric in metrics.items() if task in results},
                       metrics, task_settings)


def _training_from_checkpoint(path: str) -> dict:
    """Runs written before results.json held their settings: a checkpoint's copy."""
    return load_yaml(os.path.join(_a_checkpoint(path), TRAINING_FILE))["training"]


def _task_recipe(plain: dict) -> dict:
    """What a task (in its YAML form) adds to a recipe, flattened: its training settings, the
    data it trains on and is scored on, and the metric it is scored by."""
    splits = plain.get("splits", {})
    return flatten_settings({
        **{k: plain[k] for k in TASK_RECIPE_KEYS if k in plain},
        "main_metric": plain.get("main_metric") or (plain.get("metrics") or [None])[0],
        "train_data": splits.get(plain.get("train_split", "train")),
        "eval_data": splits.get(plain.get("eval_split", "dev")),
    })


def _tasks_from_checkpoint(path: str) -> dict[str, dict]:
    """Runs written before results.json held their task definitions: a checkpoint's copy,
    or nothing where the run kept no checkpoint."""
    try:
        return {name: task_to_plain(task) for name, task in load_checkpoint_tasks(_a_checkpoint(path)).items()}
    except MtsmartError:  # no checkpoint, or a damaged one: unknown, pooled as before
        return {}


def _main_metrics_from_checkpoint(path: str) -> dict[str, str]:
    return {name: task.selection_metric for name, task in load_checkpoint_tasks(_a_checkpoint(path)).items()}


def _a_checkpoint(path: str) -> str:
    for name in ("last", "best"):
        if is_checkpoint(os.path.join(path, name)):
            return os.path.join(path, name)
    raise ConfigError(f"{path}: {RESULTS_FILE} is from an older mtsmart and names no settings, "
                      "and the run has no checkpoint that holds them")


def summarize(runs: list[FinishedRun]) -> str:
    """A markdown table: one row per recipe, one column per task (mean ± std [each seed])."""
    recipes, groups = zip(*_group_by_recipe(runs))
    tasks = sorted({task for run in runs for task in run.metrics})
    labels = _labels(list(recipes))
    header = ["recipe", "seeds"] + [f"{task} ({_metric_name(runs, task)})" for task in tasks]
    average_column = len(tasks) > 1
    if average_column:
        header.append("average")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, group in zip(labels, groups):
        per_task = {task: _by_seed(label, task, group) for task in tasks}
        seed_sets = {tuple(values) for values in per_task.values() if values}
        seeds = sorted({seed for values in per_task.values() for seed in values})
        cells = [label, ", ".join(map(str, sorted({run.seed for run in group})))]
        for task in tasks:
            values = list(per_task[task].values())
            cells.append(f"{_mean_std(values)} [{', '.join(f'{v:.2f}' for v in values)}]" if values else "–")
        if average_column:
            # per seed, the mean over tasks; only where every task ran the same seeds
            same = len(seed_sets) == 1 and all(per_task[t] for t in tasks)
            cells.append(_mean_std([mean(per_task[t][s] for t in tasks) for s in seeds]) if same else "–")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _group_by_recipe(runs: list[FinishedRun]) -> list[tuple[dict, list[FinishedRun]]]:
    """Runs of one recipe: the same training settings and, for every task two of them ran,
    the same task definition (so single-task runs of different tasks share a row, while a
    task's own smart: block or max_length makes another recipe). Each recipe comes with
    its tasks' settings as ``tasks.NAME.KEY`` keys."""
    groups: list[tuple[str, dict[str, dict], list[FinishedRun]]] = []
    for run in runs:
        key = json.dumps(run.recipe, sort_keys=True, default=str)
        for group_key, definitions, members in groups:
            if group_key == key and all(definitions.get(t, d) == d for t, d in run.task_settings.items()):
                definitions.update(run.task_settings)
                members.append(run)
                break
        else:
            groups.append((key, dict(run.task_settings), [run]))
    return [({**members[0].recipe, **{f"{TASK_KEY}{t}.{k}": v for t, d in definitions.items() for k, v in d.items()}},
             members) for _, definitions, members in groups]


def _by_seed(label: str, task: str, group: list[FinishedRun]) -> dict[int, float]:
    """seed -> score of ``task`` in one recipe's runs, in seed order; a seed twice is an error."""
    scores: dict[int, float] = {}
    for run in sorted(group, key=lambda r: r.seed):
        if task in run.scores:
            if run.seed in scores:
                raise ConfigError(f"recipe {label!r}: task {task!r} has seed {run.seed} in more than one "
                                  f"run ({', '.join(r.path for r in group if r.seed == run.seed)}); a "
                                  "recipe's runs of a task must be different seeds")
            scores[run.seed] = run.scores[task]
    return scores


def _labels(recipes: list[dict]) -> list[str]:
    """Each recipe named by the settings whose values differ between recipes."""
    if len(recipes) == 1:
        return ["all runs"]
    keys = sorted({k for recipe in recipes for k in recipe})
    # a setting is compared, and named, only where it had an effect
    varying = [k for k in keys if len({json.dumps(r.get(k), default=str) for r in recipes
                                       if _has_task_of(r, k) and r.get(k) != NO_EFFECT}) > 1]
    return [", ".join(f"{k}={recipe.get(k, 'unset')}" for k in varying
                      if _has_task_of(recipe, k) and recipe.get(k) != NO_EFFECT)
            or "the same settings" for recipe in recipes]


def _has_task_of(recipe: dict, key: str) -> bool:
    """Whether ``recipe`` ran the task a ``tasks.NAME.KEY`` key belongs to (any other key:
    True): a task's definition is compared only between recipes that ran it."""
    if not key.startswith(TASK_KEY):
        return True
    prefix = TASK_KEY + key[len(TASK_KEY):].split(".", 1)[0] + "."
    return any(k.startswith(prefix) for k in recipe)


def _metric_name(runs: list[FinishedRun], task: str) -> str:
    names = sorted({run.metrics[task] for run in runs if task in run.metrics})
    return "/".join(names)


def _mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{mean(values):.2f} ± {stdev(values):.2f}"
