"""A run can be run again from its checkpoint alone: tasks.yaml and training.yaml hold every
setting that shaped it (flags, KEY=VALUE overrides, per-task overrides, presets), so the
second run logs the same metrics and ends with the same weights."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file

from mtsmart.cli import main
from tiny_tasks import write_tiny_tasks


def test_a_run_again_from_its_checkpoint_files_is_the_same_run(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("MTSMART_CACHE", str(tmp_path / "cache"))
    task_file = write_tiny_tasks(tmp_path)
    first = tmp_path / "first"
    assert main(["train", str(task_file), "--encoder", str(tiny_model_dir), "--output", str(first), "--quiet",
                 "--smart", "full", "--epsilon", "0.02", "--noise-std", "0.01", "--encoder-dropout", "0.05",
                 "--max-steps", "6", "--eval-every", "3", "--batch-size", "4", "--seed", "11",
                 "--sampler", "uniform", "--select-metric", "pairs/accuracy",
                 "tasks.pairs.max_length=16", "tasks.pairs.class_weights=balanced",
                 "tasks.score.smart.adv_weight=0", "optim.weight_decay=0"]) == 0

    again = tmp_path / "again"
    assert main(["train", str(first / "last" / "tasks.yaml"), "--config", str(first / "last" / "training.yaml"),
                 "--data-dir", str(tmp_path / "data"), "--output", str(again), "--quiet"]) == 0

    assert records(again) == records(first) and len(records(first)) == 2
    for part in ("heads.safetensors", "teacher.safetensors", "encoder/model.safetensors"):
        a, b = load_file(str(first / "last" / part)), load_file(str(again / "last" / part))
        assert a.keys() == b.keys()
        assert all((a[k] == b[k]).all() for k in a), part
    assert fingerprints(again) == fingerprints(first)


def records(run: Path) -> list[str]:
    return (run / "metrics.jsonl").read_text().splitlines()


def fingerprints(run: Path) -> dict:
    """What run.json says of the tokenized examples of every split."""
    return json.loads((run / "run.json").read_text())["sessions"][0]["data"]
