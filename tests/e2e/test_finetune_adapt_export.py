"""Multi-task checkpoint → fine-tuning, domain adaptation with data fractions, export."""

from __future__ import annotations

import csv
import json
import logging
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from mtsmart.cli import main
from mtsmart.data import stratified_subset

from tiny_tasks import train_tiny_run, write_tiny_tasks


@pytest.fixture()
def mt_checkpoint(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("MTSMART_CACHE", str(tmp_path / "cache"))
    task_file, out = train_tiny_run(tmp_path, tiny_model_dir, "mt", "--pooling", "pooler")
    return task_file, out / "best"


@pytest.fixture()
def smart_checkpoint(tmp_path, tiny_model_dir, monkeypatch):
    """A full-SMART checkpoint whose teacher is far from its student (the paper's fixed β)."""
    monkeypatch.setenv("MTSMART_CACHE", str(tmp_path / "cache"))
    task_file, out = train_tiny_run(tmp_path, tiny_model_dir, "mt-smart", "--pooling", "pooler",
                                    "--smart", "full", "--smart-preset", "paper")
    return task_file, out / "last"


def write_new_domain(root: Path) -> Path:
    rng = np.random.default_rng(0)
    words = "the a cat dog man woman movie good bad is not".split()
    with open(root / "data" / "domain.tsv", "w") as f:
        f.write("p\th\tlabel\n")
        for i in range(60):
            f.write(f"{' '.join(rng.choice(words, 4))}\t{' '.join(rng.choice(words, 3))}\t"
                    f"{['ent', 'neu'][i % 3 == 0]}\n")
    path = root / "domain.yaml"
    path.write_text("""
data_dir: data
tasks:
  domain:
    type: classification
    text_fields: [p, h]
    label_field: label
    labels: [ent, neu]
    splits: {train: domain.tsv, test: domain.tsv}
    eval_split: test
    max_length: 24
training:
  batch_size: 8
  epochs: 1
  optim: {lr: 1.0e-3}
""")
    return path


def test_finetune_restores_encoder_bit_for_bit_and_adds_only_new_heads(mt_checkpoint, tmp_path):
    from mtsmart.checkpoint import load_checkpoint
    from mtsmart.train import Trainer
    from mtsmart.tasks import load_task_file

    task_file, ckpt = mt_checkpoint
    loaded = load_checkpoint(str(ckpt))
    new_task_file = write_new_domain(tmp_path)
    tasks = {**load_task_file(str(task_file)).tasks, **load_task_file(str(new_task_file)).tasks}
    trainer = Trainer({"pairs": tasks["pairs"], "domain": tasks["domain"]},
                      loaded.training, str(tmp_path / "data"), str(tmp_path / "ft-inspect"),
                      init_from=str(ckpt), show_progress=False)
    trainer.setup()
    encoder_before = loaded.model.encoder.state_dict()
    for key, value in trainer.model.encoder.state_dict().items():
        assert torch.equal(value, encoder_before[key]), key
    # the known task keeps its trained head, the new one is fresh, nothing else is added
    assert torch.equal(trainer.model.heads["pairs"].linear.weight, loaded.model.heads["pairs"].linear.weight)
    assert set(trainer.model.heads) == {"pairs", "score", "domain"}
    assert trainer.optimizer.state == {}  # a fresh optimizer
    trainer.cleanup()


def test_finetune_command_with_smart_teacher_from_loaded_weights(mt_checkpoint, tmp_path):
    task_file, ckpt = mt_checkpoint
    out = tmp_path / "ft"
    new_task_file = write_new_domain(tmp_path)
    assert main(["finetune", str(ckpt), "--task", "domain", "--task-defs", str(new_task_file),
                 "--output", str(out), "--max-steps", "3", "--smart", "full", "--epsilon", "1e-3",
                 "--quiet"]) == 0
    heads = load_file(str(out / "best" / "heads.safetensors"))
    assert {k.split(".")[0] for k in heads} == {"pairs", "score", "domain"}
    assert (out / "best" / "teacher.safetensors").exists()
    # --task all fine-tunes every task of the checkpoint in turn, each in its own folder
    out_all = tmp_path / "ft-all"
    assert main(["finetune", str(ckpt), "--task", "all", "--output", str(out_all), "--max-steps", "2",
                 "--data-dir", str(tmp_path / "data"), "--quiet"]) == 0
    assert (out_all / "pairs" / "best" / "meta.json").exists()
    assert (out_all / "score" / "best" / "meta.json").exists()


def test_finetune_from_the_teacher_starts_student_and_teacher_at_the_teacher(smart_checkpoint, tmp_path):
    from mtsmart.checkpoint import load_checkpoint
    from mtsmart.tasks import load_task_file
    from mtsmart.train import Trainer

    task_file, ckpt = smart_checkpoint
    teacher = load_file(str(ckpt / "teacher.safetensors"))
    loaded = load_checkpoint(str(ckpt))
    student = loaded.model.state_dict()
    assert any(not torch.equal(student[k], teacher[k]) for k in teacher)
    for weights, expected in (("teacher", teacher), ("student", student)):
        trainer = Trainer({"pairs": load_task_file(str(task_file)).tasks["pairs"]}, loaded.training,
                          str(tmp_path / "data"), str(tmp_path / f"ft-{weights}"), init_from=str(ckpt),
                          init_weights=weights, show_progress=False)
        trainer.setup()
        for name, model in (("student", trainer.model), ("teacher", trainer.teacher.model)):
            state = model.state_dict()
            assert state.keys() == expected.keys()
            for key, value in expected.items():
                assert torch.equal(state[key], value), (weights, name, key)
        trainer.cleanup()
        (session,) = json.loads((tmp_path / f"ft-{weights}" / "run.json").read_text())["sessions"]
        assert session["encoder"]["weights"] == weights  # what `finetune --resume` compares its --weights with


def test_export_of_the_teacher_predicts_what_predict_with_the_teacher_predicts(smart_checkpoint, tmp_path):
    from transformers import pipeline

    _, ckpt = smart_checkpoint
    data = tmp_path / "data"
    with open(data / "score_dev.tsv") as handle:
        texts = [line.split("\t")[0] for line in handle][1:]
    scores = {}
    for weights in ("student", "teacher"):
        export_dir = tmp_path / f"hf-{weights}"
        preds = tmp_path / f"{weights}.tsv"
        assert main(["export", str(ckpt), "--task", "score", "--out", str(export_dir), "--weights", weights]) == 0
        assert main(["predict", str(ckpt), "--task", "score", "--data-dir", str(data), "--out", str(preds),
                     "--weights", weights]) == 0
        exported = [o["score"] for o in pipeline("text-classification", model=str(export_dir),
                                                 truncation=True)(texts)]
        scores[weights] = [float(line.split("\t")[1]) for line in preds.read_text().splitlines()[1:]]
        assert np.allclose(exported, scores[weights], atol=1e-4), weights
    assert not np.allclose(scores["teacher"], scores["student"], atol=1e-4)


def test_stratified_subsets_are_deterministic_and_keep_label_shares():
    targets = np.array([0] * 700 + [1] * 200 + [2] * 100)
    a = stratified_subset(targets, 100, seed=1)
    b = stratified_subset(targets, 100, seed=1)
    c = stratified_subset(targets, 100, seed=2)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert len(a) == 100 and len(set(a.tolist())) == 100
    assert np.bincount(targets[a]).tolist() == [70, 20, 10]
    tiny = stratified_subset(targets, 3, seed=1)
    assert sorted(targets[tiny].tolist()) == [0, 1, 2]  # every label keeps a place
    assert len(stratified_subset(targets, 5000, seed=1)) == 1000  # capped at the pool


def test_adapt_writes_checked_results_table_and_plot(mt_checkpoint, tmp_path, tiny_model_dir):
    _, ckpt = mt_checkpoint
    new_task_file = write_new_domain(tmp_path)
    out = tmp_path / "adapt"
    default_cache = set((tmp_path / "cache").glob("*"))  # $MTSMART_CACHE, used by the fixture's run
    assert main(["adapt", f"mt={ckpt}", f"raw={tiny_model_dir}", "--task", "domain",
                 "--task-defs", str(new_task_file), "--train-sizes", "0.05,12",
                 "--reference-size", "120", "--seeds", "1,2", "--min-steps", "2", "--output", str(out),
                 "--cache-dir", str(tmp_path / "flag-cache"), "--quiet"]) == 0
    # --cache-dir reaches the pool and every run: the default ($MTSMART_CACHE here) stays unused
    assert any((tmp_path / "flag-cache").iterdir()) and set((tmp_path / "cache").glob("*")) == default_cache
    with open(out / "results.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2 * 2 * 2
    assert {r["start"] for r in rows} == {"mt", "raw"}
    # 0.05 of --reference-size 120, not of the 60 examples the domain's train split holds
    assert {int(r["n_train"]) for r in rows} == {6, 12}
    assert all(0.0 <= float(r["accuracy"]) <= 1.0 for r in rows)
    table = (out / "table.md").read_text().splitlines()
    assert table[2].startswith("| start | n=6 | n=12 |")
    assert sum(line.startswith("| mt |") or line.startswith("| raw |") for line in table) == 2
    import matplotlib.image

    image = matplotlib.image.imread(out / "plot.png")
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert image.std() > 0  # not a blank canvas
    events = list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert events


@pytest.mark.parametrize("flags, says", [
    (["--precision", "fp16"], "fp16 needs a CUDA device"),
    (["--num-hidden-layers", "20"], "num_hidden_layers"),
])
def test_adapt_refuses_a_setting_before_it_writes_anything(mt_checkpoint, tmp_path, tiny_model_dir, capsys,
                                                          flags, says):
    new_task_file = write_new_domain(tmp_path)
    out = tmp_path / "adapt"
    assert main(["adapt", f"raw={tiny_model_dir}", "--task", "domain", "--task-defs", str(new_task_file),
                 "--train-sizes", "12", "--seeds", "1", "--min-steps", "2", "--output", str(out), "--quiet",
                 *flags]) == 2
    assert says in capsys.readouterr().err
    assert not out.exists()  # no recipe.json, runs/ or event file of a grid that never ran


def test_adapt_into_the_same_folder_keeps_done_runs_and_refuses_another_recipe(
        mt_checkpoint, tmp_path, tiny_model_dir, capsys, caplog):
    _, ckpt = mt_checkpoint
    new_task_file = write_new_domain(tmp_path)
    out = tmp_path / "adapt"
    common = ["--task", "domain", "--task-defs", str(new_task_file), "--train-sizes", "12",
              "--min-steps", "2", "--output", str(out), "--quiet"]
    assert main(["adapt", f"mt={ckpt}", "--seeds", "1", *common]) == 0
    first = (out / "results.csv").read_text().splitlines()
    mt_row = next(line for line in (out / "table.md").read_text().splitlines() if line.startswith("| mt |"))
    assert "(1 seed)" in mt_row and "±" not in mt_row  # one seed shows no made-up spread
    capsys.readouterr()
    killed = out / "runs" / "mt" / "n12" / "seed2" / "tensorboard"  # an attempt killed mid-run
    killed.mkdir(parents=True)
    (killed / "events.out.tfevents.killed").write_text("half a curve")
    # a second start point and a second seed: only the three new runs are trained
    assert main(["adapt", f"mt={ckpt}", f"raw={tiny_model_dir}", "--seeds", "1,2", *common]) == 0
    assert not (killed / "events.out.tfevents.killed").exists()  # its run starts from an empty folder
    printed = capsys.readouterr().out
    assert printed.count("kept") == 1 and printed.count("adapt domain: start=") == 4
    with open(out / "results.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["start"], r["seed"]) for r in rows] == [("mt", "1"), ("mt", "2"), ("raw", "1"), ("raw", "2")]
    assert (out / "results.csv").read_text().splitlines()[1] == first[1]  # the kept row, unchanged
    table = (out / "table.md").read_text()
    assert "| mt |" in table and "| raw |" in table
    assert "(1 seed)" not in table and "±" in next(line for line in table.splitlines() if line.startswith("| raw |"))
    # another learning rate is another experiment: refused, nothing rewritten
    before = (out / "results.csv").read_text()
    assert main(["adapt", f"mt={ckpt}", "--seeds", "3", "--lr", "3e-4", *common]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "results.csv" in err[0] and "recipe" in err[0] and "--output" in err[0]
    assert "training.optim.lr was 0.001, now 0.0003" in err[0], err  # the change, named
    assert (out / "results.csv").read_text() == before
    # the same start written another way is the same start: nothing trains again
    assert main(["adapt", f"mt={ckpt}{os.sep}", "--seeds", "1", *common]) == 0
    assert "kept" in capsys.readouterr().out and (out / "results.csv").read_text() == before
    # a setting without effect (its note says so) is the same recipe: the folder keeps its own
    recipe = (out / "recipe.json").read_text()
    with caplog.at_level(logging.WARNING):
        assert main(["adapt", f"mt={ckpt}", "--seeds", "1", "--smart", "off", "--epsilon", "0.5", *common]) == 0
    assert any("--epsilon does nothing" in r.getMessage() for r in caplog.records)
    assert "kept" in capsys.readouterr().out
    assert (out / "results.csv").read_text() == before and (out / "recipe.json").read_text() == recipe
    # with the term on, the same knob is another experiment
    assert main(["adapt", f"mt={ckpt}", "--seeds", "1", "--smart", "adversarial", "--epsilon", "0.5", *common]) == 2
    assert "training.smart.epsilon was 0.01, now 0.5" in capsys.readouterr().err
    # a label the folder already ties to another start point would pool the two in one cell
    assert main(["adapt", f"mt={tiny_model_dir}", "--seeds", "3", *common]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"START mt={tiny_model_dir}" in err[0] and "another label" in err[0], err
    assert (out / "results.csv").read_text() == before


def test_a_relative_start_path_recorded_from_another_folder_is_explained(tmp_path, monkeypatch):
    from mtsmart.adaptation import StartPoint, check_labels
    from mtsmart.errors import ConfigError

    (tmp_path / "project" / "runs" / "mt" / "best").mkdir(parents=True)
    row = {"start": "mt", "start_path": "runs/mt/best"}
    monkeypatch.chdir(tmp_path / "project")  # the folder that wrote the row: the same start
    check_labels([StartPoint("mt", "runs/mt/best")], [row], "out/results.csv")
    monkeypatch.chdir(tmp_path)  # the same folder, named from one level up
    with pytest.raises(ConfigError) as err:
        check_labels([StartPoint("mt", "project/runs/mt/best")], [row], "out/results.csv")
    assert "has label mt for runs/mt/best" in str(err.value) and "run adapt from there" in str(err.value)
    # a start that is not a local folder gets no such hint
    with pytest.raises(ConfigError) as err:
        check_labels([StartPoint("mt", "org/some-hub-model")], [row], "out/results.csv")
    assert "run adapt from there" not in str(err.value)


def test_adapt_runs_sizes_that_land_on_one_count_once(caplog):
    from mtsmart.adaptation import resolve_sizes

    # the paper's grid on a pool smaller than its reference: 10% and 100% are both the pool
    with caplog.at_level("WARNING"):
        sizes = resolve_sizes(["0.001", "0.01", "0.1", "1.0"], reference_size=23596, pool_size=1304)
    assert sizes == [("0.001", 24), ("0.01", 236), ("0.1", 1304)]
    assert "0.1 and 1.0 are both n=1304" in caplog.text
    assert "0.1 is 2360 examples, more than the pool's 1304: the whole pool" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):  # one size alone: nothing else would show it was cut
        assert resolve_sizes(["0.5"], reference_size=23596, pool_size=1304) == [("0.5", 1304)]
    assert "0.5 is 11798 examples, more than the pool's 1304" in caplog.text


def test_export_round_trip_matches_predict(mt_checkpoint, tmp_path):
    from transformers import pipeline

    task_file, ckpt = mt_checkpoint
    data = tmp_path / "data"
    preds_path = tmp_path / "pairs.tsv"
    assert main(["predict", str(ckpt), "--task", "pairs", "--split", "dev", "--data-dir", str(data),
                 "--out", str(preds_path)]) == 0
    export_dir = tmp_path / "hf"
    assert main(["export", str(ckpt), "--task", "pairs", "--out", str(export_dir)]) == 0
    umask = os.umask(0)
    os.umask(umask)
    for path in [export_dir, *export_dir.rglob("*")]:  # as readable as any file the user writes
        assert path.stat().st_mode & 0o777 == (0o777 if path.is_dir() else 0o666) & ~umask, path
    classifier = pipeline("text-classification", model=str(export_dir), truncation=True)
    with open(data / "pairs_dev.tsv") as handle:
        rows = [line.rstrip("\n").split("\t") for line in handle][1:]
    outputs = classifier([{"text": a, "text_pair": b} for a, b, _ in rows])
    expected = [line.split("\t")[1] for line in preds_path.read_text().splitlines()[1:]]
    assert [o["label"] for o in outputs] == expected
    # regression heads export too: the score equals mtsmart's
    assert main(["export", str(ckpt), "--task", "score", "--out", str(tmp_path / "hf-score")]) == 0
    scorer = pipeline("text-classification", model=str(tmp_path / "hf-score"), truncation=True)
    score_preds = tmp_path / "score.tsv"
    assert main(["predict", str(ckpt), "--task", "score", "--split", "dev", "--data-dir", str(data),
                 "--out", str(score_preds)]) == 0
    with open(data / "score_dev.tsv") as handle:
        texts = [line.split("\t")[0] for line in handle][1:]
    scores = [o["score"] for o in scorer(texts)]
    ours = [float(line.split("\t")[1]) for line in score_preds.read_text().splitlines()[1:]]
    assert np.allclose(scores, ours, atol=1e-4)


def test_export_refuses_a_checkpoint_without_pooler_pooling(tmp_path, tiny_model_dir, monkeypatch, capsys):
    monkeypatch.setenv("MTSMART_CACHE", str(tmp_path / "cache"))
    task_file = write_tiny_tasks(tmp_path)
    out = tmp_path / "cls"
    assert main(["train", str(task_file), "--encoder", str(tiny_model_dir), "--output", str(out),
                 "--max-steps", "1", "--pooling", "cls", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["export", str(out / "best"), "--task", "pairs", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pooling" in err[0] and not (tmp_path / "x").exists()


def test_export_of_an_encoder_without_a_pooler_names_the_families_that_export(mt_checkpoint, tmp_path,
                                                                               monkeypatch, capsys):
    """The advice used to be "train with pooling=pooler", which such an encoder refuses."""
    import mtsmart.export

    real_load = mtsmart.export.load_checkpoint

    def without_pooler(*args, **kwargs):
        loaded = real_load(*args, **kwargs)
        loaded.model.encoder.pooler = None  # as ELECTRA, DeBERTa, DistilBERT and ModernBERT have
        return loaded

    monkeypatch.setattr(mtsmart.export, "load_checkpoint", without_pooler)
    _, ckpt = mt_checkpoint
    assert main(["export", str(ckpt), "--task", "pairs", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has no pooler" in err[0] and "(BERT, RoBERTa, XLM-R, ALBERT, MPNet)" in err[0]


def test_a_preset_replaces_the_checkpoints_smart_settings_under_the_flags(mt_checkpoint, tmp_path):
    """finetune inherits every setting of its checkpoint; --smart-preset must still set the
    preset's values over them (a flag given with it wins over the preset)."""
    from mtsmart.arguments import build_parser, parse_args
    from mtsmart.cli import _load_finetune_tasks
    from mtsmart.config import SMART_PRESETS, SmartConfig

    _, ckpt = mt_checkpoint

    def smart_settings(*flags: str) -> SmartConfig:
        args = parse_args(build_parser(), ["finetune", str(ckpt), "--task", "pairs", "--output", str(tmp_path / "ft"),
                                       "--smart", "full", *flags])
        return _load_finetune_tasks(args).training.smart

    inherited = smart_settings()
    paper = SMART_PRESETS["paper"]
    assert (inherited.epsilon, inherited.norm) != (paper["epsilon"], paper["norm"])
    preset = smart_settings("--smart-preset", "paper")
    assert all(getattr(preset, key) == value for key, value in paper.items())
    assert smart_settings("--smart-preset", "paper", "--epsilon", "0.003").epsilon == 0.003
    assert smart_settings("training.smart.epsilon=0.003", "--smart-preset", "paper").epsilon == 0.003


def test_a_layer_count_a_checkpoint_cannot_take_is_named(mt_checkpoint, tmp_path, caplog):
    _, ckpt = mt_checkpoint
    assert main(["finetune", str(ckpt), "--task", "pairs", "--output", str(tmp_path / "ft"),
                 "--data-dir", str(tmp_path / "data"), "--max-steps", "1", "--num-hidden-layers", "1",
                 "--quiet"]) == 0
    note, = [r.getMessage() for r in caplog.records if "num_hidden_layers" in r.getMessage()]
    assert "keeps its 2 layers" in note and "(1)" in note
    caplog.clear()  # the checkpoint's own count, inherited, is no news
    assert main(["finetune", str(ckpt), "--task", "pairs", "--output", str(tmp_path / "ft2"),
                 "--data-dir", str(tmp_path / "data"), "--max-steps", "1", "--num-hidden-layers", "2",
                 "--quiet"]) == 0
    assert not [r for r in caplog.records if "num_hidden_layers" in r.getMessage()]


def test_finetune_applies_the_tasks_head_dropout_to_a_loaded_head(mt_checkpoint, tmp_path):
    _, ckpt = mt_checkpoint
    out = tmp_path / "ft"
    assert main(["finetune", str(ckpt), "--task", "pairs", "--output", str(out), "--max-steps", "1",
                 "tasks.pairs.head_dropout=0.3", "--quiet"]) == 0

    assert json.loads((out / "best" / "meta.json").read_text())["heads"]["pairs"] == [2, 0.3]


def test_export_never_replaces_the_checkpoint_and_asks_before_replacing_a_folder(mt_checkpoint, tmp_path, capsys):
    _, ckpt = mt_checkpoint
    run = ckpt.parent
    before = sorted(p.name for p in run.iterdir())
    for out in (ckpt, run, ckpt / "hf"):
        assert main(["export", str(ckpt), "--task", "pairs", "--out", str(out), "--overwrite"]) == 2
        assert "would replace the checkpoint" in capsys.readouterr().err
    assert sorted(p.name for p in run.iterdir()) == before and (ckpt / "meta.json").is_file()
    other = tmp_path / "precious"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    assert main(["export", str(ckpt), "--task", "pairs", "--out", str(other)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not empty (notes.txt)" in err[0] and "--overwrite" in err[0]
    assert (other / "notes.txt").read_text() == "keep me"
    assert main(["export", str(ckpt), "--task", "pairs", "--out", str(other), "--overwrite"]) == 0
    assert (other / "config.json").is_file() and not (other / "notes.txt").exists()
    assert main(["export", str(ckpt), "--task", "pairs", "--out", str(other), "--overwrite"]) == 0  # an export again


def test_export_never_replaces_another_training_run(mt_checkpoint, tmp_path, tiny_model_dir, capsys):
    """--overwrite deleted a whole run (best/, last/, its metrics) given as --out."""
    _, ckpt = mt_checkpoint
    _, other_run = train_tiny_run(tmp_path / "runs", tiny_model_dir, "other", "--max-steps", "1")
    # the run, its checkpoint, a folder inside it, and a folder that holds it
    for out in (other_run, other_run / "best", other_run / "tensorboard", other_run.parent):
        before = sorted(p.name for p in out.iterdir())
        assert main(["export", str(ckpt), "--task", "pairs", "--out", str(out), "--overwrite"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "a training run or checkpoint" in err[0], err
        assert sorted(p.name for p in out.iterdir()) == before


def test_finetune_refuses_a_task_file_whose_labels_the_head_reads_otherwise(mt_checkpoint, tmp_path, capsys):
    """The head's outputs are in its labels' order; the same task with its labels swapped
    would be trained and scored with the meanings crossed (evaluate refuses it too)."""
    import yaml

    task_file, ckpt = mt_checkpoint
    spec = yaml.safe_load(task_file.read_text())
    spec["tasks"]["pairs"]["labels"] = list(reversed(spec["tasks"]["pairs"]["labels"]))
    flipped = tmp_path / "flipped.yaml"
    flipped.write_text(yaml.safe_dump(spec))
    assert main(["finetune", str(ckpt), "--task", "pairs", "--task-defs", str(flipped),
                 "--output", str(tmp_path / "ft"), "--max-steps", "1", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(flipped) in err[0] and "labels" in err[0], err
    assert not (tmp_path / "ft").exists()


def test_a_fine_tuned_run_records_the_checkpoint_it_started_from(mt_checkpoint, tmp_path):
    _, ckpt = mt_checkpoint
    assert main(["finetune", str(ckpt), "--task", "pairs", "--output", str(tmp_path / "ft"), "--max-steps", "1",
                 "--quiet", "--weights", "student"]) == 0
    results = json.loads((tmp_path / "ft" / "results.json").read_text())
    assert results["start"] == {"checkpoint": str(ckpt.resolve()), "weights": "student"}


def test_finetune_into_an_occupied_folder_is_refused_and_left_alone(mt_checkpoint, tmp_path, capsys):
    _, ckpt = mt_checkpoint
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "keep.txt").write_text("x")
    assert main(["finetune", str(ckpt), "--task", "pairs", "--output", str(occupied), "--max-steps", "1",
                 "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "output directory is not empty (pass --overwrite to replace it)" in err  # nothing to resume there
    assert sorted(p.name for p in occupied.iterdir()) == ["keep.txt"]


def test_overwrite_never_deletes_another_runs_checkpoint_or_the_runs_in_a_folder(mt_checkpoint, tmp_path,
                                                                                  tiny_model_dir, capsys):
    task_file, ckpt = mt_checkpoint
    run = ckpt.parent
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "a").mkdir()
    (runs / "a" / "keep.txt").write_text("x")
    assert main(["finetune", str(ckpt), "--task", "pairs", "--output", str(runs / "a" / "ft"), "--max-steps", "1",
                 "--quiet"]) == 0
    before = {p: p.stat().st_mtime_ns for p in [*run.rglob("*"), *runs.rglob("*")]}
    train = ["train", str(task_file), "--encoder", str(tiny_model_dir), "--max-steps", "1", "--quiet", "--overwrite"]
    for output, says in ((run / "last", f"--overwrite would delete the checkpoint {run / 'last'}"),
                         (run / "tensorboard", f"--overwrite would delete part of the run {run.resolve()}"),
                         (runs, "--overwrite would delete the training run or checkpoint"),
                         (runs / "a", "--overwrite would delete the training run or checkpoint")):
        assert main(train + ["--output", str(output)]) == 2, output
        err = capsys.readouterr().err
        assert says in err and "give --output a folder of its own" in err, err
    assert main(["finetune", str(ckpt), "--task", "all", "--output", str(run / "last"), "--overwrite",
                 "--max-steps", "1", "--quiet"]) == 2
    assert "--overwrite would delete" in capsys.readouterr().err
    assert before == {p: p.stat().st_mtime_ns for p in [*run.rglob("*"), *runs.rglob("*")]}
    # an earlier run's own folder, or an earlier finetune of several tasks, is what --overwrite replaces
    assert main(train + ["--output", str(runs / "a" / "ft")]) == 0
    several = tmp_path / "ft-all"
    for _ in range(2):
        assert main(["finetune", str(ckpt), "--task", "all", "--output", str(several), "--overwrite",
                     "--max-steps", "1", "--quiet"]) == 0
    assert main(["finetune", str(ckpt), "--task", "all", "--output", str(several), "--max-steps", "1",
                 "--quiet"]) == 2
    assert "pass --overwrite to replace it, or --resume to continue it)" in capsys.readouterr().err


def test_a_task_the_checkpoint_lacks_points_to_task_defs(mt_checkpoint, tmp_path, capsys):
    _, ckpt = mt_checkpoint
    assert main(["finetune", str(ckpt), "--task", "domain", "--output", str(tmp_path / "ft"), "--quiet"]) == 2
    assert capsys.readouterr().err.strip().endswith(
        "--task: no task 'domain' (tasks: pairs, score); a task the checkpoint was not trained on needs its "
        "definition: --task-defs FILE")
    assert main(["finetune", str(ckpt), "--task", "pair", "--output", str(tmp_path / "ft"), "--quiet"]) == 2
    assert "no task 'pair' (did you mean 'pairs'?)" in capsys.readouterr().err
    assert not (tmp_path / "ft").exists()


def test_finetune_never_clears_the_folder_it_reads_its_checkpoint_from(mt_checkpoint, capsys):
    _, ckpt = mt_checkpoint
    run = ckpt.parent
    before = sorted(p.name for p in run.iterdir())
    assert main(["finetune", str(ckpt), "--task", "pairs", "--output", str(run), "--overwrite",
                 "--max-steps", "1", "--quiet"]) == 2
    assert "would replace the checkpoint" in capsys.readouterr().err
    assert sorted(p.name for p in run.iterdir()) == before


def trainer_configs(monkeypatch) -> list:
    """The TrainConfig of each Trainer the command makes, in order."""
    import mtsmart.train as train

    seen = []

    class Spy(train.Trainer):
        def __init__(self, tasks, cfg, *args, **kwargs):
            seen.append(cfg)
            super().__init__(tasks, cfg, *args, **kwargs)

    monkeypatch.setattr(train, "Trainer", Spy)  # adaptation imports it when it runs
    return seen


def test_adapt_sets_for_each_run_exactly_the_settings_its_command_line_refuses(mt_checkpoint, tmp_path, monkeypatch):
    """config.ADAPT_SETS_PER_RUN names what adaptation.run_adaptation sets per run; the two
    must not drift apart (a setting adapt overrides but accepts would be dropped silently)."""
    import dataclasses

    from mtsmart.config import ADAPT_SETS_PER_RUN

    _, ckpt = mt_checkpoint
    seen = trainer_configs(monkeypatch)
    new_task_file = write_new_domain(tmp_path)
    assert main(["adapt", f"mt={ckpt}", "--task", "domain", "--task-defs", str(new_task_file),
                 "--train-sizes", "6", "--seeds", "1", "--min-steps", "1", "--output", str(tmp_path / "a"),
                 "--quiet"]) == 0
    from mtsmart.tasks import load_task_file

    given = load_task_file(str(new_task_file)).training
    changed = {f.name for f in dataclasses.fields(given) if getattr(given, f.name) != getattr(seen[0], f.name)}
    assert changed - {"encoder"} <= set(ADAPT_SETS_PER_RUN), changed
    assert {"seed", "max_steps", "eval_every", "save_checkpoints"} <= set(ADAPT_SETS_PER_RUN)


def test_adapt_plot_names_the_sizes_that_ran(monkeypatch):
    import matplotlib.figure

    from mtsmart.adaptation import write_plot
    from mtsmart.tasks import parse_task

    task = parse_task("t", {"type": "classification", "text_fields": ["s"], "label_field": "l",
                            "labels": ["0", "1"], "splits": {"train": "t.tsv", "dev": "d.tsv"}}, "x.yaml")
    rows = [{"start": start, "n_train": n, "seed": seed, "accuracy": 0.5 + 0.01 * seed}
            for start in ("mt", "raw") for n in (24, 236, 1304) for seed in (1, 2)]
    figures = []
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda fig, *a, **k: figures.append(fig))
    write_plot("plot.png", rows, task)
    (ax,) = figures[0].axes
    assert [label.get_text() for label in ax.get_xticklabels()] == ["24", "236", "1304"]
    assert ax.get_xscale() == "log"


def test_finetune_settings_are_the_checkpoints_then_the_task_defs_then_the_command_line(mt_checkpoint, tmp_path,
                                                                                          caplog):
    """The checkpoint's training settings, then the task-definition file's training block,
    then --config / KEY=VALUE / flags; and a note for training.encoder, which finetune
    does not read (the encoder is the checkpoint's)."""
    from mtsmart.arguments import build_parser, parse_args
    from mtsmart.cli import _load_finetune_tasks

    _, tiny_checkpoint = mt_checkpoint
    defs = tmp_path / "defs.yaml"
    text = (tiny_checkpoint / "tasks.yaml").read_text()
    defs.write_text(yaml.safe_dump({**yaml.safe_load(text), "training": {"batch_size": 5, "seed": 9}}))
    args = parse_args(build_parser(), ["finetune", str(tiny_checkpoint), "--task", "pairs", "-o", str(tmp_path / "ft"),
                                       "--task-defs", str(defs), "--seed", "11"])
    training = _load_finetune_tasks(args).training
    assert training.optim.lr == 1e-3  # the checkpoint's
    assert training.batch_size == 5  # --task-defs' over the checkpoint's 8
    assert training.seed == 11  # the flag over both

    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "keep.txt").write_text("x")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert main(["finetune", str(tiny_checkpoint), "--task", "pairs", "-o", str(occupied),
                     "training.encoder=/elsewhere"]) == 2  # refused after the notes: the folder is not empty
    assert any("training.encoder=/elsewhere does nothing: the encoder comes from the checkpoint" in r.getMessage()
               for r in caplog.records)


# ------------------------------------------------------------------ adapt
def test_a_fraction_below_one_example_of_the_reference_still_trains_on_one():
    """0.001 of a reference of 100 is one example, not none."""
    from mtsmart.adaptation import resolve_sizes

    assert resolve_sizes(["0.001", "0.5"], reference_size=100, pool_size=60) == [("0.001", 1), ("0.5", 50)]


def test_adapt_trains_each_seed_on_its_own_stratified_subset_for_its_planned_steps(tmp_path, tiny_model_dir, monkeypatch):
    """What each run trains on and for how long: its own subset per seed (the trainer reads
    only those rows), stratified by label, for ceil(epochs × batches) updates raised to
    --min-steps. results.csv's columns alone would not show any of it."""
    import mtsmart.train as train_module
    from mtsmart.adaptation import StartPoint, run_adaptation
    from mtsmart.tasks import load_task_file

    (tmp_path / "data").mkdir()
    loaded = load_task_file(str(write_new_domain(tmp_path)))  # 60 pairs, labels ent:neu 2:1
    task = loaded.tasks["domain"]
    runs = []

    class Spy(train_module.Trainer):
        def train(self):
            name = next(iter(self.tasks))
            runs.append({"n": len(self.train_indices[name]), "seed": self.cfg.seed, "steps": self.plan.total_updates,
                         "indices": sorted(self.train_indices[name].tolist()),
                         "trained_on": len(self.train_splits[name])})
            return super().train()

    monkeypatch.setattr(train_module, "Trainer", Spy)
    cfg = replace(loaded.training, encoder=str(tiny_model_dir), num_threads=1, batch_size=4, epochs=1.5)
    rows = run_adaptation([StartPoint("raw", str(tiny_model_dir))], task, cfg, loaded.data_dir, ["9", "30"], [1, 2],
                          str(tmp_path / "adapt"), min_steps=6, show_progress=False, cache_dir=str(tmp_path / "cache"))
    # 9 examples in batches of 4: 3 batches an epoch, 1.5 epochs = 5 updates, raised to --min-steps 6;
    # 30 examples: 8 batches an epoch, 12 updates
    assert [(r["n_train"], r["seed"], r["steps"]) for r in rows] == [(9, 1, 6), (9, 2, 6), (30, 1, 12), (30, 2, 12)]
    assert [run["steps"] for run in runs] == [6, 6, 12, 12]
    targets = np.array([["ent", "neu"][i % 3 == 0] for i in range(60)])
    for run in runs:
        assert run["trained_on"] == run["n"] == len(set(run["indices"]))
        counts = {label: int((targets[run["indices"]] == label).sum()) for label in ("ent", "neu")}
        assert counts == ({"ent": 6, "neu": 3} if run["n"] == 9 else {"ent": 20, "neu": 10}), counts
    assert runs[0]["indices"] != runs[1]["indices"] and runs[2]["indices"] != runs[3]["indices"]


# ------------------------------------------------------------------ export
def test_export_config_carries_the_heads_labels_dropout_problem_type_and_length(tmp_path, tiny_model_dir, monkeypatch):
    """The exported config carries the labels, the problem type, the task's head_dropout as
    classifier_dropout (BERT's None would fine-tune the export with hidden_dropout_prob)
    and the task's max_length as the tokenizer's limit (so pipeline(truncation=True) cuts
    where mtsmart did)."""

    from mtsmart.cli import main

    monkeypatch.setenv("MTSMART_CACHE", str(tmp_path / "cache"))
    task_file = write_tiny_tasks(tmp_path)
    task_file.write_text(task_file.read_text().replace("max_length: 32", "max_length: 32\n    head_dropout: 0.25", 1))
    run = tmp_path / "mt"
    assert main(["train", str(task_file), "--encoder", str(tiny_model_dir), "--output", str(run),
                 "--max-steps", "2", "--quiet", "--pooling", "pooler"]) == 0
    assert main(["export", str(run / "best"), "--task", "pairs", "--out", str(tmp_path / "pairs")]) == 0
    assert main(["export", str(run / "best"), "--task", "score", "--out", str(tmp_path / "score")]) == 0
    pairs = json.loads((tmp_path / "pairs" / "config.json").read_text())
    score = json.loads((tmp_path / "score" / "config.json").read_text())
    tokenizer = json.loads((tmp_path / "pairs" / "tokenizer_config.json").read_text())
    assert pairs["id2label"] == {"0": "no", "1": "yes"} and pairs["label2id"] == {"no": 0, "yes": 1}
    assert pairs["problem_type"] == "single_label_classification" and score["problem_type"] == "regression"
    assert score["id2label"] == {"0": "score"}
    assert tokenizer["model_max_length"] == 32
    assert pairs["classifier_dropout"] == pytest.approx(0.25)


def test_a_run_started_from_a_checkpoint_records_the_fingerprint_of_its_encoder(tmp_path, tiny_model_dir, monkeypatch):
    """run.json names which encoder weights a fine-tuning run started from: the
    checkpoint's encoder/ folder, whose fingerprint is comparable with that of the encoder
    a run from scratch records, not the checkpoint folder's heads."""
    from mtsmart.checkpoint import load_checkpoint
    from mtsmart.provenance import encoder_fingerprint
    from mtsmart.train import Trainer

    monkeypatch.setenv("MTSMART_CACHE", str(tmp_path / "cache"))
    task_file, out = train_tiny_run(tmp_path, tiny_model_dir, "mt", "--pooling", "pooler")
    ckpt = out / "best"
    loaded = load_checkpoint(str(ckpt))
    trainer = Trainer(loaded.tasks, loaded.training, str(tmp_path / "data"), str(tmp_path / "ft"),
                      init_from=str(ckpt), show_progress=False)
    trainer.setup()
    trainer.cleanup()
    (session,) = json.loads((tmp_path / "ft" / "run.json").read_text())["sessions"]
    assert session["encoder"] == {"source": str(ckpt), "fingerprint": encoder_fingerprint(str(ckpt / "encoder")),
                                  "weights": "student"}


@pytest.mark.parametrize("family", ["longformer", "big_bird", "pooler_activation"])
def test_export_refuses_a_family_whose_head_computes_something_else(mt_checkpoint, tmp_path, monkeypatch,
                                                                     capsys, family):
    """Weights that map are not enough. Longformer's classification model gives the first
    token global attention (exported, it predicted other logits than mtsmart); BigBird's
    pooler has no `dense` layer (export crashed with a traceback) and its head applies
    gelu; and any pooler that computes other than its family's standard one is caught the
    same way."""
    import transformers

    import mtsmart.export

    real_load = mtsmart.export.load_checkpoint

    def with_encoder(*args, **kwargs):
        loaded = real_load(*args, **kwargs)
        hidden, vocab = loaded.model.encoder.config.hidden_size, len(loaded.tokenizer)
        common = dict(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=64, max_position_embeddings=160)
        if family == "longformer":
            encoder = transformers.LongformerModel(transformers.LongformerConfig(**common, attention_window=8),
                                                   add_pooling_layer=True)
        elif family == "big_bird":
            encoder = transformers.BigBirdModel(transformers.BigBirdConfig(**common, attention_type="original_full"),
                                                add_pooling_layer=True)
        else:
            encoder = loaded.model.encoder
            encoder.pooler.activation = torch.nn.GELU()  # the exported BERT pooler keeps its tanh
        loaded.model.encoder = encoder.eval()
        return loaded

    monkeypatch.setattr(mtsmart.export, "load_checkpoint", with_encoder)
    _, ckpt = mt_checkpoint
    capsys.readouterr()
    assert main(["export", str(ckpt), "--task", "pairs", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "export supports BERT- and RoBERTa-style encoders" in err[0], err
    assert not (tmp_path / "x").exists()


def test_a_roberta_style_export_predicts_what_mtsmart_predicts(tmp_path, tiny_roberta_dir, monkeypatch):
    """RoBERTa's classification model has no pooler: the pooler's dense layer becomes the
    head's `classifier.dense`. A RoBERTa, XLM-R or CamemBERT user loads the export with
    pipeline() and must get the scores mtsmart predicted, not those of a head that lost its
    dense layer."""
    from transformers import pipeline

    monkeypatch.setenv("MTSMART_CACHE", str(tmp_path / "cache"))
    _, run = train_tiny_run(tmp_path, tiny_roberta_dir, "roberta", "--pooling", "pooler")
    data, preds_path, export_dir = tmp_path / "data", tmp_path / "score.tsv", tmp_path / "hf"
    assert main(["predict", str(run / "best"), "--task", "score", "--split", "dev", "--data-dir", str(data),
                 "--out", str(preds_path)]) == 0
    assert main(["export", str(run / "best"), "--task", "score", "--out", str(export_dir)]) == 0
    weights = load_file(str(export_dir / "model.safetensors"))
    assert {"classifier.dense.weight", "classifier.out_proj.weight"} <= set(weights)
    assert not any(".pooler." in key for key in weights)
    with open(data / "score_dev.tsv") as handle:
        texts = [line.split("\t")[0] for line in handle][1:]
    exported = [o["score"] for o in pipeline("text-classification", model=str(export_dir), truncation=True)(texts)]
    ours = [float(line.split("\t")[1]) for line in preds_path.read_text().splitlines()[1:]]
    assert np.allclose(exported, ours, atol=1e-4)


def assert_pipeline_classifies_pairs_as_mtsmart(checkpoint: Path, export_dir: Path, data: Path) -> None:
    """pipeline() on the export gives each dev pair of the tiny `pairs` task the
    probabilities mtsmart's own head gives it."""
    from transformers import pipeline

    from mtsmart.checkpoint import load_checkpoint

    with open(data / "pairs_dev.tsv") as handle:
        rows = [line.rstrip("\n").split("\t") for line in handle][1:]
    classify = pipeline("text-classification", model=str(export_dir), truncation=True, top_k=None)
    exported = [{o["label"]: o["score"] for o in classify({"text": a, "text_pair": b})} for a, b, _ in rows]
    loaded = load_checkpoint(str(checkpoint))
    loaded.model.eval()
    batch = loaded.tokenizer([a for a, _, _ in rows], [b for _, b, _ in rows], padding=True, return_tensors="pt")
    with torch.no_grad():
        ours = torch.softmax(loaded.model.forward_batch("pairs", dict(batch)), -1)
    assert np.allclose([[scores["no"], scores["yes"]] for scores in exported], ours.numpy(), atol=1e-5)


def test_a_roberta_style_export_classifies_sentence_pairs_as_mtsmart_does(tmp_path, tiny_roberta_dir,
                                                                           monkeypatch):
    """Some RoBERTa-family checkpoints ship a tokenizer that makes sentence-B type ids
    (klue/roberta-base's is a BERT tokenizer; so is the tiny fixture's) for an encoder with
    one token type. mtsmart leaves them out; an exported tokenizer that still made them
    sent index 1 into a one-row table, and pipeline() on a pair failed with IndexError."""
    from transformers import AutoTokenizer

    monkeypatch.setenv("MTSMART_CACHE", str(tmp_path / "cache"))
    _, run = train_tiny_run(tmp_path, tiny_roberta_dir, "roberta", "--pooling", "pooler")
    assert "token_type_ids" in AutoTokenizer.from_pretrained(str(run / "best" / "encoder"))("a", "b")
    export_dir = tmp_path / "hf"
    assert main(["export", str(run / "best"), "--task", "pairs", "--out", str(export_dir)]) == 0
    assert "token_type_ids" not in AutoTokenizer.from_pretrained(str(export_dir))("a", "b")
    assert_pipeline_classifies_pairs_as_mtsmart(run / "best", export_dir, tmp_path / "data")


@pytest.mark.parametrize("family", ["albert", "mpnet", "xlm-roberta"])
def test_each_family_export_names_besides_bert_and_roberta_exports(tmp_path, tiny_model_dir, monkeypatch, family):
    """Export names ALBERT, MPNet and XLM-R as families it supports: ALBERT's head is BERT's
    shape with its own embedding size and token types, MPNet's is RoBERTa's shape with no
    token types at all, XLM-R is RoBERTa's with its own model class."""
    import shutil

    import transformers

    encoder = tmp_path / family
    shutil.copytree(tiny_model_dir, encoder)  # the tiny WordPiece tokenizer, another encoder
    (encoder / "model.safetensors").unlink()
    vocab = json.loads((tiny_model_dir / "config.json").read_text())["vocab_size"]
    common = dict(vocab_size=vocab, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                  intermediate_size=64, max_position_embeddings=160)
    model = {"albert": lambda: transformers.AlbertModel(transformers.AlbertConfig(**common, embedding_size=16)),
             "mpnet": lambda: transformers.MPNetModel(transformers.MPNetConfig(**common)),
             "xlm-roberta": lambda: transformers.XLMRobertaModel(
                 transformers.XLMRobertaConfig(**common, pad_token_id=0, type_vocab_size=1))}[family]()
    model.save_pretrained(encoder)
    monkeypatch.setenv("MTSMART_CACHE", str(tmp_path / "cache"))
    _, run = train_tiny_run(tmp_path, encoder, "run", "--pooling", "pooler")
    export_dir = tmp_path / "hf"
    assert main(["export", str(run / "best"), "--task", "pairs", "--out", str(export_dir)]) == 0
    exported_config = json.loads((export_dir / "config.json").read_text())
    assert exported_config["model_type"] == family and len(exported_config["id2label"]) == 2
    assert_pipeline_classifies_pairs_as_mtsmart(run / "best", export_dir, tmp_path / "data")


def test_export_of_a_task_the_checkpoint_lacks_names_its_heads(mt_checkpoint, tmp_path, capsys):
    """A misspelt --task is one line that lists the tasks the checkpoint can export, not a
    traceback, and nothing is written."""
    _, ckpt = mt_checkpoint
    capsys.readouterr()
    assert main(["export", str(ckpt), "--task", "pair", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no head for task 'pair' (heads: pairs, score)" in err[0], err
    assert not (tmp_path / "x").exists()


def test_export_task_called_from_python_asks_before_replacing_a_folder(tmp_path):
    """export_task is the library entry point as well as the command's: called without
    overwrite=True it must refuse a folder with files in it, as `mtsmart export` does."""
    from mtsmart.errors import CheckpointError
    from mtsmart.export import export_task

    other = tmp_path / "precious"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(CheckpointError, match=r"not empty \(notes.txt\)"):
        export_task(str(tmp_path / "run" / "best"), "pairs", str(other))
    assert (other / "notes.txt").read_text() == "keep me"


def test_adapt_trains_each_run_for_at_least_min_steps(tmp_path, tiny_model_dir, monkeypatch):
    """--min-steps is what keeps the smallest sizes from training a handful of updates:
    6 examples in batches of 8 make one update an epoch, raised to the 7 asked for."""
    monkeypatch.setenv("MTSMART_CACHE", str(tmp_path / "cache"))
    (tmp_path / "data").mkdir()
    seen = trainer_configs(monkeypatch)
    new_task_file = write_new_domain(tmp_path)
    assert main(["adapt", f"raw={tiny_model_dir}", "--task", "domain", "--task-defs", str(new_task_file),
                 "--train-sizes", "6", "--seeds", "1", "--min-steps", "7", "--output", str(tmp_path / "a"),
                 "--quiet"]) == 0
    assert [cfg.max_steps for cfg in seen] == [7]


def test_finetune_command_starts_from_the_weights_it_is_given(smart_checkpoint, tmp_path):
    """`finetune --weights teacher` must start from the SMART teacher (often the better
    model), not silently from the student; run.json records which one it started from."""
    _, ckpt = smart_checkpoint
    out = tmp_path / "ft-teacher"
    assert main(["finetune", str(ckpt), "--task", "pairs", "--weights", "teacher", "--output", str(out),
                 "--max-steps", "1", "--data-dir", str(tmp_path / "data"), "--quiet"]) == 0
    (session,) = json.loads((out / "run.json").read_text())["sessions"]
    assert session["encoder"]["weights"] == "teacher"


def test_adapt_reads_its_data_from_data_dir(tmp_path, tiny_model_dir, monkeypatch):
    """--data-dir points adapt at data moved away from the task file's data_dir, as it does
    train and finetune."""
    monkeypatch.setenv("MTSMART_CACHE", str(tmp_path / "cache"))
    (tmp_path / "data").mkdir()
    new_task_file = write_new_domain(tmp_path)
    (tmp_path / "data").rename(tmp_path / "moved")
    assert main(["adapt", f"raw={tiny_model_dir}", "--task", "domain", "--task-defs", str(new_task_file),
                 "--data-dir", str(tmp_path / "moved"), "--train-sizes", "6", "--seeds", "1", "--min-steps", "1",
                 "--output", str(tmp_path / "a"), "--quiet"]) == 0
    assert (tmp_path / "a" / "results.csv").is_file()
