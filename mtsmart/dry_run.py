"""What a run would do, read off a prepared trainer: the report of `mtsmart train --dry-run`.

Every number comes from the objects the real run would train with (the tokenized splits,
the plan, each task's SMART settings after its overrides, ε's unit measured on the loaded
embeddings), so a setting that would do nothing shows here as doing nothing.
"""

from __future__ import annotations

import math

from mtsmart import smart
from mtsmart.config import SmartConfig
from mtsmart.provenance import device_description
from mtsmart.sampling import task_probabilities


def describe(trainer, source: str) -> str:
    """``trainer`` has run ``prepare()``; ``source`` is what its weights were loaded from."""
    cfg, plan, model = trainer.cfg, trainer.plan, trainer.model
    config = model.encoder.config
    parameters = sum(p.numel() for p in model.parameters())
    trained = [n for n, t in trainer.tasks.items() if t.sampling_weight > 0]
    batches_per_epoch = sum(len(trainer.streams[n]) for n in trained)
    updates_per_epoch = max(1, batches_per_epoch // cfg.grad_accum_steps)
    layers = getattr(config, "num_hidden_layers", "?")
    lines = [
        f"encoder   {source} ({type(model.encoder).__name__}: "
        f"{layers} layer{'' if layers == 1 else 's'}, hidden {config.hidden_size}, "
        f"{_count(parameters)} parameters with the heads), pooling {model.pooling}, "
        + (f"encoder dropout {cfg.encoder_dropout:g}" if cfg.encoder_dropout is not None
           else f"the encoder's own dropout ({getattr(config, 'hidden_dropout_prob', '?')})"),
        f"device    {device_description(trainer.device)}, precision {cfg.precision}"
        + (" (batches with the adversarial term in fp32)"
           if cfg.precision != "fp32" and trainer.uses_adversarial_term else "")
        + (", gradient checkpointing" if cfg.gradient_checkpointing else ""),
        f"updates   {plan.total_updates} ({plan.total_updates / updates_per_epoch:.2f} epochs of "
        f"{updates_per_epoch}), warm-up {plan.warmup_updates}, "
        + (f"evaluation every {plan.eval_every} and at the end" if plan.eval_every < plan.total_updates
           else f"one evaluation, at the end (update {plan.total_updates})")
        + (f", patience {cfg.patience} evaluations" if cfg.patience else ""),
        f"batches   {cfg.batch_size} examples × {cfg.grad_accum_steps} per update; lr {cfg.optim.lr:g} "
        f"({cfg.optim.schedule} after the warm-up"
        + (f", layer decay {cfg.optim.layer_decay:g})" if cfg.optim.layer_decay != 1 else ")")
        + (f", heads ×{cfg.optim.head_lr_scale:g}" if cfg.optim.head_lr_scale != 1 else "") + "; "
        f"sampler {cfg.sampler.name}; seed {cfg.seed}",
        "",
    ]
    sizes = [len(trainer.streams[n]) for n in trainer.tasks]
    weights = [t.sampling_weight for t in trainer.tasks.values()]
    # the annealed sampler's shares move over the run: first and last
    start, end = (task_probabilities(sizes, weights, cfg.sampler, progress) for progress in (0.0, 1.0))
    shares = {name: f"{100 * a:.1f}%" + (f" → {100 * b:.1f}%" if cfg.sampler.name == "annealed" else "")
              for name, a, b in zip(trainer.tasks, start, end)}
    header = ("task", "type", "train", "eval", "batches", "share", "SMART")
    rows = []
    for name, task in trainer.tasks.items():
        smart_cfg = trainer.task_smart[name]
        rows.append((name, task.type, f"{len(trainer.train_splits[name])} {task.train_split}",
                     f"{len(trainer.eval_splits[name])} {task.eval_split}", str(len(trainer.streams[name])),
                     shares[name],
                     smart_summary(smart_cfg, trainer.perturbation_scales[name])))
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header) - 1)]
    for row in (header, *rows):
        lines.append("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1])
    if trainer.uses_teacher:
        lines += ["", teacher_summary(cfg.smart, plan.total_updates)]
    return "\n".join(lines)


def _count(n: int) -> str:
    return f"{n / 1e6:.1f}M" if n >= 100_000 else f"{n:,}"


def smart_summary(cfg: SmartConfig, scale: float) -> str:
    """One task's effective SMART terms, with ε in the embeddings' own units."""
    terms = []
    if cfg.use_adversarial:
        epsilon = f"ε {cfg.epsilon:g}"
        if cfg.relative_to_embedding_norm:
            epsilon += f" × {scale:.3g} = {cfg.epsilon * scale:.3g}"
        terms.append(f"λ_s {cfg.adv_weight:g} ({epsilon}, {cfg.norm}, K {cfg.num_steps})")
    if cfg.use_bregman:
        terms.append(f"μ {cfg.prox_weight:g} " + (f"(ramped over {100 * cfg.prox_warmup_fraction:g}% of updates)"
                                                   if cfg.prox_warmup_fraction else "(from the first update)"))
    if not terms:
        return "off" if cfg.mode == "off" else f"{cfg.mode}, every weight 0: nothing computed"
    return f"{cfg.mode}: " + ", ".join(terms)


def teacher_summary(cfg: SmartConfig, total_updates: int) -> str:
    """The one EMA teacher's momentum over the run, horizon cap applied."""
    def beta(update: int) -> float:
        return smart.teacher_momentum(update, total_updates, cfg.teacher_beta, cfg.teacher_beta_early,
                                      cfg.teacher_early_fraction, cfg.teacher_horizon_fraction)

    first_late = math.ceil(cfg.teacher_early_fraction * total_updates)
    if 0 < first_late < total_updates:
        updates = "update" if first_late == 1 else f"{first_late} updates"
        schedule = f"β {beta(0):.4g} for the first {updates}, then {beta(first_late):.4g}"
    else:
        schedule = f"β {beta(0):.4g} throughout"
    if cfg.teacher_horizon_fraction is not None:
        # the cap alone: what the schedule gives a β of 1
        cap = smart.teacher_momentum(0, total_updates, 1.0, 1.0, cfg.teacher_early_fraction,
                                     cfg.teacher_horizon_fraction)
        schedule += (f" (a horizon of {100 * cfg.teacher_horizon_fraction:g}% of the run "
                     f"caps β at {cap:.4g})")
    return f"teacher   one EMA copy of the whole model, shared by every task: {schedule}"
