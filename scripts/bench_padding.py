"""S2 (part): how much padding do length-grouped batches save? Counts real and padded
tokens of one epoch of each task's training split, random vs length-grouped batches
(the same function the trainer uses), with the encoder's tokenizer. No model is run.

    python scripts/bench_padding.py [--tasks rte,mrpc,stsb,cola,sst2] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from transformers import AutoTokenizer  # noqa: E402

from mtsmart.data import default_cache_dir, epoch_batches, load_tokenized, padding_stats  # noqa: E402
from mtsmart.tasks import load_task_file  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MTSMART_SHARED", REPO.parent / "shared"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task-file", default=str(REPO / "task_defs" / "glue.yaml"))
    parser.add_argument("--tasks", default="rte,mrpc,stsb,cola,sst2")
    parser.add_argument("--encoder", default=str(SHARED / "models" / "all-MiniLM-L6-v2"))
    parser.add_argument("--data-dir", default=str(SHARED / "data"))
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seeds", default="1,2,3")
    args = parser.parse_args()
    tokenizer = AutoTokenizer.from_pretrained(args.encoder)
    tasks = load_task_file(args.task_file).tasks
    print(f"{'task':<6} {'examples':>8} {'mean len':>8} {'random: padded/real':>20} "
          f"{'grouped: padded/real':>21} {'pad tokens saved':>17}")
    for name in args.tasks.split(","):
        split = load_tokenized(tasks[name], "train", tokenizer, args.data_dir, default_cache_dir())
        lengths = split.lengths
        stats = {}
        for grouped in (False, True):
            real = padded = 0
            for seed in map(int, args.seeds.split(",")):
                r, p = padding_stats(lengths, epoch_batches(lengths, args.batch_size, seed, 0, grouped))
                real, padded = real + r, padded + p
            stats[grouped] = (real, padded)
        (real, rand_padded), (_, grouped_padded) = stats[False], stats[True]
        saved = (rand_padded - real) / max(grouped_padded - real, 1)
        print(f"{name:<6} {len(lengths):>8} {lengths.mean():>8.1f} {rand_padded / real:>20.2f} "
              f"{grouped_padded / real:>21.2f} {saved:>16.1f}x")


if __name__ == "__main__":
    main()
