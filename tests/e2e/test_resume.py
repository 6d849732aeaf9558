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
import torch
from safetensors.torch import load_file

from mtsmart.cli import main
from conftest import build_tiny_encoder, tensorboard_scalars
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
            "last_metrics": records[-1]["results"], "step": records[-1]["global_step"],
            "records": records, "record_files": sorted(p.name for p in (out / "metrics").iterdir()),
            "scalars": tensorboard_scalars(out)}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_model_dir) -> dict:
    """The run left alone, which every interrupted and resumed run must match."""
    base = tmp_path_factory.mktemp("reference")
    task_file = write_tiny_tasks(base)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MTSMART_CACHE", str(base / "cache"))
        assert main(train_args(task_file, tiny_model_dir, base / "run", "full")) == 0
    return final_state(base / "run")


def resume_and_compare(task_file: Path, encoder: Path, killed: Path, reference: dict) -> None:
    from mtsmart.checkpoint import load_trainer_state_json
    from mtsmart.run_folder import recover_run_folder

    recover_run_folder(str(killed))  # what --resume does first: the checkpoint it will read
    before = load_trainer_state_json(str(killed / "last"))["train_seconds"]
    assert main(train_args(task_file, encoder, killed, "full") + ["--resume"]) == 0
    res = final_state(killed)
    # the run's training time is every session's, up to the checkpoint each resumed from
    summary = json.loads((killed / "results.json").read_text())
    assert before > 0 and summary["train_seconds"] == pytest.approx(before + summary["session_seconds"])
    assert res["step"] == reference["step"] == 120
    for part in ("encoder", "heads", "teacher"):
        assert reference[part].keys() == res[part].keys()
        for key in reference[part]:
            assert (reference[part][key] == res[part][key]).all(), f"{part}.{key} differs after resume"
    assert res["last_metrics"] == reference["last_metrics"]
    # the logs read as if the run had never stopped: no evaluation twice, no curve doubling back
    assert res["records"] == reference["records"]
    assert res["record_files"] == reference["record_files"]
    assert res["scalars"].keys() == reference["scalars"].keys()
    for tag, curve in reference["scalars"].items():
        assert res["scalars"][tag] == curve, tag
    # the interrupted save is finished or undone: nothing is left under a temporary name
    assert not [p.name for p in killed.iterdir() if ".tmp-" in p.name]


def test_resume_after_sigkill_matches_an_uninterrupted_run(tmp_path, tiny_model_dir, reference, monkeypatch):
    task_file = write_tiny_tasks(tmp_path)
    monkeypatch.setenv("MTSMART_CACHE", str(tmp_path / "cache"))
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "mtsmart", *train_args(task_file, tiny_model_dir, killed, "full")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    # Kill once a few checkpoints exist but well before the end.
    while time.time() < deadline:
        log = killed / "metrics.jsonl"
        if log.exists() and len(log.read_text().splitlines()) >= 3:
            break
        if proc.poll() is not None:
            pytest.fail(f"the run ended before it could be killed: {proc.stderr.read()[-500:]}")
        time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail("the run wrote no three evaluations in 120 s")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # The kill lands while checkpoints are being written, so last/ may be mid-replacement;
    # whatever is under a final name is complete.
    assert all((p / "meta.json").exists() for p in killed.iterdir()
               if p.is_dir() and p.name in ("best", "last"))
    resume_and_compare(task_file, tiny_model_dir, killed, reference)


# Runs `mtsmart train`, SIGKILLing itself inside the third save of last/ (step 30): while it
# is being written, once it is complete but before the renames, or between the two renames.
KILL_DURING_SAVE = """
import os, signal, sys
from mtsmart import checkpoint
from mtsmart.cli import main
moment, saves = sys.argv[1], []
real_save_state, real_replace = checkpoint.save_trainer_state, os.replace
def save_trainer_state(directory, state):
    saves.append(directory)
    if len(saves) == 3 and moment == "while-writing":
        os.kill(os.getpid(), signal.SIGKILL)
    real_save_state(directory, state)
def replace(src, dst):
    third = len(saves) == 3 and os.path.basename(src) == "last" and str(dst).endswith(".old")
    if third and moment == "before-renames":
        os.kill(os.getpid(), signal.SIGKILL)
    real_replace(src, dst)
    if third and moment == "between-renames":
        os.kill(os.getpid(), signal.SIGKILL)
checkpoint.save_trainer_state, os.replace = save_trainer_state, replace
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize("moment, complete", [
    ("while-writing", [20]), ("before-renames", [20, 30]), ("between-renames", [20, 30])])
def test_resume_after_a_kill_inside_a_checkpoint_save(tmp_path, tiny_model_dir, reference, moment, complete,
                                                      monkeypatch):
    task_file = write_tiny_tasks(tmp_path)
    monkeypatch.setenv("MTSMART_CACHE", str(tmp_path / "cache"))
    killed = tmp_path / "killed"
    proc = subprocess.run([sys.executable, "-c", KILL_DURING_SAVE, moment,
                           *train_args(task_file, tiny_model_dir, killed, "full")],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-500:]
    steps = {p.name: json.loads((p / "meta.json").read_text())["global_step"] for p in killed.iterdir()
             if (p.name == "last" or p.name.startswith(".last.tmp-")) and (p / "meta.json").exists()}
    assert sorted(steps.values()) == complete
    assert ("last" in steps) == (moment != "between-renames")
    # the evaluation of step 30 was logged before its checkpoint was written
    assert json.loads((killed / "metrics.jsonl").read_text().splitlines()[-1])["global_step"] == 30
    resume_and_compare(task_file, tiny_model_dir, killed, reference)
    assert json.loads((killed / "last" / "meta.json").read_text())["global_step"] == 120


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
    from mtsmart.run_folder import resume_checkpoint

    assert resume_checkpoint(str(out)) == str(out / "checkpoints" / "step-0000006")
    # and --resume continues from it
    assert main(["train", str(task_file), "--encoder", str(tiny_model_dir), "--output", str(out),
                 "--max-steps", "8", "--eval-every", "2", "--keep-last", "3", "--quiet", "--resume"]) == 0
    assert json.loads((out / "last" / "meta.json").read_text())["global_step"] == 8
    assert len(json.loads((out / "run.json").read_text())["sessions"]) == 2


def test_resume_refuses_settings_other_than_the_runs(tmp_path, tiny_model_dir, monkeypatch, capsys):
    monkeypatch.setenv("MTSMART_CACHE", str(tmp_path / "cache"))
    task_file = write_tiny_tasks(tmp_path)
    out = tmp_path / "run"
    start = ["train", str(task_file), "--encoder", str(tiny_model_dir), "--output", str(out), "--quiet",
             "--eval-every", "2"]
    assert main(start + ["--max-steps", "4", "--smart", "full"]) == 0
    before = {p: p.read_bytes() for p in (out / "last", out / "metrics.jsonl") if p.is_file()}
    meta = (out / "last" / "meta.json").read_text()
    capsys.readouterr()

    # the learning rate would be ignored (the optimizer state holds the run's); a task's
    # length, the SMART weight and the length of the run would change it halfway
    changed = ["--max-steps", "6", "--smart", "full", "--lr", "2e-3", "--adv-weight", "2",
               "tasks.pairs.max_length=16"]
    assert main(start + changed + ["--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for named in ("training.max_steps was 4, now 6", "training.optim.lr was 0.001, now 0.002",
                  "training.smart.adv_weight", "tasks.pairs.max_length was 32, now 16", "mtsmart finetune"):
        assert named in err, named
    assert "num_threads" not in err and "encoder" not in err
    assert (out / "last" / "meta.json").read_text() == meta and before == {p: p.read_bytes() for p in before}

    # another encoder would be ignored (the weights come from the checkpoint): named too
    other = build_tiny_encoder(tmp_path / "other-encoder")
    capsys.readouterr()  # what saving it printed
    elsewhere = [str(other) if arg == str(tiny_model_dir) else arg for arg in start]
    assert main(elsewhere + ["--max-steps", "4", "--smart", "full", "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"training.encoder was '{tiny_model_dir}', now '{other}'" in err, err

    # examples that changed since the run started would silently continue another stream
    data_file = task_file.parent / "data" / "pairs_train.tsv"
    original = data_file.read_text()
    header, *rows = original.splitlines()
    data_file.write_text("\n".join([header, *rows[::-1]]) + "\n")  # the same rows, another order
    assert main(start + ["--max-steps", "4", "--smart", "full", "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert "task 'pairs', train split 'train': its examples changed since the run started" in err, err
    assert len(json.loads((out / "run.json").read_text())["sessions"]) == 1
    data_file.write_text(original)

    # how the run reports and which threads it uses may change, and the encoder may be named
    # by another path to the same folder: the resumed run finishes
    monkeypatch.chdir(tiny_model_dir.parent)
    start[start.index("--encoder") + 1] = tiny_model_dir.name
    assert main(start + ["--max-steps", "4", "--smart", "full", "--num-threads", "1", "log_every=1",
                         "--resume"]) == 0
    assert "trained nothing: the run had finished at step 4" in capsys.readouterr().out
    sessions = json.loads((out / "run.json").read_text())["sessions"]
    assert [s["command"][-1] for s in sessions] == ["full", "--resume"]
    assert sessions[0]["data"] == sessions[1]["data"]


def test_a_resume_refusal_names_a_dropped_task_and_stays_one_readable_line(tmp_path, tiny_model_dir, monkeypatch,
                                                                            capsys):
    monkeypatch.setenv("MTSMART_CACHE", str(tmp_path / "cache"))
    task_file = write_tiny_tasks(tmp_path)
    out = tmp_path / "run"
    start = ["train", str(task_file), "--encoder", str(tiny_model_dir), "--output", str(out), "--quiet"]
    assert main(start + ["--max-steps", "2"]) == 0
    capsys.readouterr()
    changed = ["--tasks", "pairs", "--max-steps", "6", "--lr", "2e-3", "--batch-size", "4", "--seed", "9",
               "--smart", "full", "--adv-weight", "2", "--epsilon", "0.1"]
    assert main(start + changed + ["--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and len(err) < 700, err
    assert "tasks.score was in the run, now left out" in err and "; and 2 more (resume with" in err, err
    assert "'type': 'regression'" not in err  # the task's definition is not printed


def test_an_interrupted_command_says_what_continues_it():
    from argparse import Namespace

    from mtsmart.cli import _how_to_go_on

    assert _how_to_go_on(Namespace(command="finetune", resume=False)) == "; the same command with --resume continues it"
    assert _how_to_go_on(Namespace(command="train", resume=True)) == "; the same command continues it"
    assert _how_to_go_on(Namespace(command="adapt")) == "; the same command continues the grid (finished runs are kept)"
    assert _how_to_go_on(Namespace(command="evaluate")) == ""


def test_the_closing_line_counts_this_sessions_steps():
    from mtsmart.cli import steps_trained

    assert steps_trained(0, 40) == "trained 40 steps"
    assert steps_trained(10, 40) == "trained steps 11-40 (30 this session)"
    assert steps_trained(40, 40) == "trained nothing: the run had finished at step 40"


def test_sigterm_stops_like_ctrl_c_and_the_run_resumes(tmp_path, tiny_model_dir):
    """What schedulers and `docker stop` send: no half-written checkpoint is left, one line
    says what happened, exit 143, and --resume finishes the run."""
    import os
    import signal
    import subprocess
    import sys
    import time

    task_file = write_tiny_tasks(tmp_path)
    out = tmp_path / "run"
    env = {**os.environ, "MTSMART_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    argv = [sys.executable, "-m", "mtsmart", *train_args(task_file, tiny_model_dir, out, "full")[:-len(STEPS)],
            "--max-steps", "60", "--eval-every", "2", "--keep-last", "2", "--batch-size", "4"]
    proc = subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    deadline = time.time() + 120
    while not (out / "checkpoints").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    assert err.strip().splitlines()[-1] == "mtsmart: terminated (SIGTERM); the same command with --resume continues it"
    assert not [p.name for p in out.iterdir() if ".tmp-" in p.name]
    # eval_every is a run-only setting: fewer evaluations finish the run sooner
    resumed = subprocess.run(argv + ["--eval-every", "20", "--resume"], env=env, capture_output=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]


def test_resume_with_the_tasks_in_an_order_of_their_own(tmp_path, tiny_model_dir, monkeypatch, capsys):
    """The heads come back in the run's order, not the name order meta.json sorts them in:
    the optimizer state follows the parameters by position, so a run over `score,pairs`
    resumed with its heads swapped would give each head the other's Adam moments."""
    from mtsmart.train import Trainer

    monkeypatch.setenv("MTSMART_CACHE", str(tmp_path / "cache"))
    task_file = write_tiny_tasks(tmp_path)
    argv = ["train", str(task_file), "--encoder", str(tiny_model_dir), "--quiet", "--num-threads", "1",
            "--tasks", "score,pairs", "--smart", "full", "--epsilon", "1e-2", "--max-steps", "12",
            "--eval-every", "4", "--batch-size", "4"]
    assert main(argv + ["--output", str(tmp_path / "whole")]) == 0

    real = Trainer.evaluate_and_checkpoint
    calls = []

    def stop_after_the_first_checkpoint(self):
        record = real(self)
        calls.append(1)
        if len(calls) == 1:
            raise KeyboardInterrupt  # Ctrl-C just after step 4's checkpoint
        return record

    monkeypatch.setattr(Trainer, "evaluate_and_checkpoint", stop_after_the_first_checkpoint)
    assert main(argv + ["--output", str(tmp_path / "stopped")]) == 130
    monkeypatch.setattr(Trainer, "evaluate_and_checkpoint", real)
    assert main(argv + ["--output", str(tmp_path / "stopped"), "--resume"]) == 0
    whole, resumed = final_state(tmp_path / "whole"), final_state(tmp_path / "stopped")
    for part in ("encoder", "heads", "teacher"):
        for key in whole[part]:
            assert torch.equal(whole[part][key], resumed[part][key]), f"{part}.{key} differs after resume"
    # an optimizer state whose positions name other parameters is refused, never loaded
    state_path = tmp_path / "stopped" / "last" / "trainer_state" / "state.json"
    state = json.loads(state_path.read_text())
    names = state["optimizer_parameters"]
    names[0], names[-1] = names[-1], names[0]
    state_path.write_text(json.dumps(state))
    sessions = (tmp_path / "stopped" / "run.json").read_text()
    assert main(argv + ["--output", str(tmp_path / "stopped"), "--resume"]) == 2
    assert (tmp_path / "stopped" / "run.json").read_text() == sessions  # a refused resume is no session
    # the same tasks in another order: named, with the order to give
    swapped = list(argv)
    swapped[swapped.index("score,pairs")] = "pairs,score"
    capsys.readouterr()
    assert main(swapped + ["--output", str(tmp_path / "stopped"), "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("in the order it trained them, score, pairs, not pairs, score (give --tasks score,pairs)")
    assert (tmp_path / "stopped" / "run.json").read_text() == sessions


def test_a_second_process_cannot_train_into_a_run_folder_in_use(tmp_path, tiny_model_dir, monkeypatch, capsys):
    """While one process trains into a folder (its lock held), --resume and --overwrite into
    the same folder are refused; once it is gone, the folder is free again."""
    from mtsmart.run_folder import lock_run

    monkeypatch.setenv("MTSMART_CACHE", str(tmp_path / "cache"))
    task_file = write_tiny_tasks(tmp_path)
    out = tmp_path / "run"
    argv = train_args(task_file, tiny_model_dir, out, "off")[:-len(STEPS)] + ["--max-steps", "2", "--eval-every", "2"]
    assert main(argv) == 0
    before = (out / "metrics.jsonl").read_text()
    held = lock_run(str(out))  # as the other process would hold it
    capsys.readouterr()
    for extra in (["--resume"], ["--overwrite"], ["--overwrite", "--dry-run"]):
        assert main(argv + extra) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "is training into this folder" in err[0] and f"pid {os.getpid()}" in err[0], err
    assert (out / "metrics.jsonl").read_text() == before
    held.close()
    assert main(argv + ["--resume"]) == 0


# ------------------------------------------------------------------ TensorBoard file order on resume
def test_a_resumed_logger_starts_its_event_file_in_a_later_second(tmp_path):
    """TensorBoard reads event files in name order, which starts with the creation second:
    a resume's file (which purges the steps after the checkpoint) must sort after the
    interrupted run's, even when the resume comes within the same second."""
    import socket
    import time

    from mtsmart.metric_logging import MetricLogger

    log_dir = tmp_path / "tensorboard"
    log_dir.mkdir()
    now = int(time.time())
    (log_dir / f"events.out.tfevents.{now}.{socket.gethostname()}.1.0").write_bytes(b"")
    logger = MetricLogger(str(log_dir), purge_step=5)
    logger.close()
    seconds = sorted(int(p.name.split(".")[3]) for p in log_dir.glob("events.out.tfevents.*"))
    assert len(seconds) == 2 and seconds[1] > now


# ---- proposed by the mutation audit: the refusal's wording, on a run folder written by hand
def _run_folder(root: Path, task_file: Path, names: tuple[str, ...]) -> str:
    """A run folder whose last/ checkpoint records ``names`` of the tiny task file and its
    training settings: all check_resume_settings reads."""
    import yaml

    from mtsmart.config import to_plain
    from mtsmart.tasks import load_task_file, task_to_plain

    loaded = load_task_file(str(task_file))
    last = root / "run" / "last"
    last.mkdir(parents=True)
    (last / "meta.json").write_text('{"global_step": 2}')
    (last / "training.yaml").write_text(yaml.safe_dump({"training": to_plain(loaded.training)}))
    (last / "tasks.yaml").write_text(yaml.safe_dump({"tasks": {n: task_to_plain(loaded.tasks[n]) for n in names}}))
    return str(root / "run")


def test_a_resume_refusal_names_an_added_task_and_lists_six_differences_without_more(tmp_path):
    import dataclasses

    from mtsmart.errors import ConfigError
    from mtsmart.tasks import load_task_file
    from mtsmart.run_folder import check_resume_settings

    task_file = write_tiny_tasks(tmp_path)
    loaded = load_task_file(str(task_file))
    run = _run_folder(tmp_path, task_file, ("pairs",))
    with pytest.raises(ConfigError) as err:
        check_resume_settings(run, loaded.training, loaded.tasks)
    assert "tasks.score was not in the run, now added" in str(err.value)
    assert "'type'" not in str(err.value)  # the task's definition is not printed
    pairs = {"pairs": loaded.tasks["pairs"]}
    six = {"seed": 11, "batch_size": 3, "max_steps": 99, "grad_accum_steps": 2, "epochs": 9.0,
           "length_grouped": False}
    for changed, more in ((six, None), ({**six, "select_metric": "pairs/accuracy"}, "; and 1 more")):
        with pytest.raises(ConfigError) as err:
            check_resume_settings(run, dataclasses.replace(loaded.training, **changed), pairs)
        listed = str(err.value).split("these differ: ", 1)[1]
        assert listed.count(" was ") == 6, listed
        assert ("more" in listed) == (more is not None) and (more is None or more in listed), listed


def test_nothing_to_resume_says_when_the_run_stopped_before_its_first_checkpoint(tmp_path):
    from mtsmart.errors import ConfigError
    from mtsmart.run_folder import check_output_dir

    with pytest.raises(ConfigError, match=r"nothing to resume \(no 'last' checkpoint\)$"):
        check_output_dir(str(tmp_path), overwrite=False, resume=True)
    (tmp_path / "run.json").write_text('{"sessions": []}')
    with pytest.raises(ConfigError, match="the run stopped before its first one: start it again with --overwrite"):
        check_output_dir(str(tmp_path), overwrite=False, resume=True)
    # a checkpoint given as --output: its run folder is named
    (tmp_path / "last").mkdir()
    (tmp_path / "last" / "meta.json").write_text('{"global_step": 4}')
    with pytest.raises(ConfigError, match=f"a checkpoint; --output names the run folder that holds it \\({tmp_path}\\)"):
        check_output_dir(str(tmp_path / "last"), overwrite=False, resume=True)
    check_output_dir(str(tmp_path), overwrite=False, resume=True)


def test_a_folder_holding_only_its_lock_is_empty_to_a_new_run(tmp_path):
    """A run that stopped right after claiming its folder left the lock file alone there."""
    from mtsmart.errors import ConfigError
    from mtsmart.run_folder import LOCK_FILE, check_output_dir

    (tmp_path / LOCK_FILE).write_text("mtsmart (pid 1 on host)")
    check_output_dir(str(tmp_path), overwrite=False, resume=False)
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="output directory is not empty"):
        check_output_dir(str(tmp_path), overwrite=False, resume=False)


def test_only_a_task_on_one_side_is_named_as_added_or_left_out():
    from mtsmart.run_folder import _described_change

    assert _described_change("tasks.score", None, {"type": "regression"}) == "tasks.score was not in the run, now added"
    assert _described_change("tasks.score", {"type": "regression"}, None) == "tasks.score was in the run, now left out"
    # a setting inside a task that went from unset to a mapping is a setting, not a task
    assert _described_change("tasks.pairs.splits.train.columns", None, {"a": 0}) == \
        "tasks.pairs.splits.train.columns was None, now {'a': 0}"


def test_a_resume_restores_the_best_score_and_the_patience_count(tmp_path, tiny_model_dir, monkeypatch):
    """Reset on resume, the best score made the first evaluation after it "best" (replacing
    best/ with a worse checkpoint), and the patience count restarted (a resumed run trained
    longer than the same run left alone). The state is edited to what a run past its best
    leaves, so the values restored are known."""
    from mtsmart.tasks import load_task_file, resolve_data_dir
    from mtsmart.train import Trainer

    monkeypatch.setenv("MTSMART_CACHE", str(tmp_path / "cache"))
    task_file = write_tiny_tasks(tmp_path)
    out = tmp_path / "run"
    assert main(["train", str(task_file), "--encoder", str(tiny_model_dir), "--output", str(out), "--quiet",
                 "--max-steps", "4", "--eval-every", "2", "--num-threads", "1"]) == 0
    assert not (out / "checkpoints").exists(), "keep_last 1 (the default) keeps no history"
    state_path = out / "last" / "trainer_state" / "state.json"
    state = json.loads(state_path.read_text())
    state.update(best_score=0.125, best_step=2, evals_since_best=1)
    state_path.write_text(json.dumps(state))
    overrides = [(["training", "encoder"], str(tiny_model_dir), "test"),
                 (["training", "max_steps"], 4, "test"), (["training", "eval_every"], 2, "test"),
                 (["training", "num_threads"], 1, "test")]
    tasks = load_task_file(str(task_file), overrides)
    trainer = Trainer(tasks.tasks, tasks.training, resolve_data_dir(None, tasks), str(out), resume=True,
                      show_progress=False)
    try:
        trainer.prepare()
        trainer.setup()
        assert (trainer.best_score, trainer.best_step, trainer.evals_since_best) == (0.125, 2, 1)
    finally:
        trainer.cleanup()
