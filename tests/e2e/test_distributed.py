"""Data-parallel training under torchrun: two CPU processes with the gloo backend.

Tolerance: with dropout off, two replicas of batch B/2 must give the single-process run of
batch B (same seed) up to float summation order: losses within 1e-5 relative, weights
within 1e-5 absolute after 12 updates."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file

from conftest import build_tiny_encoder, tensorboard_scalars
from mtsmart.cli import main
from tiny_tasks import write_tiny_tasks

TRAIN_ARGS = ["--max-steps", "12", "--eval-every", "6", "--batch-size", "7", "--seed", "4",
              "--num-threads", "1", "--quiet"]


def torchrun(args: list[str], cwd: Path, env: dict, module: bool = True) -> subprocess.CompletedProcess:
    """Run ``args`` on two replicas; fail with the workers' whole output if it fails.

    No retry: a rank that aborts at exit after a successful run (gloo freeing buffers
    during interpreter shutdown, see ``Replicas.close``) must fail the test."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               *(["-m"] if module else []), *args]
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"torchrun failed:\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture()
def env(tmp_path):
    return {**os.environ, "MTSMART_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1",
            "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2]),
                                           os.environ.get("PYTHONPATH", "")])}


def test_two_replicas_equal_one_process_with_the_same_global_batch(tmp_path, env):
    encoder = build_tiny_encoder(tmp_path / "encoder", dropout=0.0)
    task_file = write_tiny_tasks(tmp_path)
    task_file.write_text(task_file.read_text().replace("max_length: 32", "max_length: 32\n    head_dropout: 0.0"))
    # Class weights make a batch's cross-entropy Σ w·ℓ / Σ w: a slice's share of it is its
    # share of the weights, not of the examples.
    weighted = task_file.read_text().replace('labels: ["no", "yes"]', 'labels: ["no", "yes"]\n    class_weights: [1.0, 4.0]')
    assert weighted != task_file.read_text()
    task_file.write_text(weighted)
    # Bregman-only SMART is deterministic without dropout, so the teacher is compared too.
    # Batch 7 over 40 examples ends each epoch with a batch of 5, split 3 / 2: the
    # replicas' shares must be weighted by their sizes to match.
    # The paper preset's fixed β: with the default horizon (10% of 12 updates) the teacher
    # is nearly the student and D ~ 1e-6, where summation order alone exceeds rtol 1e-5.
    args = ["train", str(task_file), "training.log_every=1", "--encoder", str(encoder), "--smart", "bregman",
            "--smart-preset", "paper", *TRAIN_ARGS]
    single, double = tmp_path / "single", tmp_path / "double"
    assert main([*args, "--output", str(single)]) == 0
    done = torchrun(["mtsmart", *args, "--output", str(double)], tmp_path, env)

    assert (done.stdout.count("best checkpoint") == 1), "only the main replica prints"
    for tag in ("train/pairs/loss", "train/score/loss", "train/score/teacher_divergence"):
        ours, theirs = tensorboard_scalars(double)[tag], tensorboard_scalars(single)[tag]
        assert [s for s, _ in ours] == [s for s, _ in theirs] and len(ours) >= 5, tag
        np.testing.assert_allclose([v for _, v in ours], [v for _, v in theirs], rtol=1e-5, err_msg=tag)
    for name in ("encoder/model.safetensors", "heads.safetensors", "teacher.safetensors"):
        a, b = load_file(str(single / "last" / name)), load_file(str(double / "last" / name))
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_allclose(b[key].numpy(), a[key].numpy(), atol=1e-5, err_msg=f"{name}:{key}")
    assert not (double / "last" / "tensorboard").exists()
    assert len(list((double / "tensorboard").iterdir())) == 1, "one event file: only rank 0 logs"


WORKER = """
import sys
from safetensors.torch import save_file
from mtsmart.distributed import Replicas
from mtsmart.tasks import load_task_file, resolve_data_dir
from mtsmart.run_folder import claim_output_dir
from mtsmart.train import Trainer

task_file, encoder, out = sys.argv[1:4]
overrides = [(["training", "encoder"], encoder, "test"), (["training", "smart", "mode"], "full", "test"),
             (["training", "max_steps"], 9, "test"), (["training", "eval_every"], 3, "test"),
             (["training", "batch_size"], 5, "test"), (["training", "grad_accum_steps"], 2, "test"),
             (["training", "num_threads"], 1, "test")]
tasks = load_task_file(task_file, overrides)
replicas = Replicas.from_environment()
if replicas.is_main:
    claim_output_dir(out, overwrite=True).close()
replicas.barrier()
trainer = Trainer(tasks.tasks, tasks.training, resolve_data_dir(None, tasks), out, show_progress=False,
                  replicas=replicas)
trainer.setup()
trainer.train()
state = {"model/" + k: v.contiguous() for k, v in trainer.model.state_dict().items()}
state.update({"teacher/" + k: v.contiguous() for k, v in trainer.teacher.state_dict().items()})
save_file(state, f"{out}-rank{replicas.rank}.safetensors")
replicas.close()
"""


def test_replicas_end_bitwise_identical_under_full_smart(tmp_path, tiny_model_dir, env):
    """Dropout on, SMART's noise drawn per replica, gradient accumulation: whatever each
    replica computes, the summed gradients and therefore the weights and the shared
    teacher must be the same on both, bit for bit."""
    task_file = write_tiny_tasks(tmp_path)
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    torchrun([str(worker), str(task_file), str(tiny_model_dir), str(tmp_path / "run")],
             tmp_path, env, module=False)
    rank0, rank1 = (load_file(str(tmp_path / f"run-rank{r}.safetensors")) for r in (0, 1))
    assert rank0.keys() == rank1.keys() and any(k.startswith("teacher/") for k in rank0)
    for key in rank0:
        assert (rank0[key] == rank1[key]).all(), key
    start = load_file(str(tiny_model_dir / "model.safetensors"))
    moved = [k for k in start if not (rank0["model/encoder." + k] == start[k]).all()]
    assert moved, "the replicas trained"


@pytest.mark.parametrize("problem", ["task", "output", "flag"])
def test_a_user_error_is_printed_once_not_once_per_replica(tmp_path, tiny_model_dir, env, problem):
    """A task the file lacks (every replica finds it), a non-empty --output (the main
    replica finds it and tells the others) and a mistyped flag (argparse, on every replica)."""
    task_file = write_tiny_tasks(tmp_path)
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("x")
    args = ["mtsmart", "train", str(task_file), "--encoder", str(tiny_model_dir), *TRAIN_ARGS,
            "--output", str(tmp_path / ("taken" if problem == "output" else "run"))]
    args += {"task": ["--tasks", "nosuch"], "output": [], "flag": ["--max-stepz", "3"]}[problem]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", *args]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    lines = [line for line in (done.stdout + done.stderr).splitlines() if ": error: " in line]
    assert len(lines) == 1, done.stdout + done.stderr
    assert {"task": "nosuch", "output": "not empty", "flag": "--max-stepz"}[problem] in lines[0]
    assert "replica" not in lines[0]


def processes_mentioning(text: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and text in (entry / "cmdline").read_bytes().decode(errors="replace"):
                pids.append(int(entry.name))
        except OSError:
            pass
    return pids


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the worker processes through /proc")
def test_two_replicas_killed_and_resumed_match_an_uninterrupted_run(tmp_path, tiny_model_dir, env):
    """SIGKILL to the whole torchrun process group mid-run, then --resume: every replica
    restores its own generator state, so the run ends bit for bit where it would have."""
    import signal
    import time

    task_file = write_tiny_tasks(tmp_path)
    args = ["mtsmart", "train", str(task_file), "--encoder", str(tiny_model_dir), "--smart", "full",
            "--max-steps", "60", "--eval-every", "5", "--batch-size", "4", "--seed", "2",
            "--num-threads", "1", "--quiet"]
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    torchrun([*args, "--output", str(reference)], tmp_path, env)

    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", *args, "--output", str(killed)]
    proc = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    log, deadline = killed / "metrics.jsonl", time.time() + 120
    while not (log.exists() and len(log.read_text().splitlines()) >= 3):
        assert proc.poll() is None and time.time() < deadline, "the run ended before it could be killed"
        time.sleep(0.02)
    # torchrun starts each worker in its own session: kill the launcher and the workers,
    # as a machine failure would.
    victims = processes_mentioning(str(killed))
    assert len(victims) >= 3, "the launcher and two workers"
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    proc.wait()
    while any(os.path.exists(f"/proc/{pid}") and not _is_zombie(pid) for pid in victims):
        time.sleep(0.02)
    assert len(log.read_text().splitlines()) < 12, "killed before the end"
    torchrun([*args, "--output", str(killed), "--resume"], tmp_path, env)

    for name in ("encoder/model.safetensors", "heads.safetensors", "teacher.safetensors"):
        a, b = load_file(str(reference / "last" / name)), load_file(str(killed / "last" / name))
        for key in a:
            assert (a[key] == b[key]).all(), f"{name}:{key}"
    assert (reference / "metrics.jsonl").read_text().splitlines()[-1] == log.read_text().splitlines()[-1]
