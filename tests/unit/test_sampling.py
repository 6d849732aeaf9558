"""sampling.py: task probabilities and the resumable task sampler."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from mtsmart.config import SamplerConfig
from mtsmart.errors import ConfigError
from mtsmart.sampling import TaskSampler, task_probabilities

NAMES = ["big", "mid", "small"]
SIZES = [600, 300, 100]


def frequencies(draws: list[str], names=NAMES) -> np.ndarray:
    counts = Counter(draws)
    return np.array([counts[n] for n in names], dtype=float) / len(draws)


def sampler(name="proportional", sizes=SIZES, weights=(1, 1, 1), seed=0, total=10_000, **cfg):
    return TaskSampler(NAMES, sizes, list(weights), SamplerConfig(name=name, **cfg), seed, total)


def draw(s: TaskSampler, n: int) -> list[str]:
    return [s.next_task() for _ in range(n)]


# ----------------------------------------------------------------------------- probabilities


@pytest.mark.parametrize("name, weights, expected", [
    ("proportional", [1, 1, 1], [0.6, 0.3, 0.1]),
    ("proportional", [1, 2, 0], [600 / 1200, 600 / 1200, 0.0]),
    ("uniform", [1, 1, 1], [1 / 3, 1 / 3, 1 / 3]),
    ("uniform", [2, 1, 1], [0.5, 0.25, 0.25]),
])
def test_probabilities_by_hand(name, weights, expected):
    p = task_probabilities(SIZES, weights, SamplerConfig(name=name))
    assert np.allclose(p, expected)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0, 5.0])
def test_temperature_probabilities(temperature):
    p = task_probabilities(SIZES, [1, 1, 1], SamplerConfig(name="temperature", temperature=temperature))
    hand = np.array(SIZES, float) ** (1 / temperature)
    assert np.allclose(p, hand / hand.sum())


def test_annealed_probabilities_move_from_proportional_to_uniform():
    cfg = SamplerConfig(name="annealed", anneal_final_alpha=0.0)
    assert np.allclose(task_probabilities(SIZES, [1, 1, 1], cfg, 0.0), [0.6, 0.3, 0.1])
    assert np.allclose(task_probabilities(SIZES, [1, 1, 1], cfg, 1.0), [1 / 3] * 3)
    half = np.sqrt(SIZES)
    assert np.allclose(task_probabilities(SIZES, [1, 1, 1], cfg, 0.5), half / half.sum())
    # progress is clamped
    assert np.allclose(task_probabilities(SIZES, [1, 1, 1], cfg, 7.0), [1 / 3] * 3)


@pytest.mark.parametrize("name", ["proportional", "temperature", "uniform", "annealed"])
def test_all_zero_weights_raise(name):
    with pytest.raises(ConfigError, match="sampling_weight"):
        task_probabilities(SIZES, [0, 0, 0], SamplerConfig(name=name))
    with pytest.raises(ConfigError, match="sampling_weight"):
        sampler(name, weights=(0, 0, 0))


# ----------------------------------------------------------------------------- empirical draws


@pytest.mark.parametrize("name, cfg", [
    ("proportional", {}),
    ("temperature", {"temperature": 2.0}),
    ("temperature", {"temperature": 3.0}),
    ("uniform", {}),
])
def test_empirical_frequencies_match(name, cfg):
    s = sampler(name, seed=11, **cfg)
    freq = frequencies(draw(s, 8000))
    if name == "proportional":
        hand = np.array(SIZES, float)
    elif name == "temperature":
        hand = np.array(SIZES, float) ** (1 / cfg["temperature"])
    else:
        hand = np.ones(3)
    assert np.allclose(freq, hand / hand.sum(), atol=0.02), freq


def test_annealed_early_near_proportional_late_near_uniform():
    total = 6000
    s = sampler("annealed", seed=3, total=total, anneal_final_alpha=0.0)
    draws = draw(s, total)
    early = frequencies(draws[:1000])
    late = frequencies(draws[-1000:])
    cfg = s.cfg
    expect_early = np.mean([task_probabilities(SIZES, [1, 1, 1], cfg, i / (total - 1)) for i in range(1000)], axis=0)
    expect_late = np.mean([task_probabilities(SIZES, [1, 1, 1], cfg, i / (total - 1))
                           for i in range(total - 1000, total)], axis=0)
    assert np.allclose(early, expect_early, atol=0.05), early
    assert np.allclose(late, expect_late, atol=0.05), late
    assert early[0] > 0.5 and abs(late[0] - 1 / 3) < 0.06
    assert late[2] > 2 * early[2]


def test_proportional_gives_exact_counts_per_sampler_epoch():
    s = sampler("proportional", seed=5)
    for _ in range(3):
        assert Counter(draw(s, sum(SIZES))) == dict(zip(NAMES, SIZES))


def test_proportional_counts_with_weights_sum_to_the_epoch():
    sizes, weights = [7, 5, 3], [1.0, 2.0, 0.5]
    s = TaskSampler(NAMES, sizes, weights, SamplerConfig(), seed=1, total_draws=100)
    counts = Counter(draw(s, sum(sizes)))
    p = np.array(sizes) * np.array(weights)
    ideal = p / p.sum() * sum(sizes)
    got = np.array([counts[n] for n in NAMES])
    assert got.sum() == sum(sizes)
    assert np.all(np.abs(got - ideal) < 1)


def test_same_seed_same_sequence_different_seed_different():
    for name in ("proportional", "temperature", "annealed"):
        a = draw(sampler(name, seed=1), 500)
        assert a == draw(sampler(name, seed=1), 500)
        assert a != draw(sampler(name, seed=2), 500)


def test_epochs_are_shuffled_differently():
    s = sampler("proportional", sizes=[5, 5, 5], seed=0)
    assert draw(s, 15) != draw(s, 15)


@pytest.mark.parametrize("name", ["proportional", "temperature", "uniform", "annealed"])
@pytest.mark.parametrize("stop", [0, 1, 999, 1000, 1377])
def test_resumed_sampler_continues_identically(name, stop):
    original = sampler(name, seed=9, total=3000)
    draw(original, stop)
    state = original.state_dict()
    expected = draw(original, 700)
    resumed = sampler(name, seed=9, total=3000)
    draw(resumed, 3)  # a different position and cached epoch before the restore
    resumed.load_state_dict(state)
    assert draw(resumed, 700) == expected


def test_resume_with_other_tasks_is_refused():
    state = sampler().state_dict()
    other = TaskSampler(["a", "b", "c"], SIZES, [1, 1, 1], SamplerConfig(), 0, 10)
    with pytest.raises(ConfigError, match="tasks"):
        other.load_state_dict(state)


@pytest.mark.parametrize("name", ["proportional", "temperature", "uniform", "annealed"])
@pytest.mark.parametrize("zero", [0, 1, 2])
def test_zero_weight_task_is_never_drawn(name, zero):
    weights = [1.0, 1.0, 1.0]
    weights[zero] = 0.0
    draws = draw(sampler(name, weights=weights, seed=4, total=3000), 3000)
    assert NAMES[zero] not in draws
    assert set(draws) == set(NAMES) - {NAMES[zero]}


def test_resuming_with_another_seed_is_refused():
    from mtsmart.config import SamplerConfig
    from mtsmart.errors import ConfigError
    from mtsmart.sampling import TaskSampler

    first = TaskSampler(["a", "b"], [3, 5], [1.0, 1.0], SamplerConfig(), seed=1, total_draws=16)
    first.next_task()
    other = TaskSampler(["a", "b"], [3, 5], [1.0, 1.0], SamplerConfig(), seed=2, total_draws=16)
    with pytest.raises(ConfigError, match="same --seed"):
        other.load_state_dict(first.state_dict())


def test_zero_weight_tasks_do_not_lengthen_the_epoch():
    from mtsmart.config import SamplerConfig
    from mtsmart.sampling import TaskSampler

    sampler = TaskSampler(["a", "b"], [3, 5], [1.0, 0.0], SamplerConfig(), seed=1, total_draws=6)
    assert sampler.draws_per_epoch == 3
    assert {sampler.next_task() for _ in range(6)} == {"a"}


def test_temperature_scales_size_times_weight():
    """The weight multiplies the size before the temperature flattens it (with weights of
    one, (n·w)^(1/T) and n^(1/T)·w agree)."""
    probs = task_probabilities([600, 300, 100], [1, 2, 4], SamplerConfig(name="temperature", temperature=2.0))
    by_hand = (np.array([600, 300, 100.0]) * [1, 2, 4]) ** 0.5
    assert np.allclose(probs, by_hand / by_hand.sum())


def test_an_epochs_leftover_draws_go_to_the_largest_remainders():
    s = TaskSampler(["a", "b", "c"], [7, 5, 3], [1.0, 2.0, 0.5], SamplerConfig(), seed=1, total_draws=100)
    counts = Counter(s.next_task() for _ in range(15))
    # ideal shares of the 15 draws: 5.68, 8.11, 1.22; the one left over goes to 'a'
    assert [counts[n] for n in "abc"] == [6, 8, 1]


def test_the_annealed_schedule_runs_from_its_start_to_its_end_over_the_draws(monkeypatch):
    """Progress 0 at the first draw and exactly 1 at the last: the final distribution is
    used, not one draw short of it."""
    import mtsmart.sampling as sampling

    seen = []
    real = sampling.task_probabilities

    def recorded(sizes, weights, cfg, progress=0.0):
        seen.append(progress)
        return real(sizes, weights, cfg, progress)

    monkeypatch.setattr(sampling, "task_probabilities", recorded)
    s = sampler("annealed", seed=1, total=sum(SIZES), anneal_final_alpha=0.0)
    draw(s, sum(SIZES))
    progress = seen[1:]  # the first call validates the weights
    assert len(progress) == sum(SIZES) and progress[0] == 0.0 and progress[-1] == 1.0
