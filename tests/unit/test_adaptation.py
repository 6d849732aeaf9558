"""adaptation.py without training: what makes a recipe, and the table of a grid."""

from __future__ import annotations

from dataclasses import replace

import pytest

from mtsmart.adaptation import recipe_fingerprint, recipe_settings, write_table
from mtsmart.config import TrainConfig
from mtsmart.tasks import parse_task

TASK = parse_task("scitail", {"type": "classification", "text_fields": ["a", "b"], "label_field": "label",
                              "labels": ["entails", "neutral"], "splits": {"train": "t.tsv", "dev": "d.tsv"}},
                  "t.yaml")


def fingerprint(task=TASK, min_steps=10, **training) -> str:
    return recipe_fingerprint(recipe_settings(task, TrainConfig(**training), min_steps))


@pytest.mark.parametrize("change", [{"batch_size": 8}, {"min_steps": 20}, {"max_length": 64}])
def test_what_a_run_learns_from_changes_the_recipe(change):
    """A second adapt into the same folder with another batch size, minimum of steps or
    task length must be refused, not appended to the first one's results.csv."""
    min_steps = change.pop("min_steps", 10)
    task = replace(TASK, max_length=change.pop("max_length")) if "max_length" in change else TASK
    assert fingerprint(task, min_steps, **change) != fingerprint()


@pytest.mark.parametrize("change", [{"seed": 7}, {"num_threads": 1}, {"encoder": "elsewhere"}])
def test_what_only_runs_a_grid_leaves_the_recipe_alone(change):
    assert fingerprint(**change) == fingerprint()


def test_the_table_gives_sample_std_over_seeds_and_sizes_in_order(tmp_path):
    rows = [{"start": "mt", "n_train": 100, "accuracy": 0.5}, {"start": "mt", "n_train": 100, "accuracy": 0.6},
            {"start": "mt", "n_train": 10, "accuracy": 0.4}]  # a later run added the smaller size
    write_table(str(tmp_path / "table.md"), rows, TASK)
    lines = (tmp_path / "table.md").read_text().splitlines()
    assert lines[2] == "| start | n=10 | n=100 |"
    assert lines[4] == "| mt | 40.00 (1 seed) | 55.00 ± 7.07 |"  # the sample std: 0.0707, not 0.05
