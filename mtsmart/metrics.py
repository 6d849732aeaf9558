"""Evaluation metrics on full prediction arrays, as GLUE reports them.

Does: map metric names to functions of (predictions, targets) built on scikit-learn and
scipy. Must not import torch or any other mtsmart module.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Callable, Optional

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

MetricFn = Callable[[np.ndarray, np.ndarray], float]


def accuracy(preds: np.ndarray, targets: np.ndarray) -> float:
    return float(accuracy_score(targets, preds))


def f1(preds: np.ndarray, targets: np.ndarray, num_classes: Optional[int] = None) -> float:
    """Binary F1 of class 1 for two-class tasks (as GLUE's MRPC), macro F1 otherwise.
    ``num_classes``, the task's label count, decides which; without it, the classes the
    arrays hold do (a three-label task whose split lacks one label would read as binary)."""
    if num_classes is None:
        classes = np.union1d(np.unique(targets), np.unique(preds))
        binary = len(classes) <= 2 and set(classes.tolist()) <= {0, 1}
    else:
        binary = num_classes == 2
    return float(f1_score(targets, preds, average="binary" if binary else "macro", zero_division=0))


def mcc(preds: np.ndarray, targets: np.ndarray) -> float:
    return float(matthews_corrcoef(targets, preds))


def _correlation(fn, preds: np.ndarray, targets: np.ndarray) -> float:
    # A constant prediction has no defined correlation; report 0 rather than NaN so that
    # model selection and averages stay usable (a collapsed regressor is worth nothing).
    if np.std(preds) == 0 or np.std(targets) == 0:
        return 0.0
    value = float(fn(preds, targets)[0])
    return 0.0 if math.isnan(value) else value


def pearson(preds: np.ndarray, targets: np.ndarray) -> float:
    return _correlation(pearsonr, preds, targets)


def spearman(preds: np.ndarray, targets: np.ndarray) -> float:
    return _correlation(spearmanr, preds, targets)


def acc_and_f1(preds: np.ndarray, targets: np.ndarray, num_classes: Optional[int] = None) -> float:
    return (accuracy(preds, targets) + f1(preds, targets, num_classes)) / 2


def pearson_and_spearman(preds: np.ndarray, targets: np.ndarray) -> float:
    return (pearson(preds, targets) + spearman(preds, targets)) / 2


CLASSIFICATION_METRICS: dict[str, MetricFn] = {
    "accuracy": accuracy,
    "f1": f1,
    "mcc": mcc,
    "acc_and_f1": acc_and_f1,
}
REGRESSION_METRICS: dict[str, MetricFn] = {
    "pearson": pearson,
    "spearman": spearman,
    "pearson_and_spearman": pearson_and_spearman,
}


def classification_metrics(num_classes: int) -> dict[str, MetricFn]:
    """CLASSIFICATION_METRICS for a task with ``num_classes`` labels: F1's averaging follows
    the task, not the classes one split (or one bootstrap resample) happens to hold."""
    return {**CLASSIFICATION_METRICS,
            "f1": partial(f1, num_classes=num_classes),
            "acc_and_f1": partial(acc_and_f1, num_classes=num_classes)}


def compute_metrics(names: tuple[str, ...], table: dict[str, MetricFn],
                    preds: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    return {name: table[name](preds, targets) for name in names}
