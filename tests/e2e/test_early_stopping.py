"""--patience stops a run after N evaluations in a row without a better selection score,
keeps the best checkpoint it had, and a resumed run respects (or, when raised, extends) it."""

from __future__ import annotations

import json
from pathlib import Path

from mtsmart.cli import main
from tiny_tasks import write_tiny_tasks

# A learning rate too small to move a prediction: the first evaluation's accuracy is never
# bettered, so every later evaluation counts against the patience.
FROZEN = ["--tasks", "pairs", "--select-metric", "pairs/accuracy", "--lr", "1e-9",
          "--max-steps", "8", "--eval-every", "1", "--batch-size", "4", "--quiet", "--num-threads", "1"]


def train(task_file: Path, encoder: Path, out: Path, *flags: str) -> int:
    return main(["train", str(task_file), "--encoder", str(encoder), "--output", str(out), *FROZEN, *flags])


def evaluated_steps(out: Path) -> list[int]:
    return [json.loads(line)["global_step"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_patience_stops_the_run_and_keeps_the_best_checkpoint(tmp_path, tiny_model_dir, monkeypatch, capsys):
    monkeypatch.setenv("MTSMART_CACHE", str(tmp_path / "cache"))
    task_file = write_tiny_tasks(tmp_path)

    assert train(task_file, tiny_model_dir, tmp_path / "full") == 0
    assert evaluated_steps(tmp_path / "full") == list(range(1, 9))  # without patience: to the end
    scores = [json.loads(line)["selection_score"]
              for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert max(scores[1:]) <= scores[0], "the frozen run improved: the premise of this test broke"
    capsys.readouterr()

    out = tmp_path / "patient"
    assert train(task_file, tiny_model_dir, out, "--patience", "2") == 0
    assert evaluated_steps(out) == [1, 2, 3]
    summary = json.loads((out / "results.json").read_text())
    assert (summary["stopped_at"], summary["stopped_early"], summary["total_updates"]) == (3, True, 8)
    assert json.loads((out / "best" / "meta.json").read_text())["global_step"] == 1
    assert json.loads((out / "last" / "meta.json").read_text())["global_step"] == 3
    printed = capsys.readouterr().out
    assert "stopped early at step 3 of 8" in printed and "trained 3 steps" in printed

    # resumed as it was, it is finished; with more patience it trains on where it stopped
    assert train(task_file, tiny_model_dir, out, "--patience", "2", "--resume") == 0
    assert evaluated_steps(out) == [1, 2, 3]
    assert train(task_file, tiny_model_dir, out, "--patience", "4", "--resume") == 0
    assert evaluated_steps(out) == [1, 2, 3, 4, 5]
    assert json.loads((out / "results.json").read_text())["stopped_at"] == 5


def test_patience_must_be_at_least_one_evaluation(tmp_path, tiny_model_dir, capsys):
    task_file = write_tiny_tasks(tmp_path)
    assert train(task_file, tiny_model_dir, tmp_path / "run", "--patience", "0") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mtsmart: error:") and "patience: must be >= 1" in err and "\n" not in err
    assert not (tmp_path / "run" / "best").exists()


def test_a_patience_the_run_has_too_few_evaluations_for_gets_a_note(tmp_path, tiny_model_dir, monkeypatch, caplog):
    """Stopping takes a best evaluation, `patience` worse ones and an evaluation still to come."""
    import logging

    monkeypatch.setenv("MTSMART_CACHE", str(tmp_path / "cache"))
    task_file = write_tiny_tasks(tmp_path)
    with caplog.at_level(logging.WARNING):
        assert train(task_file, tiny_model_dir, tmp_path / "six", "--patience", "6") == 0
    assert evaluated_steps(tmp_path / "six") == list(range(1, 8))  # 6 can stop it: at 7 of 8
    assert not [r for r in caplog.records if "patience" in r.getMessage()]
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert train(task_file, tiny_model_dir, tmp_path / "seven", "--patience", "7") == 0
    assert evaluated_steps(tmp_path / "seven") == list(range(1, 9))
    assert [r.getMessage() for r in caplog.records if "patience" in r.getMessage()] == [
        "training.patience 7 can never stop this run early: it evaluates 8 times (every 1 of its 8 updates); "
        "a smaller --eval-every or --patience lets it"]


# ---- proposed by the mutation audit
def test_the_patience_note_counts_the_evaluation_at_the_runs_end(tmp_path, tiny_model_dir, monkeypatch, caplog):
    """10 updates evaluated every 3: at 3, 6, 9 and the end, 10 (four evaluations). A dry run
    builds the plan, and with it the note, without training."""
    import logging

    monkeypatch.setenv("MTSMART_CACHE", str(tmp_path / "cache"))
    task_file = write_tiny_tasks(tmp_path)
    said = {}
    for patience in ("2", "3"):
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            assert train(task_file, tiny_model_dir, tmp_path / "run", "--max-steps", "10", "--eval-every", "3",
                         "--patience", patience, "--dry-run") == 0
        said[patience] = [r.getMessage() for r in caplog.records if "patience" in r.getMessage()]
    assert said == {"2": [], "3": ["training.patience 3 can never stop this run early: it evaluates 4 times "
                                   "(every 3 of its 10 updates); a smaller --eval-every or --patience lets it"]}
    caplog.clear()
    with caplog.at_level(logging.WARNING):  # one evaluation: not "every 11 of its 4 updates"
        assert train(task_file, tiny_model_dir, tmp_path / "run", "--max-steps", "4", "--eval-every", "11",
                     "--patience", "3", "--dry-run") == 0
    assert [r.getMessage() for r in caplog.records if "patience" in r.getMessage()] == [
        "training.patience 3 can never stop this run early: it evaluates once, at the end of its 4 updates "
        "(eval_every 11); a smaller --eval-every or --patience lets it"]
