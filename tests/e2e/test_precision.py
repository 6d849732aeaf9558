"""bf16 autocast on CPU: SMART trains, its divergences stay float32, weights stay float32."""

from __future__ import annotations

import json

import pytest
import torch

from mtsmart.config import SmartConfig
from mtsmart.ema import MeanTeacher
from mtsmart.model import MultiTaskModel
from mtsmart.objective import batch_objective
from mtsmart.task_types import get_task_type
from conftest import tensorboard_scalars
from tiny_tasks import train_tiny_run, write_tiny_tasks


def test_bf16_smart_training_on_cpu(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("MTSMART_CACHE", str(tmp_path / "cache"))
    _, out = train_tiny_run(tmp_path, tiny_model_dir, "bf16", "--precision", "bf16", "--smart", "full",
                            "--epsilon", "1e-2")
    results = json.loads((out / "results.json").read_text())
    assert results["counters"].get("nonfinite_loss_skipped", 0) == 0
    from safetensors.torch import load_file

    assert all(t.dtype == torch.float32 for t in load_file(str(out / "best" / "heads.safetensors")).values())


def test_divergences_are_float32_under_bf16_autocast(tiny_model_dir):
    model = MultiTaskModel.from_pretrained(str(tiny_model_dir), [])
    model.add_head("c", 3, 0.1)
    teacher = MeanTeacher(model)
    batch = {"input_ids": torch.randint(5, 40, (4, 9)), "attention_mask": torch.ones(4, 9, dtype=torch.long),
             "labels": torch.tensor([0, 1, 2, 1])}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = batch_objective(model, teacher, "c", get_task_type("classification"), batch,
                                 SmartConfig(mode="full", epsilon=1e-2), adv_weight=1.0, prox_weight=1.0)
        logits = model.forward_batch("c", batch)
    assert logits.dtype == torch.bfloat16  # the model really ran in bf16
    assert losses.total.dtype == torch.float32
    assert torch.isfinite(losses.total) and losses.adv_loss is not None


def test_batches_with_the_adversarial_term_run_in_float32_under_bf16(tmp_path, tiny_model_dir, monkeypatch, caplog):
    """bf16 cannot resolve SMART's perturbation (scripts/smart_precision.py: R_s at the
    adversarial ν equals R_s at a random one); those batches run in float32, the others
    (here a task whose adversarial weight is 0) in bf16, and the run says so."""
    import mtsmart.train as train

    monkeypatch.setenv("MTSMART_CACHE", str(tmp_path / "cache"))
    seen = []
    real = train.batch_objective

    def spy(model, teacher, task, *args, **kwargs):
        seen.append((task, kwargs["adv_weight"] > 0, torch.is_autocast_enabled("cpu")))
        return real(model, teacher, task, *args, **kwargs)

    monkeypatch.setattr(train, "batch_objective", spy)
    train_tiny_run(tmp_path, tiny_model_dir, "bf16", "--precision", "bf16", "--smart", "full",
                   "--epsilon", "1e-2", "tasks.score.smart.adv_weight=0")
    assert {task for task, _, _ in seen} == {"pairs", "score"}
    assert all(autocast == (not adversarial) for _, adversarial, autocast in seen)
    assert any("batches with SMART's adversarial term run in float32" in r.getMessage() for r in caplog.records)
    # every task with the adversarial term: bf16 reaches no batch, and the note says so
    caplog.clear()
    train_tiny_run(tmp_path, tiny_model_dir, "bf16-all", "--precision", "bf16", "--smart", "full", "--epsilon", "1e-2")
    assert [r.getMessage() for r in caplog.records if "precision bf16" in r.getMessage()] == [
        "precision bf16 changes nothing here: every task runs SMART's adversarial term, whose batches run in "
        "float32 (its perturbation is below bf16's resolution)"]


def test_an_encoder_that_fails_under_autocast_is_refused_before_anything_runs(tmp_path, tiny_model_dir,
                                                                              monkeypatch, capsys):
    """transformers' DeBERTa v1 overflows under bf16 autocast (its attention-mask fill):
    the run died with a traceback at its first batch, or, with SMART's float32 batches, at
    the first evaluation before any checkpoint. Here BERT is made to fail the same way."""
    from transformers import BertModel

    from mtsmart.cli import main

    forward = BertModel.forward

    def fails_under_autocast(self, *args, **kwargs):
        if torch.is_autocast_enabled("cpu"):
            raise RuntimeError("value cannot be converted to type c10::BFloat16 without overflow")
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(BertModel, "forward", fails_under_autocast)
    monkeypatch.setenv("MTSMART_CACHE", str(tmp_path / "cache"))
    task_file = write_tiny_tasks(tmp_path)
    for flags in (["--dry-run"], ["--smart", "full"], []):
        code = main(["train", str(task_file), "--encoder", str(tiny_model_dir), "--output", str(tmp_path / "run"),
                     "--max-steps", "2", "--quiet", "--precision", "bf16", *flags])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1, err
        assert "training.precision: bf16 fails in the encoder's forward (BertModel: value cannot" in err
        assert "use fp32" in err
        assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_the_forward_check_leaves_the_run_as_it_was(tmp_path, tiny_model_dir, monkeypatch, precision):
    """The check's forward runs in eval mode: it draws no random numbers, so a run's losses
    and weights are those of the same run without it."""
    from mtsmart.train import Trainer

    monkeypatch.setenv("MTSMART_CACHE", str(tmp_path / "cache"))
    _, checked = train_tiny_run(tmp_path, tiny_model_dir, "checked", "--precision", precision, "log_every=1")
    monkeypatch.setattr(Trainer, "_check_forward", lambda self: None)
    _, unchecked = train_tiny_run(tmp_path, tiny_model_dir, "unchecked", "--precision", precision, "log_every=1")
    ours, theirs = tensorboard_scalars(checked), tensorboard_scalars(unchecked)
    assert ours["train/grad_norm"] and ours.keys() == theirs.keys()
    assert all(ours[tag] == theirs[tag] for tag in ours if tag.startswith(("train/", "dev/")))
    from safetensors.torch import load_file

    for name in ("encoder/model.safetensors", "heads.safetensors"):
        ours, theirs = load_file(str(checked / "last" / name)), load_file(str(unchecked / "last" / name))
        assert all(torch.equal(ours[k], theirs[k]) for k in ours)
