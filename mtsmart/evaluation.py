"""Evaluation and prediction: run a model over a split in file order and score it.

Must not import train or cli.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from mtsmart.data import TokenizedSplit, eval_batches
from mtsmart.model import MultiTaskModel
from mtsmart.tasks import TaskDef


@torch.no_grad()
def predict_split(model: MultiTaskModel, task: TaskDef, split: TokenizedSplit, batch_size: int,
                  pad_token_id: int, device: torch.device | str = "cpu",
                  autocast_dtype: Optional[torch.dtype] = None) -> np.ndarray:
    """Predictions (class ids or scores) for every example, in file order."""
    was_training = model.training
    model.eval()
    preds = None
    device = torch.device(device)
    try:
        for batch in eval_batches(split, batch_size, pad_token_id):
            batch = {k: v.to(device) for k, v in batch.items()}
            with torch.autocast(device.type, dtype=autocast_dtype or torch.bfloat16,
                                enabled=autocast_dtype is not None):
                outputs = model.forward_batch(task.name, batch)
            batch_preds = task.task_type.predict(outputs.float())
            if preds is None:
                preds = np.zeros(len(split), dtype=batch_preds.dtype)
            preds[batch["index"].cpu().numpy()] = batch_preds
    finally:
        model.train(was_training)
    if preds is None:  # an empty split (a replica's share of a dev set smaller than the replicas)
        preds = task.task_type.predict(torch.zeros(0, task.task_type.output_size(task.labels)))
    return preds


def score_split(task: TaskDef, preds: np.ndarray, split: TokenizedSplit) -> dict[str, float]:
    return score(task, preds, split.targets)


def score(task: TaskDef, preds: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    """Every metric of ``task`` on these predictions (F1's averaging from the task's labels)."""
    return task.task_type.compute_metrics(task.metrics, preds, targets, task.labels)


def bootstrap_intervals(task: TaskDef, preds: np.ndarray, targets: np.ndarray, resamples: int,
                        level: float = 0.95, seed: int = 0) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap interval of each metric: the examples resampled with
    replacement ``resamples`` times (seeded, so the interval is reproducible). On a dev set
    of a few hundred examples one example moves accuracy by a third of a point, and the
    interval says how far the score could move with another draw of the same size."""
    (draws,) = _resampled_metrics(task, [preds], targets, resamples, seed)
    return {metric: _interval(values, level) for metric, values in draws.items()}


def paired_bootstrap(task: TaskDef, preds_a: np.ndarray, preds_b: np.ndarray, targets: np.ndarray,
                     resamples: int, level: float = 0.95, seed: int = 0) -> dict[str, dict[str, float]]:
    """B against A on the same examples: for each metric, both scores, B − A, the
    percentile-bootstrap interval of B − A (the SAME resampled examples score both, so what
    the two share cancels), and the share of resamples in which B does not beat A, a
    one-sided p-value for "B is better"."""
    point_a, point_b = score(task, preds_a, targets), score(task, preds_b, targets)
    draws_a, draws_b = _resampled_metrics(task, [preds_a, preds_b], targets, resamples, seed)
    report = {}
    for metric in task.metrics:
        gaps = np.asarray(draws_b[metric]) - np.asarray(draws_a[metric])
        low, high = _interval(gaps, level)
        report[metric] = {"a": point_a[metric], "b": point_b[metric], "b_minus_a": point_b[metric] - point_a[metric],
                          "low": low, "high": high, "p_b_not_better": float(np.mean(gaps <= 0))}
    return report


def _resampled_metrics(task: TaskDef, predictions: list[np.ndarray], targets: np.ndarray, resamples: int,
                       seed: int) -> list[dict[str, list[float]]]:
    """Every metric of each prediction array on the same ``resamples`` draws of the
    examples with replacement."""
    rng = np.random.default_rng(seed)
    draws = [{metric: [] for metric in task.metrics} for _ in predictions]
    for _ in range(resamples):
        index = rng.integers(0, len(targets), len(targets))
        for preds, into in zip(predictions, draws):
            for metric, value in score(task, preds[index], targets[index]).items():
                into[metric].append(value)
    return draws


def _interval(values, level: float) -> tuple[float, float]:
    tail = 100 * (1 - level) / 2
    return float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))


def selection_score(results: dict[str, dict[str, float]], tasks: dict[str, TaskDef],
                    select_metric: str) -> float:
    """``average``: the mean of each task's main metric; ``TASK/METRIC``: that one value."""
    if select_metric == "average":
        return float(np.mean([results[name][tasks[name].selection_metric] for name in results]))
    task_name, metric = select_metric.split("/", 1)
    return float(results[task_name][metric])


def format_table(results: dict[str, dict[str, float]], tasks: dict[str, TaskDef], splits: dict[str, str],
                 intervals: Optional[dict[str, dict[str, tuple[float, float]]]] = None) -> str:
    """A per-task table of metrics on each task's split, values in percent as GLUE reports
    them, each with its interval where ``intervals`` gives one. Rows and metrics follow the
    task definitions' order, not the order a results file stored them in (JSON records are
    written with sorted keys)."""
    lines = [f"{'task':<12} {'split':<8} metrics", "-" * 56]
    for name in (n for n in tasks if n in results):
        values, bounds = results[name], (intervals or {}).get(name, {})
        order = [m for m in tasks[name].metrics if m in values] + [m for m in values if m not in tasks[name].metrics]
        cells = "  ".join(f"{k}={100 * values[k]:.2f}" + (f" [{100 * bounds[k][0]:.2f}, {100 * bounds[k][1]:.2f}]"
                                                          if k in bounds else "")
                          for k in order)
        lines.append(f"{name:<12} {splits[name]:<8} {cells}")
    return "\n".join(lines)
