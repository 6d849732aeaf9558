"""A tiny two-task problem (pair classification + single-text regression) on disk."""

from __future__ import annotations

import random
from pathlib import Path

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
    task_file.write_text("""
data_dir: data
tasks:
  pairs:
    type: classification
    text_fields: [a, b]
    label_field: label
    labels: ["no", "yes"]
    splits: {train: pairs_train.tsv, dev: pairs_dev.tsv}
    max_length: 32
  score:
    type: regression
    text_fields: [text]
    target_field: score
    splits: {train: score_train.tsv, dev: score_dev.tsv}
    max_length: 32
training:
  batch_size: 8
  max_steps: 6
  eval_every: 6
  seed: 3
  optim: {lr: 1.0e-3}
""")
    return task_file


def train_tiny_run(root: Path, encoder: Path, name: str, *flags: str) -> tuple[Path, Path]:
    """Write the tiny tasks under ``root`` and train 4 updates on them into ``root/name``
    (with ``flags``); returns (task file, run directory)."""
    from mtsmart.cli import main

    task_file = write_tiny_tasks(root)
    out = root / name
    assert main(["train", str(task_file), "--encoder", str(encoder), "--output", str(out),
                 "--max-steps", "4", "--quiet", *flags]) == 0
    return task_file, out
