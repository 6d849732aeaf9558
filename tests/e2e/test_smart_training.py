"""SMART inside the trainer: zero weights reproduce plain training exactly, and one mean
teacher serves every task of a multi-task run."""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from mtsmart.config import SmartConfig
from mtsmart.tasks import load_task_file
from mtsmart.train import Trainer

WORDS = "the a cat dog man woman movie good bad is not".split()


def write_tiny_tasks(root: Path) -> Path:
    rng = random.Random(0)
    (root / "data").mkdir(parents=True, exist_ok=True)
    for split, n in (("train", 40), ("dev", 16)):
        with open(root / "data" / f"pairs_{split}.tsv", "w") as f:
            f.write("a\tb\tlabel\n")
            for _ in range(n):
                f.write(f"{' '.join(rng.choices(WORDS, k=5))}\t{' '.join(rng.choices(WORDS, k=4))}\t"
                        f"{rng.choice(['yes', 'no'])}\n")
        with open(root / "data" / f"score_{split}.tsv", "w") as f:
            f.write("text\tscore\n")
            for _ in range(n):
                f.write(f"{' '.join(rng.choices(WORDS, k=6))}\t{rng.uniform(0, 5):.2f}\n")
    task_file = root / "tasks.yaml"
    task_file.write_text(f"""
data_dir: data
tasks:
  pairs:
    type: classification
    text_fields: [a, b]
    label_field: label
    labels: ["no", "yes"]
    splits: {{train: pairs_train.tsv, dev: pairs_dev.tsv}}
    max_length: 32
  score:
    type: regression
    text_fields: [text]
    target_field: score
    splits: {{train: score_train.tsv, dev: score_dev.tsv}}
    max_length: 32
training:
  batch_size: 8
  max_steps: 6
  eval_every: 6
  seed: 3
  optim: {{lr: 1.0e-3}}
""")
    return task_file


def run_trainer(task_file: Path, out: Path, encoder: Path, smart: SmartConfig) -> Trainer:
    loaded = load_task_file(str(task_file))
    cfg = replace(loaded.training, encoder=str(encoder), smart=smart)
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
                          SmartConfig(mode="full", epsilon=1e-2, noise_std=1e-2, step_size=1e-1))
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
