"""`finetune --resume` finishes an interrupted fine-tuning: a task with results is kept, the
interrupted one continues from its last checkpoint and ends bit for bit where the same
fine-tuning left alone ends, and a command other than the one it started with is refused."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from mtsmart.cli import main
from tiny_tasks import train_tiny_run

# Runs its arguments as `mtsmart ...`, SIGKILLing itself while the sixth trainer state is
# written: the second task's step-6 checkpoint, after its step-3 one is complete.
KILL_AT_SIXTH_SAVE = """
import os, signal, sys
from mtsmart import checkpoint
from mtsmart.cli import main
saves, real = [], checkpoint.save_trainer_state
def save_trainer_state(directory, state):
    saves.append(directory)
    if len(saves) == 6:
        os.kill(os.getpid(), signal.SIGKILL)
    real(directory, state)
checkpoint.save_trainer_state = save_trainer_state
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def start(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("start")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MTSMART_CACHE", str(root / "cache"))
        _, run = train_tiny_run(root, tiny_model_dir, "mt", "--smart", "full")
    return root, run / "last"


def finetune_args(checkpoint: Path, out: Path, *extra: str) -> list[str]:
    return ["finetune", str(checkpoint), "--task", "all", "--output", str(out), "--data-dir",
            str(checkpoint.parent.parent / "data"), "--max-steps", "12", "--eval-every", "3", "--seed", "4",
            "--smart", "full", "--quiet", "--num-threads", "1", *extra]


def ends(out: Path) -> dict:
    """Every task folder's final weights, teacher and evaluation log."""
    found = {}
    for task in ("pairs", "score"):
        last = out / task / "last"
        found[task] = {"encoder": load_file(str(last / "encoder" / "model.safetensors")),
                       "heads": load_file(str(last / "heads.safetensors")),
                       "teacher": load_file(str(last / "teacher.safetensors")),
                       "log": (out / task / "metrics.jsonl").read_text()}
    return found


@pytest.fixture(scope="module")
def left_alone(start, tmp_path_factory):
    root, checkpoint = start
    out = tmp_path_factory.mktemp("alone") / "ft"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MTSMART_CACHE", str(root / "cache"))
        assert main(finetune_args(checkpoint, out)) == 0
    return ends(out)


@pytest.fixture(scope="module")
def killed_once(start, tmp_path_factory):
    """The same fine-tuning, killed inside the second task's second checkpoint."""
    root, checkpoint = start
    out = tmp_path_factory.mktemp("killed") / "ft"
    env = {**os.environ, "MTSMART_CACHE": str(root / "cache")}
    proc = subprocess.run([sys.executable, "-c", KILL_AT_SIXTH_SAVE, *finetune_args(checkpoint, out)], env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-500:]
    assert (out / "pairs" / "results.json").exists() and not (out / "score" / "results.json").exists()
    assert json.loads((out / "score" / "last" / "meta.json").read_text())["global_step"] == 3
    return checkpoint, out


@pytest.fixture()
def killed(killed_once, start, tmp_path, monkeypatch):
    """A copy of the killed fine-tuning of its own (one kill serves every test: a subprocess
    costs seconds of imports)."""
    monkeypatch.setenv("MTSMART_CACHE", str(start[0] / "cache"))
    checkpoint, original = killed_once
    out = tmp_path / "ft"
    shutil.copytree(original, out, symlinks=True)
    return checkpoint, out


def test_finetune_resume_keeps_the_finished_task_and_continues_the_interrupted_one(killed, left_alone, capsys):
    checkpoint, out = killed
    finished = (out / "pairs" / "results.json").read_text()
    assert main(finetune_args(checkpoint, out, "--resume")) == 0
    printed = capsys.readouterr().out
    assert "finetune pairs: finished earlier, kept" in printed
    assert f"finetune score (2 of 2): continues from its last checkpoint → {out / 'score'}" in printed
    table = [line.split()[:2] for line in printed.splitlines() if line.split()[:1] in (["pairs"], ["score"])]
    assert table == [["pairs", "dev"], ["score", "dev"]], printed  # the kept task's results are in the table
    assert (out / "pairs" / "results.json").read_text() == finished  # not trained again
    resumed = ends(out)
    for task, expected in left_alone.items():
        for part in ("encoder", "heads", "teacher"):
            for key, value in expected[part].items():
                assert (resumed[task][part][key] == value).all(), f"{task}: {part}.{key} differs after resume"
        assert resumed[task]["log"] == expected["log"], task
    sessions = json.loads((out / "score" / "run.json").read_text())["sessions"]
    assert len(sessions) == 2 and sessions[0]["encoder"]["weights"] == "student"
    start_record = json.loads((out / "score" / "results.json").read_text())["start"]
    assert start_record == {"checkpoint": str(checkpoint.resolve()), "weights": "student"}


def test_a_resume_naming_the_start_by_another_path_records_the_path_the_run_started_from(killed, tmp_path):
    checkpoint, out = killed
    (tmp_path / "elsewhere").symlink_to(checkpoint, target_is_directory=True)  # the same weights
    args = finetune_args(checkpoint, out, "--resume")
    args[1] = str(tmp_path / "elsewhere")
    assert main(args) == 0
    start = json.loads((out / "score" / "results.json").read_text())["start"]
    assert start == {"checkpoint": str(checkpoint.resolve()), "weights": "student"}


def test_finetune_resume_refuses_other_settings_and_other_start_weights(killed, capsys):
    checkpoint, out = killed
    assert main(finetune_args(checkpoint, out, "--resume", "--lr", "1e-2")) == 2
    err = capsys.readouterr().err
    assert "optim.lr was 0.001, now 0.01" in err and "start again with --overwrite" in err
    assert main(finetune_args(checkpoint, out, "--resume", "--weights", "teacher")) == 2
    assert "started from the checkpoint's student, not its teacher; resume with --weights student" in \
        capsys.readouterr().err
    assert not (out / "score" / "results.json").exists()  # nothing was trained by a refused command


def test_a_task_that_stopped_before_its_first_checkpoint_starts_again(killed, left_alone, capsys):
    checkpoint, out = killed
    score = out / "score"
    for name in ("last", "best"):
        for path in sorted((score / name).rglob("*"), reverse=True):
            path.rmdir() if path.is_dir() else path.unlink()
        (score / name).rmdir()
    assert main(finetune_args(checkpoint, out, "--resume")) == 0
    assert f"finetune score (2 of 2): starts again (nothing was saved) → {score}" in capsys.readouterr().out
    assert ends(out)["score"]["log"] == left_alone["score"]["log"]
    assert len(json.loads((score / "run.json").read_text())["sessions"]) == 1  # a new run, not a resumed one


def test_finetune_resume_with_nothing_to_resume_and_with_overwrite_is_refused(start, tmp_path, capsys):
    _, checkpoint = start
    assert main(finetune_args(checkpoint, tmp_path / "empty", "--resume")) == 2
    assert "nothing to resume (no task folder in it, pairs, score, has a checkpoint)" in capsys.readouterr().err
    assert not (tmp_path / "empty").exists()
    assert main(finetune_args(checkpoint, tmp_path / "ft", "--resume", "--overwrite")) == 2
    assert "give one" in capsys.readouterr().err


def test_a_resume_names_the_checkpoint_the_run_started_from(tmp_path):
    from mtsmart.errors import ConfigError
    from mtsmart.provenance import encoder_fingerprint
    from mtsmart.run_folder import check_resume_start

    def checkpoint(name: str, config: str) -> Path:
        encoder = tmp_path / name / "encoder"
        encoder.mkdir(parents=True)
        (encoder / "config.json").write_text(config)
        return tmp_path / name

    started, other = checkpoint("a", '{"hidden_size": 8}'), checkpoint("b", '{"hidden_size": 16}')
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"sessions": [{"encoder": {
        "source": str(started), "fingerprint": encoder_fingerprint(str(started / "encoder")),
        "weights": "teacher"}}]}))
    check_resume_start(str(run), str(started), "teacher")
    with pytest.raises(ConfigError, match=f"the run started from {started}, and {other}'s encoder is another"):
        check_resume_start(str(run), str(other), "teacher")
    with pytest.raises(ConfigError, match="resume with --weights teacher"):
        check_resume_start(str(run), str(started), "student")


# ---- proposed by the mutation audit
def test_a_single_task_finetune_resume_with_nothing_to_resume_is_refused(start, tmp_path, capsys):
    _, checkpoint = start
    args = finetune_args(checkpoint, tmp_path / "one", "--resume")
    args[args.index("all")] = "pairs"
    assert main(args) == 2
    assert "nothing to resume (no 'last' checkpoint)" in capsys.readouterr().err
    assert not (tmp_path / "one").exists()


def test_finetune_resume_finishes_a_save_a_kill_cut_between_its_renames(killed, left_alone):
    checkpoint, out = killed
    score = out / "score"
    (score / "last").rename(score / ".last.tmp-killed")  # what a kill between the two renames leaves
    assert main(finetune_args(checkpoint, out, "--resume")) == 0
    assert ends(out)["score"]["log"] == left_alone["score"]["log"]
    assert len(json.loads((score / "run.json").read_text())["sessions"]) == 2  # resumed, not started again
    assert not [p.name for p in score.iterdir() if ".tmp-" in p.name]


def test_a_damaged_results_file_of_a_finished_task_is_one_line(killed, capsys):
    checkpoint, out = killed
    (out / "pairs" / "results.json").write_text('{"best": ')
    assert main(finetune_args(checkpoint, out, "--resume")) == 2
    err = capsys.readouterr().err.strip()
    assert "results.json: damaged" in err and "\n" not in err
    assert err.endswith(f"remove {out / 'pairs'} to train that task again")
    assert not (out / "score" / "results.json").exists()


def test_a_resume_of_a_run_that_recorded_no_start_weights_takes_either(tmp_path):
    """A run from before run.json recorded the start's weights (or its start at all) is not
    refused for them."""
    from mtsmart.provenance import encoder_fingerprint
    from mtsmart.run_folder import check_resume_start

    started = tmp_path / "a"
    (started / "encoder").mkdir(parents=True)
    (started / "encoder" / "config.json").write_text('{"hidden_size": 8}')
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"sessions": [{"encoder": {
        "source": str(started), "fingerprint": encoder_fingerprint(str(started / "encoder"))}}]}))
    for weights in ("student", "teacher"):
        check_resume_start(str(run), str(started), weights)
    (run / "run.json").write_text(json.dumps({"sessions": [{"command": ["mtsmart"]}]}))
    check_resume_start(str(run), str(tmp_path / "elsewhere"), "teacher")
