"""How a classification checkpoint's dev predictions are distributed, not just scored.

    python scripts/probe_predictions.py cola runs/q1/repro/cola-plain-s1/last runs/q1/repro/cola-full-s1/last

One row per checkpoint: the share of examples predicted as each class (against the gold
share), accuracy, MCC, ROC AUC of the class-1 probability (binary tasks; it does not depend on
the decision threshold, so a model that ranks as well but is biased towards one class keeps
its AUC and loses MCC) and the mean probability of the predicted class (confidence).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import accuracy_score, matthews_corrcoef, roc_auc_score

from mtsmart.checkpoint import load_checkpoint
from mtsmart.data import default_cache_dir, eval_batches, load_tokenized

SHARED = Path(os.environ.get("MTSMART_SHARED", Path(__file__).resolve().parents[2] / "shared"))


@torch.no_grad()
def dev_probabilities(checkpoint: str, task_name: str, data_dir: str) -> tuple[np.ndarray, np.ndarray]:
    loaded = load_checkpoint(checkpoint)
    task = loaded.tasks[task_name]
    split = load_tokenized(task, task.eval_split, loaded.tokenizer, data_dir, default_cache_dir())
    loaded.model.eval()
    probs = np.zeros((len(split), len(task.labels)), dtype=np.float64)
    for batch in eval_batches(split, 64, loaded.tokenizer.pad_token_id or 0):
        logits = loaded.model.forward_batch(task_name, batch).float()
        probs[batch["index"].numpy()] = torch.softmax(logits, dim=-1).numpy()
    return probs, np.asarray(split.targets)


def main(task_name: str, checkpoints: list[str]) -> None:
    data_dir = str(SHARED / "data")
    print("| checkpoint | predicted share per class (gold) | accuracy | MCC | ROC AUC | confidence |")
    print("|---|---|---|---|---|---|")
    for checkpoint in checkpoints:
        probs, gold = dev_probabilities(checkpoint, task_name, data_dir)
        pred = probs.argmax(axis=1)
        shares = ", ".join(f"{np.mean(pred == c):.3f} ({np.mean(gold == c):.3f})"
                           for c in range(probs.shape[1]))
        auc = roc_auc_score(gold, probs[:, 1]) if probs.shape[1] == 2 else float("nan")
        confidence = probs.max(axis=1).mean()
        print(f"| {checkpoint} | {shares} | {100 * accuracy_score(gold, pred):.2f} | "
              f"{100 * matthews_corrcoef(gold, pred):.2f} | {100 * auc:.2f} | {confidence:.3f} |")


if __name__ == "__main__":
    if len(sys.argv) < 3:
        raise SystemExit("usage: probe_predictions.py TASK CHECKPOINT...")
    main(sys.argv[1], sys.argv[2:])
