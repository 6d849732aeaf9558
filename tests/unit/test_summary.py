"""`mtsmart summarize`: runs pooled by recipe (settings other than the seed), mean ± std
over seeds with every seed's value, recipes named by the settings that tell them apart."""

from __future__ import annotations

import json
from pathlib import Path
from statistics import mean, stdev

import pytest

from mtsmart.cli import main
from mtsmart.config import TrainConfig, to_plain
from mtsmart.errors import ConfigError
from mtsmart.summary import read_run, summarize


def write_run(path: Path, seed: int, scores: dict[str, float], mode: str = "off", threads: int = 1,
              teacher: dict[str, float] | None = None, patience: int | None = None,
              tasks: dict[str, dict] | None = None, start: dict | None = None, **settings) -> Path:
    """A results.json as the trainer writes it (main metric accuracy for every task);
    ``settings``: dotted training keys, e.g. ``**{"smart.epsilon": 0.5}``."""
    training = to_plain(TrainConfig(seed=seed, num_threads=threads, patience=patience))
    training["smart"]["mode"] = mode
    for key, value in settings.items():
        *parents, leaf = key.split(".")
        node = training
        for parent in parents:
            node = node[parent]
        node[leaf] = value
    last = {"global_step": 10, "results": {t: {"accuracy": v, "f1": 0.0} for t, v in scores.items()}}
    if teacher:
        last["teacher_results"] = {t: {"accuracy": v, "f1": 0.0} for t, v in teacher.items()}
    path.mkdir(parents=True)
    (path / "results.json").write_text(json.dumps({
        "best": {"global_step": 5, "results": {t: {"accuracy": 0.9, "f1": 0.0} for t in scores}},
        "last": last, "training": training, "main_metrics": {t: "accuracy" for t in scores},
        **({"tasks": tasks} if tasks is not None else {}), **({"start": start} if start else {})}))
    return path


def rows(table: str) -> dict[str, list[str]]:
    return {cells[0]: cells[1:] for line in table.splitlines()[2:]
            for cells in [[c.strip() for c in line.strip("|").split("|")]]}


def test_seeds_pool_into_one_row_per_recipe_and_single_task_runs_share_it(tmp_path):
    runs = [write_run(tmp_path / "p1", 1, {"rte": 0.60}), write_run(tmp_path / "p2", 2, {"rte": 0.50}, threads=2),
            write_run(tmp_path / "p1c", 1, {"cola": 0.30}), write_run(tmp_path / "p2c", 2, {"cola": 0.34}),
            write_run(tmp_path / "s1", 1, {"rte": 0.62}, mode="full")]
    table = rows(summarize([read_run(str(p)) for p in runs]))
    assert set(table) == {"smart.mode=off", "smart.mode=full"}  # threads are not a recipe
    stopped = write_run(tmp_path / "p3", 3, {"rte": 0.40}, patience=1)
    assert "patience=1" in summarize([read_run(str(p)) for p in (*runs, stopped)])  # patience is
    seeds, cola, rte, average = table["smart.mode=off"]
    assert seeds == "1, 2"
    assert rte == f"55.00 ± {stdev([60.0, 50.0]):.2f} [60.00, 50.00]"
    assert cola == f"32.00 ± {stdev([30.0, 34.0]):.2f} [30.00, 34.00]"
    assert average == f"{mean([45.0, 42.0]):.2f} ± {stdev([45.0, 42.0]):.2f}"  # per seed over tasks
    assert table["smart.mode=full"] == ["1", "–", "62.00 [62.00]", "–"]


def test_a_tasks_own_settings_make_another_recipe(tmp_path):
    """A task's own smart: block or max_length is part of the recipe: such a run is not
    another seed of the plain recipe. Different tasks' definitions never split a row."""
    rte = {"type": "classification", "max_length": 128, "metrics": ["accuracy"]}
    cola = {"type": "classification", "max_length": 64, "metrics": ["mcc"]}
    runs = [write_run(tmp_path / "r1", 1, {"rte": 0.60}, tasks={"rte": rte}),
            # a declared test split or another metric changes nothing a run learns
            write_run(tmp_path / "r2", 2, {"rte": 0.50}, tasks={"rte": {**rte, "metrics": ["accuracy", "f1"],
                                                                     "splits": {"test": {"path": "t.tsv"}}}}),
            write_run(tmp_path / "c1", 1, {"cola": 0.30}, tasks={"cola": cola}),
            write_run(tmp_path / "r3", 3, {"rte": 0.70}, tasks={"rte": {**rte, "smart": {"mode": "full"}}}),
            write_run(tmp_path / "r4", 3, {"rte": 0.40}, tasks={"rte": {**rte, "max_length": 32}})]
    table = rows(summarize([read_run(str(p)) for p in runs]))
    plain, full, short = ("tasks.rte.max_length=128, tasks.rte.smart.mode=unset",
                          "tasks.rte.max_length=128, tasks.rte.smart.mode=full",
                          "tasks.rte.max_length=32, tasks.rte.smart.mode=unset")
    assert set(table) == {plain, full, short}
    seeds, cola_cell, rte_cell, _ = table[plain]
    assert seeds == "1, 2" and cola_cell == "30.00 [30.00]" and rte_cell.endswith("[60.00, 50.00]")
    assert table[full][2] == "70.00 [70.00]" and table[short][2] == "40.00 [40.00]"
    # a run that recorded no task settings is not pooled into a row whose tasks it may not share
    unknown = write_run(tmp_path / "r5", 4, {"rte": 0.45})
    table = rows(summarize([read_run(str(p)) for p in (*runs, unknown)]))
    assert [label for label in table if "task settings=not recorded" in label] == ["task settings=not recorded"]
    assert all("task settings=recorded" in label for label in table if "not recorded" not in label)
    # another main metric or another dev file is another experiment, never one cell
    scored_by_f1 = write_run(tmp_path / "r6", 3, {"rte": 0.30},
                             tasks={"rte": {**rte, "main_metric": "f1", "metrics": ["accuracy", "f1"]}})
    other_dev = write_run(tmp_path / "r7", 4, {"rte": 0.35},
                          tasks={"rte": {**rte, "splits": {"dev": {"path": "other_dev.tsv"}}}})
    table = rows(summarize([read_run(str(p)) for p in (*runs, scored_by_f1, other_dev)]))
    assert len(table) == 5 and sum("[60.00, 50.00]" in cells[2] for cells in table.values()) == 1


def test_best_and_teacher_scores_are_read_when_asked(tmp_path):
    run = write_run(tmp_path / "r", 3, {"rte": 0.55}, mode="full", teacher={"rte": 0.57})
    assert read_run(str(run)).scores["rte"] == pytest.approx(55.0)
    assert read_run(str(run), which="best").scores["rte"] == pytest.approx(90.0)
    assert read_run(str(run), weights="teacher").scores["rte"] == pytest.approx(57.0)
    assert read_run(str(run), which="best", weights="teacher").scores == {}  # not kept by this run: –


def test_the_teacher_table_of_runs_with_and_without_a_teacher(tmp_path, caplog):
    """A folder that mixes plain and SMART runs: the plain runs' teacher cells are –, and
    the table is still made; an unfinished run in the folder is named, not dropped silently."""
    write_run(tmp_path / "grid" / "plain", 1, {"rte": 0.55})
    write_run(tmp_path / "grid" / "full", 1, {"rte": 0.58}, mode="full", teacher={"rte": 0.57})
    (tmp_path / "grid" / "running").mkdir()
    (tmp_path / "grid" / "running" / "run.json").write_text("{}")
    paths = [tmp_path / "grid" / name for name in ("plain", "full")]
    table = rows(summarize([read_run(str(p), weights="teacher") for p in paths]))
    assert table == {"smart.mode=off": ["1", "–"], "smart.mode=full": ["1", "57.00 [57.00]"]}
    assert main(["summarize", str(tmp_path / "grid"), "--weights", "teacher"]) == 0
    assert any("running: left out, not finished" in r.getMessage() for r in caplog.records)


def test_a_seed_twice_in_a_recipe_and_an_unfinished_run_are_refused(tmp_path, capsys):
    a, b = write_run(tmp_path / "a", 1, {"rte": 0.6}), write_run(tmp_path / "b", 1, {"rte": 0.5})
    with pytest.raises(ConfigError, match=r"task 'rte' has seed 1 in more than one run"):
        summarize([read_run(str(a)), read_run(str(b))])
    (a / "best").mkdir()
    (a / "best" / "meta.json").write_text("{}")
    assert main(["summarize", str(a / "best")]) == 2
    assert f"a checkpoint, not a run; give its run folder ({a})" in capsys.readouterr().err
    (tmp_path / "unfinished").mkdir()
    assert main(["summarize", str(a), str(tmp_path / "unfinished")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "unfinished: no finished run in it or in its sub-folders" in err


def test_a_folder_of_runs_is_read_as_its_runs(tmp_path, capsys):
    write_run(tmp_path / "grid" / "s1", 1, {"rte": 0.6})
    write_run(tmp_path / "grid" / "s2", 2, {"rte": 0.5})
    assert main(["summarize", str(tmp_path / "grid")]) == 0
    printed = capsys.readouterr().out
    assert "| all runs | 1, 2 | 55.00 ±" in printed and "2 runs;" in printed


def test_runs_are_found_at_any_depth_and_a_folder_without_runs_says_so(tmp_path, capsys, caplog):
    write_run(tmp_path / "rte" / "off" / "seed1", 1, {"rte": 0.6})
    write_run(tmp_path / "rte" / "off" / "seed2", 2, {"rte": 0.5})
    unfinished = tmp_path / "rte" / "off" / "seed3"
    unfinished.mkdir()
    (unfinished / "run.json").write_text("{}")
    with caplog.at_level("WARNING"):
        assert main(["summarize", str(tmp_path)]) == 0
    assert "| all runs | 1, 2 | 55.00 ±" in capsys.readouterr().out
    assert f"{unfinished}: left out, not finished" in caplog.text
    adapt = tmp_path / "adapt"  # adapt's own runs are summarised by its table.md
    write_run(adapt / "runs" / "raw" / "n24" / "seed1", 1, {"rte": 0.9})
    (adapt / "results.csv").write_text("start\n")
    (adapt / "recipe.json").write_text("{}")
    caplog.clear()
    with caplog.at_level("WARNING"):
        assert main(["summarize", str(tmp_path)]) == 0
    assert "| all runs | 1, 2 | 55.00 ±" in capsys.readouterr().out
    assert f"{adapt}: an adapt folder, left out" in caplog.text
    (tmp_path / "empty").mkdir()
    assert main(["summarize", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "empty: no finished run in it or in its sub-folders" in err


def test_a_multi_task_run_is_not_another_seed_of_single_task_runs(tmp_path):
    """A run that trained rte and cola together is another recipe than single-task runs of
    the same settings: pooled, its seed would pass for a seed of the single-task recipe."""
    runs = [write_run(tmp_path / "mt", 1, {"rte": 0.70, "cola": 0.40}),
            write_run(tmp_path / "rte", 2, {"rte": 0.60}), write_run(tmp_path / "cola", 2, {"cola": 0.30})]
    table = rows(summarize([read_run(str(p)) for p in runs]))
    assert len(table) == 2, table
    assert sorted(cells[0] for cells in table.values()) == ["1", "2"]


def test_a_run_fine_tuned_from_a_checkpoint_is_another_recipe(tmp_path):
    """A fine-tuned run records the raw encoder as training.encoder, as its start point's
    run did: without its start, it pooled as another seed of runs from the raw encoder."""
    runs = [write_run(tmp_path / "raw1", 1, {"rte": 0.60}), write_run(tmp_path / "raw2", 2, {"rte": 0.50}),
            write_run(tmp_path / "ft3", 3, {"rte": 0.70}, start={"checkpoint": "/runs/mt/best", "weights": "student"}),
            write_run(tmp_path / "ft4", 4, {"rte": 0.72}, start={"checkpoint": "/runs/mt/best", "weights": "teacher"})]
    table = rows(summarize([read_run(str(p)) for p in runs]))
    assert sorted(cells[0] for cells in table.values()) == ["1, 2", "3", "4"], table
    assert any("/runs/mt/best (teacher)" in label for label in table), table


def test_a_setting_without_effect_in_its_run_makes_no_other_recipe(tmp_path):
    """The run noted each of these as doing nothing when it was given: epochs beside
    max_steps, SMART knobs with SMART off, a temperature for the proportional sampler."""
    runs = [write_run(tmp_path / "p1", 1, {"rte": 0.60}, max_steps=20),
            write_run(tmp_path / "p2", 2, {"rte": 0.50}, max_steps=20, epochs=7.0,
                      **{"smart.epsilon": 0.5, "smart.prox_weight": 2.0, "sampler.temperature": 9.0,
                         "eval_teacher": False}),
            write_run(tmp_path / "f1", 1, {"rte": 0.62}, mode="full", max_steps=20),
            write_run(tmp_path / "f2", 2, {"rte": 0.64}, mode="full", max_steps=20, **{"smart.epsilon": 0.5})]
    table = rows(summarize([read_run(str(p)) for p in runs]))
    # one recipe, two seeds, and no knob it never used in its label; with SMART on, ε is a recipe of its own
    assert table == {"smart.mode=off": ["1, 2", f"55.00 ± {stdev([60.0, 50.0]):.2f} [60.00, 50.00]"],
                     "smart.epsilon=0.01, smart.mode=full": ["1", "62.00 [62.00]"],
                     "smart.epsilon=0.5, smart.mode=full": ["2", "64.00 [64.00]"]}
    # a task whose own block runs the term gives the run-wide knob an effect again
    own = [write_run(tmp_path / "o1", 1, {"rte": 0.6}, tasks={"rte": {"type": "classification",
                                                                     "smart": {"mode": "adversarial"}}}),
           write_run(tmp_path / "o2", 2, {"rte": 0.6}, tasks={"rte": {"type": "classification",
                                                                     "smart": {"mode": "adversarial"}}},
                     **{"smart.epsilon": 0.5})]
    assert len(rows(summarize([read_run(str(p)) for p in own]))) == 2



@pytest.mark.parametrize("change", [
    {"text_fields": ["sentence2"]},  # a hypothesis-only baseline reads other input
    {"label_field": "other_label"},
    {"head_dropout": 0.3}, {"loss_weight": 2.0}, {"sampling_weight": 0.5}, {"class_weights": [1.0, 3.0]},
    {"splits": {"train": {"path": "other_train.tsv"}, "dev": {"path": "d.tsv"}}},
])
def test_a_task_read_or_trained_otherwise_is_another_recipe(tmp_path, change):
    rte = {"type": "classification", "text_fields": ["sentence1", "sentence2"], "label_field": "label",
           "labels": ["no", "yes"], "max_length": 128, "metrics": ["accuracy"],
           "splits": {"train": {"path": "t.tsv"}, "dev": {"path": "d.tsv"}}}
    runs = [write_run(tmp_path / "a", 1, {"rte": 0.60}, tasks={"rte": rte}),
            write_run(tmp_path / "b", 2, {"rte": 0.50}, tasks={"rte": {**rte, **change}})]
    assert len(rows(summarize([read_run(str(p)) for p in runs]))) == 2


def test_the_evaluation_cadence_is_part_of_a_recipe(tmp_path):
    """It decides which evaluation is best and where patience counts (summary.NOT_RECIPE)."""
    runs = [write_run(tmp_path / "a", 1, {"rte": 0.60}), write_run(tmp_path / "b", 2, {"rte": 0.50}, eval_every=5)]
    table = summarize([read_run(str(p)) for p in runs])
    assert len(rows(table)) == 2 and "eval_every=5" in table
