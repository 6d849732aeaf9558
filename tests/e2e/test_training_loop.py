"""The training loop on a dropout-free tiny encoder, where a run is a deterministic
function of its batches: gradient accumulation, clipping, the per-task scalars, which
evaluation is best, the μ ramp, the run plan, skipped updates and the teacher's scalars."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import build_tiny_encoder, tensorboard_scalars
from mtsmart.config import SmartConfig
from mtsmart.tasks import load_task_file
from mtsmart.train import Trainer
from tiny_tasks import write_tiny_tasks


def _trainer(tasks, training, data_dir, out: Path, **settings) -> Trainer:
    cfg = replace(training, **settings)
    trainer = Trainer(tasks, cfg, data_dir, str(out), cache_dir=str(out.parent / "cache"), show_progress=False)
    trainer.setup()
    return trainer


def _train(tasks, training, data_dir, out: Path, **settings) -> tuple[Trainer, dict]:
    trainer = _trainer(tasks, training, data_dir, out, **settings)
    try:
        summary = trainer.train()
    finally:
        trainer.cleanup()
    return trainer, summary


@pytest.fixture
def no_dropout(tmp_path):
    """A tiny encoder without dropout and the tiny tasks with dropout-free heads: training
    is a deterministic function of the batches."""
    encoder = build_tiny_encoder(tmp_path / "encoder", dropout=0.0)
    loaded = load_task_file(str(write_tiny_tasks(tmp_path)))
    tasks = {name: replace(task, head_dropout=0.0) for name, task in loaded.tasks.items()}
    training = replace(loaded.training, encoder=str(encoder), length_grouped=False, num_threads=1)
    return tasks, training, loaded.data_dir


# ------------------------------------------------------------------ gradient accumulation
def test_accumulated_micro_batches_give_the_update_of_their_whole_batch(tmp_path, no_dropout):
    """Batch 4 × 2 accumulated is batch 8 (the same examples, unshuffled batches): the
    same gradient norm at every update, the same rate, the same weights. A loss not divided
    by grad_accum_steps barely moves AdamW's weights, but logs k× the norm and clips at
    max_grad_norm / k."""
    tasks, training, data_dir = no_dropout
    one = {"score": tasks["score"]}
    settings = dict(max_steps=3, eval_every=3, log_every=1, optim=replace(training.optim, lr=1e-3))
    whole, _ = _train(one, training, data_dir, tmp_path / "whole", batch_size=8, **settings)
    accumulated, _ = _train(one, training, data_dir, tmp_path / "accumulated", batch_size=4,
                            grad_accum_steps=2, **settings)
    logged = {name: tensorboard_scalars(tmp_path / name) for name in ("whole", "accumulated")}
    for tag in ("train/grad_norm", "train/lr", "train/score/loss"):
        ours, theirs = logged["accumulated"][tag], logged["whole"][tag]
        assert [s for s, _ in ours] == [s for s, _ in theirs] == [1, 2, 3], tag
        np.testing.assert_allclose([v for _, v in ours], [v for _, v in theirs], rtol=1e-4, err_msg=tag)
    for (name, a), b in zip(whole.model.state_dict().items(), accumulated.model.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6, msg=name)


# ------------------------------------------------------------------ gradient clipping
def test_the_optimizer_steps_on_gradients_clipped_to_max_grad_norm(tmp_path, no_dropout):
    """AdamW is nearly invariant to a constant gradient scale, so the end weights barely
    show a missing clip, and the logged norm is the one before clipping: the gradients the
    optimizer steps on are checked directly."""
    tasks, training, data_dir = no_dropout
    limit = 1e-3  # far below the tiny model's gradient norms: every update is clipped
    trainer = _trainer(tasks, training, data_dir, tmp_path / "run", max_steps=3, eval_every=3, log_every=1,
                       optim=replace(training.optim, max_grad_norm=limit))
    stepped_on = []
    trainer.optimizer.register_step_pre_hook(lambda optimizer, args, kwargs: stepped_on.append(float(
        torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in trainer.model.parameters()
                                              if p.grad is not None])))))
    trainer.train()
    trainer.cleanup()
    measured = [v for _, v in tensorboard_scalars(tmp_path / "run")["train/grad_norm"]]
    assert len(stepped_on) == len(measured) == 3
    assert all(norm > 10 * limit for norm in measured), "the premise broke: nothing needed clipping"
    assert all(norm == pytest.approx(limit, rel=1e-3) for norm in stepped_on), stepped_on


# ------------------------------------------------------------------ per-task training scalars
def test_train_loss_scalars_are_each_tasks_mean_since_the_last_log_at_the_update(tmp_path, no_dropout, monkeypatch):
    """With 2 micro-batches per update and a log every 2 updates, train/TASK/loss at update
    2k is the mean of TASK's batch losses in micro-steps 4k-3 .. 4k, as batch_objective
    computed them, logged at the update, not the micro-step; the last update (5) logs its
    own window even though log_every does not divide it.""" 
    import mtsmart.train as train_module

    tasks, training, data_dir = no_dropout
    seen = []  # (task, task loss) per micro-step, in order
    original = train_module.batch_objective

    def spy(model, teacher, task, *args, **kwargs):
        losses = original(model, teacher, task, *args, **kwargs)
        seen.append((task, losses.task_loss))
        return losses

    monkeypatch.setattr(train_module, "batch_objective", spy)
    _train(tasks, training, data_dir, tmp_path / "run", max_steps=5, eval_every=5, log_every=2, grad_accum_steps=2)
    assert len(seen) == 10
    logged = tensorboard_scalars(tmp_path / "run")
    assert [step for step, _ in logged["train/lr"]] == [2, 4, 5]  # every 2 updates, and the last one
    for name in tasks:
        expected = {}
        for since, update in ((0, 2), (2, 4), (4, 5)):
            window = [loss for task, loss in seen[2 * since:2 * update] if task == name]
            if window:
                expected[update] = float(np.mean(window))
        assert expected, f"the premise broke: {name} never drawn"
        points = dict(logged[f"train/{name}/loss"])
        assert sorted(points) == sorted(expected), (name, points)
        for update, value in expected.items():
            assert points[update] == pytest.approx(value, rel=1e-5), (name, update)


# ------------------------------------------------------------------ best checkpoint
def test_best_is_the_evaluation_with_the_highest_selection_score(tmp_path, no_dropout, monkeypatch):
    """Selection scores scripted to rise, fall, rise and fall: best/ and results.json's best
    are the highest, not the latest, and results.json's last holds the last evaluation
    (a frozen run would only show ties)."""
    import json

    import mtsmart.train as train_module

    tasks, training, data_dir = no_dropout
    scripted = iter([0.5, 0.7, 0.6, 0.9, 0.8])
    monkeypatch.setattr(train_module, "selection_score", lambda results, tasks, metric: next(scripted))
    trainer, summary = _train(tasks, training, data_dir, tmp_path / "run", max_steps=5, eval_every=1)
    meta = json.loads((tmp_path / "run" / "best" / "meta.json").read_text())
    assert (meta["global_step"], meta["selection_score"]) == (4, 0.9)
    last = json.loads((tmp_path / "run" / "last" / "meta.json").read_text())
    assert (last["global_step"], last["selection_score"]) == (5, 0.8)  # its own score, not the best so far
    assert (trainer.best_step, trainer.best_score, trainer.evals_since_best) == (4, 0.9, 1)
    assert (summary["best"]["global_step"], summary["last"]["global_step"]) == (4, 5)
    records = {r["global_step"]: r for r in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())}
    assert summary["best"]["results"] == records[4]["results"] and summary["best"]["selection_score"] == 0.9
    assert summary["last"]["results"] == records[5]["results"]
    assert records[4]["results"] != records[5]["results"], "the premise broke: two evaluations alike"


def test_the_selection_score_is_the_select_metric(tmp_path, no_dropout):
    """training.select_metric TASK/METRIC scores every evaluation, not the average."""
    import json

    tasks, training, data_dir = no_dropout
    _train(tasks, training, data_dir, tmp_path / "run", max_steps=2, eval_every=1, select_metric="score/spearman")
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 2
    for record in records:
        assert record["select_metric"] == "score/spearman"
        assert record["selection_score"] == pytest.approx(record["results"]["score"]["spearman"])
        average = np.mean([record["results"]["pairs"]["accuracy"], record["results"]["score"]["pearson"]])
        assert record["selection_score"] != pytest.approx(average), "the premise broke: the two agree"


# ------------------------------------------------------------------ stopped_early
def test_patience_running_out_at_the_last_update_is_no_early_stop(tmp_path, no_dropout, monkeypatch):
    """A run whose patience runs out at its very last update trained every update:
    results.json must not call it stopped early."""
    import mtsmart.train as train_module

    tasks, training, data_dir = no_dropout
    scripted = iter([0.5, 0.4, 0.3])
    monkeypatch.setattr(train_module, "selection_score", lambda results, tasks, metric: next(scripted))
    trainer, summary = _train(tasks, training, data_dir, tmp_path / "run", max_steps=3, eval_every=1, patience=2)
    assert trainer.out_of_patience()
    assert (summary["stopped_at"], summary["total_updates"], summary["stopped_early"]) == (3, 3, False)


# ------------------------------------------------------------------ SMART weights in the loop
def test_the_bregman_weight_ramps_over_updates_not_micro_batches(tmp_path, no_dropout, monkeypatch):
    """With 2 micro-batches per update, both micro-batches of update u train with ramp(u),
    and μ reaches its full value at the end of the warm-up fraction of the updates, not of
    the micro-batches."""
    import mtsmart.train as train_module

    tasks, training, data_dir = no_dropout
    seen = []
    original = train_module.batch_objective

    def spy(*args, **kwargs):
        seen.append(kwargs["prox_weight"])
        return original(*args, **kwargs)

    monkeypatch.setattr(train_module, "batch_objective", spy)
    smart = SmartConfig(mode="bregman", prox_weight=0.4, prox_warmup_fraction=0.5)
    _train(tasks, training, data_dir, tmp_path / "run", max_steps=4, eval_every=4, grad_accum_steps=2, smart=smart)
    assert seen == pytest.approx([0.2, 0.2, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4])


# ------------------------------------------------------------------ the plan
def test_the_plan_counts_updates_of_accumulated_micro_batches(tmp_path, no_dropout):
    """Epochs, the warm-up and the default evaluation cadence are counted in updates of
    grad_accum_steps micro-batches, and a task with sampling_weight 0 adds none (the
    dry-run test plans without accumulation, where the two are one)."""
    from mtsmart.train import RunPlan

    tasks, training, data_dir = no_dropout
    cfg = replace(training, epochs=2, batch_size=4, grad_accum_steps=2, max_steps=None, eval_every=None,
                  optim=replace(training.optim, warmup_fraction=0.1))
    # 40 examples a task, batches of 4: 20 micro-batches an epoch, 10 updates
    trainer = Trainer(tasks, cfg, data_dir, str(tmp_path / "run"), cache_dir=str(tmp_path / "cache"), show_progress=False)
    trainer.prepare()
    assert trainer.plan == RunPlan(total_updates=20, warmup_updates=2, eval_every=10)
    unsampled = {**tasks, "score": replace(tasks["score"], sampling_weight=0.0)}
    trainer = Trainer(unsampled, cfg, data_dir, str(tmp_path / "run"), cache_dir=str(tmp_path / "cache"),
                      show_progress=False)
    trainer.prepare()
    assert trainer.plan == RunPlan(total_updates=10, warmup_updates=1, eval_every=5)


# ------------------------------------------------------------------ skipped updates keep the schedule
def test_an_update_whose_every_batch_was_skipped_still_moves_the_schedule_on(tmp_path, no_dropout, monkeypatch):
    """Every batch's loss is NaN: nothing reaches the weights, but the schedule stays in
    step with the update count instead of falling one behind per skipped update."""
    import math

    from mtsmart.optim import lr_multiplier
    from mtsmart.task_types import get_task_type

    for kind in ("regression", "classification"):
        task_type = type(get_task_type(kind))
        real_loss = task_type.loss
        monkeypatch.setattr(task_type, "loss", lambda self, o, t, w=None, real=real_loss: real(self, o, t, w) * math.nan)
    tasks, training, data_dir = no_dropout
    trainer, _ = _train(tasks, training, data_dir, tmp_path / "run", max_steps=4, eval_every=4, log_every=1,
                        optim=replace(training.optim, lr=1e-2, warmup_fraction=0.5))
    assert trainer.counters["nonfinite_loss_skipped"] == 4 and trainer.scheduler.last_epoch == 4
    logged = tensorboard_scalars(tmp_path / "run")["train/lr"]
    assert [(step, pytest.approx(0.01 * lr_multiplier(step - 1, 2, 4))) for step, _ in logged] == logged


# ------------------------------------------------------------------ teacher scalars
def test_teacher_scalars_are_the_teachers_dev_metrics(tmp_path, no_dropout):
    """teacher/TASK/METRIC holds the teacher's scores and dev/TASK/METRIC the student's
    (β 0.99 on a fast-moving student: the two differ)."""
    import json

    tasks, training, data_dir = no_dropout
    smart = SmartConfig(mode="bregman", teacher_horizon_fraction=None)  # β 0.99: the teacher lags the student
    _train(tasks, training, data_dir, tmp_path / "run", max_steps=3, eval_every=3, smart=smart, eval_teacher=True,
           optim=replace(training.optim, lr=1e-2))
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["teacher_results"] != record["results"], "the premise broke: teacher and student score alike"
    logged = tensorboard_scalars(tmp_path / "run")
    for task, metrics in record["teacher_results"].items():
        for metric, value in metrics.items():
            assert logged[f"teacher/{task}/{metric}"] == [(3, pytest.approx(value, abs=1e-6))]
            assert logged[f"dev/{task}/{metric}"] == [(3, pytest.approx(record["results"][task][metric], abs=1e-6))]
