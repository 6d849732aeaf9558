"""The per-batch training objective: task loss + λ_s·R_s + μ·D_Breg.

Composes ``smart``'s pure functions with a model, a teacher and a batch; shared by the
trainer and the speed benchmark so that both time the same code.
Must not import train or cli.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

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
    backward_done: bool = False  # the memory-efficient path has already back-propagated


def batch_objective(model: MultiTaskModel, teacher: Optional[MeanTeacher], task: str,
                    task_type: TaskType, batch: dict[str, torch.Tensor], cfg: SmartConfig, *,
                    adv_weight: float, prox_weight: float, loss_weight: float = 1.0,
                    class_weights: Optional[torch.Tensor] = None,
                    perturbation_scale: float = 1.0,
                    backward: Optional[Callable[[torch.Tensor], None]] = None) -> BatchLosses:
    """Forward passes and losses of one batch.

    ``adv_weight`` / ``prox_weight`` are the weights in force at this step (0 skips the
    forward passes of that term entirely); ``class_weights`` weight the task loss only
    (ℓ_s compares two output distributions and has no class to weight);
    ``perturbation_scale`` multiplies ε, σ and η (the embedding scale when
    ``cfg.relative_to_embedding_norm`` is set).

    Without ``backward`` nothing is back-propagated: ``total`` carries the graph. With
    ``backward`` and ``cfg.memory_efficient`` (and an adversarial term), the objective
    calls ``backward`` on its parts itself and sets ``backward_done``."""
    if backward is not None and cfg.memory_efficient and adv_weight > 0:
        return _memory_efficient_objective(model, teacher, task, task_type, batch, cfg,
                                           adv_weight, prox_weight, loss_weight, class_weights,
                                           perturbation_scale, backward)
    attention_mask = batch["attention_mask"]
    token_type_ids = batch.get("token_type_ids")
    teacher_outputs = _teacher_outputs_if_used(teacher, task, batch, prox_weight)
    embeds = model.embed(batch["input_ids"])

    def forward(inputs_embeds: torch.Tensor) -> torch.Tensor:
        return model(task, inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                     token_type_ids=token_type_ids)

    clean_masks = _RngReplay(embeds.device) if cfg.same_dropout_masks and adv_weight > 0 else None
    outputs = forward(embeds)
    task_loss = task_type.loss(outputs, batch["labels"], class_weights) * loss_weight
    total = task_loss
    result = BatchLosses(total=total, task_loss=float(task_loss.detach()))

    if adv_weight > 0:
        adv = smart.adversarial_loss(
            _perturbed_forward(forward, clean_masks), embeds, outputs, attention_mask,
            task_type.divergence,
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

    if teacher_outputs is not None:
        total = _add_bregman(total, result, outputs, teacher_outputs, task_type, prox_weight)
    result.total = total
    return result


def _teacher_outputs_if_used(teacher: Optional[MeanTeacher], task: str,
                             batch: dict[str, torch.Tensor], prox_weight: float) -> Optional[torch.Tensor]:
    """The teacher runs first, before any student graph exists: the same forward costs
    about 0.1 of a plain step less on CPU than when it runs beside the live graphs
    (S1, docs/RESULTS.md). In eval mode it draws no random numbers, so the order changes
    no result."""
    if prox_weight <= 0 or teacher is None:
        return None
    return teacher.forward(task, inputs_embeds=teacher.model.embed(batch["input_ids"]),
                           attention_mask=batch["attention_mask"],
                           token_type_ids=batch.get("token_type_ids"))


def _add_bregman(total, result: BatchLosses, outputs, teacher_outputs, task_type,
                 prox_weight: float) -> torch.Tensor:
    """total + μ·D_Breg (skipped and counted when D is not finite)."""
    divergence = smart.bregman_proximal(outputs, teacher_outputs, task_type.divergence)
    if not torch.isfinite(divergence):
        result.regularizer_skipped = True
        return total
    result.teacher_divergence = float(divergence.detach())
    result.prox_loss = prox_weight * result.teacher_divergence
    return total + prox_weight * divergence


def _perturbed_forward(forward: Callable[[torch.Tensor], torch.Tensor],
                       clean_masks: Optional["_RngReplay"]) -> Callable[[torch.Tensor], torch.Tensor]:
    """The forward for the perturbed passes: ``forward`` itself, or, given the clean pass's
    masks (``cfg.same_dropout_masks``), one that replays them and leaves the random stream
    where it was (so both objective paths end it at the same point)."""
    if clean_masks is None:
        return forward

    def with_clean_masks(inputs_embeds: torch.Tensor) -> torch.Tensor:
        resume = _RngReplay(inputs_embeds.device)
        clean_masks.restore()
        try:
            return forward(inputs_embeds)
        finally:
            resume.restore()

    return with_clean_masks


class _RngReplay:
    """Records torch's generator state so that a forward pass can be run again with the
    same dropout masks."""

    def __init__(self, device: torch.device):
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state() if device.type == "cuda" else None

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state(self.cuda)


def _memory_efficient_objective(model, teacher, task, task_type, batch, cfg, adv_weight,
                                prox_weight, loss_weight, class_weights, perturbation_scale,
                                backward):
    """The same gradients as the default path, with at most one autograd graph alive at a
    time (peak memory near plain training's), for one extra graph-free forward pass.

    R_s = ℓ_s(f(x+ν), f(x)) has gradient through both arguments. Its part through the clean
    output z is the vector-Jacobian product of g_z = ∂ℓ_s/∂z with z's graph. So: run the
    clean forward without a graph (recording its dropout masks) to get z for the ascent;
    after the ascent, run f(x+ν) with a graph, take g_z on the tiny [batch, classes]
    outputs and back-propagate λ·ℓ_s(f(x+ν), stopgrad z) (freeing that graph); then replay
    the clean forward with the same masks and a graph and back-propagate
    L + μ·D + λ·⟨g_z, z⟩. The random stream ends where the default path's ends."""
    attention_mask = batch["attention_mask"]
    token_type_ids = batch.get("token_type_ids")
    ids = batch["input_ids"]

    def forward(inputs_embeds: torch.Tensor) -> torch.Tensor:
        return model(task, inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                     token_type_ids=token_type_ids)

    teacher_outputs = _teacher_outputs_if_used(teacher, task, batch, prox_weight)
    clean_masks = _RngReplay(ids.device)
    with torch.no_grad():
        embeds = model.embed(ids)
        clean_values = forward(embeds)
        clean_loss = task_type.loss(clean_values, batch["labels"], class_weights) * loss_weight
    if not torch.isfinite(clean_loss):  # decided before any backward: the batch is skipped whole
        return BatchLosses(total=clean_loss, task_loss=float(clean_loss))
    perturbed_forward = _perturbed_forward(forward, clean_masks if cfg.same_dropout_masks else None)
    noise = smart.adversarial_perturbation(
        perturbed_forward, embeds, clean_values, attention_mask, task_type.divergence,
        epsilon=cfg.epsilon * perturbation_scale, noise_std=cfg.noise_std * perturbation_scale,
        step_size=cfg.step_size * perturbation_scale, num_steps=cfg.num_steps, norm=cfg.norm)
    grad_clean = perturbed = adv_value = None
    if noise is not None:
        perturbed = perturbed_forward(model.embed(ids) + noise)
        clean_leaf = clean_values.detach().requires_grad_(True)
        with torch.enable_grad():
            adv_value = task_type.divergence(perturbed.detach(), clean_leaf)
            (grad_clean,) = torch.autograd.grad(adv_value, [clean_leaf])
        if not (torch.isfinite(adv_value) and torch.isfinite(grad_clean).all()):
            grad_clean = perturbed = None  # dropping the graph frees it, nothing is back-propagated
    end_of_step = _RngReplay(ids.device)

    result = BatchLosses(total=clean_values.new_zeros(()), task_loss=0.0, backward_done=True)
    if perturbed is not None:
        backward(adv_weight * task_type.divergence(perturbed, clean_values.detach()))
        del perturbed  # the perturbed graph is freed before the clean one is rebuilt
        result.adv_loss = float(adv_value.detach())
        result.perturbation_norm = smart.mean_token_norm(noise, attention_mask, cfg.norm)
    else:
        result.regularizer_skipped = True

    clean_masks.restore()
    outputs = forward(model.embed(ids))
    end_of_step.restore()
    task_loss = task_type.loss(outputs, batch["labels"], class_weights) * loss_weight
    result.task_loss = float(task_loss.detach())
    clean_total = task_loss
    if teacher_outputs is not None:
        clean_total = _add_bregman(clean_total, result, outputs, teacher_outputs, task_type,
                                   prox_weight)
    if grad_clean is not None:
        clean_total = clean_total + adv_weight * (grad_clean * outputs.float()).sum()
    if torch.isfinite(clean_total):  # the replay of a finite clean pass; guarded all the same
        backward(clean_total)
    else:
        result.total = clean_total.detach()
        return result
    result.total = task_loss.detach() + (result.prox_loss or 0.0) + adv_weight * (result.adv_loss or 0.0)
    return result
