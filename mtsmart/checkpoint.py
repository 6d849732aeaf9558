"""Checkpoints: a directory that evaluate / predict / fine-tuning can use on its own.

Layout (keys below are module constants)::

    CKPT/encoder/            encoder.save_pretrained + tokenizer.save_pretrained
    CKPT/heads.safetensors   every task head, "<task>.linear.weight" ...
    CKPT/tasks.yaml          the task definitions, as a task file, with the data_dir the run read
    CKPT/training.yaml       the resolved training configuration
    CKPT/teacher.safetensors the SMART mean teacher (when one exists)
    CKPT/trainer_state/      optimizer, scheduler, sampler, streams, RNG (for --resume)
    CKPT/meta.json           written last (its presence marks a complete checkpoint): the
                             heads and their order, the pooling, and the versions of
                             mtsmart, Python and the libraries that wrote it

A checkpoint is written into a temporary sibling directory and renamed into place, so a
crash never leaves a half-written directory under the final name.
Must not import train or cli.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import shutil
import signal
import tempfile
import threading
from dataclasses import dataclass
from typing import Any, Iterator, Optional

import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from mtsmart.config import CHECKPOINT_WEIGHTS, TrainConfig, parse_train_config, to_plain
from mtsmart.errors import CheckpointError
from mtsmart.model import MultiTaskModel, fit_tokenizer_to_positions, quiet_transformers, vocabulary_problem
from mtsmart.provenance import RUN_FILE, software_versions
from mtsmart.tasks import TaskDef, parse_task, task_to_plain

FORMAT_VERSION = 1
ENCODER_DIR = "encoder"
HEADS_FILE = "heads.safetensors"
TASKS_FILE = "tasks.yaml"
TRAINING_FILE = "training.yaml"
TEACHER_FILE = "teacher.safetensors"
TRAINER_STATE_DIR = "trainer_state"
META_FILE = "meta.json"
# Every tokenizer save_pretrained writes at least one file named so (tokenizer.json,
# tokenizer_config.json, vocab.txt, spiece.model, merges.txt, sentencepiece.bpe.model).
INCOMPLETE = "the checkpoint is incomplete, copy it again or use another one"
TOKENIZER_FILE_PREFIXES = ("tokenizer", "vocab", "spiece", "sentencepiece", "merges")


@dataclass
class LoadedCheckpoint:
    path: str
    model: MultiTaskModel
    tokenizer: Any
    tasks: dict[str, TaskDef]
    training: TrainConfig
    meta: dict
    teacher_state: Optional[dict[str, torch.Tensor]]
    data_dir: Optional[str] = None  # where the run read its data (None: written before it was kept)


# What a truncated, half-copied or hand-edited checkpoint file raises from safetensors,
# torch, json, yaml or transformers.
_DAMAGE = (OSError, ValueError, KeyError, TypeError, RuntimeError, EOFError, pickle.UnpicklingError,
           yaml.YAMLError, SafetensorError)


@contextlib.contextmanager
def reading(what: str) -> Iterator[None]:
    """Read part of a checkpoint: damage ends as one line naming ``what``, not a traceback."""
    try:
        yield
    except _DAMAGE as err:
        first = next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)
        if "trust_remote_code" in str(err):
            raise CheckpointError(f"{what}: the encoder runs code of its own; pass --trust-remote-code "
                                  "if you trust it") from None
        raise CheckpointError(f"{what}: damaged or incomplete ({first}); copy the checkpoint again or "
                              "use another one") from None


def _state_for_safetensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses tensors that share storage; contiguous clones are independent.
    return {k: v.detach().contiguous().clone() for k, v in state.items()}


def check_apart(checkpoint: str, out_dir: str, flag: str) -> None:
    """An output folder that is replaced whole must not be the checkpoint read from, a folder
    holding it, or one inside it."""
    out, source = os.path.realpath(out_dir), os.path.realpath(checkpoint)
    if os.path.commonpath([out, source]) in (out, source):
        raise CheckpointError(f"{flag} {out_dir}: would replace the checkpoint {checkpoint} or a folder "
                              "around or inside it; give a folder of its own")


def _read_umask() -> int:
    umask = os.umask(0)  # the only way to read it is to set it: once, at import
    os.umask(umask)
    return umask


_UMASK = _read_umask()


def _share_like_other_files(root: str) -> None:
    """Give a finished folder built in a private temporary directory the permissions any
    file the user writes gets (the umask's): mkdtemp makes it 0700 and safetensors writes
    0600, which a serving process or a colleague could not read."""
    umask = _UMASK
    os.chmod(root, 0o777 & ~umask)
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            os.chmod(os.path.join(folder, name), 0o777 & ~umask)
        for name in files:
            os.chmod(os.path.join(folder, name), 0o666 & ~umask)


def save_checkpoint(path: str, model: MultiTaskModel, tokenizer, tasks: dict[str, TaskDef],
                    training: TrainConfig, meta: dict, teacher_state: Optional[dict] = None,
                    trainer_state: Optional[dict] = None, data_dir: Optional[str] = None) -> None:
    """Write a complete checkpoint at ``path`` atomically (replacing any older one).
    ``data_dir`` goes into its tasks.yaml, so commands that read the checkpoint find the
    data where the run did, without --data-dir."""
    with folder_replacing(path) as tmp:
        encoder_dir = os.path.join(tmp, ENCODER_DIR)
        with quiet_transformers():
            model.encoder.save_pretrained(encoder_dir)
            tokenizer.save_pretrained(encoder_dir)
        head_state = {f"{name}.{k}": v for name, head in model.heads.items()
                      for k, v in head.state_dict().items()}
        save_file(_state_for_safetensors(head_state), os.path.join(tmp, HEADS_FILE))
        with open(os.path.join(tmp, TASKS_FILE), "w", encoding="utf-8") as handle:
            yaml.safe_dump({**({"data_dir": os.path.abspath(data_dir)} if data_dir else {}),
                            "tasks": {n: task_to_plain(t) for n, t in tasks.items()}}, handle, sort_keys=False)
        with open(os.path.join(tmp, TRAINING_FILE), "w", encoding="utf-8") as handle:
            yaml.safe_dump({"training": to_plain(training)}, handle, sort_keys=False)
        if teacher_state is not None:
            save_file(_state_for_safetensors(teacher_state), os.path.join(tmp, TEACHER_FILE))
        if trainer_state is not None:
            save_trainer_state(os.path.join(tmp, TRAINER_STATE_DIR), trainer_state)
        heads = {name: [head.output_size, head.dropout.p] for name, head in model.heads.items()}
        with open(os.path.join(tmp, META_FILE), "w", encoding="utf-8") as handle:
            json.dump({"format_version": FORMAT_VERSION, "heads": heads,
                       # sort_keys orders the heads mapping; the model's own order (which a
                       # resumed optimizer state follows, parameter by parameter) is this list
                       "head_order": list(model.heads),
                       # what load_checkpoint checks: without tokenizer.json, a tokenizer_config.json
                       # alone builds a tokenizer of special tokens, and every word is unknown
                       "encoder_files": sorted(os.listdir(encoder_dir)),
                       "has_teacher": teacher_state is not None,
                       "pooling": model.pooling, "written_by": software_versions(), **meta}, handle,
                      indent=2, sort_keys=True)


@contextlib.contextmanager
def folder_replacing(path: str) -> Iterator[str]:
    """A temporary folder beside ``path`` for the block to fill; when the block ends, it
    takes ``path``'s name, replacing what was there. On an error or an interruption it is
    removed and ``path`` is left as it was. Ctrl-C and SIGTERM are held while the folder is
    made (after mkdtemp's mkdir, before its name is returned, nothing could remove it) and
    over the renames (between them no folder has the name)."""
    parent = os.path.dirname(os.path.abspath(path)) or "."
    os.makedirs(parent, exist_ok=True)
    tmp = None
    try:
        with _interrupts_deferred():
            tmp = tempfile.mkdtemp(prefix=_temporary_prefix(path), dir=parent)
        yield tmp
        _share_like_other_files(tmp)
        with _interrupts_deferred():
            if os.path.exists(path):
                old = f"{tmp}.old"
                os.replace(path, old)
                os.replace(tmp, path)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, path)
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def _interrupts_deferred() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM until the block is done, then act on them as before.

    Between the renames no checkpoint has its name, and a half-removed old one is left
    behind; an interruption there is what a scheduler's SIGTERM hits sooner or later.
    Python runs signal handlers in the main thread only, so elsewhere nothing is held."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    # a handler installed outside Python (getsignal gives None) could not be put back: left alone
    held = [signum for signum in (signal.SIGINT, signal.SIGTERM) if signal.getsignal(signum) is not None]
    previous = {signum: signal.signal(signum, lambda signum, frame: received.append(signum))
                for signum in held}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if received:
            signum = received[0]
            handler = previous[signum]
            if callable(handler):
                handler(signum, None)
            elif handler == signal.SIG_DFL:
                os.kill(os.getpid(), signum)  # the default action, now that it is back


def _temporary_prefix(path: str) -> str:
    return f".{os.path.basename(os.path.abspath(path))}.tmp-"


def _temporary_siblings(path: str) -> list[str]:
    """The folders save_checkpoint(path) writes before renaming: ``.NAME.tmp-X`` (the new
    checkpoint) and ``.NAME.tmp-X.old`` (the one it replaces)."""
    parent, prefix = os.path.dirname(os.path.abspath(path)), _temporary_prefix(path)
    if not os.path.isdir(parent):
        return []
    return sorted(os.path.join(parent, name) for name in os.listdir(parent) if name.startswith(prefix))


def _complete_step(path: str) -> Optional[int]:
    """The global step of a complete checkpoint (its meta.json is written last), else None."""
    try:
        with open(os.path.join(path, META_FILE), encoding="utf-8") as handle:
            return int(json.load(handle)["global_step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def recovered_save(path: str) -> Optional[str]:
    """The complete checkpoint recover_interrupted_save(path) would leave at ``path``,
    touching nothing (what a dry run of a resume reads): ``path`` itself, the newest
    complete folder an interrupted save left beside it, or None."""
    path = os.path.abspath(path)
    complete = [(step, candidate == path, candidate) for candidate in [path, *_temporary_siblings(path)]
                if (step := _complete_step(candidate)) is not None]
    return max(complete)[2] if complete else None


def recover_interrupted_save(path: str) -> None:
    """Finish a save_checkpoint(path) that a crash cut short, before a resumed run reads it.

    Replacing a folder takes two renames (the old one aside, the new one in), and nothing
    renames two folders at once: a SIGKILL between them leaves no ``path`` at all, though
    two complete checkpoints lie beside it. One after the new checkpoint is complete but
    before the renames leaves it beside an older ``path``. The newest complete one takes the
    name (the one already there on a tie); incomplete and superseded folders are removed."""
    path = os.path.abspath(path)
    if not _temporary_siblings(path):
        return
    newest = recovered_save(path)
    if newest is not None:
        if newest != path:
            # a save killed after its last file, before its permissions were set, is private
            _share_like_other_files(newest)
            if os.path.exists(path):
                # aside under a temporary name, so that a crash here is recovered next time
                aside = tempfile.mkdtemp(prefix=_temporary_prefix(path), dir=os.path.dirname(newest))
                os.replace(path, aside)
            os.replace(newest, path)
    for leftover in _temporary_siblings(path):
        shutil.rmtree(leftover, ignore_errors=True)


def save_trainer_state(directory: str, state: dict) -> None:
    """Optimizer / scheduler tensors go through torch.save and are read back with
    weights_only=True (no pickled code); everything else is JSON."""
    os.makedirs(directory, exist_ok=True)
    torch.save(state["tensors"], os.path.join(directory, "tensors.pt"))
    with open(os.path.join(directory, "state.json"), "w", encoding="utf-8") as handle:
        json.dump(state["json"], handle, indent=2, sort_keys=True)


def load_trainer_state(path: str) -> dict:
    directory = os.path.join(path, TRAINER_STATE_DIR)
    tensors_path = os.path.join(directory, "tensors.pt")
    if not os.path.isfile(tensors_path):
        raise CheckpointError(f"{path}: has no trainer state; it cannot be resumed")
    with reading(tensors_path):
        tensors = torch.load(tensors_path, map_location="cpu", weights_only=True)
    return {"tensors": tensors, "json": load_trainer_state_json(path)}


def load_trainer_state_json(path: str) -> dict:
    """The JSON half of a trainer state (steps, sampler, streams, counters), without the
    optimizer's tensors."""
    state_path = os.path.join(path, TRAINER_STATE_DIR, "state.json")
    if not os.path.isfile(state_path):
        raise CheckpointError(f"{path}: has no trainer state; it cannot be resumed")
    with reading(state_path), open(state_path, encoding="utf-8") as handle:
        return json.load(handle)


def is_checkpoint(path: str) -> bool:
    return os.path.isfile(os.path.join(path, META_FILE))


def checkpoints_in(path: str) -> list[str]:
    """The complete checkpoints directly inside ``path`` (a run folder's best/ and last/)."""
    return sorted(os.path.join(path, name) for name in os.listdir(path)
                  if is_checkpoint(os.path.join(path, name)))


def training_around(path: str) -> Optional[str]:
    """The run or checkpoint ``path`` is inside (deleting it would leave that run without
    part of itself, its last/ perhaps), or None."""
    ancestor = os.path.dirname(os.path.realpath(path))
    while ancestor != os.path.dirname(ancestor):
        if is_checkpoint(ancestor) or os.path.isfile(os.path.join(ancestor, RUN_FILE)):
            return ancestor
        ancestor = os.path.dirname(ancestor)
    return None


def training_within(path: str) -> Optional[str]:
    """The first training run or checkpoint at ``path`` or anywhere below it, or None."""
    for folder, _, files in os.walk(os.path.realpath(path)):
        if RUN_FILE in files or META_FILE in files:
            return folder
    return None


def encoder_source_problem(name_or_path: str) -> Optional[str]:
    """Why ``name_or_path`` cannot be loaded as a raw encoder, found without loading it;
    None for a model directory or a name the Hugging Face hub may resolve."""
    if os.path.isdir(name_or_path):
        if is_checkpoint(name_or_path):
            return (f"{name_or_path} is an mtsmart checkpoint, not an encoder; `mtsmart finetune "
                    f"{name_or_path}` starts from it")
        inside = checkpoints_in(name_or_path)
        if inside:
            return (f"{name_or_path} is a run folder, not an encoder or a checkpoint; its "
                    f"checkpoints: {', '.join(inside)}")
        if not os.path.isfile(os.path.join(name_or_path, "config.json")):
            return f"{name_or_path}: no config.json, so not a Hugging Face model directory"
    elif os.path.exists(name_or_path):
        return f"{name_or_path}: a file, expected a model directory or a Hugging Face hub name"
    elif name_or_path.startswith((os.sep, ".", "~")) or name_or_path.endswith("/") or name_or_path.count("/") > 1:
        # not a hub name (OWNER/NAME) either: asking the hub would only add its own complaint
        return f"{name_or_path}: no such directory (a local encoder is a folder with config.json)"
    return None


def read_meta(path: str) -> dict:
    meta_path = os.path.join(path, META_FILE)
    if not os.path.isdir(path):
        raise CheckpointError(f"{path}: no such checkpoint directory")
    if not os.path.isfile(meta_path):
        inside = checkpoints_in(path)
        if inside:  # a run directory (or a folder of runs) given for one of its checkpoints
            raise CheckpointError(f"{path}: not a checkpoint but a folder of them; pass one of: "
                                  f"{', '.join(inside)}")
        if os.path.isfile(os.path.join(path, "config.json")):
            raise CheckpointError(f"{path}: an encoder, not an mtsmart checkpoint (no {META_FILE}); train "
                                  f"from it with mtsmart train --encoder {path}")
        raise CheckpointError(f"{path}: incomplete checkpoint (no {META_FILE})")
    with reading(meta_path), open(meta_path, encoding="utf-8") as handle:
        meta = json.load(handle)
    if not isinstance(meta, dict) or not {"heads", "pooling"} <= set(meta):
        raise CheckpointError(f"{meta_path}: damaged or incomplete (no heads or pooling); copy the "
                              "checkpoint again or use another one")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format {meta.get('format_version')} "
                              f"is not supported (expected {FORMAT_VERSION})")
    return meta


def load_checkpoint_tasks(path: str) -> dict[str, TaskDef]:
    tasks_path = os.path.join(path, TASKS_FILE)
    return {name: parse_task(name, spec, tasks_path) for name, spec in _read_tasks_file(path)["tasks"].items()}


def _read_tasks_file(path: str) -> dict:
    tasks_path = os.path.join(path, TASKS_FILE)
    with reading(tasks_path), open(tasks_path, encoding="utf-8") as handle:
        raw = yaml.safe_load(handle)
        if not isinstance(raw, dict) or not isinstance(raw.get("tasks"), dict):
            raise ValueError("no 'tasks:' mapping")
    return raw


def head_order(meta: dict, tasks: dict[str, TaskDef]) -> list[str]:
    """The heads in the order the model that wrote the checkpoint held them. Checkpoints
    written before meta.json kept that order: the task file's order (a train run's own),
    then the others by name."""
    if "head_order" in meta:
        return list(meta["head_order"])
    return [name for name in tasks if name in meta["heads"]] + sorted(set(meta["heads"]) - set(tasks))


def load_checkpoint(path: str, device: str | torch.device = "cpu",
                    trust_remote_code: bool = False, weights: str = "student") -> LoadedCheckpoint:
    """Load model (encoder + every head), tokenizer, tasks, config and teacher.

    ``weights="teacher"`` puts the mean teacher's weights into ``model`` (the teacher is a
    copy of the whole multi-task model, so every head has its teacher counterpart)."""
    if weights not in CHECKPOINT_WEIGHTS:
        raise CheckpointError(f"weights: {weights!r} is not valid (valid: {', '.join(CHECKPOINT_WEIGHTS)})")
    from transformers import AutoModel, AutoTokenizer

    meta = read_meta(path)
    tasks = load_checkpoint_tasks(path)
    training_path = os.path.join(path, TRAINING_FILE)
    with reading(training_path), open(training_path, encoding="utf-8") as handle:
        training_raw = yaml.safe_load(handle)["training"]
    training = parse_train_config(training_raw, training_path)
    encoder_dir = os.path.join(path, ENCODER_DIR)
    if not os.path.isdir(encoder_dir) or not any(name.startswith(TOKENIZER_FILE_PREFIXES)
                                                 for name in os.listdir(encoder_dir)):
        # transformers would build a tokenizer of special tokens only, and every word be unknown
        raise CheckpointError(f"{encoder_dir}: no tokenizer files (tokenizer.json, vocab.txt, ...); {INCOMPLETE}")
    missing = [name for name in meta.get("encoder_files", ()) if not os.path.exists(os.path.join(encoder_dir, name))]
    if missing:  # checkpoints before the list was kept are checked by the test above only
        raise CheckpointError(f"{encoder_dir}: {missing[0]} is missing (written with the checkpoint); {INCOMPLETE}")
    with reading(encoder_dir), quiet_transformers():
        encoder = AutoModel.from_pretrained(encoder_dir, trust_remote_code=trust_remote_code)
        tokenizer = AutoTokenizer.from_pretrained(encoder_dir, trust_remote_code=trust_remote_code)
    problem = vocabulary_problem(tokenizer, encoder)
    if problem:
        raise CheckpointError(f"{encoder_dir}: {problem}")
    fit_tokenizer_to_positions(tokenizer, encoder)
    heads_path = os.path.join(path, HEADS_FILE)
    with reading(f"{os.path.join(path, META_FILE)} and {heads_path}"):
        heads = {name: (int(size), float(dropout)) for name, (size, dropout) in meta["heads"].items()}
        heads = {name: heads[name] for name in head_order(meta, tasks)}
        model = MultiTaskModel(encoder, heads, pooling=meta["pooling"])
        head_state = load_file(heads_path)
        for name, head in model.heads.items():
            prefix = f"{name}."
            head.load_state_dict({k[len(prefix):]: v for k, v in head_state.items()
                                  if k.startswith(prefix)})
    teacher_path = os.path.join(path, TEACHER_FILE)
    with reading(teacher_path):
        teacher_state = load_file(teacher_path) if os.path.exists(teacher_path) else None
    if weights == "teacher":
        if teacher_state is None and meta.get("has_teacher"):
            raise CheckpointError(f"{path}: {TEACHER_FILE} is missing (written with the checkpoint); {INCOMPLETE}")
        if teacher_state is None:
            raise CheckpointError(
                f"{path}: no {TEACHER_FILE} (a teacher exists only when the run used the "
                "Bregman term: --smart bregman or full); valid --weights here: student")
        try:
            model.load_state_dict(teacher_state)
        except RuntimeError as err:  # keys or shapes that do not match the student's
            first = str(err).strip().splitlines()[1:2] or [str(err)]
            raise CheckpointError(f"{os.path.join(path, TEACHER_FILE)}: does not fit the "
                                  f"checkpoint's model ({first[0].strip()})") from None
    model.to(device)
    return LoadedCheckpoint(path, model, tokenizer, tasks, training, meta, teacher_state,
                            data_dir=_read_tasks_file(path).get("data_dir"))
