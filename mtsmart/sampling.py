"""Task-sampling scheduler: which task the next training batch comes from.

A pure function of (seed, draw number), so a checkpoint needs to store one integer and a
resumed run draws the same sequence. Must not import the model, data or trainer.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from mtsmart.config import SamplerConfig
from mtsmart.errors import ConfigError


def task_probabilities(sizes: Sequence[float], weights: Sequence[float], cfg: SamplerConfig,
                       progress: float = 0.0) -> np.ndarray:
    """Sampling probabilities per task.

    Args:
        sizes: n_k, the number of training batches of each task.
        weights: w_k, each task's ``sampling_weight``.
        progress: fraction of training done, in [0, 1] (used by ``annealed``).
    Returns:
        proportional: ∝ n_k·w_k; temperature: ∝ (n_k·w_k)^(1/T); uniform: ∝ w_k;
        annealed: ∝ n_k^α·w_k with α going linearly from 1 to ``anneal_final_alpha``.
    """
    n = np.asarray(sizes, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    if cfg.name == "proportional":
        scores = n * w
    elif cfg.name == "temperature":
        scores = (n * w) ** (1.0 / cfg.temperature)
    elif cfg.name == "uniform":
        scores = w.copy()
    else:  # annealed
        alpha = 1.0 + (cfg.anneal_final_alpha - 1.0) * min(max(progress, 0.0), 1.0)
        scores = n ** alpha * w
    scores[w == 0] = 0.0
    total = scores.sum()
    if total <= 0:
        raise ConfigError("every task has sampling_weight 0: no task can be trained")
    return scores / total


class TaskSampler:
    """Draws task names; one sampler epoch is ``sum(n_k)`` draws (every batch once, as in
    MT-DNN). ``proportional`` shuffles exact per-epoch counts; the others draw each step
    from the distribution at that point of training."""

    def __init__(self, names: Sequence[str], sizes: Sequence[int], weights: Sequence[float],
                 cfg: SamplerConfig, seed: int, total_draws: int):
        self.names = list(names)
        self.sizes = list(sizes)
        self.weights = list(weights)
        self.cfg = cfg
        self.seed = seed
        self.total_draws = max(int(total_draws), 1)
        # Tasks with weight 0 are never drawn, so their batches do not lengthen an epoch.
        self.draws_per_epoch = int(sum(n for n, w in zip(sizes, weights) if w > 0))
        self.draws = 0
        self._epoch_cache: tuple[int, np.ndarray] | None = None
        task_probabilities(sizes, weights, cfg)  # validates the weights early

    def _epoch_draws(self, epoch: int) -> np.ndarray:
        if self._epoch_cache is not None and self._epoch_cache[0] == epoch:
            return self._epoch_cache[1]
        rng = np.random.default_rng([self.seed, 7919, epoch])
        length = self.draws_per_epoch
        if self.cfg.name == "proportional":
            p = task_probabilities(self.sizes, self.weights, self.cfg)
            counts = np.floor(p * length).astype(np.int64)
            # Largest remainders get the leftover draws, so counts sum to the epoch length.
            leftover = length - counts.sum()
            counts[np.argsort(-(p * length - counts), kind="stable")[:leftover]] += 1
            draws = rng.permutation(np.repeat(np.arange(len(self.names)), counts))
        else:
            uniforms = rng.random(length)
            draws = np.empty(length, dtype=np.int64)
            for i, u in enumerate(uniforms):
                progress = (epoch * length + i) / max(self.total_draws - 1, 1)
                cdf = np.cumsum(task_probabilities(self.sizes, self.weights, self.cfg, progress))
                draws[i] = min(int(np.searchsorted(cdf, u, side="right")), len(cdf) - 1)
        self._epoch_cache = (epoch, draws)
        return draws

    def next_task(self) -> str:
        epoch, offset = divmod(self.draws, self.draws_per_epoch)
        index = int(self._epoch_draws(epoch)[offset])
        self.draws += 1
        return self.names[index]

    def state_dict(self) -> dict:
        return {"draws": self.draws, "seed": self.seed, "names": list(self.names)}

    def load_state_dict(self, state: dict) -> None:
        if list(state["names"]) != self.names:
            raise ConfigError(
                f"the checkpoint's sampler was built for tasks {state['names']}, "
                f"this run has {self.names}"
            )
        if int(state["seed"]) != self.seed:
            raise ConfigError(
                f"the checkpoint's sampler was seeded with {state['seed']}, this run with "
                f"{self.seed}: resume with the same --seed"
            )
        self.draws = int(state["draws"])
