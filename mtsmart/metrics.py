"""Evaluation metrics on full prediction arrays, as GLUE reports them.

Does: map metric names to functions of (predictions, targets) built on scikit-learn and
scipy. Must not import torch or any other mtsmart module.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

MetricFn = Callable[[np.ndarray, np.ndarray], float]


def accuracy(preds: np.ndarray, targets: np.ndarray) -> float:
    return float(accuracy_score(targets, preds))


def f1(preds: np.ndarray, targets: np.ndarray) -> float:
    """Binary F1 of class 1 for two-class tasks (as GLUE's MRPC), macro F1 otherwise."""
    classes = np.union1d(np.unique(targets), np.unique(preds))
    average = "binary" if len(classes) <= 2 and set(classes.tolist()) <= {0, 1} else "macro"
    return float(f1_score(targets, preds, average=average, zero_division=0))


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


def acc_and_f1(preds: np.ndarray, targets: np.ndarray) -> float:
    return (accuracy(preds, targets) + f1(preds, targets)) / 2


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


def compute_metrics(names: tuple[str, ...], table: dict[str, MetricFn],
                    preds: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    return {name: table[name](preds, targets) for name in names}
