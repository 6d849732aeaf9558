"""End to end through the command line, in process: ``train`` → ``evaluate`` → ``predict``
on a tiny random encoder and the tiny two-task file in tests/fixtures/e2e (one
sentence-pair classification task with string labels, one single-sentence regression task).

One BERT run is shared by the read-only checks (module fixture); the runs that need other
flags (RoBERTa, SMART, determinism) train on their own. Every run gets its own tokenized-
data cache (MTSMART_CACHE inside its temporary directory).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import FIXTURES, tensorboard_scalars
from mtsmart.cli import main

E2E = FIXTURES / "e2e"
TASK_FILE = E2E / "tasks.yaml"
TASKS = ("pairs", "scores")
CLS_TASK, REG_TASK = "pairs", "scores"
METRICS = {"pairs": {"accuracy", "f1"}, "scores": {"pearson", "spearman"}}
LABELS = ("same", "different")
CHECKPOINT_FILES = ("meta.json", "encoder/config.json", "encoder/tokenizer_config.json",
                    "encoder/tokenizer.json", "heads.safetensors", "tasks.yaml", "training.yaml")
SMART_TAGS = ("adv_loss", "adv_divergence", "bregman_loss", "teacher_divergence", "perturbation_norm")


# ------------------------------------------------------------------------------ helpers
def train_argv(encoder, output, *extra) -> list[str]:
    return ["train", str(TASK_FILE), "--encoder", str(encoder), "--data-dir", str(E2E),
            "--output", str(output), "--max-steps", "6", "--eval-every", "3",
            "--batch-size", "8", "--quiet", *extra]


def run_cli(argv, cache_dir) -> tuple[int, str, str]:
    """main(argv) with MTSMART_CACHE=cache_dir; returns (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MTSMART_CACHE", str(cache_dir))
        mp.delenv("MTSMART_DATA_DIR", raising=False)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main([str(a) for a in argv])
            except SystemExit as exc:  # argparse errors
                code = exc.code
    return code, out.getvalue(), err.getvalue()


def read_tsv(path) -> tuple[list[str], list[list[str]]]:
    with open(path, encoding="utf-8", newline="") as handle:
        rows = list(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
    return rows[0], rows[1:]


def gold(task: str, split: str = "dev") -> list[str]:
    header, rows = read_tsv(E2E / task / f"{split}.tsv")
    column = header.index("label" if task == CLS_TASK else "score")
    return [row[column] for row in rows]


def eval_records(run: Path) -> list[dict]:
    with open(run / "metrics.jsonl", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def read_json(path) -> dict:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def reference_predictions(checkpoint: Path, task: str, cache_dir: Path) -> np.ndarray:
    """Predictions computed in process from the checkpoint, to check the CLI's files."""
    from mtsmart.checkpoint import load_checkpoint
    from mtsmart.data import load_tokenized
    from mtsmart.evaluation import predict_split

    loaded = load_checkpoint(str(checkpoint))
    split = load_tokenized(loaded.tasks[task], "dev", loaded.tokenizer, str(E2E), str(cache_dir))
    return predict_split(loaded.model, loaded.tasks[task], split, 64,
                         loaded.tokenizer.pad_token_id or 0)


@pytest.fixture(scope="module")
def bert_run(tiny_model_dir, tmp_path_factory):
    """One train run with the tiny BERT encoder (6 updates, evaluation at 3 and 6)."""
    base = tmp_path_factory.mktemp("bert-run")
    output = base / "run"
    code, out, err = run_cli(train_argv(tiny_model_dir, output), base / "cache")
    return {"code": code, "stdout": out, "stderr": err, "output": output,
            "argv": train_argv(tiny_model_dir, output)}


@pytest.fixture
def run_dir(bert_run) -> Path:
    assert bert_run["code"] == 0, f"train failed:\n{bert_run['stderr'][-3000:]}"
    return bert_run["output"]


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "cache"
    monkeypatch.setenv("MTSMART_CACHE", str(path))
    return path


# ------------------------------------------------------------------------------ train
def test_train_exits_0_and_prints_best_table(bert_run):
    assert bert_run["code"] == 0, bert_run["stderr"][-3000:]
    out = bert_run["stdout"]
    assert "best checkpoint (step" in out
    for task in TASKS:
        assert any(line.split()[:2] == [task, "dev"] for line in out.splitlines()), out


@pytest.mark.parametrize("which", ["best", "last"])
def test_checkpoint_is_complete(run_dir, tiny_model_dir, which):
    from safetensors.torch import load_file

    from mtsmart.checkpoint import load_checkpoint_tasks

    ckpt = run_dir / which
    for name in CHECKPOINT_FILES:
        assert (ckpt / name).is_file(), f"{which}/{name} missing"
    # readable as any file the user writes (umask), not private to the writing process
    umask = os.umask(0)
    os.umask(umask)
    for path in [ckpt, *ckpt.rglob("*")]:
        expected = (0o777 if path.is_dir() else 0o666) & ~umask
        assert path.stat().st_mode & 0o777 == expected, f"{path}: {oct(path.stat().st_mode & 0o777)}"
    meta = read_json(ckpt / "meta.json")
    assert meta["format_version"] == 1
    assert meta["heads"] == {"pairs": [2, 0.1], "scores": [1, 0.1]}
    assert set(meta["dev"]) == set(TASKS)
    assert json.loads((ckpt / "encoder" / "config.json").read_text())["model_type"] == "bert"

    heads = load_file(str(ckpt / "heads.safetensors"))
    for task, size in (("pairs", 2), ("scores", 1)):
        keys = [k for k in heads if k.startswith(f"{task}.")]
        assert keys, f"no head weights for {task}: {sorted(heads)}"
        assert tuple(heads[f"{task}.linear.weight"].shape) == (size, 32)

    tasks = load_checkpoint_tasks(str(ckpt))
    assert list(tasks) == list(TASKS)
    assert tasks["pairs"].labels == LABELS and tasks["pairs"].text_fields == ("first", "second")
    assert tasks["scores"].type == "regression" and tasks["scores"].target_field == "score"

    training = yaml.safe_load((ckpt / "training.yaml").read_text())["training"]
    assert training["max_steps"] == 6 and training["batch_size"] == 8
    assert training["eval_every"] == 3 and training["encoder"] == str(tiny_model_dir)
    assert not (ckpt / "teacher.safetensors").exists(), "a teacher without SMART"

    if which == "last":
        assert meta["global_step"] == 6
        assert (ckpt / "trainer_state" / "tensors.pt").is_file()
        state = read_json(ckpt / "trainer_state" / "state.json")
        assert state["global_step"] == 6
        assert sum(state["counters"][f"batches/{t}"] for t in TASKS) == 6
    # Atomic writes leave no temporary siblings behind.
    leftovers = [p.name for p in run_dir.iterdir() if p.name.startswith(".") and p.name != ".lock"]
    assert leftovers == []


def test_metrics_jsonl_has_one_record_per_evaluation(run_dir):
    records = eval_records(run_dir)
    assert [r["global_step"] for r in records] == [3, 6]
    for record in records:
        assert record["split"] == "dev"
        assert set(record["results"]) == set(TASKS)
        for task in TASKS:
            values = record["results"][task]
            assert set(values) == METRICS[task]
            assert all(math.isfinite(v) and -1.0 <= v <= 1.0 for v in values.values())
        step_file = run_dir / "metrics" / f"step-{record['global_step']:07d}.json"
        assert read_json(step_file)["results"] == record["results"]
        # average of each task's first metric
        expected = np.mean([record["results"]["pairs"]["accuracy"],
                            record["results"]["scores"]["pearson"]])
        assert record["selection_score"] == pytest.approx(expected, abs=1e-12)

    best = max(records, key=lambda r: r["selection_score"])
    meta = read_json(run_dir / "best" / "meta.json")
    assert meta["global_step"] == best["global_step"]
    assert meta["dev"] == best["results"]
    assert read_json(run_dir / "last" / "meta.json")["dev"] == records[-1]["results"]

    results = read_json(run_dir / "results.json")
    assert results["best"]["global_step"] == best["global_step"]
    assert results["best"]["results"] == best["results"]
    assert results["last"]["global_step"] == 6
    assert results["total_updates"] == 6


def test_run_json_records_what_produced_the_run(bert_run, run_dir, tiny_model_dir):
    import torch
    import transformers

    (session,) = read_json(run_dir / "run.json")["sessions"]
    assert session["command"] == ["mtsmart", *bert_run["argv"]]
    assert session["versions"]["torch"] == torch.__version__
    assert session["versions"]["transformers"] == transformers.__version__
    assert "CPU" in session["device"] and session["replicas"] == 1
    # the fingerprint is of what the model saw: the same file read again gives the same one,
    # and every task has one for its training and its evaluation split
    from mtsmart.checkpoint import load_checkpoint
    from mtsmart.data import load_tokenized

    loaded = load_checkpoint(str(run_dir / "last"))
    for task in TASKS:
        for role, split in (("train", "train"), ("eval", "dev")):
            recorded = session["data"][task][role]
            tokenized = load_tokenized(loaded.tasks[task], split, loaded.tokenizer, str(E2E), None)
            assert recorded == {"split": split, "examples": len(tokenized),
                                "fingerprint": tokenized.fingerprint()}
    assert session["data"]["pairs"]["train"]["fingerprint"] != session["data"]["pairs"]["eval"]["fingerprint"]
    for which in ("best", "last"):
        assert read_json(run_dir / which / "meta.json")["written_by"] == session["versions"]
    # which weights the run started from, not only their path: another folder's weights differ
    from mtsmart.provenance import encoder_fingerprint

    assert session["encoder"] == {"source": str(tiny_model_dir), "fingerprint": encoder_fingerprint(str(tiny_model_dir))}
    assert encoder_fingerprint(str(run_dir / "last" / "encoder")) != session["encoder"]["fingerprint"]


def test_tensorboard_scalars(run_dir):
    events = list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert events, "no TensorBoard event file"
    logged = tensorboard_scalars(run_dir)
    expected = {"train/lr", "train/grad_norm"}
    for task in TASKS:
        expected |= {f"train/{task}/loss", f"train/batches/{task}"}
        expected |= {f"dev/{task}/{metric}" for metric in METRICS[task]}
    missing = expected - set(logged)
    assert not missing, f"missing tags {sorted(missing)}; logged: {sorted(logged)}"
    # The non-finite counters are drawn from the first log, at zero in a healthy run;
    # without SMART there is no regulariser to skip, so no such curve.
    for key in ("train/nonfinite_loss_skipped", "train/nonfinite_grad_skipped"):
        assert logged[key] and all(value == 0 for _, value in logged[key]), logged.get(key)
    assert not [tag for tag in logged if tag.startswith("train/regularizer_skipped/")]

    records = {r["global_step"]: r["results"] for r in eval_records(run_dir)}
    for task in TASKS:
        for metric in METRICS[task]:
            points = logged[f"dev/{task}/{metric}"]
            assert [s for s, _ in points] == [3, 6]
            for step, value in points:
                assert value == pytest.approx(records[step][task][metric], abs=1e-6)
    # The batch counters are cumulative: at the last update they add up to 6 batches.
    final = {task: dict(logged[f"train/batches/{task}"])[6] for task in TASKS}
    assert sum(final.values()) == 6
    assert all(math.isfinite(v) and v > 0 for _, v in logged["train/grad_norm"])
    assert all(math.isfinite(v) and v >= 0 for task in TASKS for _, v in logged[f"train/{task}/loss"])


# ------------------------------------------------------------------------------ evaluate
def test_evaluate_reproduces_best_dev_metrics(run_dir, tmp_path, cache, capsys):
    out_file = tmp_path / "eval.json"
    code = main(["evaluate", str(run_dir / "best"), "--data-dir", str(E2E), "--out", str(out_file)])
    stdout = capsys.readouterr().out
    assert code == 0
    report = read_json(out_file)
    meta = read_json(run_dir / "best" / "meta.json")
    assert report["splits"] == {"pairs": "dev", "scores": "dev"}
    assert set(report["results"]) == set(meta["dev"]) == set(TASKS)
    for task, values in meta["dev"].items():
        assert set(report["results"][task]) == set(values)
        for metric, value in values.items():
            assert report["results"][task][metric] == pytest.approx(value, abs=1e-6), (task, metric)
    # The printed table: one row per task with each metric in percent.
    for task, values in report["results"].items():
        row = next(line for line in stdout.splitlines() if line.split()[:1] == [task])
        for metric, value in values.items():
            assert f"{metric}={100 * value:.2f}" in row


def test_evaluate_with_bootstrap_intervals(run_dir, tmp_path, cache, capsys):
    out_file = tmp_path / "eval.json"
    assert main(["evaluate", str(run_dir / "best"), "--data-dir", str(E2E), "--out", str(out_file),
                 "--bootstrap", "200"]) == 0
    stdout = capsys.readouterr().out
    report = read_json(out_file)
    assert report["bootstrap_resamples"] == 200
    for task, values in report["results"].items():
        row = next(line for line in stdout.splitlines() if line.split()[:1] == [task])
        for metric, value in values.items():
            low, high = report["intervals_95"][task][metric]
            assert low <= value <= high, (task, metric)
            # a tiny model's F1 may be 0 on every resample (no positive predicted): a point, not a gap
            assert high > low or (metric == "f1" and value in (0.0, 1.0)), (task, metric)
            assert f"{metric}={100 * value:.2f} [{100 * low:.2f}, {100 * high:.2f}]" in row
    assert main(["evaluate", str(run_dir / "best"), "--bootstrap", "-1"]) == 2
    assert "--bootstrap: a 95% interval needs at least 40 resamples, got -1" in capsys.readouterr().err


# ------------------------------------------------------------------------------ predict
def test_predict_one_task_to_a_file(run_dir, tmp_path, cache):
    out_file = tmp_path / "preds.tsv"
    code = main(["predict", str(run_dir / "best"), "--task", CLS_TASK, "--split", "dev",
                 "--data-dir", str(E2E), "--out", str(out_file)])
    assert code == 0
    header, rows = read_tsv(out_file)
    labels = gold(CLS_TASK)
    assert header == ["index", "prediction"]
    assert [int(r[0]) for r in rows] == list(range(len(labels)))
    predicted = [r[1] for r in rows]
    assert set(predicted) <= set(LABELS)
    reference = reference_predictions(run_dir / "best", CLS_TASK, tmp_path / "ref-cache")
    assert predicted == [LABELS[i] for i in reference]
    accuracy = np.mean([p == g for p, g in zip(predicted, labels)])
    meta = read_json(run_dir / "best" / "meta.json")
    assert accuracy == pytest.approx(meta["dev"][CLS_TASK]["accuracy"], abs=1e-9)


def test_predict_all_tasks_to_a_directory(run_dir, tmp_path, cache, capsys):
    out_dir = tmp_path / "preds"
    out_dir.mkdir()
    (out_dir / "scores.tsv").write_text("an earlier prediction\n")
    code = main(["predict", str(run_dir / "best"), "--task", "all", "--data-dir", str(E2E),
                 "--out", str(out_dir)])
    assert code == 0
    printed = capsys.readouterr().out.splitlines()  # a file written over is said to be
    assert [line.endswith("(replacing the file there)") for line in printed] == [False, True], printed
    assert sorted(p.name for p in out_dir.iterdir()) == ["pairs.tsv", "scores.tsv"]
    for task in TASKS:
        header, rows = read_tsv(out_dir / f"{task}.tsv")
        assert header == ["index", "prediction"]
        assert [int(r[0]) for r in rows] == list(range(len(gold(task))))
    _, rows = read_tsv(out_dir / "pairs.tsv")
    assert {r[1] for r in rows} <= set(LABELS)
    _, rows = read_tsv(out_dir / "scores.tsv")
    scores = [float(r[1]) for r in rows]  # raises if not a number
    assert all(math.isfinite(s) for s in scores)
    reference = reference_predictions(run_dir / "best", REG_TASK, tmp_path / "ref-cache")
    np.testing.assert_allclose(scores, reference, rtol=0, atol=1e-6)


def test_predict_on_unlabeled_data_from_another_task_file(run_dir, tmp_path, cache, capsys):
    """A test file without labels, declared in a task file of the user's own (--task-defs):
    predict reads it; evaluate, which needs labels, says which column is missing."""
    header, rows = read_tsv(E2E / "pairs" / "dev.tsv")
    unlabeled = tmp_path / "pairs_test.tsv"
    unlabeled.write_text("\n".join("\t".join(r[:2]) for r in [header, *rows]) + "\n")
    spec = yaml.safe_load((E2E / "tasks.yaml").read_text())
    spec["tasks"]["pairs"]["splits"]["test"] = str(unlabeled)
    task_file = tmp_path / "with_test.yaml"
    task_file.write_text(yaml.safe_dump(spec))
    out_file = tmp_path / "test.tsv"
    assert main(["predict", str(run_dir / "best"), "--task", CLS_TASK, "--split", "test",
                 "--task-defs", str(task_file), "--data-dir", str(E2E), "--out", str(out_file)]) == 0
    predicted = [r[1] for r in read_tsv(out_file)[1]]
    reference = reference_predictions(run_dir / "best", CLS_TASK, tmp_path / "ref-cache")
    assert predicted == [LABELS[i] for i in reference]  # the dev texts, so the dev predictions

    capsys.readouterr()
    assert main(["evaluate", str(run_dir / "best"), "--tasks", CLS_TASK, "--split", "test",
                 "--task-defs", str(task_file), "--data-dir", str(E2E), "--out", str(tmp_path / "e.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(unlabeled) in err[0] and "'label'" in err[0], err

    # labels in another order would name the head's outputs wrongly: refused
    spec["tasks"]["pairs"]["labels"] = list(reversed(LABELS))
    task_file.write_text(yaml.safe_dump(spec))
    assert main(["predict", str(run_dir / "best"), "--task", CLS_TASK, "--split", "test",
                 "--task-defs", str(task_file), "--out", str(tmp_path / "x.tsv")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(task_file) in err[0] and "labels" in err[0] and "same, different" in err[0], err
    assert not (tmp_path / "x.tsv").exists()


def test_a_task_file_of_ones_own_reads_where_the_run_read_and_leaves_the_other_tasks_there(run_dir, tmp_path,
                                                                                             cache, capsys):
    """--task-defs from another folder, redefining one task with paths relative to the data
    (as glue.yaml's are): they are read where the run read its data, and the task the file
    does not define keeps the checkpoint's definition and data folder. Both used to be
    looked for beside the file."""
    spec = yaml.safe_load((E2E / "tasks.yaml").read_text())
    spec.pop("training", None)
    del spec["tasks"][REG_TASK]
    spec["tasks"][CLS_TASK]["splits"]["again"] = spec["tasks"][CLS_TASK]["splits"]["dev"]
    task_file = tmp_path / "elsewhere" / "pairs_only.yaml"
    task_file.parent.mkdir()
    task_file.write_text(yaml.safe_dump(spec))
    out_file = tmp_path / "eval.json"
    assert main(["evaluate", str(run_dir / "best"), "--task-defs", str(task_file), "--out", str(out_file)]) == 0, \
        capsys.readouterr().err
    report, meta = read_json(out_file), read_json(run_dir / "best" / "meta.json")
    assert set(report["results"]) == set(TASKS)
    for task in TASKS:
        assert report["results"][task] == pytest.approx(meta["dev"][task]), task
    assert main(["evaluate", str(run_dir / "best"), "--task-defs", str(task_file), "--tasks", CLS_TASK,
                 "--split", "again", "--out", str(tmp_path / "again.json")]) == 0, capsys.readouterr().err
    assert read_json(tmp_path / "again.json")["results"][CLS_TASK] == pytest.approx(meta["dev"][CLS_TASK])


def test_predict_a_file_of_ones_own_with_input(run_dir, tmp_path, cache, capsys):
    """--input: a file whose header names the task's text fields, in any column order and
    with other columns beside them, predicted without a task file."""
    header, rows = read_tsv(E2E / "pairs" / "dev.tsv")
    first, second = header.index("first"), header.index("second")
    mine = tmp_path / "mine.csv"
    with open(mine, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "second", "first"])
        writer.writerows([i, r[second], r[first]] for i, r in enumerate(rows))
    out_file = tmp_path / "mine.tsv"
    assert main(["predict", str(run_dir / "best"), "--task", CLS_TASK, "--input", str(mine),
                 "--out", str(out_file)]) == 0
    predicted = [r[1] for r in read_tsv(out_file)[1]]
    reference = reference_predictions(run_dir / "best", CLS_TASK, tmp_path / "ref-cache")
    assert predicted == [LABELS[i] for i in reference]  # the dev texts, so the dev predictions

    capsys.readouterr()
    no_second = tmp_path / "no_second.tsv"
    no_second.write_text("first\tother\nthe cat\tx\n")
    for argv, says in (([ "--input", str(no_second)], [str(no_second), "'second'"]),
                       (["--input", str(mine), "--split", "dev"], ["not both"]),
                       (["--input", str(tmp_path / "absent.tsv")], ["absent.tsv", "no such file"])):
        assert main(["predict", str(run_dir / "best"), "--task", CLS_TASK, "--out", str(tmp_path / "x.tsv"),
                     *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and all(s in err[0] for s in says), err
    assert main(["predict", str(run_dir / "best"), "--task", "all", "--input", str(mine),
                 "--out", str(tmp_path / "x")]) == 2
    assert "--input predicts one task" in capsys.readouterr().err
    assert not (tmp_path / "x.tsv").exists() and not (tmp_path / "x").exists()


def test_summarize_reads_the_trainers_results(run_dir, capsys):
    """results.json names its settings and main metrics: summarize needs nothing else."""
    summary = json.loads((run_dir / "results.json").read_text())
    assert summary["training"]["max_steps"] == 6 and set(summary["main_metrics"]) == set(TASKS)
    assert main(["summarize", str(run_dir)]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| all runs"))
    for task in TASKS:
        value = 100 * summary["last"]["results"][task][summary["main_metrics"][task]]
        assert f"{value:.2f} [{value:.2f}]" in row, (task, row)


# ------------------------------------------------------------------------------ other runs
def test_balanced_class_weights_come_from_the_training_labels(tiny_model_dir, tmp_path):
    output = tmp_path / "balanced"
    argv = ["train", str(TASK_FILE), *train_argv(tiny_model_dir, output, "--tasks", CLS_TASK,
                                                 "--max-steps", "1")[2:],
            f"tasks.{CLS_TASK}.class_weights=balanced"]
    code, _, err = run_cli(argv, tmp_path / "cache")
    assert code == 0, err[-3000:]
    train_labels = gold(CLS_TASK, "train")
    counts = [train_labels.count(label) for label in LABELS]
    expected = [len(train_labels) / (len(LABELS) * c) for c in counts]
    got = read_json(output / "results.json")["class_weights"][CLS_TASK]
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_class_weights_tilt_the_classifier_towards_the_heavier_class(tiny_model_dir, tmp_path):
    """The same run with the weights swapped: each predicts (nearly) only its heavy class,
    and the checkpoint keeps the setting."""
    shares = {}
    for heavy, weights in (("same", "[50, 1]"), ("different", "[1, 50]")):
        output = tmp_path / heavy
        argv = ["train", str(TASK_FILE), f"tasks.{CLS_TASK}.class_weights={weights}",
                *train_argv(tiny_model_dir, output, "--tasks", CLS_TASK)[2:]]
        code, _, err = run_cli(argv, tmp_path / "cache")
        assert code == 0, err[-3000:]
        saved = yaml.safe_load((output / "last" / "tasks.yaml").read_text())
        assert saved["tasks"][CLS_TASK]["class_weights"] == yaml.safe_load(weights)
        assert read_json(output / "results.json")["class_weights"] == {CLS_TASK: yaml.safe_load(weights)}
        predicted = reference_predictions(output / "last", CLS_TASK, tmp_path / "ref-cache")
        shares[heavy] = np.mean([LABELS[i] == heavy for i in predicted])
    assert shares["same"] >= 0.9 and shares["different"] >= 0.9, shares


def test_train_with_tiny_roberta(tiny_roberta_dir, tmp_path):
    """RoBERTa has one token type: the pair task must not feed it sentence-B type ids.
    The encoder's dropout set from the command line is the one its checkpoint reloads with."""
    output = tmp_path / "run"
    code, _, err = run_cli(train_argv(tiny_roberta_dir, output, "--encoder-dropout", "0.2"), tmp_path / "cache")
    assert code == 0, err[-3000:]
    config = read_json(output / "best" / "encoder" / "config.json")
    assert config["model_type"] == "roberta"
    assert config["hidden_dropout_prob"] == config["attention_probs_dropout_prob"] == 0.2
    records = eval_records(output)
    assert [r["global_step"] for r in records] == [3, 6]
    assert all(set(r["results"]) == set(TASKS) for r in records)
    for which in ("best", "last"):
        for name in CHECKPOINT_FILES:
            assert (output / which / name).is_file(), f"{which}/{name} missing"


@pytest.fixture(scope="module")
def smart_run(tiny_model_dir, tmp_path_factory) -> Path:
    """One full-SMART run (4 updates, evaluation at 2 and 4), shared by the teacher checks."""
    output = tmp_path_factory.mktemp("smart-run") / "run"
    # The paper's values (absolute ε = 1e-5, ‖·‖∞, fixed β): the defaults' horizon of 10% of
    # 4 updates would make the teacher the student.
    argv = train_argv(tiny_model_dir, output, "--smart", "full", "--eval-every", "2",
                      "--smart-preset", "paper", "--adv-weight", "0.5", "--prox-weight", "0.25")
    argv[argv.index("--max-steps") + 1] = "4"
    code, _, err = run_cli(argv, output.parent / "cache")
    assert code == 0, err[-3000:]
    return output


def test_smart_full_writes_teacher_and_logs_smart_scalars(smart_run):
    from safetensors.torch import load_file

    output = smart_run
    for which in ("best", "last"):
        assert (output / which / "teacher.safetensors").is_file(), f"{which}: no teacher"
    teacher = load_file(str(output / "last" / "teacher.safetensors"))
    heads = load_file(str(output / "last" / "heads.safetensors"))
    for task in TASKS:
        key = f"{task}.linear.weight"
        assert f"heads.{key}" in teacher, sorted(teacher)[:5]
        assert teacher[f"heads.{key}"].shape == heads[key].shape
        # An EMA of the student, not a copy of it: after 4 updates they differ.
        assert not np.array_equal(teacher[f"heads.{key}"].numpy(), heads[key].numpy())
    assert any(k.startswith("encoder.") for k in teacher)

    results = read_json(output / "results.json")
    for which in ("best", "last"):  # the teacher's scores beside the student's, at both
        assert set(results[which]["teacher_results"]) == set(TASKS), which
    logged = tensorboard_scalars(output)
    expected = {f"train/{task}/{tag}" for task in TASKS for tag in SMART_TAGS}
    missing = expected - set(logged)
    assert not missing, f"missing {sorted(missing)}; logged {sorted(logged)}"
    # Each term's loss is as added to the total: its weight times its divergence.
    for task in TASKS:
        for (weight, added, divergence) in ((0.5, "adv_loss", "adv_divergence"),
                                            (0.25, "bregman_loss", "teacher_divergence")):
            pairs = zip(logged[f"train/{task}/{added}"], logged[f"train/{task}/{divergence}"])
            assert all(a == pytest.approx(weight * d, rel=1e-5) for (_, a), (_, d) in pairs), (task, added)
    # The skip counter is a curve from the first log (every logged step), zero here.
    for task in TASKS:
        skipped = logged.get(f"train/regularizer_skipped/{task}", [])
        assert [s for s, _ in skipped] == [s for s, _ in logged["train/lr"]], skipped
        assert all(value == 0 for _, value in skipped), skipped
    # Each token's perturbation lies in the ε-ball (ε = 1e-5, inf norm) and is not zero.
    for task in TASKS:
        for _, value in logged[f"train/{task}/perturbation_norm"]:
            assert 0 < value <= 1e-5 * (1 + 1e-4)
    records = eval_records(output)
    assert [r["global_step"] for r in records] == [2, 4]
    assert all(set(r["teacher_results"]) == set(TASKS) for r in records)


def test_hparams_tab_lists_the_settings_and_reads_the_logged_metrics(smart_run):
    """TensorBoard's HParams tab: one session per run, its settings, metrics that name scalar
    tags the run really logged (else the tab shows empty columns), and a finished status."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

    accumulator = EventAccumulator(str(smart_run / "tensorboard"))
    accumulator.Reload()
    content = {tag: plugin_data_pb2.HParamsPluginData.FromString(raw)
               for tag, raw in accumulator.PluginTagToContent("hparams").items()}
    settings = content["_hparams_/session_start_info"].session_start_info.hparams
    assert settings["smart.mode"].string_value == "full"
    assert settings["smart.norm"].string_value == "inf"  # the paper preset, not the default
    assert settings["max_steps"].number_value == 4
    assert settings["updates"].number_value == 4  # the run's length, whichever setting gave it
    assert settings["tasks"].string_value == ",".join(TASKS)
    assert settings["smart.same_dropout_masks"].string_value == "false"
    metric_tags = {m.name.tag for m in content["_hparams_/experiment"].experiment.metric_infos}
    assert {"dev/selection_score", "dev/pairs/accuracy", "teacher/pairs/accuracy"} <= metric_tags
    assert any(tag.startswith("teacher/scores/") for tag in metric_tags)
    assert metric_tags <= set(tensorboard_scalars(smart_run))
    assert content["_hparams_/session_end_info"].session_end_info.status == api_pb2.STATUS_SUCCESS


def test_evaluate_and_predict_with_the_teacher_weights(smart_run, tmp_path, cache):
    """--weights teacher scores what the trainer logged for the teacher, not the student."""
    from safetensors.torch import load_file

    from mtsmart.checkpoint import load_checkpoint
    from mtsmart.data import load_tokenized
    from mtsmart.evaluation import predict_split

    last = eval_records(smart_run)[-1]
    reports = {}
    for weights in ("student", "teacher"):
        out_file = tmp_path / f"{weights}.json"
        assert main(["evaluate", str(smart_run / "last"), "--data-dir", str(E2E), "--out", str(out_file),
                     "--weights", weights]) == 0
        reports[weights] = read_json(out_file)
        assert reports[weights]["weights"] == weights
    for weights, logged in (("student", last["results"]), ("teacher", last["teacher_results"])):
        for task, values in logged.items():
            for metric, value in values.items():
                assert reports[weights]["results"][task][metric] == pytest.approx(value, abs=1e-6), \
                    (weights, task, metric)
    assert reports["teacher"]["results"][REG_TASK] != reports["student"]["results"][REG_TASK]

    # predict: the scores of the student with the teacher file's weights put in by hand
    preds = {}
    for weights in ("student", "teacher"):
        out_file = tmp_path / f"{weights}.tsv"
        assert main(["predict", str(smart_run / "last"), "--task", REG_TASK, "--data-dir", str(E2E),
                     "--out", str(out_file), "--weights", weights]) == 0
        preds[weights] = [float(row[1]) for row in read_tsv(out_file)[1]]
    loaded = load_checkpoint(str(smart_run / "last"))
    loaded.model.load_state_dict(load_file(str(smart_run / "last" / "teacher.safetensors")))
    split = load_tokenized(loaded.tasks[REG_TASK], "dev", loaded.tokenizer, str(E2E), str(tmp_path / "ref"))
    reference = predict_split(loaded.model, loaded.tasks[REG_TASK], split, 64, loaded.tokenizer.pad_token_id or 0)
    np.testing.assert_allclose(preds["teacher"], reference, rtol=0, atol=1e-6)
    assert not np.allclose(preds["teacher"], preds["student"], rtol=0, atol=1e-6)


@pytest.mark.parametrize("command", ["evaluate", "predict", "export"])
def test_teacher_weights_of_a_run_without_a_teacher_exit_2(run_dir, tmp_path, cache, capsys, command):
    out = tmp_path / "out.tsv"
    argv = {"evaluate": ["--data-dir", str(E2E), "--out", str(out)],
            "predict": ["--task", CLS_TASK, "--data-dir", str(E2E), "--out", str(out)],
            "export": ["--task", CLS_TASK, "--out", str(out)]}[command]
    capsys.readouterr()
    assert main([command, str(run_dir / "best"), "--weights", "teacher", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(run_dir / "best") in err[0], err
    assert "teacher.safetensors" in err[0] and "valid --weights here: student" in err[0], err
    assert not out.exists()


def test_second_run_into_non_empty_output_exits_2(bert_run, run_dir, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)

    def snapshot():
        return {str(p.relative_to(copy)): (p.stat().st_size, p.stat().st_mtime_ns)
                for p in copy.rglob("*") if p.is_file()}

    before = snapshot()
    argv = list(bert_run["argv"])
    argv[argv.index("--output") + 1] = str(copy)
    code, _, err = run_cli(argv, tmp_path / "cache")
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mtsmart: error:") and "--overwrite" in lines[0]
    assert snapshot() == before, "the refused run touched the existing output"


def test_same_seed_gives_identical_results(bert_run, run_dir, tiny_model_dir, tmp_path):
    from safetensors.torch import load_file

    again = tmp_path / "again"
    code, _, err = run_cli(train_argv(tiny_model_dir, again), tmp_path / "cache")
    assert code == 0, err[-3000:]
    first, second = eval_records(run_dir), eval_records(again)
    assert [r["results"] for r in second] == [r["results"] for r in first]
    heads_a = load_file(str(run_dir / "last" / "heads.safetensors"))
    heads_b = load_file(str(again / "last" / "heads.safetensors"))
    assert heads_a.keys() == heads_b.keys()
    for key in heads_a:
        assert np.array_equal(heads_a[key].numpy(), heads_b[key].numpy()), key

    # The seed matters: another seed initialises the heads differently.
    other = tmp_path / "other-seed"
    code, _, err = run_cli(train_argv(tiny_model_dir, other, "--seed", "11"), tmp_path / "cache2")
    assert code == 0, err[-3000:]
    heads_c = load_file(str(other / "last" / "heads.safetensors"))
    assert not np.array_equal(heads_a["pairs.linear.weight"].numpy(),
                              heads_c["pairs.linear.weight"].numpy())


def test_predict_without_split_reads_each_tasks_eval_split(run_dir, tmp_path, cache):
    """As evaluate does: a task whose evaluation split is not called 'dev' needs no --split."""
    spec = yaml.safe_load((E2E / "tasks.yaml").read_text())
    splits = spec["tasks"]["pairs"]["splits"]
    splits["validation"] = splits.pop("dev")
    spec["tasks"]["pairs"]["eval_split"] = "validation"
    task_file = tmp_path / "validation.yaml"
    task_file.write_text(yaml.safe_dump(spec))
    out_file = tmp_path / "preds.tsv"
    assert main(["predict", str(run_dir / "best"), "--task", CLS_TASK, "--task-defs", str(task_file),
                 "--data-dir", str(E2E), "--out", str(out_file)]) == 0
    reference = reference_predictions(run_dir / "best", CLS_TASK, tmp_path / "ref-cache")
    assert [r[1] for r in read_tsv(out_file)[1]] == [LABELS[i] for i in reference]


def test_a_checkpoint_finds_its_data_without_data_dir(run_dir, tmp_path, cache, monkeypatch, capsys):
    """The checkpoint keeps where its run read the data: evaluate, predict and finetune run
    from any directory without --data-dir."""
    monkeypatch.delenv("MTSMART_DATA_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    out_file = tmp_path / "eval.json"
    assert main(["evaluate", str(run_dir / "best"), "--out", str(out_file)]) == 0
    meta = read_json(run_dir / "best" / "meta.json")
    assert read_json(out_file)["results"][CLS_TASK]["accuracy"] == pytest.approx(
        meta["dev"][CLS_TASK]["accuracy"], abs=1e-6)
    assert main(["predict", str(run_dir / "best"), "--task", CLS_TASK, "--out", str(tmp_path / "p.tsv")]) == 0
    assert main(["finetune", str(run_dir / "best"), "--task", CLS_TASK, "--output", str(tmp_path / "ft"),
                 "--max-steps", "1", "--quiet"]) == 0
    # --data-dir still wins: here, a folder without the files
    capsys.readouterr()
    assert main(["evaluate", str(run_dir / "best"), "--data-dir", str(tmp_path), "--out", str(out_file)]) == 2
    assert "file not found" in capsys.readouterr().err


def test_evaluate_names_its_file_and_table_rows_after_the_split(run_dir, tmp_path, cache, capsys):
    import shutil

    checkpoint = tmp_path / "best"
    shutil.copytree(run_dir / "best", checkpoint)
    assert main(["evaluate", str(checkpoint), "--data-dir", str(E2E)]) == 0
    rows = [line.split()[:2] for line in capsys.readouterr().out.splitlines() if line.split()[:1] in (["pairs"], ["scores"])]
    assert rows == [["pairs", "dev"], ["scores", "dev"]]
    assert read_json(checkpoint / "eval_dev.json")["splits"] == {"pairs": "dev", "scores": "dev"}


def test_evaluate_of_some_tasks_keeps_the_others_in_the_checkpoints_file(run_dir, tmp_path, cache, capsys):
    import shutil

    checkpoint = tmp_path / "best"
    shutil.copytree(run_dir / "best", checkpoint)
    assert main(["evaluate", str(checkpoint), "--data-dir", str(E2E)]) == 0
    both = read_json(checkpoint / "eval_dev.json")
    assert main(["evaluate", str(checkpoint), "--data-dir", str(E2E), "--tasks", "pairs", "--bootstrap", "50"]) == 0
    assert "(with the earlier results of scores)" in capsys.readouterr().out
    report = read_json(checkpoint / "eval_dev.json")
    assert report["results"] == both["results"] and report["splits"] == both["splits"]
    assert set(report["intervals_95"]) == {"pairs"}
    assert main(["evaluate", str(checkpoint), "--data-dir", str(E2E), "--tasks", "scores", "--bootstrap", "50"]) == 0
    assert set(read_json(checkpoint / "eval_dev.json")["intervals_95"]) == {"pairs", "scores"}
    # another number of resamples: the kept task's intervals would not compare, so they go
    assert main(["evaluate", str(checkpoint), "--data-dir", str(E2E), "--tasks", "scores", "--bootstrap", "40"]) == 0
    report = read_json(checkpoint / "eval_dev.json")
    assert set(report["intervals_95"]) == {"scores"} and report["bootstrap_resamples"] == 40
    assert report["results"] == both["results"]
    # --out is a file of this evaluation alone
    assert main(["evaluate", str(checkpoint), "--data-dir", str(E2E), "--tasks", "pairs",
                 "--out", str(checkpoint / "eval_dev.json")]) == 0
    assert set(read_json(checkpoint / "eval_dev.json")["results"]) == {"pairs"}


def test_predict_input_with_literal_quotes_loses_no_row(run_dir, tmp_path, cache, capsys):
    """A tsv whose quotes are text (as in GLUE's files): --quoting none reads every row;
    csv quoting would merge rows at the stray quote, which is an error, never a short file."""
    stray = tmp_path / "stray.tsv"
    stray.write_text('first\tsecond\n"the cat\tsat\na dog\tran"\nthe man\twalked\n', encoding="utf-8")
    assert main(["predict", str(run_dir / "best"), "--task", CLS_TASK, "--input", str(stray),
                 "--quoting", "none", "--out", str(tmp_path / "p.tsv")]) == 0
    assert len(read_tsv(tmp_path / "p.tsv")[1]) == 3
    capsys.readouterr()
    assert main(["predict", str(run_dir / "best"), "--task", CLS_TASK, "--input", str(stray),
                 "--quoting", "minimal", "--out", str(tmp_path / "q.tsv")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "line 2" in err[0] and "--quoting none" in err[0], err
    assert not (tmp_path / "q.tsv").exists()


@pytest.mark.parametrize("out, task, says", [("two.tsv", "all", "one file, for 2 tasks"),
                                             ("p.csv", CLS_TASK, "written as tsv")])
def test_predict_out_that_cannot_hold_the_predictions_is_refused(run_dir, tmp_path, cache, capsys, out, task, says):
    assert main(["predict", str(run_dir / "best"), "--task", task, "--data-dir", str(E2E),
                 "--out", str(tmp_path / out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0], err
    assert not (tmp_path / out).exists()


def test_predict_out_naming_a_file_of_another_kind_is_refused_in_one_line(run_dir, tmp_path, cache, capsys):
    existing = tmp_path / "notes"  # no extension: it used to be taken for a folder to make
    existing.write_text("keep me\n")
    assert main(["predict", str(run_dir / "best"), "--task", CLS_TASK, "--data-dir", str(E2E),
                 "--out", str(existing)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "a file that is not .tsv or .txt" in err[0], err
    assert existing.read_text() == "keep me\n"


def test_predict_out_with_a_trailing_slash_is_a_folder_whatever_its_name(run_dir, tmp_path, cache):
    assert main(["predict", str(run_dir / "best"), "--task", "all", "--data-dir", str(E2E),
                 "--out", f"{tmp_path / 'preds.v1'}/"]) == 0
    assert sorted(p.name for p in (tmp_path / "preds.v1").iterdir()) == sorted(f"{t}.tsv" for t in TASKS)


def _damage(checkpoint: Path, how: str) -> None:
    if how == "truncated heads":
        path = checkpoint / "heads.safetensors"
        path.write_bytes(path.read_bytes()[:100])
    elif how == "truncated encoder":
        path = checkpoint / "encoder" / "model.safetensors"
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif how == "meta not json":
        (checkpoint / "meta.json").write_text('{"format_version": 1, "heads": ')
    elif how == "meta without heads":
        meta = read_json(checkpoint / "meta.json")
        del meta["heads"]
        (checkpoint / "meta.json").write_text(json.dumps(meta))
    elif how == "head of another size":
        meta = read_json(checkpoint / "meta.json")
        meta["heads"]["pairs"][0] = 3
        (checkpoint / "meta.json").write_text(json.dumps(meta))
    elif how == "no tasks.yaml":
        (checkpoint / "tasks.yaml").unlink()
    elif how == "tasks.yaml empty":
        (checkpoint / "tasks.yaml").write_text("")
    elif how == "no training.yaml":
        (checkpoint / "training.yaml").unlink()
    elif how == "no encoder config":
        (checkpoint / "encoder" / "config.json").unlink()
    elif how == "no tokenizer":
        for path in (checkpoint / "encoder").iterdir():
            if path.name.startswith(("tokenizer", "vocab", "special")):
                path.unlink()


@pytest.mark.parametrize("how, names", [
    ("truncated heads", "heads.safetensors"), ("truncated encoder", "encoder"),
    ("meta not json", "meta.json"), ("meta without heads", "meta.json"),
    ("head of another size", "heads.safetensors"), ("no tasks.yaml", "tasks.yaml"),
    ("tasks.yaml empty", "tasks.yaml"), ("no training.yaml", "training.yaml"),
    ("no encoder config", "encoder"), ("no tokenizer", "no tokenizer files"),
])
def test_a_damaged_checkpoint_is_one_line_naming_the_file(run_dir, tmp_path, cache, capsys, how, names):
    """Half-copied or hand-edited checkpoints: one line naming what is wrong, exit 2, never
    a traceback (nor, without its tokenizer, scores computed on unknown words)."""
    import shutil

    checkpoint = tmp_path / "best"
    shutil.copytree(run_dir / "best", checkpoint)
    _damage(checkpoint, how)
    assert main(["evaluate", str(checkpoint), "--data-dir", str(E2E), "--out", str(tmp_path / "e.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mtsmart: error: ") and names in err[0], err
    assert not (tmp_path / "e.json").exists()


def test_train_lr_is_the_rate_each_update_used(tmp_path, tiny_model_dir, cache):
    """train/lr at step s is the rate update s trained with: the schedule's value at s - 1,
    so a linear decay's last point is lr / N, not the 0 the schedule reaches after it."""
    from conftest import tensorboard_scalars
    from mtsmart.optim import lr_multiplier

    out = tmp_path / "run"
    assert main(train_argv(tiny_model_dir, out, "training.log_every=1", "training.optim.warmup_fraction=0.25",
                           "--lr", "0.01")) == 0
    logged = tensorboard_scalars(out)["train/lr"]
    total = len(logged)
    assert [step for step, _ in logged] == list(range(1, total + 1))
    for step, value in logged:
        assert value == pytest.approx(0.01 * lr_multiplier(step - 1, int(0.25 * total), total, "linear"))
    assert logged[-1][1] > 0


def test_hparams_tell_apart_runs_that_differ_only_in_a_tasks_own_smart_setting(tmp_path, tiny_model_dir, cache):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    out = tmp_path / "run"
    assert main(train_argv(tiny_model_dir, out, "--smart", "full", "tasks.scores.smart.adv_weight=0.1")) == 0
    accumulator = EventAccumulator(str(out / "tensorboard"))
    accumulator.Reload()
    raw = accumulator.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    settings = plugin_data_pb2.HParamsPluginData.FromString(raw).session_start_info.hparams
    assert settings["task.scores.smart.adv_weight"].number_value == pytest.approx(0.1)


@pytest.mark.parametrize("task", TASKS)
def test_an_empty_split_predicts_an_empty_array_of_the_tasks_type(run_dir, tmp_path, task):
    """Under torchrun a dev set smaller than the replicas leaves one replica nothing to
    predict; its part of the gathered predictions must still have the task's dtype."""
    from mtsmart.checkpoint import load_checkpoint
    from mtsmart.data import load_tokenized
    from mtsmart.evaluation import predict_split

    loaded = load_checkpoint(str(run_dir / "last"))
    split = load_tokenized(loaded.tasks[task], "dev", loaded.tokenizer, str(E2E), str(tmp_path))
    whole = predict_split(loaded.model, loaded.tasks[task], split, 64, 0)
    empty = predict_split(loaded.model, loaded.tasks[task], split.subset([]), 64, 0)
    assert len(whole) == len(split) and empty.shape == (0,) and empty.dtype == whole.dtype


# ---- proposed by the mutation audit
def test_keep_earlier_tasks_merges_only_what_this_evaluation_did_not_score(tmp_path):
    from mtsmart.cli import _keep_earlier_tasks

    path = tmp_path / "eval_dev.json"
    a_new, b_old = {"accuracy": 0.9}, {"accuracy": 0.2}
    path.write_text(json.dumps({
        "splits": {"a": "dev", "b": "dev"}, "results": {"a": {"accuracy": 0.1}, "b": b_old},
        "intervals_95": {"a": {"accuracy": [0.0, 0.2]}, "b": {"accuracy": [0.1, 0.3]}}, "bootstrap_resamples": 50}))

    def scored(**extra) -> dict:
        return {"splits": {"a": "dev"}, "results": {"a": dict(a_new)}, **extra}

    # a scored again with as many resamples: its own results and interval, b's kept
    record = scored(intervals_95={"a": {"accuracy": [0.8, 1.0]}}, bootstrap_resamples=50)
    assert _keep_earlier_tasks(str(path), record) == ["b"]
    assert record["results"] == {"a": a_new, "b": b_old} and record["splits"] == {"a": "dev", "b": "dev"}
    assert record["intervals_95"] == {"a": {"accuracy": [0.8, 1.0]}, "b": {"accuracy": [0.1, 0.3]}}
    # no intervals of its own: b's are kept, with the number of resamples they were drawn with
    record = scored()
    assert _keep_earlier_tasks(str(path), record) == ["b"]
    assert record["intervals_95"] == {"b": {"accuracy": [0.1, 0.3]}} and record["bootstrap_resamples"] == 50
    # another number of resamples: b's intervals would read as comparable, and go
    record = scored(intervals_95={"a": {"accuracy": [0.8, 1.0]}}, bootstrap_resamples=40)
    assert _keep_earlier_tasks(str(path), record) == ["b"]
    assert record["intervals_95"] == {"a": {"accuracy": [0.8, 1.0]}} and record["bootstrap_resamples"] == 40
    # neither drew intervals: none appear, nor a number of resamples
    path.write_text(json.dumps({"splits": {"b": "dev"}, "results": {"b": b_old}}))
    record = scored()
    assert _keep_earlier_tasks(str(path), record) == ["b"]
    assert "intervals_95" not in record and "bootstrap_resamples" not in record
    # not a file this command wrote: replaced, nothing kept, no traceback
    for text in ('{"results": {"b": {}}}', '{"results": {"b": {}}, "splits": []}', "[1]", "null", "{not json"):
        path.write_text(text)
        record = scored()
        assert _keep_earlier_tasks(str(path), record) == [] and record == scored(), text


def test_evaluate_of_the_teacher_writes_a_file_of_its_own(smart_run, tmp_path, cache):
    checkpoint = tmp_path / "last"
    shutil.copytree(smart_run / "last", checkpoint)
    assert main(["evaluate", str(checkpoint), "--data-dir", str(E2E)]) == 0
    assert main(["evaluate", str(checkpoint), "--data-dir", str(E2E), "--weights", "teacher"]) == 0
    student, teacher = (read_json(checkpoint / name) for name in ("eval_dev.json", "eval_dev_teacher.json"))
    assert student["weights"] == "student" and teacher["weights"] == "teacher"
    assert student["results"] != teacher["results"]


def test_a_split_some_tasks_lack_names_the_tasks_that_have_it(run_dir, capsys):
    """GLUE's labelled test files are declared for a few tasks only: `--split test` on a
    checkpoint of five tasks stopped at the first without one."""
    from types import SimpleNamespace

    from mtsmart.cli import _check_split_declared
    from mtsmart.errors import ConfigError

    tasks = {name: SimpleNamespace(splits=splits) for name, splits in
             (("rte", {"train", "dev"}), ("mrpc", {"train", "dev", "test"}), ("stsb", {"dev", "test"}))}
    with pytest.raises(ConfigError, match=r"^--split test: rte declares no such split; --tasks mrpc,stsb takes "
                                          r"the tasks that do$"):
        _check_split_declared(tasks, "test", "--tasks")
    _check_split_declared(tasks, None, "--tasks")  # each task's own eval split
    _check_split_declared({"mrpc": tasks["mrpc"]}, "test", "--tasks")
    for command in (["evaluate", str(run_dir / "best")], ["compare", str(run_dir / "best"), str(run_dir / "best")],
                    ["predict", str(run_dir / "best"), "--task", "all", "--out", str(run_dir.parent / "p")]):
        assert main([*command, "--data-dir", str(E2E), "--split", "test"]) == 2
        assert "--split test: pairs, scores declare no such split (see each task's splits" in capsys.readouterr().err


def test_data_dir_wins_over_the_environments_data_folder(run_dir, tmp_path, cache, monkeypatch):
    monkeypatch.setenv("MTSMART_DATA_DIR", str(tmp_path))  # a folder without the files
    out_file = tmp_path / "eval.json"
    assert main(["evaluate", str(run_dir / "best"), "--data-dir", str(E2E), "--out", str(out_file)]) == 0
    assert set(read_json(out_file)["results"]) == set(TASKS)


def test_the_logger_writes_each_scalar_with_its_step_and_skips_one_without_a_value(tmp_path):
    """A tag whose value is None is left out (a caller need not filter), not an error."""
    from mtsmart.metric_logging import MetricLogger

    logger = MetricLogger(str(tmp_path / "tensorboard"))
    logger.log_dict({"dev/t/accuracy": 0.5, "train/grad_norm": None}, 3)
    logger.flush()
    assert tensorboard_scalars(tmp_path) == {"dev/t/accuracy": [(3, 0.5)]}
    logger.log_dict({"dev/t/accuracy": 0.75}, 6)
    logger.close()
    assert tensorboard_scalars(tmp_path) == {"dev/t/accuracy": [(3, 0.5), (6, 0.75)]}


def test_predict_one_task_to_a_txt_file(run_dir, tmp_path, cache):
    out_file = tmp_path / "preds.txt"  # a single file, as .tsv is: not a folder named so
    assert main(["predict", str(run_dir / "best"), "--task", REG_TASK, "--data-dir", str(E2E),
                 "--out", str(out_file)]) == 0
    header, rows = read_tsv(out_file)
    assert header == ["index", "prediction"] and len(rows) == len(gold(REG_TASK))


def test_quoting_without_input_is_refused_not_ignored(run_dir, tmp_path, cache, capsys):
    out_file = tmp_path / "p.tsv"
    assert main(["predict", str(run_dir / "best"), "--task", CLS_TASK, "--data-dir", str(E2E),
                 "--quoting", "none", "--out", str(out_file)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--quoting applies to --input" in err
    assert not out_file.exists()


def test_predict_input_relative_to_the_working_directory(run_dir, tmp_path, cache, monkeypatch):
    """--input names a file as the shell sees it, not relative to the checkpoint's data folder."""
    (tmp_path / "mine.tsv").write_text("text\nthe cat is good\na bad movie\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    assert main(["predict", str(run_dir / "best"), "--task", REG_TASK, "--input", "mine.tsv",
                 "--out", "mine-preds.tsv"]) == 0
    assert len(read_tsv(tmp_path / "mine-preds.tsv")[1]) == 2
