"""Notes on command-line settings a run will not use, so none is dropped silently.

A setting given on the command line (a flag, KEY=VALUE, --config or --smart-preset) that
the run's other settings leave without effect gets one ``mtsmart: note:`` line saying
why, and, where there is one, how to make it count. Settings that come from the task file
or a fine-tuned checkpoint get a note only where the file contradicts itself (a task's
``smart:`` block switching off the term it tunes): a file tuned for SMART that a run
switches off is the run's choice.

Must not import the trainer or the CLI.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import TYPE_CHECKING, Any

from mtsmart.config import ADVERSARIAL_KEYS, BREGMAN_KEYS, TrainConfig

if TYPE_CHECKING:  # tasks imports torch: `mtsmart --help` need not wait for it
    from mtsmart.tasks import TaskDef

logger = logging.getLogger("mtsmart")

Override = tuple[list[str], Any, str]  # key path, value, the text that set it

# a term's weight counts as one of its knobs: a weight above 0 for a term no task runs does nothing
ADVERSARIAL_KNOBS = ("adv_weight", *ADVERSARIAL_KEYS)
BREGMAN_KNOBS = ("prox_weight", *BREGMAN_KEYS)


def note_unused_settings(tasks: dict[str, TaskDef], training: TrainConfig, overrides: list[Override],
                         from_checkpoint: bool = False) -> None:
    """Log a note for each command-line setting ``tasks`` and ``training`` leave unused.
    ``from_checkpoint``: the encoder comes from a checkpoint (finetune)."""
    # A --config that holds a run's whole training.yaml (README: run it again) lists every
    # default as well; a default set to itself is no setting of the user's to note.
    overrides = [(path, value, text) for path, value, text in overrides
                 if not (text.startswith("--config") and _is_default(path, value))]
    notes = (_shadowed_by_a_task(tasks, training, overrides) + _switched_off(tasks, training, overrides)
             + _switched_off_in_its_own_block(tasks, training, overrides))
    keys = {tuple(path): text for path, _, text in overrides}
    cleared = [text for path, value, text in overrides
               if path == ["training", "max_steps"] and value is not None and training.max_steps is None]
    if cleared:
        notes.append(f"{cleared[-1]} does nothing: --epochs sets the run's length ({training.epochs:g} epochs)")
    if ("training", "epochs") in keys and training.max_steps:
        updates = f"{training.max_steps} update{'' if training.max_steps == 1 else 's'}"
        if ("training", "max_steps") in keys:
            epochs, max_steps = (_named(key, keys["training", key]) for key in ("epochs", "max_steps"))
            notes.append(f"{epochs} does nothing: {max_steps} sets the run's length ({updates})")
        else:  # epochs=N leaves max_steps as it was; the --epochs flag clears it
            notes.append(f"{keys['training', 'epochs']} does nothing: training.max_steps sets the run's "
                         f"length ({updates}); --epochs clears it")
    notes += _given_twice(overrides)
    notes += [f"{text} does nothing: the run leaves out task {path[1]!r}" for path, _, text in overrides
              if path[0] == "tasks" and len(path) > 1 and path[1] not in tasks]
    for key, sampler in (("temperature", "temperature"), ("anneal_final_alpha", "annealed")):
        if ("training", "sampler", key) in keys and training.sampler.name != sampler:
            notes.append(f"{keys['training', 'sampler', key]} does nothing: the {training.sampler.name} "
                         f"sampler does not read training.sampler.{key} (--sampler {sampler} does)")
    if ("training", "keep_last") in keys and not training.save_checkpoints:
        notes.append(f"{keys['training', 'keep_last']} does nothing: training.save_checkpoints is false")
    if ("training", "eval_teacher") in keys and not any(
            task.smart_config(training.smart).use_bregman for task in tasks.values()):
        notes.append(f"{keys['training', 'eval_teacher']} does nothing: no task runs the Bregman term, so the "
                     "run has no teacher to score (--smart bregman or full makes one)")
    if from_checkpoint and ("training", "encoder") in keys:
        notes.append(f"{keys['training', 'encoder']} does nothing: the encoder comes from the checkpoint")
    for note in dict.fromkeys(notes):  # once each, in order
        logger.warning(note)


def _named(key: str, text: str) -> str:
    """A training key as the note names it: a --config file sets many, so the key too."""
    return f"training.{key} in {text}" if text.startswith("--config") else text


_MISSING = object()


def _is_default(path: list[str], value: Any) -> bool:
    """Whether ``value`` is TrainConfig's default for the training setting at ``path``."""
    if path[:1] != ["training"]:
        return False
    node: Any = TrainConfig()
    for key in path[1:]:
        node = getattr(node, key, _MISSING)
    return node is not _MISSING and (node == value or (isinstance(node, tuple) and list(node) == value))


def _given_twice(given: list[Override]) -> list[str]:
    """A key typed twice on the command line (a flag and KEY=VALUE, or two KEY=VALUE): the
    later one wins, flags last. --config and --smart-preset are layers under them by design."""
    typed = [(tuple(path), text) for path, _, text in given
             if not text.startswith(("--config", "--smart-preset")) and not _names_a_preset(text)
             and not (text == "--epochs" and path[-1] == "max_steps")]  # its clearing: a note of its own
    winner = dict(typed)
    return [f"{text} does nothing: {winner[path]} sets {'.'.join(path)} too, and wins"
            for path, text in typed if winner[path] != text]


def _names_a_preset(text: str) -> bool:
    """``training.smart.preset=paper``: the same layer as --smart-preset, typed as a key."""
    return text.partition("=")[0].strip().split(".")[-1:] == ["preset"]


def _shadowed_by_a_task(tasks: dict[str, TaskDef], training: TrainConfig, given: list[Override]) -> list[str]:
    """A run-wide SMART setting does not reach a task whose own ``smart:`` block sets the
    same key (the task's value is the more specific one)."""
    per_task = {tuple(path) for path, _, _ in given if path[0] == "tasks"}
    notes = []
    for path, _, text in given:
        if len(path) != 3 or path[:2] != ["training", "smart"]:
            continue
        key = path[2]
        value = getattr(training.smart, key)  # as read: YAML's "1e-5" is the number 1e-05
        for name, task in tasks.items():
            if key in task.smart and task.smart[key] != value and ("tasks", name, "smart", key) not in per_task:
                notes.append(f"training.smart.{key} = {value} ({text}) does not reach task {name!r}: its "
                             f"smart: block in {task.defined_in} sets {key}: {task.smart[key]}; "
                             f"tasks.{name}.smart.{key}=VALUE overrides that")
    return notes


def _switched_off_in_its_own_block(tasks: dict[str, TaskDef], training: TrainConfig,
                                   given: list[Override]) -> list[str]:
    """A task file's own contradiction: a task's ``smart:`` block sets a knob of a term that
    the same block switches off (its mode, or the term's weight at 0). A term switched off
    by the command line, or by the run-wide mode, is the user's choice for this run: the
    file's tuning waits for a run that turns it on, and gets no note."""
    from_command_line = {tuple(path) for path, _, _ in given}
    notes = []
    for name, task in tasks.items():
        cfg = task.smart_config(training.smart)
        own = {key: value for key, value in task.smart.items()
               if ("tasks", name, "smart", key) not in from_command_line}
        for term, keys, weight, runs, modes in (
                ("adversarial", ADVERSARIAL_KEYS, "adv_weight", cfg.use_adversarial, ("adversarial", "full")),
                ("Bregman", BREGMAN_KEYS, "prox_weight", cfg.use_bregman, ("bregman", "full"))):
            if runs:
                continue
            if own.get(weight, None) == 0:
                reason = f"{weight}: 0"
            elif "mode" in own and own["mode"] not in modes:  # a mode that runs it: a zero weight elsewhere did
                reason = f"mode: {own['mode']}"
            else:
                continue
            for key in [k for k in own if k in keys and k != weight]:
                notes.append(f"{task.where()}: smart.{key} does nothing: its own smart: block sets "
                             f"{reason}, which switches its {term} term off")
    return notes


def _switched_off(tasks: dict[str, TaskDef], training: TrainConfig, given: list[Override]) -> list[str]:
    """A knob of a SMART term that no task runs (the mode, or a zero weight, switches it off)."""
    smart = {name: task.smart_config(training.smart) for name, task in tasks.items()}
    running = {"adversarial": any(c.use_adversarial for c in smart.values()),
               "Bregman": any(c.use_bregman for c in smart.values())}
    unused: dict[tuple[str, str], list[str]] = {}  # (text, why) -> the keys it set that do nothing
    for path, value, text in given:
        run_wide = len(path) == 3 and path[:2] == ["training", "smart"]
        one_task = len(path) == 4 and path[0] == "tasks" and path[1] in smart and path[2] == "smart"
        if not (run_wide or one_task):
            continue
        key = path[-1]
        term = "adversarial" if key in ADVERSARIAL_KNOBS else "Bregman" if key in BREGMAN_KNOBS else None
        switching_off = key in ("adv_weight", "prox_weight") and value == 0
        mode = "adversarial" if term == "adversarial" else "bregman"
        if not term or switching_off:
            continue
        if run_wide and not running[term]:
            unused.setdefault((text, f"no task runs the {term} term (mode {training.smart.mode}; --smart {mode} "
                                     "or full, with its weight above 0, does)"), []).append(key)
        elif one_task:
            cfg = smart[path[1]]
            if not (cfg.use_adversarial if term == "adversarial" else cfg.use_bregman):
                unused.setdefault((text, f"task {path[1]!r} does not run the {term} term (its mode {cfg.mode}; "
                                         f"tasks.{path[1]}.smart.mode={mode} or full, with its weight above 0, "
                                         "does)"), []).append(key)
    # A preset or a mapping sets several keys with one text: name the keys that do nothing,
    # since the others (a preset's Bregman settings, say) do take effect.
    several = {text for text, count in Counter(text for _, _, text in given).items() if count > 1}
    return [f"{text}: its {', '.join(keys)} {'does' if len(keys) == 1 else 'do'} nothing: {why}" if text in several
            else f"{text} does nothing: {why}" for (text, why), keys in unused.items()]
