"""Task losses and SMART divergences, always computed in float32.

Does: the loss of each task type and its smoothness divergence ℓ_s.
Must not import any other mtsmart module: these are pure tensor functions.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F


def symmetric_kl(logits_p: torch.Tensor, logits_q: torch.Tensor) -> torch.Tensor:
    """KL(P‖Q) + KL(Q‖P) between the softmax distributions, averaged over the batch.

    Uses Σ (p − q)(log p − log q), which equals the sum of both KL terms and is computed
    from log-softmax in float32 so that it stays finite and exact under mixed precision.

    Args:
        logits_p, logits_q: [batch, num_classes].
    Returns:
        A scalar float32 tensor, >= 0, zero iff the two distributions are equal.
    """
    log_p = F.log_softmax(logits_p.float(), dim=-1)
    log_q = F.log_softmax(logits_q.float(), dim=-1)
    per_example = ((log_p.exp() - log_q.exp()) * (log_p - log_q)).sum(dim=-1)
    return per_example.mean()


def squared_error(pred_a: torch.Tensor, pred_b: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of two regression outputs ([batch] or [batch, 1]), float32."""
    return (pred_a.float() - pred_b.float()).pow(2).mean()


def classification_loss(logits: torch.Tensor, labels: torch.Tensor,
                        class_weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Cross-entropy of [batch, num_classes] logits against [batch] class ids, float32;
    with ``class_weights`` ([num_classes]) the weighted mean over the batch."""
    weight = None if class_weights is None else class_weights.to(logits.device, torch.float32)
    return F.cross_entropy(logits.float(), labels.long(), weight=weight)


def balanced_class_weights(targets: np.ndarray, num_classes: int) -> np.ndarray:
    """n / (num_classes · n_c) per class c, so that every class weighs the same in total
    (scikit-learn's "balanced"); a class absent from ``targets`` never meets its weight
    and gets 1."""
    counts = np.bincount(np.asarray(targets, dtype=np.int64), minlength=num_classes)
    weights = np.ones(num_classes, dtype=np.float64)
    present = counts > 0
    weights[present] = counts.sum() / (num_classes * counts[present])
    return weights


def regression_loss(pred: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Squared loss of [batch] or [batch, 1] predictions against [batch] targets, float32."""
    return F.mse_loss(pred.float().reshape(-1), targets.float().reshape(-1))


def task_loss_share(class_weights: Optional[torch.Tensor], part_labels: torch.Tensor,
                    whole_labels: torch.Tensor) -> float:
    """A part of a batch's share of the batch's task loss. A weighted cross-entropy is
    Σ w_y·ℓ / Σ w_y over the batch, so the share is the part's share of the class weights;
    without weights, of the examples. [part], [batch] labels → a fraction in [0, 1]."""
    if class_weights is None:
        return len(part_labels) / len(whole_labels)
    weights = class_weights.to(whole_labels.device, torch.float32)
    return float(weights[part_labels.long()].sum() / weights[whole_labels.long()].sum())
