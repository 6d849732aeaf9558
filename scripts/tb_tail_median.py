"""Median of a TensorBoard scalar over the last third of its logged steps, per run.

    python scripts/tb_tail_median.py adv_loss runs/q1/smart-v1-eps0.01/rte-full-s1 ...

The tag is matched by its ending (``adv_loss`` finds ``train/rte/adv_loss``)."""

from __future__ import annotations

import statistics
import sys

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def main(suffix: str, runs: list[str]) -> None:
    for run in runs:
        events = EventAccumulator(f"{run}/tensorboard", size_guidance={"scalars": 0})
        events.Reload()
        for tag in (t for t in events.Tags()["scalars"] if t.endswith(suffix)):
            values = [e.value for e in events.Scalars(tag)]
            tail = values[-max(1, len(values) // 3):]
            print(f"{run}  {tag}  {statistics.median(tail):.4g}  (last {len(tail)} of {len(values)})")


if __name__ == "__main__":
    if len(sys.argv) < 3:
        raise SystemExit("usage: tb_tail_median.py TAG_SUFFIX RUN_DIR...")
    main(sys.argv[1], sys.argv[2:])
