"""Every shipped task-definition file loads and validates."""

from __future__ import annotations

from pathlib import Path

import pytest

from mtsmart.tasks import FileSource, load_task_file

REPO = Path(__file__).resolve().parents[1]
TASK_DEFS = sorted((REPO / "task_defs").glob("*.yaml"))
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def test_there_are_task_files():
    assert TASK_DEFS, "no task_defs/*.yaml found"


@pytest.mark.parametrize("path", TASK_DEFS, ids=lambda p: p.name)
def test_task_file_loads(path):
    tf = load_task_file(str(path))
    assert tf.tasks
    for name, task in tf.tasks.items():
        assert task.name == name and task.defined_in == str(path)
        assert task.train_split in task.splits, f"{name}: no split {task.train_split!r}"
        assert task.eval_split in task.splits, f"{name}: no split {task.eval_split!r}"
        assert task.selection_metric in task.metrics
        task.smart_config(tf.training.smart)  # per-task overrides are valid
    if tf.training.select_metric != "average":
        task, _, metric = tf.training.select_metric.partition("/")
        assert metric in tf.tasks[task].metrics


@pytest.mark.parametrize("path", TASK_DEFS, ids=lambda p: p.name)
def test_task_file_data_paths_exist(path):
    if not (SHARED_DATA / "glue").is_dir():
        pytest.skip(f"no GLUE files in {SHARED_DATA}")
    tf = load_task_file(str(path))
    for task in tf.tasks.values():
        for split, src in task.splits.items():
            if isinstance(src, FileSource):
                assert (SHARED_DATA / src.path).is_file(), f"{task.name}/{split}: {src.path}"
