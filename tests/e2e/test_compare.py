"""`mtsmart compare A B`: both checkpoints scored on the same examples, B − A with a paired
bootstrap interval and a one-sided p-value."""

from __future__ import annotations

import json

import pytest

from mtsmart.cli import main
from tiny_tasks import train_tiny_run


def test_compare_student_with_teacher_and_a_checkpoint_with_itself(tmp_path, tiny_model_dir, monkeypatch, capsys):
    monkeypatch.setenv("MTSMART_CACHE", str(tmp_path / "cache"))
    task_file, run = train_tiny_run(tmp_path, tiny_model_dir, "smart", "--smart", "full", "--smart-preset", "paper")
    data = ["--data-dir", str(task_file.parent / "data")]
    ckpt = str(run / "last")

    scores = {}
    for weights in ("student", "teacher"):
        assert main(["evaluate", ckpt, *data, "--weights", weights, "--out", str(tmp_path / f"{weights}.json")]) == 0
        scores[weights] = json.loads((tmp_path / f"{weights}.json").read_text())["results"]
    out = tmp_path / "compare.json"
    assert main(["compare", ckpt, ckpt, *data, "--weights-b", "teacher", "--bootstrap", "200", "--out", str(out)]) == 0
    report = json.loads(out.read_text())["results"]
    assert set(report) == set(scores["student"])
    for task, metrics in report.items():
        for metric, r in metrics.items():
            assert r["a"] == pytest.approx(scores["student"][task][metric], abs=1e-9)
            assert r["b"] == pytest.approx(scores["teacher"][task][metric], abs=1e-9)
            assert r["low"] <= r["b_minus_a"] <= r["high"] and 0 <= r["p_b_not_better"] <= 1
    printed = capsys.readouterr().out
    assert "B − A" in printed and "paired bootstrap over 200 resamples" in printed

    # --out in a folder not made yet: made, as predict's is
    out = tmp_path / "new" / "compare.json"
    assert main(["compare", ckpt, ckpt, *data, "--bootstrap", "50", "--out", str(out)]) == 0
    for metrics in json.loads(out.read_text())["results"].values():
        for r in metrics.values():  # the same model twice: nothing between them, never better
            assert (r["b_minus_a"], r["low"], r["high"], r["p_b_not_better"]) == (0.0, 0.0, 0.0, 1.0)
    assert main(["evaluate", ckpt, *data, "--out", str(tmp_path / "new" / "deeper" / "eval.json")]) == 0
    assert (tmp_path / "new" / "deeper" / "eval.json").is_file()

    # too few resamples for a 95% interval (one printed [57.04, 57.04] around an estimate of 52.71)
    for command in (["compare", ckpt, ckpt], ["evaluate", ckpt]):
        capsys.readouterr()
        assert main([*command, *data, "--bootstrap", "39", "--out", str(tmp_path / "few.json")]) == 2
        assert "--bootstrap: a 95% interval needs at least 40 resamples, got 39" in capsys.readouterr().err
    assert not (tmp_path / "few.json").exists()


def test_compare_needs_the_task_in_both(tmp_path, tiny_model_dir, monkeypatch, capsys):
    monkeypatch.setenv("MTSMART_CACHE", str(tmp_path / "cache"))
    _, both = train_tiny_run(tmp_path, tiny_model_dir, "both")
    _, one = train_tiny_run(tmp_path, tiny_model_dir, "one", "--tasks", "pairs")
    capsys.readouterr()
    assert main(["compare", str(both / "best"), str(one / "best"), "--tasks", "score"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "has no head for task 'score' (its tasks: pairs)" in err


def test_a_p_value_no_resample_reaches_is_a_bound():
    from mtsmart.cli import p_value

    assert p_value(0.0, 1000) == "< 0.001"
    assert p_value(1.0, 200) == "> 0.995"
    assert p_value(0.27, 1000) == "= 0.270"


def test_forty_resamples_are_the_fewest_a_95_interval_takes():
    from mtsmart.cli import check_resamples
    from mtsmart.errors import ConfigError

    check_resamples(40, "1000 is the default")  # one resample left out at each end: enough
    with pytest.raises(ConfigError, match="at least 40 resamples, got 39"):
        check_resamples(39, "1000 is the default")


def test_compare_records_which_is_a_and_refuses_a_b_whose_head_reads_its_labels_otherwise(
        tmp_path, tiny_model_dir, monkeypatch, capsys):
    import shutil

    import yaml

    monkeypatch.setenv("MTSMART_CACHE", str(tmp_path / "cache"))
    _, run = train_tiny_run(tmp_path, tiny_model_dir, "run")
    a, b = run / "best", tmp_path / "copy"
    shutil.copytree(a, b)
    out = tmp_path / "compare.json"
    assert main(["compare", str(a), str(b), "--tasks", "pairs", "--bootstrap", "40", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert (record["a"], record["b"]) == (str(a), str(b))
    # the same weights: B never beats A, and the printed p-value says so (no resample reaches it)
    assert record["results"]["pairs"]["accuracy"]["p_b_not_better"] == 1.0
    assert "P(B − A ≤ 0) > 0.975" in capsys.readouterr().out
    # the same weights, but B's head says its first output is 'yes': its scores mean the opposite
    tasks = yaml.safe_load((b / "tasks.yaml").read_text())
    tasks["tasks"]["pairs"]["labels"].reverse()
    (b / "tasks.yaml").write_text(yaml.safe_dump(tasks), encoding="utf-8")
    capsys.readouterr()
    assert main(["compare", str(a), str(b), "--tasks", "pairs", "--bootstrap", "40"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "differs from the labels the head in" in err
