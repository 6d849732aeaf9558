"""The optimizer and its schedule: AdamW parameter groups (weight decay, layer-wise
learning-rate decay, the heads' own rate), fused where the device has a kernel, and linear
warm-up then decay.

Must not import the trainer or the CLI.
"""

from __future__ import annotations

import math
import re

import torch

from mtsmart.config import OptimConfig
from mtsmart.errors import ConfigError

# A numbered block of a Hugging Face encoder: BERT-likes' encoder.layer.N, DistilBERT's
# transformer.layer.N, T5's block.N, GPT-likes' h.N.
_LAYER = re.compile(r"\.(?:layer|layers|block|blocks|h)\.(\d+)\.")


def linear_warmup_decay(update: int, warmup_updates: int, total_updates: int) -> float:
    """LR multiplier: linear warm-up from 0 to 1, then linear decay to 0."""
    if update < warmup_updates:
        return (update + 1) / max(1, warmup_updates)
    return max(0.0, (total_updates - update) / max(1, total_updates - warmup_updates))


def lr_multiplier(update: int, warmup_updates: int, total_updates: int, schedule: str = "linear") -> float:
    """The peak rate's multiple after ``update`` updates: linear warm-up from 0 to 1, then
    ``linear`` decay to 0, half a ``cosine`` down to 0, or ``constant`` at 1."""
    if update < warmup_updates or schedule == "linear":
        return linear_warmup_decay(update, warmup_updates, total_updates)
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (update - warmup_updates) / max(1, total_updates - warmup_updates))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def lr_scales(model: torch.nn.Module, cfg: OptimConfig) -> dict[str, float]:
    """Each trainable parameter's multiple of the peak learning rate.

    Layer-wise decay d (ELECTRA, DeBERTa fine-tuning): with L encoder layers, the heads and
    the encoder's pooler are at depth L + 1, layer i at depth i + 1 and the embeddings
    (anything outside a numbered layer whose name says "embed") at depth 0; a parameter at
    depth k trains at d^(L + 1 − k) times the rate, so the layers nearest the input, which
    carry the most general features, move least. The heads' rate is further multiplied by
    ``head_lr_scale``."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    encoder_names = [n for n in names if not n.startswith("heads.")]
    depths = {n: int(m.group(1)) + 1 for n in encoder_names if (m := _LAYER.search(n))}
    if cfg.layer_decay != 1.0 and not depths:
        raise ConfigError("training.optim.layer_decay: no numbered layers (layer.N, block.N, h.N) "
                          "among the encoder's parameter names; set it to 1")
    top = max(depths.values(), default=0) + 1
    scales = {}
    for name in names:
        if name.startswith("heads."):
            depth, scale = top, cfg.head_lr_scale
        elif name in depths:
            depth, scale = depths[name], 1.0
        else:
            depth, scale = (0 if "embed" in name else top), 1.0
        scales[name] = scale * cfg.layer_decay ** (top - depth)
    return scales


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """AdamW with no weight decay on biases and LayerNorm weights, one group per (rate,
    decay) pair; each group carries its ``lr_scale``. Fused where torch has a kernel for
    the device."""
    scales = lr_scales(model, cfg)
    groups: dict[tuple[float, bool], list[torch.nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            groups.setdefault((scales[name], param.ndim >= 2), []).append(param)
    param_groups = [{"params": params, "lr": cfg.lr * scale, "lr_scale": scale,
                     "weight_decay": cfg.weight_decay if decays else 0.0}
                    for (scale, decays), params in sorted(groups.items(), key=lambda g: (-g[0][0], not g[0][1]))]
    kwargs = dict(lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)
    if cfg.fused:
        try:
            return torch.optim.AdamW(param_groups, fused=True, **kwargs)
        except (RuntimeError, TypeError, ValueError):
            pass  # no fused kernel for this device / dtype: the foreach path is next best
    return torch.optim.AdamW(param_groups, **kwargs)


def scheduled_lr(optimizer: torch.optim.Optimizer) -> float:
    """The schedule's current rate at scale 1 (what ``train/lr`` shows), whatever each
    group's multiple. Optimizer states saved before groups had scales have one rate."""
    group = optimizer.param_groups[0]
    return group["lr"] / group.get("lr_scale", 1.0)
