"""A run killed with SIGKILL mid-training and resumed with --resume ends with the same
weights and metrics, bit for bit on CPU, as the same run left alone."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from mtsmart.cli import main
from tiny_tasks import write_tiny_tasks

STEPS = ["--max-steps", "120", "--eval-every", "10", "--batch-size", "4", "--seed", "5"]


def train_args(task_file: Path, encoder: Path, out: Path, smart: str) -> list[str]:
    return ["train", str(task_file), "--encoder", str(encoder), "--output", str(out), "--quiet",
            "--num-threads", "1", "--smart", smart, "--epsilon", "1e-2", "--noise-std", "1e-2",
            "--step-size", "1e-1", *STEPS]


def final_state(out: Path) -> dict:
    encoder = load_file(str(out / "last" / "encoder" / "model.safetensors"))
    heads = load_file(str(out / "last" / "heads.safetensors"))
    teacher_path = out / "last" / "teacher.safetensors"
    teacher = load_file(str(teacher_path)) if teacher_path.exists() else {}
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {"encoder": encoder, "heads": heads, "teacher": teacher,
            "last_metrics": records[-1]["results"], "step": records[-1]["global_step"]}


@pytest.mark.parametrize("smart", ["full"])
def test_resume_after_sigkill_matches_an_uninterrupted_run(tmp_path, tiny_model_dir, smart):
    task_file = write_tiny_tasks(tmp_path)
    env = {**os.environ, "MTSMART_CACHE": str(tmp_path / "cache")}

    reference = tmp_path / "reference"
    assert main(train_args(task_file, tiny_model_dir, reference, smart)) == 0

    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "mtsmart", *train_args(task_file, tiny_model_dir, killed, smart)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    # Kill once a few checkpoints exist but well before the end.
    while time.time() < deadline:
        log = killed / "metrics.jsonl"
        if log.exists() and len(log.read_text().splitlines()) >= 3:
            break
        if proc.poll() is not None:
            pytest.fail(f"the run ended before it could be killed: {proc.stderr.read()[-500:]}")
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    steps_done = json.loads((killed / "last" / "meta.json").read_text())["global_step"]
    assert 0 < steps_done < 120
    # No half-written checkpoint is left looking complete.
    assert all((p / "meta.json").exists() for p in killed.iterdir()
               if p.is_dir() and p.name in ("best", "last"))

    assert main(train_args(task_file, tiny_model_dir, killed, smart) + ["--resume"]) == 0
    ref, res = final_state(reference), final_state(killed)
    assert res["step"] == ref["step"] == 120
    for part in ("encoder", "heads", "teacher"):
        assert ref[part].keys() == res[part].keys()
        for key in ref[part]:
            assert (ref[part][key] == res[part][key]).all(), f"{part}.{key} differs after resume"
    assert res["last_metrics"] == ref["last_metrics"]


def test_resume_needs_a_last_checkpoint(tmp_path, tiny_model_dir, capsys):
    task_file = write_tiny_tasks(tmp_path)
    code = main(train_args(task_file, tiny_model_dir, tmp_path / "none", "off") + ["--resume"])
    assert code == 2
    assert "nothing to resume" in capsys.readouterr().err


def test_keep_last_keeps_that_many_resumable_checkpoints(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("MTSMART_CACHE", str(tmp_path / "cache"))
    task_file = write_tiny_tasks(tmp_path)
    out = tmp_path / "run"
    assert main(["train", str(task_file), "--encoder", str(tiny_model_dir), "--output", str(out),
                 "--max-steps", "8", "--eval-every", "2", "--keep-last", "3", "--quiet"]) == 0
    history = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert history == ["step-0000004", "step-0000006"]
    assert json.loads((out / "last" / "meta.json").read_text())["global_step"] == 8
    for name in history:
        assert (out / "checkpoints" / name / "trainer_state" / "state.json").exists()
    # a crash between moving last/ aside and writing the new one: resume takes the newest
    import shutil

    shutil.rmtree(out / "last")
    from mtsmart.train import resume_checkpoint

    assert resume_checkpoint(str(out)) == str(out / "checkpoints" / "step-0000006")
