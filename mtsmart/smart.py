"""SMART's regularisers as pure functions (Jiang et al., ACL 2020; docs/smart.md).

Everything here takes a model-forward callable, tensors and numbers; nothing knows of the
trainer, the optimizer or the configuration files.
Must not import config, model, data, train or cli.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

ForwardFn = Callable[[torch.Tensor], torch.Tensor]  # word embeddings → head outputs
Divergence = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# Keeps the per-token normalisation finite where a token's gradient is exactly zero.
_TINY = 1e-12


def token_norms(x: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-token norm of [batch, seq, hidden] → [batch, seq, 1] ('inf' or 'l2')."""
    if norm == "inf":
        return x.abs().amax(dim=-1, keepdim=True)
    if norm == "l2":
        return x.norm(dim=-1, keepdim=True)
    raise ValueError(f"norm must be 'inf' or 'l2', got {norm!r}")


def normalize_per_token(g: torch.Tensor, norm: str) -> torch.Tensor:
    """g / ‖g‖ per token, so every token's step has unit size in the chosen norm."""
    return g / (token_norms(g, norm) + _TINY)


def project_per_token(noise: torch.Tensor, epsilon: float, norm: str) -> torch.Tensor:
    """Π_ε: project each token's perturbation onto the ε-ball of the chosen norm."""
    if norm == "inf":
        return noise.clamp(-epsilon, epsilon)
    scale = (epsilon / (token_norms(noise, norm) + _TINY)).clamp(max=1.0)
    return noise * scale


@dataclass
class AdversarialResult:
    """The regulariser R_s and what to log about it.

    ``loss`` is a scalar (zero with no graph when the batch was skipped);
    ``perturbation_norm`` the mean per-token norm of the final ν over real tokens;
    ``is_finite`` False when a non-finite value made the regulariser skip this batch."""

    loss: torch.Tensor
    perturbation_norm: float
    is_finite: bool


def adversarial_loss(forward_fn: ForwardFn, embeds: torch.Tensor, clean_outputs: torch.Tensor,
                     attention_mask: torch.Tensor, divergence: Divergence, *,
                     epsilon: float, noise_std: float, step_size: float, num_steps: int = 1,
                     norm: str = "inf", generator: Optional[torch.Generator] = None
                     ) -> AdversarialResult:
    """Smoothness-inducing adversarial regulariser R_s for one batch.

    Args:
        forward_fn: maps word embeddings [batch, seq, hidden] to head outputs; the model
            adds position / type embeddings itself, so they are applied once.
        embeds: the clean word embeddings x, with their graph (gradients reach the
            embedding table through the final term).
        clean_outputs: f(x; θ) with its graph: R_s's gradient flows through both sides.
        attention_mask: [batch, seq]; the noise stays zero where it is 0.
        divergence: ℓ_s of the task type (symmetric KL, squared error, ...).
        epsilon: ε, radius of each token's perturbation ball.
        noise_std: σ of the initial Gaussian noise.
        step_size: η of each ascent step.
        num_steps: K ascent steps.
        norm: 'inf' or 'l2', for the normalisation and the projection.
    Returns:
        AdversarialResult with R_s = ℓ_s(f(x + ν), f(x)).
    """
    noise = adversarial_perturbation(
        forward_fn, embeds, clean_outputs, attention_mask, divergence, epsilon=epsilon,
        noise_std=noise_std, step_size=step_size, num_steps=num_steps, norm=norm,
        generator=generator)
    if noise is None:
        return AdversarialResult(embeds.new_zeros((), dtype=torch.float32), 0.0, False)
    loss = divergence(forward_fn(embeds + noise), clean_outputs)
    pert = mean_token_norm(noise, attention_mask, norm)
    if not torch.isfinite(loss):
        return AdversarialResult(embeds.new_zeros((), dtype=torch.float32), pert, False)
    return AdversarialResult(loss, pert, True)


def adversarial_perturbation(forward_fn: ForwardFn, embeds: torch.Tensor,
                             clean_outputs: torch.Tensor, attention_mask: torch.Tensor,
                             divergence: Divergence, *, epsilon: float, noise_std: float,
                             step_size: float, num_steps: int = 1, norm: str = "inf",
                             generator: Optional[torch.Generator] = None
                             ) -> Optional[torch.Tensor]:
    """The perturbation ν after K projected ascent steps (no graph), or None when a
    non-finite divergence or gradient appeared. Arguments as ``adversarial_loss``."""
    mask = attention_mask.unsqueeze(-1).to(embeds.dtype)
    base = embeds.detach()
    target = clean_outputs.detach()
    noise = torch.randn(base.shape, generator=generator, device=base.device, dtype=base.dtype)
    noise = project_per_token(noise * noise_std, epsilon, norm) * mask
    for _ in range(num_steps):
        noise.requires_grad_(True)
        ascent_div = divergence(forward_fn(base + noise), target)
        # Gradients w.r.t. ν only: torch.autograd.grad with inputs=[noise] computes no
        # parameter gradients, so the ascent neither costs nor leaks them.
        (grad,) = torch.autograd.grad(ascent_div, [noise])
        if not (torch.isfinite(ascent_div) and torch.isfinite(grad).all()):
            return None
        with torch.no_grad():
            noise = noise + step_size * normalize_per_token(grad, norm)
            noise = project_per_token(noise, epsilon, norm) * mask
    return noise.detach()


def mean_token_norm(noise: torch.Tensor, attention_mask: torch.Tensor, norm: str) -> float:
    """Mean per-token norm of ν over real (unpadded) tokens."""
    mask = attention_mask.unsqueeze(-1).to(noise.dtype)
    return float((token_norms(noise, norm) * mask).sum() / mask.sum().clamp(min=1.0))


def bregman_proximal(student_outputs: torch.Tensor, teacher_outputs: torch.Tensor,
                     divergence: Divergence) -> torch.Tensor:
    """D_Breg(θ, θ̃) on one batch: ℓ_s(f(x; θ), f(x; θ̃)), the teacher side constant."""
    return divergence(student_outputs, teacher_outputs.detach())


def teacher_momentum(update: int, total_updates: int, beta: float, beta_early: float,
                     early_fraction: float, horizon_fraction: Optional[float] = None) -> float:
    """β for the teacher update after optimizer update number ``update`` (0-based):
    ``beta_early`` during the first ``early_fraction`` of the updates, then ``beta``.

    With ``horizon_fraction`` h, both are capped at 1 − 1/(h·total_updates): the teacher
    then averages over about h of the run whatever its length. In a run of a few hundred
    updates a fixed β = 0.999 would keep the teacher at the starting weights (a random
    head), an anchor that pulls toward uniform predictions; long runs keep β."""
    if horizon_fraction is not None:
        cap = 1.0 - 1.0 / max(1.0, horizon_fraction * total_updates)
        beta, beta_early = min(beta, cap), min(beta_early, cap)
    return beta_early if update < early_fraction * total_updates else beta


def ramp_weight(update: int, total_updates: int, weight: float, warmup_fraction: float) -> float:
    """``weight`` ramped linearly from 0 over the first ``warmup_fraction`` of updates."""
    if warmup_fraction <= 0:
        return weight
    warmup = warmup_fraction * total_updates
    return weight * min(1.0, (update + 1) / max(warmup, 1.0))


def embedding_scale(embedding_weight: torch.Tensor, norm: str) -> float:
    """Mean per-token norm of an embedding table [vocab, hidden]: the natural unit for ε
    when ``relative_to_embedding_norm`` is set."""
    with torch.no_grad():
        return float(token_norms(embedding_weight.float().unsqueeze(0), norm).mean())
