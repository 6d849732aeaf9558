"""Scalars to TensorBoard and evaluation results to JSON lines.

Must not import the trainer or the CLI.
"""

from __future__ import annotations

import json
import os
import time
from typing import Mapping, Optional, Sequence

from mtsmart.atomic_files import replacing


class MetricLogger:
    """TensorBoard scalars under ``log_dir`` (None writes nothing: non-zero ranks)."""

    def __init__(self, log_dir: Optional[str], purge_step: Optional[int] = None):
        """``purge_step``: a resumed run's first new step. TensorBoard then drops what the
        interrupted run logged from that step on, so no curve doubles back on itself."""
        self.writer = None
        if log_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            if purge_step is not None:
                _wait_for_a_later_second(log_dir)
            self.writer = SummaryWriter(log_dir=log_dir, purge_step=purge_step)

    def log_dict(self, scalars: Mapping[str, float], step: int) -> None:
        if self.writer is None:
            return
        for tag, value in scalars.items():
            if value is not None:
                self.writer.add_scalar(tag, float(value), step)

    def log_hparams(self, settings: Mapping[str, object], metric_tags: Sequence[str]) -> None:
        """The run's settings (flat name → number, string or boolean) for TensorBoard's
        HParams tab, where runs side by side (plain against SMART, seed against seed) are a
        table of settings and metrics. The metrics are the scalar tags this logger writes
        anyway; the tab reads their values."""
        if self.writer is None:
            return
        from torch.utils.tensorboard.summary import hparams

        experiment, session_start, _ = hparams(dict(settings), {tag: 0.0 for tag in metric_tags})
        for summary in (experiment, session_start):
            self.writer.file_writer.add_summary(summary)

    def log_hparams_end(self) -> None:
        """Marks the session finished; a run that died shows no end in the HParams tab."""
        if self.writer is None:
            return
        from torch.utils.tensorboard.summary import hparams

        self.writer.file_writer.add_summary(hparams({}, {})[2])

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def append_json_line(path: str, record: Mapping) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record, sort_keys=True) + "\n")


def _wait_for_a_later_second(log_dir: str) -> None:
    """TensorBoard reads a run's event files in name order, and a name starts with the
    second its file was created (then host and process id). A resumed run's file must sort
    after the interrupted run's, or TensorBoard meets its purge of the repeated steps before
    the steps themselves: a resume within a second of the interrupted run's start waits."""
    seconds = []
    for name in os.listdir(log_dir) if os.path.isdir(log_dir) else []:
        parts = name.split(".")
        if name.startswith("events.out.tfevents.") and len(parts) > 3 and parts[3].isdigit():
            seconds.append(int(parts[3]))
    while seconds and time.time() < max(seconds) + 1:
        time.sleep(0.05)


def drop_records_after(path: str, step: int) -> None:
    """Rewrite a JSON-lines log without its records past ``global_step`` = ``step`` and
    without a line that a crash cut short: a resumed run logs those steps again."""
    if not os.path.isfile(path):
        return
    kept = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("global_step", 0) <= step:
                kept.append(json.dumps(record, sort_keys=True) + "\n")
    with replacing(path) as handle:
        handle.writelines(kept)


def write_json(path: str, record) -> None:
    """Write atomically, so a reader never sees half a file; its folder is made if need be."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with replacing(path) as handle:
        json.dump(record, handle, indent=2, sort_keys=True)
        handle.write("\n")
