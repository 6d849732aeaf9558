"""metrics.py: every metric equals scikit-learn / scipy; degenerate inputs give numbers."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from mtsmart import metrics


@pytest.fixture(params=[0, 1, 2])
def rng(request):
    return np.random.default_rng(request.param)


def binary(rng, n=200):
    targets = rng.integers(0, 2, n)
    preds = np.where(rng.random(n) < 0.7, targets, 1 - targets)
    return preds, targets


def test_accuracy(rng):
    preds, targets = binary(rng)
    assert metrics.accuracy(preds, targets) == pytest.approx(accuracy_score(targets, preds))
    assert metrics.accuracy(targets, targets) == 1.0


def test_binary_f1_is_f1_of_class_one(rng):
    preds, targets = binary(rng)
    expected = f1_score(targets, preds, average="binary", pos_label=1)
    assert metrics.f1(preds, targets) == pytest.approx(expected)
    # the F1 of class 1: not of class 0 (2/3), not macro (11/15)
    assert metrics.f1(np.array([1, 0, 1, 0]), np.array([1, 1, 1, 0])) == pytest.approx(0.8)


def test_multiclass_f1_is_macro(rng):
    targets = rng.integers(0, 3, 150)
    preds = np.where(rng.random(150) < 0.6, targets, rng.integers(0, 3, 150))
    assert metrics.f1(preds, targets) == pytest.approx(f1_score(targets, preds, average="macro"))


def test_mcc(rng):
    preds, targets = binary(rng)
    assert metrics.mcc(preds, targets) == pytest.approx(matthews_corrcoef(targets, preds))


def test_acc_and_f1(rng):
    preds, targets = binary(rng)
    expected = (accuracy_score(targets, preds) + f1_score(targets, preds)) / 2
    assert metrics.acc_and_f1(preds, targets) == pytest.approx(expected)


def regression(rng, n=120):
    targets = rng.uniform(0, 5, n)
    preds = targets + rng.normal(0, 1.5, n)
    return preds, targets


def test_pearson(rng):
    preds, targets = regression(rng)
    assert metrics.pearson(preds, targets) == pytest.approx(pearsonr(preds, targets)[0])


def test_spearman(rng):
    preds, targets = regression(rng)
    preds = np.round(preds)  # ties
    assert metrics.spearman(preds, targets) == pytest.approx(spearmanr(preds, targets)[0])


def test_pearson_and_spearman(rng):
    preds, targets = regression(rng)
    expected = (pearsonr(preds, targets)[0] + spearmanr(preds, targets)[0]) / 2
    assert metrics.pearson_and_spearman(preds, targets) == pytest.approx(expected)


def test_float32_inputs():
    rng = np.random.default_rng(0)
    preds, targets = regression(rng)
    value = metrics.pearson(preds.astype(np.float32), targets.astype(np.float32))
    assert value == pytest.approx(pearsonr(preds, targets)[0], abs=1e-5)
    assert type(value) is float


@pytest.mark.parametrize("fn", [metrics.pearson, metrics.spearman, metrics.pearson_and_spearman])
def test_constant_predictions_give_zero_not_nan(fn):
    targets = np.linspace(0, 5, 50)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no ConstantInputWarning either
        assert fn(np.full(50, 2.5), targets) == 0.0
        assert fn(targets, np.full(50, 1.0)) == 0.0


def test_constant_classification_predictions():
    targets = np.array([0, 1, 1, 0, 1])
    preds = np.zeros(5, dtype=int)
    assert metrics.mcc(preds, targets) == 0.0
    assert metrics.f1(preds, targets) == 0.0
    assert not math.isnan(metrics.acc_and_f1(preds, targets))


def test_compute_metrics_and_tables():
    preds, targets = np.array([0, 1, 1]), np.array([0, 1, 0])
    out = metrics.compute_metrics(("accuracy", "f1"), metrics.CLASSIFICATION_METRICS, preds, targets)
    assert out == {"accuracy": pytest.approx(2 / 3), "f1": pytest.approx(2 / 3)}
    assert set(metrics.CLASSIFICATION_METRICS) == {"accuracy", "f1", "mcc", "acc_and_f1"}
    assert set(metrics.REGRESSION_METRICS) == {"pearson", "spearman", "pearson_and_spearman"}


def _task(kind: str, metrics_: tuple[str, ...]):
    from mtsmart.tasks import TaskDef

    if kind == "classification":
        return TaskDef(name="t", type=kind, text_fields=("a",), splits={}, label_field="y",
                       labels=("no", "yes"), metrics=metrics_)
    return TaskDef(name="t", type=kind, text_fields=("a",), splits={}, target_field="y", metrics=metrics_)


def test_bootstrap_interval_brackets_the_score_and_narrows_with_more_examples():
    from mtsmart.evaluation import bootstrap_intervals

    task = _task("classification", ("accuracy", "mcc"))
    gen = np.random.default_rng(3)
    targets = gen.integers(0, 2, 300)
    preds = np.where(gen.random(300) < 0.7, targets, 1 - targets)  # about 70% right
    small = bootstrap_intervals(task, preds, targets, resamples=400)
    assert small == bootstrap_intervals(task, preds, targets, resamples=400)  # seeded: reproducible
    for metric, (low, high) in small.items():
        point = task.task_type.compute_metrics((metric,), preds, targets)[metric]
        assert low < point < high, metric
    # a 95% interval of accuracy is about ±1.96·sqrt(p(1-p)/n)
    expected = 2 * 1.96 * math.sqrt(0.7 * 0.3 / 300)
    assert 0.7 * expected < small["accuracy"][1] - small["accuracy"][0] < 1.3 * expected
    large = bootstrap_intervals(task, np.tile(preds, 4), np.tile(targets, 4), resamples=400)
    assert large["accuracy"][1] - large["accuracy"][0] < 0.7 * (small["accuracy"][1] - small["accuracy"][0])
    assert bootstrap_intervals(task, targets, targets, resamples=50)["accuracy"] == (1.0, 1.0)


def test_bootstrap_interval_of_a_regression_metric():
    from mtsmart.evaluation import bootstrap_intervals

    gen = np.random.default_rng(4)
    targets = gen.normal(size=200)
    preds = targets + gen.normal(scale=0.5, size=200)
    low, high = bootstrap_intervals(_task("regression", ("pearson",)), preds, targets, resamples=300)["pearson"]
    assert low < pearsonr(preds, targets)[0] < high < 1.0


def test_paired_bootstrap_sees_a_real_gain_and_pairs_the_examples():
    from mtsmart.evaluation import bootstrap_intervals, paired_bootstrap

    task = _task("classification", ("accuracy",))
    gen = np.random.default_rng(5)
    targets = gen.integers(0, 2, 300)
    preds_a = np.where(gen.random(300) < 0.7, targets, 1 - targets)
    preds_b = preds_a.copy()
    wrong = np.flatnonzero(preds_a != targets)
    preds_b[wrong[: len(wrong) // 4]] = targets[wrong[: len(wrong) // 4]]  # B fixes a quarter of A's errors
    r = paired_bootstrap(task, preds_a, preds_b, targets, resamples=400)["accuracy"]
    assert r["b_minus_a"] == pytest.approx(np.mean(preds_b == targets) - np.mean(preds_a == targets))
    assert 0 < r["low"] < r["b_minus_a"] < r["high"] and r["p_b_not_better"] < 0.01
    # paired, the gap's interval is far narrower than either score's own
    own = bootstrap_intervals(task, preds_a, targets, resamples=400)["accuracy"]
    assert r["high"] - r["low"] < 0.75 * (own[1] - own[0])
    swapped = paired_bootstrap(task, preds_b, preds_a, targets, resamples=400)["accuracy"]
    assert swapped["p_b_not_better"] > 0.99


def test_f1_averages_by_the_tasks_labels_not_by_the_classes_a_split_holds():
    """A three-label task whose split (or bootstrap resample) holds only labels 0 and 1 is
    still scored with macro F1, as on its full dev set; a two-label task stays binary."""
    from dataclasses import replace

    from mtsmart.evaluation import score

    targets = np.array([0, 0, 1, 1, 1, 0, 1, 0])
    preds = np.array([0, 1, 1, 1, 0, 0, 1, 1])
    three = replace(_task("classification", ("f1", "acc_and_f1")), labels=("a", "b", "c"))
    scores = score(three, preds, targets)
    macro = f1_score(targets, preds, average="macro")
    assert macro != pytest.approx(f1_score(targets, preds))  # the two averages differ here
    assert scores["f1"] == pytest.approx(macro)
    assert scores["acc_and_f1"] == pytest.approx((accuracy_score(targets, preds) + macro) / 2)
    two = _task("classification", ("f1",))
    assert score(two, preds, targets)["f1"] == pytest.approx(f1_score(targets, preds))


def test_mcc_keeps_its_sign():
    targets = np.array([0, 1, 1, 0, 1, 0])
    assert metrics.mcc(1 - targets, targets) == pytest.approx(-1.0)
    assert metrics.mcc(targets, targets) == pytest.approx(1.0)


def test_identical_predictions_are_not_called_better():
    from mtsmart.evaluation import paired_bootstrap

    gen = np.random.default_rng(0)
    targets = gen.integers(0, 2, 100)
    preds = np.where(gen.random(100) < 0.7, targets, 1 - targets)
    result = paired_bootstrap(_task("classification", ("accuracy",)), preds, preds, targets, resamples=50)
    assert result["accuracy"]["p_b_not_better"] == 1.0


def test_the_interval_is_the_central_level_of_the_resampled_scores():
    from mtsmart.evaluation import _resampled_metrics, bootstrap_intervals

    task = _task("classification", ("accuracy",))
    gen = np.random.default_rng(0)
    targets = gen.integers(0, 2, 200)
    preds = np.where(gen.random(200) < 0.7, targets, 1 - targets)
    (draws,) = _resampled_metrics(task, [preds], targets, 300, 0)
    low, high = bootstrap_intervals(task, preds, targets, resamples=300, level=0.9)["accuracy"]
    assert (low, high) == pytest.approx(tuple(np.percentile(draws["accuracy"], [5, 95])))


def test_average_selection_uses_each_tasks_main_metric():
    from mtsmart.evaluation import selection_score
    from mtsmart.tasks import TaskDef

    task = TaskDef(name="t", type="classification", text_fields=("a",), splits={}, label_field="y",
                   labels=("no", "yes"), metrics=("accuracy", "f1"), main_metric="f1")
    assert selection_score({"t": {"accuracy": 0.9, "f1": 0.5}}, {"t": task}, "average") == 0.5


class _LengthModel(torch.nn.Module):
    """Predicts each example's own length, and records whether autocast was on."""

    def __init__(self):
        super().__init__()
        self.autocast_seen = []

    def forward_batch(self, task, batch):
        self.autocast_seen.append(torch.is_autocast_enabled("cpu"))
        return batch["attention_mask"].sum(1, keepdim=True).float()


def test_predictions_come_back_in_file_order_in_full_precision_and_training_mode_is_restored():
    from mtsmart.data import TokenizedSplit
    from mtsmart.evaluation import predict_split

    lengths = np.array([3, 7, 2, 9, 5, 4, 8, 1])  # eval batches are length-sorted, so out of order
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    split = TokenizedSplit(input_ids=np.arange(5, 5 + offsets[-1]).astype(np.int32), token_type_ids=None,
                           offsets=offsets, targets=np.zeros(len(lengths), np.float32),
                           lines=np.arange(len(lengths)) + 2)
    model = _LengthModel().train()
    preds = predict_split(model, _task("regression", ("pearson",)), split, batch_size=3, pad_token_id=0)
    assert preds.tolist() == lengths.astype(float).tolist()
    assert model.autocast_seen and not any(model.autocast_seen)
    assert model.training


def test_tables_follow_the_task_definitions_order_not_a_results_files_sorted_keys():
    from dataclasses import replace

    from mtsmart.evaluation import format_table

    tasks = {"rte": replace(_task("classification", ("mcc", "accuracy")), name="rte"),
             "cola": replace(_task("classification", ("mcc",)), name="cola")}
    # as a results file read back gives them: tasks and metrics by name
    results = {"cola": {"mcc": 0.25}, "rte": {"accuracy": 0.5, "mcc": 0.125}}
    table = format_table(results, tasks, {"rte": "dev", "cola": "dev"},
                         {"rte": {"accuracy": (0.4, 0.6)}}).splitlines()
    assert [line.split()[0] for line in table[2:]] == ["rte", "cola"]
    assert table[2].split()[2:] == ["mcc=12.50", "accuracy=50.00", "[40.00,", "60.00]"]


@pytest.mark.parametrize("fn", [metrics.pearson, metrics.spearman])
def test_a_nan_prediction_gives_zero_not_nan(fn):
    """np.std of such predictions is NaN, not 0, so only the result's check stops the NaN
    before it reaches model selection."""
    assert fn(np.array([1.0, np.nan, 2.0, 3.0]), np.array([1.0, 2.0, 3.0, 4.0])) == 0.0


class _ThirdsModel(_LengthModel):
    """Predicts a third of each example's length: no value half precision holds exactly."""

    def forward_batch(self, task, batch):
        return super().forward_batch(task, batch) / 3


def test_a_model_in_eval_mode_stays_in_eval_mode_and_scores_keep_full_precision():
    """The teacher and a loaded checkpoint predict in eval mode; predicting must not leave
    their dropout switched on, nor round a regression score."""
    from mtsmart.data import TokenizedSplit
    from mtsmart.evaluation import predict_split

    split = TokenizedSplit(input_ids=np.arange(5, 11).astype(np.int32), token_type_ids=None,
                           offsets=np.array([0, 2, 6], dtype=np.int64), targets=np.zeros(2, np.float32),
                           lines=np.arange(2) + 2)
    model = _ThirdsModel().eval()
    preds = predict_split(model, _task("regression", ("pearson",)), split, batch_size=1, pad_token_id=0)
    assert preds.tolist() == pytest.approx([2 / 3, 4 / 3], rel=1e-6)
    assert not model.training


def test_the_intervals_evaluate_and_compare_print_are_95_percent():
    """`evaluate --bootstrap` and `compare` label their intervals 95% and leave the level
    to these functions' defaults: a narrower default would print a 90% interval as 95%."""
    from mtsmart.evaluation import _resampled_metrics, bootstrap_intervals, paired_bootstrap

    task = _task("classification", ("accuracy",))
    gen = np.random.default_rng(1)
    targets = gen.integers(0, 2, 200)
    preds_a = np.where(gen.random(200) < 0.7, targets, 1 - targets)
    preds_b = np.where(gen.random(200) < 0.8, targets, 1 - targets)
    draws_a, draws_b = _resampled_metrics(task, [preds_a, preds_b], targets, 300, 0)
    expected = tuple(np.percentile(draws_a["accuracy"], [2.5, 97.5]))
    assert bootstrap_intervals(task, preds_a, targets, resamples=300)["accuracy"] == pytest.approx(expected)
    gaps = np.asarray(draws_b["accuracy"]) - np.asarray(draws_a["accuracy"])
    r = paired_bootstrap(task, preds_a, preds_b, targets, resamples=300)["accuracy"]
    assert (r["low"], r["high"]) == pytest.approx(tuple(np.percentile(gaps, [2.5, 97.5])))


@pytest.mark.parametrize("right", [0, 39])
def test_every_example_can_be_drawn_into_a_resample(right):
    """A model right on one example of 40 (the first or the last of the file) scores 2.5%;
    resamples that never draw that example would give an interval of [0, 0] that excludes
    its own score."""
    from mtsmart.evaluation import bootstrap_intervals

    targets = np.ones(40, dtype=int)
    preds = np.zeros(40, dtype=int)
    preds[right] = 1
    low, high = bootstrap_intervals(_task("classification", ("accuracy",)), preds, targets, resamples=200)["accuracy"]
    assert low <= 1 / 40 < high


def test_a_table_names_each_tasks_split_and_keeps_metrics_the_task_does_not_list():
    """`evaluate --split test` must not print a table that says dev; a results file that
    holds a metric the task file no longer lists still shows it, after the listed ones."""
    from dataclasses import replace

    from mtsmart.evaluation import format_table

    tasks = {"rte": replace(_task("classification", ("accuracy",)), name="rte"),
             "cola": replace(_task("classification", ("mcc",)), name="cola")}
    results = {"rte": {"f1": 0.25, "accuracy": 0.5}, "cola": {"mcc": 0.125}}
    table = format_table(results, tasks, {"rte": "test", "cola": "dev"}).splitlines()
    assert table[2].split() == ["rte", "test", "accuracy=50.00", "f1=25.00"]
    assert table[3].split() == ["cola", "dev", "mcc=12.50"]
