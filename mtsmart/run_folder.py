"""A run's folder: its layout, its lock, and the checks before a run writes into it (a
new run's claim, what --overwrite must not delete, what --resume refuses).

    RUN/  run.json  results.json  metrics.jsonl  metrics/step-NNNNNNN.json  tensorboard/
          best/  last/  checkpoints/step-KKKKKKK/  .lock        (steps zero-padded: names sort by step)

Must not import train or cli: the dry run and the CLI check a folder without a trainer.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import shutil
import socket
from typing import IO, Optional

from mtsmart.checkpoint import (ENCODER_DIR, META_FILE, TRAINING_FILE, is_checkpoint, load_checkpoint_tasks,
                                recover_interrupted_save, recovered_save, training_around, training_within)
from mtsmart.config import RUN_ONLY_SETTINGS, TrainConfig, differences, from_mapping, load_yaml, to_plain
from mtsmart.errors import ConfigError
from mtsmart.provenance import RUN_FILE, encoder_fingerprint, read_sessions
from mtsmart.tasks import TaskDef, task_to_plain

logger = logging.getLogger(__name__)

BEST_DIR = "best"
LAST_DIR = "last"
CHECKPOINTS_DIR = "checkpoints"
RESULTS_FILE = "results.json"
EVAL_LOG_FILE = "metrics.jsonl"
EVAL_RECORDS_DIR = "metrics"  # one step-N.json per evaluation
TENSORBOARD_DIR = "tensorboard"
LOCK_FILE = ".lock"  # held (flock) by the process training into the folder, for as long as it does


def resume_checkpoint(output_dir: str) -> Optional[str]:
    """``last/`` as the recovery of a save a kill interrupted will leave it, or else the
    newest complete ``checkpoints/step-K/``; None when there is nothing to resume. Reads only."""
    last = os.path.join(output_dir, LAST_DIR)
    recovered = recovered_save(last)  # a save a kill interrupted counts as --resume will finish it
    if recovered is not None:
        return last if recovered == os.path.abspath(last) else recovered
    history = os.path.join(output_dir, CHECKPOINTS_DIR)
    complete = sorted(d for d in (os.listdir(history) if os.path.isdir(history) else [])
                      if os.path.isfile(os.path.join(history, d, META_FILE)))
    return os.path.join(history, complete[-1]) if complete else None


MAX_LISTED = 6  # differences named in a resume refusal: enough to act on, one readable line


def _described_change(key: str, before, after) -> str:
    """A task on one side only is named, not printed as its whole definition."""
    if re.fullmatch(r"tasks\.[^.]+", key):
        if after is None:
            return f"{key} was in the run, now left out"
        if before is None:
            return f"{key} was not in the run, now added"
    return f"{key} was {before!r}, now {after!r}"


def check_resume_settings(output_dir: str, training: TrainConfig, tasks: dict[str, TaskDef],
                          otherwise: str = "start a new run from the checkpoint with `mtsmart finetune`") -> None:
    """--resume continues a run as it was started. Its weights, optimizer and schedule come
    from the checkpoint, so another learning rate, encoder or length would be ignored, and
    another task or SMART setting would change the run halfway: each difference is refused
    by name rather than silently ignored or mixed in."""
    source = resume_checkpoint(output_dir)
    where = os.path.join(source, TRAINING_FILE)
    # tasks first: a task added or left out is the difference to read before any setting
    started = {"tasks": {n: task_to_plain(t) for n, t in load_checkpoint_tasks(source).items()},
               "training": to_plain(from_mapping(TrainConfig, load_yaml(where)["training"], where))}
    now = {"tasks": {n: task_to_plain(t) for n, t in tasks.items()}, "training": to_plain(training)}
    for key in RUN_ONLY_SETTINGS:
        started["training"].pop(key)
        now["training"].pop(key)
    if _same_directory(started["training"]["encoder"], now["training"]["encoder"]):
        now["training"]["encoder"] = started["training"]["encoder"]  # one folder, named two ways
    order = list(started["tasks"])
    if set(order) == set(now["tasks"]) and order != list(now["tasks"]):
        # the task sampler and the heads' optimizer state follow the run's task order
        raise ConfigError(f"{source}: --resume continues the run with its tasks in the order it trained "
                          f"them, {', '.join(order)}, not {', '.join(now['tasks'])} (give --tasks {','.join(order)})")
    changed = differences(started, now)
    if changed:
        listed = "; ".join(_described_change(*change) for change in changed[:MAX_LISTED])
        if len(changed) > MAX_LISTED:
            listed += f"; and {len(changed) - MAX_LISTED} more"
        raise ConfigError(f"{source}: --resume continues the run with the settings it started with, "
                          f"and these differ: {listed} (resume with the run's settings, or {otherwise})")


def check_resume_start(output_dir: str, checkpoint: str, weights: str) -> None:
    """A resumed fine-tuning run names the checkpoint it started from: its results record
    that checkpoint as the run's start, which summarize makes part of its recipe, so another
    checkpoint (or its other weights) would be recorded falsely."""
    sessions = read_sessions(output_dir)
    started = sessions[0].get("encoder") if sessions else None
    if not started:
        return  # a run from before run.json recorded its start
    if started.get("fingerprint") != encoder_fingerprint(os.path.join(checkpoint, ENCODER_DIR)):
        raise ConfigError(f"{output_dir}: the run started from {started['source']}, and {checkpoint}'s encoder "
                          "is another; resume with the checkpoint it started from")
    if started.get("weights", weights) != weights:  # older runs did not record it
        raise ConfigError(f"{output_dir}: the run started from the checkpoint's {started['weights']}, "
                          f"not its {weights}; resume with --weights {started['weights']}")


def _same_directory(a: str, b: str) -> bool:
    return os.path.isdir(a) and os.path.isdir(b) and os.path.samefile(a, b)


def recover_run_folder(path: str) -> None:
    """Finish or undo the checkpoint saves a kill interrupted in a run folder."""
    for name in (LAST_DIR, BEST_DIR):
        recover_interrupted_save(os.path.join(path, name))


def prepare_resume(path: str) -> None:
    """Recover the folder's interrupted saves, then refuse a folder with nothing to resume.
    (A new run's folder is claim_output_dir's.)"""
    recover_run_folder(path)
    check_output_dir(path, overwrite=False, resume=True)


def _take_lock(handle: IO[str], path: str, shared: bool = False) -> bool:
    """Lock ``handle``; False where the filesystem has no flock (nothing is prevented there)."""
    try:
        fcntl.flock(handle, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise ConfigError(f"{path}: {holder} is training into this folder; two runs would write over "
                          "each other's checkpoints and logs (wait for it, or stop it)") from None
    except OSError:
        return False
    return True


def lock_run(path: str) -> IO[str]:
    """Take the run folder's lock for this process, creating the folder; the caller keeps
    the handle open for the whole run (the lock goes with the process, however it ends).
    Raises ConfigError when another process holds it."""
    os.makedirs(path, exist_ok=True)
    handle = open(os.path.join(path, LOCK_FILE), "a+", encoding="utf-8")
    if not _take_lock(handle, path):
        logger.warning("%s: its filesystem cannot lock files; nothing stops a second run from "
                       "training into the same folder", path)
    handle.seek(0)
    handle.truncate()
    handle.write(f"mtsmart (pid {os.getpid()} on {socket.gethostname()})")
    handle.flush()
    return handle


def check_not_in_use(path: str) -> None:
    """Refuse a run folder another process is training into (its lock is held). A shared
    lock, held for an instant, and nothing written: only a test."""
    lock_path = os.path.join(path, LOCK_FILE)
    if os.path.isfile(lock_path):
        with open(lock_path, encoding="utf-8") as handle:
            _take_lock(handle, path, shared=True)


def claim_output_dir(path: str, overwrite: bool) -> IO[str]:
    """A new run's folder: locked first, then emptied of an earlier run (with --overwrite;
    the lock file stays, so the folder is never unlocked while it is cleared)."""
    check_output_dir(path, overwrite, resume=False)
    lock = lock_run(path)
    for name in set(os.listdir(path)) - {LOCK_FILE}:
        target = os.path.join(path, name)
        if os.path.isdir(target) and not os.path.islink(target):
            shutil.rmtree(target)
        else:
            os.remove(target)
    return lock


def check_output_dir(path: str, overwrite: bool, resume: bool) -> None:
    """The refusals of prepare_resume and claim_output_dir, touching nothing (what --dry-run
    checks)."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise ConfigError(f"{path}: a file, not a folder (--output names the folder the run writes)")
    if resume:
        if resume_checkpoint(path) is None and is_checkpoint(path):
            raise ConfigError(f"{path}: a checkpoint; --output names the run folder that holds it "
                              f"({os.path.dirname(os.path.abspath(path))}), and --resume continues from its last/")
        if resume_checkpoint(path) is None:
            started = os.path.isfile(os.path.join(path, RUN_FILE))
            raise ConfigError(f"{path}: nothing to resume (no '{LAST_DIR}' checkpoint" +
                              ("; the run stopped before its first one: start it again with --overwrite)"
                               if started else ")"))
    elif os.path.isdir(path) and set(os.listdir(path)) - {LOCK_FILE}:
        if not overwrite:
            raise ConfigError(f"{path}: output directory is not empty (pass --overwrite to replace it"
                              + (", or --resume to continue it)" if _resumable_inside(path) else ")"))
        kept = _training_kept_by(path)
        if kept:
            raise ConfigError(f"{path}: --overwrite would delete {kept}; give --output a folder of its own")


def _resumable_inside(path: str) -> bool:
    """A checkpoint --resume could continue: the run's own, or (finetune of several tasks)
    one task folder's."""
    return resume_checkpoint(path) is not None or any(
        resume_checkpoint(os.path.join(path, name)) is not None for name in os.listdir(path)
        if os.path.isdir(os.path.join(path, name)))


def _training_kept_by(path: str) -> Optional[str]:
    """What --overwrite must not delete with ``path``: a checkpoint, a folder inside another
    run (its last/ would go, and the run could not resume), or, in a folder no run was
    written into, the runs below it (`--output runs --overwrite`). None for an earlier run's
    own folder (its lock file or run.json at the top), which is what --overwrite replaces."""
    if is_checkpoint(path):
        return f"the checkpoint {path}"
    around = training_around(path)
    if around is not None:
        return f"part of the run {around}"
    if any(os.path.exists(os.path.join(path, name)) for name in (LOCK_FILE, RUN_FILE)):
        return None
    within = training_within(path)
    return f"the training run or checkpoint {within} inside it" if within is not None else None
