"""The per-batch training objective: task loss + λ_s·R_s + μ·D_Breg.

Composes ``smart``'s pure functions with a model, a teacher and a batch; shared by the
trainer and the speed benchmark so that both time the same code.
Must not import train or cli.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from mtsmart import smart
from mtsmart.config import SmartConfig
from mtsmart.ema import MeanTeacher
from mtsmart.model import MultiTaskModel
from mtsmart.task_types import TaskType


@dataclass
class BatchLosses:
    """``total`` carries the graph; the rest are floats for logging (None = not computed)."""

    total: torch.Tensor
    task_loss: float
    adv_loss: Optional[float] = None
    prox_loss: Optional[float] = None  # μ·D as added to the total
    teacher_divergence: Optional[float] = None  # D itself
    perturbation_norm: Optional[float] = None
    regularizer_skipped: bool = False


def batch_objective(model: MultiTaskModel, teacher: Optional[MeanTeacher], task: str,
                    task_type: TaskType, batch: dict[str, torch.Tensor], cfg: SmartConfig, *,
                    adv_weight: float, prox_weight: float, loss_weight: float = 1.0,
                    perturbation_scale: float = 1.0) -> BatchLosses:
    """Forward passes and losses of one batch (no backward).

    ``adv_weight`` / ``prox_weight`` are the weights in force at this step (0 skips the
    forward passes of that term entirely); ``perturbation_scale`` multiplies ε, σ and η
    (the embedding scale when ``cfg.relative_to_embedding_norm`` is set)."""
    attention_mask = batch["attention_mask"]
    token_type_ids = batch.get("token_type_ids")
    embeds = model.embed(batch["input_ids"])

    def forward(inputs_embeds: torch.Tensor) -> torch.Tensor:
        return model(task, inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                     token_type_ids=token_type_ids)

    outputs = forward(embeds)
    task_loss = task_type.loss(outputs, batch["labels"]) * loss_weight
    total = task_loss
    result = BatchLosses(total=total, task_loss=float(task_loss.detach()))

    if adv_weight > 0:
        adv = smart.adversarial_loss(
            forward, embeds, outputs, attention_mask, task_type.divergence,
            epsilon=cfg.epsilon * perturbation_scale,
            noise_std=cfg.noise_std * perturbation_scale,
            step_size=cfg.step_size * perturbation_scale,
            num_steps=cfg.num_steps, norm=cfg.norm,
        )
        result.perturbation_norm = adv.perturbation_norm
        if adv.is_finite:
            total = total + adv_weight * adv.loss
            result.adv_loss = float(adv.loss.detach())
        else:
            result.regularizer_skipped = True

    if prox_weight > 0 and teacher is not None:
        teacher_outputs = teacher.forward(
            task, inputs_embeds=teacher.model.embed(batch["input_ids"]),
            attention_mask=attention_mask, token_type_ids=token_type_ids)
        divergence = smart.bregman_proximal(outputs, teacher_outputs, task_type.divergence)
        if torch.isfinite(divergence):
            total = total + prox_weight * divergence
            result.teacher_divergence = float(divergence.detach())
            result.prox_loss = prox_weight * result.teacher_divergence
        else:
            result.regularizer_skipped = True

    result.total = total
    return result
