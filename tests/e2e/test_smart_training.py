"""SMART inside the trainer: zero weights reproduce plain training exactly, and one mean
teacher serves every task of a multi-task run."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from mtsmart.config import SmartConfig
from mtsmart.tasks import load_task_file
from mtsmart.train import Trainer

from tiny_tasks import write_tiny_tasks

def run_trainer(task_file: Path, out: Path, encoder: Path, smart: SmartConfig, **training) -> Trainer:
    loaded = load_task_file(str(task_file))
    cfg = replace(loaded.training, encoder=str(encoder), smart=smart, **training)
    trainer = Trainer(loaded.tasks, cfg, loaded.data_dir, str(out), cache_dir=str(out.parent / "cache"),
                      show_progress=False)
    trainer.setup()
    trainer.train()
    trainer.cleanup()
    return trainer


def test_zero_weights_reproduce_plain_training_exactly(tmp_path, tiny_model_dir):
    task_file = write_tiny_tasks(tmp_path)
    plain = run_trainer(task_file, tmp_path / "plain", tiny_model_dir, SmartConfig(mode="off"))
    zero = run_trainer(task_file, tmp_path / "zero", tiny_model_dir,
                       SmartConfig(mode="full", adv_weight=0.0, prox_weight=0.0))
    for (name, a), b in zip(plain.model.state_dict().items(), zero.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert zero.teacher is None  # μ = 0: no teacher is even built
    # ...while real SMART weights do change the trajectory
    full = run_trainer(task_file, tmp_path / "full", tiny_model_dir,
                       SmartConfig(mode="full", epsilon=1e-2, noise_std=1e-2, step_size=1e-1))
    assert any(not torch.equal(a, b) for a, b in zip(plain.model.state_dict().values(),
                                                   full.model.state_dict().values()))


def test_smart_draws_leave_the_clean_passes_dropout_masks_to_plain_training(tmp_path, tiny_model_dir):
    """SMART's extra passes draw from a stream of their own: with vanishing weights a SMART
    run follows plain training's trajectory (same clean dropout masks), so a comparison of
    the two at one seed measures SMART, not another draw of masks."""
    task_file = write_tiny_tasks(tmp_path)
    plain = run_trainer(task_file, tmp_path / "plain", tiny_model_dir, SmartConfig(mode="off"))
    tiny = run_trainer(task_file, tmp_path / "tiny", tiny_model_dir,
                       SmartConfig(mode="adversarial", adv_weight=1e-9, epsilon=1e-2,
                                   noise_std=1e-2, step_size=1e-1))
    assert tiny.counters["batches/pairs"] > 0
    drift = max(float((a.float() - b.float()).abs().max()) for a, b in
                zip(plain.model.state_dict().values(), tiny.model.state_dict().values())
                if a.is_floating_point())
    assert drift < 1e-5


def test_one_teacher_shared_by_every_task(tmp_path, tiny_model_dir, monkeypatch):
    task_file = write_tiny_tasks(tmp_path)
    import mtsmart.objective as objective

    seen = []
    original = objective.batch_objective

    def spy(model, teacher, task, *args, **kwargs):
        seen.append((task, id(teacher)))
        return original(model, teacher, task, *args, **kwargs)

    monkeypatch.setattr("mtsmart.train.batch_objective", spy)
    trainer = run_trainer(task_file, tmp_path / "mt", tiny_model_dir,
                          SmartConfig(mode="full", epsilon=1e-2, noise_std=1e-2, step_size=1e-1,
                                      teacher_horizon_fraction=None))  # 6 updates: else β = 0
    tasks_seen = {task for task, _ in seen}
    teachers_seen = {tid for _, tid in seen}
    assert len(seen) == 6 and tasks_seen == {"pairs", "score"}
    assert len(teachers_seen) == 1 and id(trainer.teacher) in teachers_seen
    assert set(trainer.teacher.model.heads) == {"pairs", "score"}
    assert trainer.teacher.num_updates == 6
    # The teacher moved away from the initial weights but is not the student.
    student = trainer.model.state_dict()
    assert any(not torch.equal(v, student[k]) for k, v in trainer.teacher.state_dict().items()
               if v.is_floating_point())


def test_gradient_accumulation_draws_micro_batches_per_update(tmp_path, tiny_model_dir):
    task_file = write_tiny_tasks(tmp_path)
    loaded = load_task_file(str(task_file))
    cfg = replace(loaded.training, encoder=str(tiny_model_dir), grad_accum_steps=3, max_steps=2,
                  eval_every=2)
    trainer = Trainer(loaded.tasks, cfg, loaded.data_dir, str(tmp_path / "acc"),
                      cache_dir=str(tmp_path / "cache"), show_progress=False)
    trainer.setup()
    summary = trainer.train()
    trainer.cleanup()
    assert trainer.global_step == 2 and trainer.micro_step == 6
    assert sum(v for k, v in summary["counters"].items() if k.startswith("batches/")) == 6
    assert trainer.optimizer.state_dict()["state"][0]["step"].item() == 2  # two updates


@pytest.mark.parametrize("same_dropout_masks", [False, True])
def test_gradient_checkpointing_trains_the_same_smart_run(tmp_path, tiny_model_dir, same_dropout_masks):
    """Dropout on (fresh or replayed masks), the ascent's input gradient, the teacher: a
    checkpointed encoder recomputes them all and ends where the uncheckpointed run ends."""
    task_file = write_tiny_tasks(tmp_path)
    smart = SmartConfig(mode="full", epsilon=1e-2, noise_std=1e-2, step_size=1e-1,
                        same_dropout_masks=same_dropout_masks)
    plain = run_trainer(task_file, tmp_path / "kept", tiny_model_dir, smart)
    checkpointed = run_trainer(task_file, tmp_path / "recomputed", tiny_model_dir, smart,
                               gradient_checkpointing=True)
    layers_checkpointed = lambda model: [getattr(m, "gradient_checkpointing", False)
                                         for m in model.encoder.modules() if hasattr(m, "gradient_checkpointing")]
    # transformers 5 flags each layer, 4.x the encoder's layer stack: on wherever it is kept
    assert layers_checkpointed(checkpointed.model) and all(layers_checkpointed(checkpointed.model))
    assert not any(layers_checkpointed(plain.model))
    for trained, kept in ((checkpointed.model, plain.model), (checkpointed.teacher.model, plain.teacher.model)):
        for (name, a), b in zip(trained.state_dict().items(), kept.state_dict().values()):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def _spy_on_objective(monkeypatch) -> list[tuple[str, object, float]]:
    import mtsmart.objective as objective

    seen = []
    original = objective.batch_objective

    def spy(model, teacher, task, *args, **kwargs):
        seen.append((task, teacher, kwargs["prox_weight"]))
        return original(model, teacher, task, *args, **kwargs)

    monkeypatch.setattr("mtsmart.train.batch_objective", spy)
    return seen


@pytest.mark.parametrize("global_mu, task_mu", [(0.0, 0.3), (0.3, 0.0)])
def test_the_teacher_exists_exactly_when_some_task_uses_the_bregman_term(
        tmp_path, tiny_model_dir, monkeypatch, global_mu, task_mu):
    """A task's own ``prox_weight`` switches its Bregman term on (or off) whatever the
    global weight: the one teacher is built when any task needs it, and only then."""
    task_file = write_tiny_tasks(tmp_path)
    loaded = load_task_file(str(task_file))
    tasks = {name: replace(task, smart={"prox_weight": task_mu}) for name, task in loaded.tasks.items()}
    seen = _spy_on_objective(monkeypatch)
    cfg = replace(loaded.training, encoder=str(tiny_model_dir),
                  smart=SmartConfig(mode="full", adv_weight=0.0, prox_weight=global_mu,
                                    prox_warmup_fraction=0.0))
    trainer = Trainer(tasks, cfg, loaded.data_dir, str(tmp_path / "run"), cache_dir=str(tmp_path / "cache"),
                      show_progress=False)
    trainer.setup()
    trainer.train()
    trainer.cleanup()
    assert len(seen) == 6
    if task_mu > 0:
        assert trainer.teacher is not None and trainer.teacher.num_updates == 6
        assert all(teacher is trainer.teacher and mu == task_mu for _, teacher, mu in seen)
    else:
        assert trainer.teacher is None
        assert all(mu == 0.0 for _, _, mu in seen)


def test_a_runs_thread_count_is_given_back_when_it_ends(tmp_path, tiny_model_dir):
    """Several runs in one process (finetune --task all, adapt, a notebook): each starts from
    the process's thread count, not the one the run before it chose."""
    before = torch.get_num_threads()
    wanted = 1 if before != 1 else 2
    task_file = write_tiny_tasks(tmp_path)
    trainer = run_trainer(task_file, tmp_path / "run", tiny_model_dir, SmartConfig(mode="off"), num_threads=wanted)
    assert trainer.cfg.num_threads == wanted and torch.get_num_threads() == before


def test_the_teacher_steps_after_each_optimizer_step_with_the_scheduled_beta(tmp_path, tiny_model_dir, monkeypatch):
    """SMART.md: the EMA follows every optimizer step, β_early for the first 10% of the
    updates, then β."""
    from mtsmart.ema import MeanTeacher

    task_file = write_tiny_tasks(tmp_path)
    # β = 0: the teacher is a copy of the student as the last optimizer step left it
    copy = run_trainer(task_file, tmp_path / "copy", tiny_model_dir,
                       SmartConfig(mode="bregman", teacher_beta=0.0, teacher_beta_early=0.0,
                                   teacher_horizon_fraction=None))
    student = copy.model.state_dict()
    assert all(torch.equal(v, student[k]) for k, v in copy.teacher.state_dict().items())
    betas = []
    real_update = MeanTeacher.update
    monkeypatch.setattr(MeanTeacher, "update", lambda self, model, beta: (betas.append(beta),
                                                                          real_update(self, model, beta)))
    run_trainer(task_file, tmp_path / "schedule", tiny_model_dir,
                SmartConfig(mode="bregman", teacher_horizon_fraction=None), max_steps=20, eval_every=20)
    assert betas == [0.99] * 2 + [0.999] * 18


def test_a_skipped_regulariser_is_counted_per_task(tmp_path, tiny_model_dir):
    loaded = load_task_file(str(write_tiny_tasks(tmp_path)))
    cfg = replace(loaded.training, encoder=str(tiny_model_dir), smart=SmartConfig(mode="adversarial"))
    trainer = Trainer(loaded.tasks, cfg, loaded.data_dir, str(tmp_path / "run"),
                      cache_dir=str(tmp_path / "cache"), show_progress=False)
    trainer.setup()
    trainer.perturbation_scales = {name: float("inf") for name in trainer.perturbation_scales}  # ν = ±inf
    trainer.train()
    trainer.cleanup()
    for name in loaded.tasks:
        assert trainer.counters[f"regularizer_skipped/{name}"] == trainer.counters[f"batches/{name}"] > 0
    assert trainer.counters["nonfinite_loss_skipped"] == 0  # the batches themselves still trained
