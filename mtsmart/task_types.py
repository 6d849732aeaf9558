"""The task-type registry: each task type supplies head size, target parsing, loss, SMART
divergence ℓ_s, predictions and metrics together. Adding a task type is one class here.

Must not import config, data, model or anything above them.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import ClassVar, Optional, Sequence

import numpy as np
import torch

from mtsmart import losses, metrics


class TaskType(ABC):
    """Base class; subclasses register themselves with ``@register``."""

    name: ClassVar[str]
    metric_table: ClassVar[dict[str, metrics.MetricFn]]
    default_metrics: ClassVar[tuple[str, ...]]
    target_dtype: ClassVar[torch.dtype]
    # The target of an example read without its label (prediction on unlabeled data).
    missing_target: ClassVar[float | int]

    @abstractmethod
    def output_size(self, labels: Sequence[str] | None) -> int:
        ...

    @abstractmethod
    def parse_target(self, raw, labels: Sequence[str] | None) -> float | int:
        """Turn a raw value read from a file or dataset into the training target.
        Raises ValueError with a message saying what would be valid."""
        ...

    @abstractmethod
    def loss(self, outputs: torch.Tensor, targets: torch.Tensor,
             class_weights: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``class_weights``: per-class weights (classification; None elsewhere)."""
        ...

    @abstractmethod
    def divergence(self, outputs_a: torch.Tensor, outputs_b: torch.Tensor) -> torch.Tensor:
        """ℓ_s of SMART between two output tensors of this task's head."""
        ...

    @abstractmethod
    def predict(self, outputs: torch.Tensor) -> np.ndarray:
        ...

    @abstractmethod
    def format_prediction(self, value, labels: Sequence[str] | None) -> str:
        ...

    def compute_metrics(self, names: Sequence[str], preds: np.ndarray, targets: np.ndarray,
                        labels: Sequence[str] | None = None) -> dict[str, float]:
        return metrics.compute_metrics(tuple(names), self.metric_table, preds, targets)


FLOAT32_MAX = float(np.finfo(np.float32).max)
TASK_TYPES: dict[str, TaskType] = {}


def register(cls: type[TaskType]) -> type[TaskType]:
    TASK_TYPES[cls.name] = cls()
    return cls


def get_task_type(name: str) -> TaskType:
    return TASK_TYPES[name]


@register
class Classification(TaskType):
    name = "classification"
    metric_table = metrics.CLASSIFICATION_METRICS
    default_metrics = ("accuracy",)
    target_dtype = torch.long
    missing_target = -1

    def output_size(self, labels):
        return len(labels)

    def parse_target(self, raw, labels):
        if isinstance(raw, str):
            value = raw.strip()
            if value in labels:
                return labels.index(value)
        elif isinstance(raw, (int, np.integer)) and not isinstance(raw, bool):
            # Hub datasets store ClassLabel ids: the label list gives their order.
            if 0 <= int(raw) < len(labels):
                return int(raw)
            raise ValueError(f"class id {raw} is not one of 0..{len(labels) - 1}"
                             + (" (the hub's -1 marks a hidden label)" if raw == -1 else ""))
        raise ValueError(f"label {raw!r} is not in the label list (valid: {', '.join(labels)})")

    def loss(self, outputs, targets, class_weights=None):
        return losses.classification_loss(outputs, targets, class_weights)

    def divergence(self, outputs_a, outputs_b):
        return losses.symmetric_kl(outputs_a, outputs_b)

    def predict(self, outputs):
        return outputs.argmax(dim=-1).cpu().numpy()

    def format_prediction(self, value, labels):
        return labels[int(value)]

    def compute_metrics(self, names, preds, targets, labels=None):
        table = metrics.classification_metrics(len(labels)) if labels else self.metric_table
        return metrics.compute_metrics(tuple(names), table, preds, targets)


@register
class Regression(TaskType):
    name = "regression"
    metric_table = metrics.REGRESSION_METRICS
    default_metrics = ("pearson", "spearman")
    target_dtype = torch.float32
    missing_target = math.nan

    def output_size(self, labels):
        return 1

    def parse_target(self, raw, labels):
        try:
            value = float(raw.strip() if isinstance(raw, str) else raw)
        except (TypeError, ValueError):
            raise ValueError(f"target {raw!r} is not a number") from None
        if not math.isfinite(value):
            raise ValueError(f"target {raw!r} is not a finite number")
        if abs(value) > FLOAT32_MAX:  # finite here, inf once stored as float32: every loss NaN
            raise ValueError(f"target {raw!r} is beyond float32's range (|x| <= {FLOAT32_MAX:.3g})")
        return value

    def loss(self, outputs, targets, class_weights=None):
        if class_weights is not None:
            raise ValueError("regression tasks have no classes to weight")
        return losses.regression_loss(outputs, targets)

    def divergence(self, outputs_a, outputs_b):
        return losses.squared_error(outputs_a, outputs_b)

    def predict(self, outputs):
        return outputs.float().reshape(-1).cpu().numpy()

    def format_prediction(self, value, labels):
        return f"{float(value):.6f}"
