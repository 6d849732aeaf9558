"""The documented rule for non-finite values: a non-finite loss skips its batch, a
non-finite gradient skips its update; both are counted, and neither reaches the weights,
the teacher or a checkpoint."""

from __future__ import annotations

import json
import math

import torch
from safetensors.torch import load_file

from mtsmart.cli import main
from mtsmart.task_types import get_task_type
from tiny_tasks import write_tiny_tasks


class _NanGradient(torch.autograd.Function):
    """Identity forward (the loss stays finite), NaN backward."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * math.nan


def test_nonfinite_losses_and_gradients_are_skipped_and_counted(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("MTSMART_CACHE", str(tmp_path / "cache"))
    regression, classification = type(get_task_type("regression")), type(get_task_type("classification"))
    calls = {"regression": 0, "classification": 0}
    real_regression_loss, real_classification_loss = regression.loss, classification.loss

    def nan_loss_sometimes(self, outputs, targets, class_weights=None):
        calls["regression"] += 1
        loss = real_regression_loss(self, outputs, targets, class_weights)
        return loss * math.nan if calls["regression"] % 3 == 0 else loss

    def nan_gradient_sometimes(self, outputs, targets, class_weights=None):
        calls["classification"] += 1
        loss = real_classification_loss(self, outputs, targets, class_weights)
        return _NanGradient.apply(loss) if calls["classification"] % 4 == 0 else loss

    monkeypatch.setattr(regression, "loss", nan_loss_sometimes)
    monkeypatch.setattr(classification, "loss", nan_gradient_sometimes)
    from mtsmart.ema import MeanTeacher

    teacher_updates = []
    real_update = MeanTeacher.update
    monkeypatch.setattr(MeanTeacher, "update", lambda self, *a, **k: (teacher_updates.append(1), real_update(self, *a, **k)))
    task_file = write_tiny_tasks(tmp_path)
    out = tmp_path / "run"
    assert main(["train", str(task_file), "--encoder", str(tiny_model_dir), "--output", str(out),
                 "--max-steps", "16", "--eval-every", "4", "--smart", "bregman", "--quiet"]) == 0

    counters = json.loads((out / "results.json").read_text())["counters"]
    assert counters["nonfinite_loss_skipped"] >= 1
    assert counters["nonfinite_grad_skipped"] >= 1
    # the teacher follows the optimizer steps that happened, not the skipped ones: an update
    # whose one batch had a non-finite gradient, or a non-finite loss (no gradient at all)
    assert len(teacher_updates) == 16 - counters["nonfinite_grad_skipped"] - counters["nonfinite_loss_skipped"]
    for checkpoint in ("best", "last"):
        for name in ("encoder/model.safetensors", "heads.safetensors", "teacher.safetensors"):
            for key, tensor in load_file(str(out / checkpoint / name)).items():
                assert torch.isfinite(tensor).all(), f"{checkpoint}/{name}:{key}"
    start = load_file(str(tiny_model_dir / "model.safetensors"))
    trained = load_file(str(out / "last" / "encoder" / "model.safetensors"))
    assert any(not torch.equal(start[k], trained[k]) for k in start), "the finite updates still train"


def trainer_with_a_gradient_scaler(tmp_path, tiny_model_dir, updates: int):
    """A set-up trainer with fp16's gradient scaler. fp16 needs CUDA, so the scaler is
    torch's CPU one, swapped in after setup."""
    from dataclasses import replace

    from mtsmart.tasks import load_task_file
    from mtsmart.train import Trainer

    loaded = load_task_file(str(write_tiny_tasks(tmp_path)))
    cfg = replace(loaded.training, encoder=str(tiny_model_dir), max_steps=updates, eval_every=updates,
                  log_every=1)
    trainer = Trainer(loaded.tasks, cfg, loaded.data_dir, str(tmp_path / "run"),
                      cache_dir=str(tmp_path / "cache"), show_progress=False)
    trainer.setup()
    trainer.scaler = torch.amp.GradScaler("cpu")
    return trainer


def test_an_update_the_gradient_scaler_skips_is_counted(tmp_path, tiny_model_dir, monkeypatch):
    """Under fp16 the scaler, not the trainer, skips a non-finite update; it is counted all
    the same."""
    classification = type(get_task_type("classification"))
    real_loss = classification.loss
    poisoned = []

    def nan_gradient_sometimes(self, outputs, targets, class_weights=None):
        loss = real_loss(self, outputs, targets, class_weights)
        poisoned.append(len(poisoned) % 2 == 1)
        return _NanGradient.apply(loss) if poisoned[-1] else loss

    monkeypatch.setattr(classification, "loss", nan_gradient_sometimes)
    trainer = trainer_with_a_gradient_scaler(tmp_path, tiny_model_dir, updates=10)
    norms = []
    real_log = trainer.logger.log_dict
    trainer.logger.log_dict = lambda scalars, step: (norms.append(scalars.get("train/grad_norm")),
                                                     real_log(scalars, step))
    trainer.train()
    trainer.cleanup()
    assert sum(poisoned) >= 1 and trainer.scaler.get_scale() < 2.0 ** 16  # the scaler did skip
    assert trainer.counters["nonfinite_grad_skipped"] == sum(poisoned)
    # every update logs (log_every 1); the skipped ones without a norm, the others with a finite one
    train_norms = norms[:10]
    assert train_norms.count(None) == sum(poisoned) and all(n is None or math.isfinite(n) for n in train_norms)


def test_an_update_without_gradients_passes_the_gradient_scaler_by(tmp_path, tiny_model_dir, monkeypatch):
    """Every batch of an update skipped (non-finite losses; under torchrun, on any replica):
    there is nothing to step on, and the fp16 scaler's step raised 'No inf checks were
    recorded' on gradients that were never there."""
    for kind in ("regression", "classification"):
        task_type = type(get_task_type(kind))
        real_loss = task_type.loss
        monkeypatch.setattr(task_type, "loss", lambda self, o, t, w=None, real=real_loss: real(self, o, t, w) * math.nan)
    trainer = trainer_with_a_gradient_scaler(tmp_path, tiny_model_dir, updates=3)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    logged = []
    real_log = trainer.logger.log_dict
    trainer.logger.log_dict = lambda scalars, step: (logged.append(dict(scalars)), real_log(scalars, step))
    trainer.train()
    trainer.cleanup()
    assert trainer.counters["nonfinite_loss_skipped"] == 3 and trainer.global_step == 3
    assert all(torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())
    # no update, no gradient norm: a 0 on the curve would read as a converged model
    train_logs = [scalars for scalars in logged if "train/lr" in scalars]
    assert train_logs and not any("train/grad_norm" in scalars for scalars in train_logs)
