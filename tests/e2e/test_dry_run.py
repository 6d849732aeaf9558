"""`mtsmart train --dry-run` checks what a run needs and prints the plan the run would
follow, from the same objects, while training and writing nothing."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from mtsmart.checkpoint import load_trainer_state_json
from mtsmart.cli import main
from mtsmart.config import SmartConfig, load_yaml, parse_train_config
from mtsmart.tasks import load_task_file
from mtsmart.train import Trainer
from tiny_tasks import write_tiny_tasks


def dry_run(task_file: Path, encoder: Path, out: Path, *flags: str) -> int:
    return main(["train", str(task_file), "--encoder", str(encoder), "--output", str(out), "--dry-run",
                 "--num-threads", "1", *flags])


def task_row(printed: str, task: str) -> list[str]:
    return next(line.split(None, 8) for line in printed.splitlines() if line.startswith(f"{task} "))


def test_the_plan_is_the_plan_the_run_follows(tmp_path, tiny_model_dir, monkeypatch, capsys):
    monkeypatch.setenv("MTSMART_CACHE", str(tmp_path / "cache"))
    task_file = write_tiny_tasks(tmp_path)
    out = tmp_path / "run"
    flags = ["--smart", "full", "--epochs", "2", "--batch-size", "4", "tasks.score.smart.adv_weight=0"]

    assert dry_run(task_file, tiny_model_dir, out, *flags) == 0
    printed = capsys.readouterr().out
    assert not out.exists()
    pairs, score = task_row(printed, "pairs"), task_row(printed, "score")
    assert pairs[:5] == ["pairs", "classification", "40", "train", "16"]
    assert pairs[-1].startswith("full: λ_s 0.3 (ε 0.01 × ") and "μ 0.3" in pairs[-1]
    assert score[-1].startswith("full: μ 0.3"), "the per-task override must show as no adversarial term"
    assert "teacher   one EMA copy" in printed

    assert main(["train", str(task_file), "--encoder", str(tiny_model_dir), "--output", str(out),
                 "--num-threads", "1", "--quiet", *flags]) == 0
    summary = json.loads((out / "results.json").read_text())
    assert f"updates   {summary['total_updates']} (2.00 epochs of 20)" in printed

    # a dry run of --resume plans from last/, with the ε unit the run measured at its start
    capsys.readouterr()
    assert dry_run(task_file, tiny_model_dir, out, *flags, "--resume") == 0
    resumed = capsys.readouterr().out
    assert task_row(resumed, "pairs")[-1] == pairs[-1]
    assert f"encoder   {out / 'last'}" in resumed
    # to every digit, where the trained embeddings would give another unit
    checkpoint = out / "last"
    cfg = parse_train_config(load_yaml(str(checkpoint / "training.yaml"))["training"], "training.yaml")
    trainer = Trainer(load_task_file(str(checkpoint / "tasks.yaml")).tasks, cfg, str(tmp_path / "data"), str(out),
                      resume=True, cache_dir=str(tmp_path / "cache"), show_progress=False)
    trainer.prepare()
    started = load_trainer_state_json(str(checkpoint))["perturbation_scales"]
    assert trainer.perturbation_scales == started
    assert trainer._perturbation_scales() != started


def test_bad_input_and_an_occupied_folder_fail_as_a_run_would(tmp_path, tiny_model_dir, monkeypatch, capsys,
                                                               caplog):
    monkeypatch.setenv("MTSMART_CACHE", str(tmp_path / "cache"))
    task_file = write_tiny_tasks(tmp_path)
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("keep me")
    assert dry_run(task_file, tiny_model_dir, occupied) == 2
    assert "output directory is not empty" in capsys.readouterr().err
    assert dry_run(task_file, tiny_model_dir, occupied, "--overwrite") == 0
    assert (occupied / "notes.txt").read_text() == "keep me"  # --overwrite is only checked

    dev = tmp_path / "data" / "pairs_dev.tsv"
    dev.write_text(dev.read_text() + "a cat\tthe dog\tmaybe\n")
    capsys.readouterr()
    assert dry_run(task_file, tiny_model_dir, tmp_path / "new") == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "pairs_dev.tsv" in err and "maybe" in err
    assert not (tmp_path / "new").exists()

    # a declared split the run itself never reads is checked too (its text fields)
    task_file.write_text(task_file.read_text().replace(
        "splits: {train: pairs_train.tsv, dev: pairs_dev.tsv}",
        "splits: {train: pairs_train.tsv, dev: pairs_dev.tsv, test: pairs_test.tsv}"))
    dev.write_text(dev.read_text().replace("a cat\tthe dog\tmaybe\n", ""))
    with caplog.at_level("WARNING"):
        assert dry_run(task_file, tiny_model_dir, tmp_path / "new") == 0  # as train would succeed
    assert "pairs_test.tsv: file not found" in caplog.text and "this run does not read split 'test'" in caplog.text


def test_the_teacher_line_follows_the_tasks_own_bregman_weights(tmp_path, tiny_model_dir, monkeypatch, capsys):
    monkeypatch.setenv("MTSMART_CACHE", str(tmp_path / "cache"))
    task_file = write_tiny_tasks(tmp_path)
    assert dry_run(task_file, tiny_model_dir, tmp_path / "a", "--smart", "full", "--prox-weight", "0",
                   "tasks.score.smart.prox_weight=0.3") == 0
    printed = capsys.readouterr().out
    assert "μ 0.3" in task_row(printed, "score")[-1] and "μ" not in task_row(printed, "pairs")[-1]
    assert "teacher   one EMA copy" in printed
    assert dry_run(task_file, tiny_model_dir, tmp_path / "b", "--smart", "full",
                   "tasks.score.smart.prox_weight=0", "tasks.pairs.smart.prox_weight=0") == 0
    assert "teacher   one EMA copy" not in capsys.readouterr().out


def test_a_run_wide_smart_setting_a_task_overrides_is_named(tmp_path, tiny_model_dir, monkeypatch, caplog):
    """--epsilon does not reach a task whose own smart: block sets epsilon (the task's
    value is the more specific): the run says so instead of missing it silently."""
    monkeypatch.setenv("MTSMART_CACHE", str(tmp_path / "cache"))
    task_file = write_tiny_tasks(tmp_path)
    task_file.write_text(task_file.read_text().replace(
        "    target_field: score\n", "    target_field: score\n    smart: {epsilon: 0.05}\n"))

    def notes(*flags: str) -> list[str]:
        caplog.clear()
        assert dry_run(task_file, tiny_model_dir, tmp_path / "out", "--smart", "full", *flags) == 0
        return [r.getMessage() for r in caplog.records if "does not reach" in r.getMessage()]

    shadowed, = notes("--epsilon", "0.001")
    assert all(part in shadowed for part in ("epsilon = 0.001 (--epsilon)", "task 'score'", str(task_file),
                                             "epsilon: 0.05", "tasks.score.smart.epsilon=VALUE"))
    assert notes("--epsilon", "0.001", "tasks.score.smart.epsilon=0.002") == []  # both given: no surprise
    assert notes("--epsilon", "0.05") == []  # the same value reaches it anyway
    assert any("task 'score'" in note for note in notes("--smart-preset", "paper"))


def test_a_task_may_choose_its_own_smart_mode(tmp_path, tiny_model_dir, monkeypatch, capsys):
    """SMART.md: every knob per task, the mode and the μ ramp included (the teacher's
    momentum alone is run-wide: one teacher)."""
    monkeypatch.setenv("MTSMART_CACHE", str(tmp_path / "cache"))
    task_file = write_tiny_tasks(tmp_path)
    assert dry_run(task_file, tiny_model_dir, tmp_path / "a", "--smart", "off", "tasks.score.smart.mode=bregman",
                   "tasks.score.smart.prox_warmup_fraction=0.5") == 0
    printed = capsys.readouterr().out
    assert task_row(printed, "pairs")[-1] == "off"
    assert task_row(printed, "score")[-1] == "bregman: μ 0.3 (ramped over 50% of updates)"
    assert dry_run(task_file, tiny_model_dir, tmp_path / "a", "--smart", "bregman", "--prox-warmup-fraction", "0") == 0
    assert task_row(capsys.readouterr().out, "score")[-1] == "bregman: μ 0.3 (from the first update)"
    assert "teacher   one EMA copy" in printed
    assert main(["train", str(task_file), "--output", str(tmp_path / "b"), "--smart", "full",
                 "tasks.score.smart.teacher_beta=0.9"]) == 2
    assert "'teacher_beta' cannot be set per task" in capsys.readouterr().err


def test_a_run_shorter_than_an_epoch_plans_one_evaluation(tmp_path, tiny_model_dir, monkeypatch, capsys):
    monkeypatch.setenv("MTSMART_CACHE", str(tmp_path / "cache"))
    task_file = write_tiny_tasks(tmp_path)
    assert dry_run(task_file, tiny_model_dir, tmp_path / "a", "--max-steps", "3", "--batch-size", "4") == 0
    assert "one evaluation, at the end (update 3)" in capsys.readouterr().out
    assert dry_run(task_file, tiny_model_dir, tmp_path / "b", "--max-steps", "12", "--eval-every", "5") == 0
    assert "evaluation every 5 and at the end" in capsys.readouterr().out


def test_the_plan_shows_epsilon_in_the_embeddings_units_and_the_tasks_own_ramp():
    """dry_run.smart_summary: 'ε in the embeddings' own units'."""
    from mtsmart.dry_run import smart_summary

    cfg = SmartConfig(mode="full", epsilon=0.01, prox_warmup_fraction=0.25, teacher_early_fraction=0.1)
    assert smart_summary(cfg, 2.0) == ("full: λ_s 0.3 (ε 0.01 × 2 = 0.02, l2, K 1), "
                                       "μ 0.3 (ramped over 25% of updates)")
    absolute = dataclasses.replace(cfg, relative_to_embedding_norm=False, mode="adversarial")
    assert smart_summary(absolute, 2.0) == "adversarial: λ_s 0.3 (ε 0.01, l2, K 1)"
    assert smart_summary(dataclasses.replace(cfg, adv_weight=0, prox_weight=0), 2.0) == \
        "full, every weight 0: nothing computed"


def test_the_teacher_line_counts_the_early_updates_as_the_schedule_does():
    """The early phase covers updates below ceil(fraction · total) (smart.teacher_momentum)."""
    from mtsmart import smart
    from mtsmart.dry_run import teacher_summary

    cfg = SmartConfig(mode="full", teacher_early_fraction=0.15, teacher_horizon_fraction=None)
    line = teacher_summary(cfg, 10)
    early = [u for u in range(10) if smart.teacher_momentum(u, 10, 0.999, 0.99, 0.15, None) == 0.99]
    assert early == [0, 1]
    assert "β 0.99 for the first 2 updates, then 0.999" in line, line


def test_the_plan_names_patience_layer_decay_and_head_rate(tmp_path, tiny_model_dir, monkeypatch, capsys):
    """A setting that shapes the run shows in the --dry-run plan."""
    monkeypatch.setenv("MTSMART_CACHE", str(tmp_path / "cache"))
    task_file = write_tiny_tasks(tmp_path)
    assert dry_run(task_file, tiny_model_dir, tmp_path / "run", "--max-steps", "12", "--eval-every", "4",
                   "--patience", "2", "--layer-decay", "0.8", "--head-lr-scale", "3", "--lr-schedule", "cosine") == 0
    printed = capsys.readouterr().out
    assert "patience 2 evaluations" in printed
    assert "lr 0.001 (cosine after the warm-up, layer decay 0.8), heads ×3;" in printed


# ---- proposed by the mutation audit (fails today: a bug)
def test_a_dry_run_of_a_resume_sees_a_checkpoint_a_kill_left_between_its_renames(tmp_path, tiny_model_dir,
                                                                                 monkeypatch, capsys):
    """train --resume finishes the interrupted save and continues; its dry run must not call
    the run unresumable (and advise --overwrite, which would delete it)."""
    from tiny_tasks import train_tiny_run

    monkeypatch.setenv("MTSMART_CACHE", str(tmp_path / "cache"))
    task_file, out = train_tiny_run(tmp_path, tiny_model_dir, "run", "--eval-every", "2")
    (out / "last").rename(out / ".last.tmp-killed")  # what a kill between the two renames leaves
    argv = ["train", str(task_file), "--encoder", str(tiny_model_dir), "--output", str(out), "--max-steps", "4",
            "--eval-every", "2", "--quiet", "--resume"]
    capsys.readouterr()
    assert main(argv + ["--dry-run"]) == 0, capsys.readouterr().err
    assert (out / ".last.tmp-killed").is_dir() and not (out / "last").exists()  # the dry run touched nothing
    assert main(argv) == 0
