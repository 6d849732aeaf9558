"""The per-batch training objective: task loss + λ_s·R_s + μ·D_Breg.

Composes ``smart``'s pure functions with a model, a teacher and a batch; shared by the
trainer and the speed benchmark so that both time the same code.
Must not import train or cli.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import torch

from mtsmart import smart
from mtsmart.config import SmartConfig
from mtsmart.ema import MeanTeacher
from mtsmart.losses import task_loss_share
from mtsmart.model import MultiTaskModel
from mtsmart.task_types import TaskType


@dataclass
class BatchLosses:
    """``total`` carries the graph; the rest are floats for logging (None = not computed)."""

    total: torch.Tensor
    task_loss: float
    adv_loss: Optional[float] = None  # λ_s·R_s as added to the total
    adv_divergence: Optional[float] = None  # R_s itself
    prox_loss: Optional[float] = None  # μ·D as added to the total
    teacher_divergence: Optional[float] = None  # D itself
    perturbation_norm: Optional[float] = None
    regularizer_skipped: bool = False
    backward_done: bool = False  # the memory-efficient path has back-propagated each half


def batch_objective(model: MultiTaskModel, teacher: Optional[MeanTeacher], task: str,
                    task_type: TaskType, batch: dict[str, torch.Tensor], cfg: SmartConfig, *,
                    adv_weight: float, prox_weight: float, loss_weight: float = 1.0,
                    class_weights: Optional[torch.Tensor] = None,
                    perturbation_scale: float = 1.0,
                    backward: Optional[Callable[[torch.Tensor], None]] = None,
                    side_stream: Optional["SideStream"] = None) -> BatchLosses:
    """Forward passes and losses of one batch.

    ``adv_weight`` / ``prox_weight`` are the weights in force at this step (0 skips the
    forward passes of that term entirely); ``class_weights`` weight the task loss only
    (ℓ_s compares two output distributions and has no class to weight);
    ``perturbation_scale`` multiplies ε, σ and η (the embedding scale when
    ``cfg.relative_to_embedding_norm`` is set). With ``side_stream`` the adversarial
    term's random draws come from it instead of torch's global generator.

    Without ``backward`` nothing is back-propagated: ``total`` carries the graph. With
    ``backward`` and ``cfg.memory_efficient`` (and an adversarial term), the objective
    runs the batch in two halves, calls ``backward`` on each itself and sets
    ``backward_done``."""
    weights = dict(adv_weight=adv_weight, prox_weight=prox_weight, loss_weight=loss_weight,
                   class_weights=class_weights, perturbation_scale=perturbation_scale,
                   side_stream=side_stream)
    if (backward is not None and cfg.memory_efficient and adv_weight > 0
            and batch["input_ids"].shape[0] > 1):
        return _sliced_objective(model, teacher, task, task_type, batch, cfg, backward, **weights)
    return _objective(model, teacher, task, task_type, batch, cfg, **weights)


def _objective(model: MultiTaskModel, teacher: Optional[MeanTeacher], task: str,
               task_type: TaskType, batch: dict[str, torch.Tensor], cfg: SmartConfig, *,
               adv_weight: float, prox_weight: float, loss_weight: float,
               class_weights: Optional[torch.Tensor], perturbation_scale: float,
               side_stream: Optional["SideStream"]) -> BatchLosses:
    """The default path: the clean and the perturbed graph both alive until one backward."""
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
        with side_stream.active() if side_stream is not None else nullcontext():
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
            result.adv_divergence = float(adv.loss.detach())
            result.adv_loss = adv_weight * result.adv_divergence
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
    where it was (so the replay changes no later draw)."""
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


class SideStream:
    """A random stream of SMART's own: the ascent's starting noise and the perturbed
    passes' dropout masks draw from it, not from torch's global generator, which the clean
    pass (and so plain training) draws from. A SMART run then sees the same clean dropout
    masks as a plain run with its seed (the data order is the seed's already): what
    separates the two is SMART, not another draw of dropout masks, which on CoLA alone moves
    dev MCC by several points (docs/RESULTS.md, Q1)."""

    def __init__(self, seed: int, device: torch.device):
        self.device = device
        main = _RngReplay(device)
        torch.manual_seed(seed)
        self._state = _RngReplay(device)
        main.restore()

    @contextmanager
    def active(self) -> Iterator[None]:
        """Draws inside the block come from this stream; the global one is left as it was."""
        main = _RngReplay(self.device)
        self._state.restore()
        try:
            yield
        finally:
            self._state = _RngReplay(self.device)
            main.restore()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"cpu": self._state.cpu, **({"cuda": self._state.cuda} if self._state.cuda is not None else {})}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self._state.cpu = state["cpu"]
        if "cuda" in state and self._state.cuda is not None:
            self._state.cuda = state["cuda"]


def _sliced_objective(model, teacher, task, task_type, batch, cfg, backward, *, adv_weight,
                      prox_weight, loss_weight, class_weights, perturbation_scale,
                      side_stream) -> BatchLosses:
    """``memory_efficient``: the default path on each half of the batch in turn, each half
    back-propagated before the next is built. Two half-batch graphs alive at a time hold
    about what plain training's one whole-batch graph holds, and every pass still runs
    once (S1 in docs/RESULTS.md: peak 1.14× plain for 1.03× the default path's time).

    Every term is a mean over examples, so weighting each half's terms by its share of the
    batch gives the whole batch's objective (the task loss by its share of the class
    weights, which are what a weighted cross-entropy averages over). Dropout masks and the
    starting noise are drawn per half, so the gradient equals the default path's in
    distribution, not draw for draw. A half whose loss is not finite is skipped; the
    other half's gradient is kept."""
    size = batch["input_ids"].shape[0]
    halves = [slice(0, (size + 1) // 2), slice((size + 1) // 2, size)]
    parts: list[tuple[float, float, BatchLosses]] = []
    for rows in halves:
        share = (rows.stop - rows.start) / size
        task_share = task_loss_share(class_weights, batch["labels"][rows], batch["labels"])
        half = _batch_rows(batch, rows)
        # ×share on the whole half below; the task loss needs task_share instead.
        losses = _objective(model, teacher, task, task_type, half, cfg, adv_weight=adv_weight,
                            prox_weight=prox_weight, loss_weight=loss_weight * task_share / share,
                            class_weights=class_weights, perturbation_scale=perturbation_scale,
                            side_stream=side_stream)
        if torch.isfinite(losses.total):
            backward(losses.total * share)
        parts.append((share, float(half["attention_mask"].sum()), losses))
    return _combined(parts)


def _batch_rows(batch: dict[str, torch.Tensor], rows: slice) -> dict[str, torch.Tensor]:
    """Some rows of a batch, without the trailing columns that are padding in all of
    them (a length-grouped batch is padded to its longest example, a half often to less)."""
    part = {key: value[rows] for key, value in batch.items()}
    mask = part["attention_mask"]
    used = mask.any(dim=0).nonzero()
    length = int(used.max()) + 1 if len(used) else 1
    if length < mask.shape[1]:
        for key in ("input_ids", "attention_mask", "token_type_ids"):
            if key in part:
                part[key] = part[key][:, :length]
    return part


def _combined(parts: list[tuple[float, float, BatchLosses]]) -> BatchLosses:
    """The whole batch's logged values from its halves' (share, real tokens, losses)."""

    def mean_of(field: str, by_tokens: bool = False) -> Optional[float]:
        known = [(tokens if by_tokens else share, getattr(losses, field))
                 for share, tokens, losses in parts if getattr(losses, field) is not None]
        if not known:
            return None
        return sum(w * v for w, v in known) / sum(w for w, _ in known)

    total = sum(share * losses.total.detach() for share, _, losses in parts)
    return BatchLosses(
        total=total, task_loss=sum(share * losses.task_loss for share, _, losses in parts),
        adv_loss=mean_of("adv_loss"), adv_divergence=mean_of("adv_divergence"), prox_loss=mean_of("prox_loss"),
        teacher_divergence=mean_of("teacher_divergence"),
        perturbation_norm=mean_of("perturbation_norm", by_tokens=True),
        regularizer_skipped=any(losses.regularizer_skipped for _, _, losses in parts),
        backward_done=True)
