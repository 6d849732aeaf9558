"""Data: read each task's splits exactly as declared, tokenize them with the encoder's own
tokenizer (cached between runs), and serve dynamically padded, length-grouped batches.

Must not import the model, the trainer or the CLI.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import logging
import os
import sys
import zipfile
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

import numpy as np
import torch

from mtsmart.atomic_files import replacing
from mtsmart.config import did_you_mean
from mtsmart.errors import ConfigError, DataError
from mtsmart.tasks import FileSource, HubSource, TaskDef

logger = logging.getLogger(__name__)

CACHE_ENV = "MTSMART_CACHE"
# Length-grouped batching sorts within windows of this many batches: large enough to
# group similar lengths, small enough that batches stay random across the epoch.
LENGTH_GROUP_WINDOW = 50

csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


@dataclass
class Examples:
    """Raw examples of one split: text tuples, encoded targets, and the 1-based line (or
    row) each came from, for error messages and prediction files."""

    texts: list[tuple[str, ...]]
    targets: list
    lines: list[int]
    source: str


# ---------------------------------------------------------------------------------------
# Reading


def _decode(raw: bytes, path: str, encoding: str, task: TaskDef) -> str:
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise DataError(
            f"{path} line {line}: task {task.name!r}: bytes that are not valid {encoding} "
            f"({err.reason}); set the split's 'encoding' to the file's encoding"
        ) from None
    except LookupError:
        raise DataError(f"{task.where('encoding')}: unknown encoding {encoding!r}") from None


def _rows_from_text(text: str, src: FileSource, path: str, task: TaskDef) -> Iterator[tuple[int, object]]:
    """Yield (line number, row) where a row is a list of fields or a JSON object; ``path``
    (the file as resolved) and ``task`` name the file in an error."""
    fmt = src.resolved_format
    if fmt == "jsonl":
        # Split on "\n" only: str.splitlines also splits at U+2028, U+0085 etc., which
        # JSON strings may hold raw.
        for number, line in enumerate(text.split("\n"), start=1):
            if line.strip():
                yield number, line
        return
    delimiter = "\t" if fmt == "tsv" else ","
    quoting = csv.QUOTE_NONE if src.quoting == "none" else csv.QUOTE_MINIMAL
    # strict: a field that opens with a quote and goes on after the closing one, or a quote
    # never closed, is refused; the lenient reader dropped the quotes or the rest of the file.
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quoting=quoting,
                        strict=True)
    try:
        start = 1
        for row in reader:
            if (fmt == "tsv" and quoting == csv.QUOTE_MINIMAL and reader.line_num > start
                    and any("\n" in field and "\t" in field for field in row)):
                # A quoted field that runs over line ends AND holds tabs swallowed whole rows:
                # a literal quote (GLUE's files have them). A quoted multi-line text without
                # tabs is a real field, as pandas writes them.
                raise DataError(f"{path} line {start}: task {task.name!r}: a double quote opens a field that "
                                f"runs on to line {reader.line_num}, merging rows; if quotes are literal text in "
                                "this file, read it with quoting: none (predict --input: --quoting none)")
            if row and any(field.strip() for field in row):
                yield reader.line_num, row
            start = reader.line_num + 1
    except csv.Error as err:
        advice = ("; if quotes are literal text in this file, read it with quoting: none "
                  "(predict --input: --quoting none)") if quoting == csv.QUOTE_MINIMAL else ""
        problem = ("a double quote opened here is never closed" if "unexpected end of data" in str(err)
                   else f"malformed {fmt}: {err}")
        raise DataError(f"{path} line {start}: task {task.name!r}: {problem}{advice}") from None


def _fields_read(task: TaskDef, labeled: bool) -> tuple[str, ...]:
    # Unlabeled reading (prediction) never looks at the target column: a test file without
    # one, or with a placeholder such as the hub's -1, reads the same.
    return task.fields_used if labeled else task.text_fields


def read_file_split(task: TaskDef, split: str, src: FileSource, data_dir: str,
                    labeled: bool = True) -> Examples:
    path = src.path if os.path.isabs(src.path) else os.path.join(data_dir, src.path)
    if os.path.isdir(path):
        raise DataError(f"{path}: is a directory, expected a {src.resolved_format} file "
                        f"(task {task.name!r}, split {split!r})")
    if not os.path.isfile(path):
        raise DataError(
            f"{path}: file not found (task {task.name!r}, split {split!r}; its path is relative to the data "
            f"folder {data_dir}, which --data-dir, $MTSMART_DATA_DIR or the task file's data_dir sets)"
        )
    with open(path, "rb") as handle:
        text = _decode(handle.read(), path, src.encoding, task)
    rows = _rows_from_text(text, src, path, task)
    fmt = src.resolved_format
    columns = dict(src.columns or {})
    fields = _fields_read(task, labeled)
    for name in fields:
        columns.setdefault(name, name)

    header: Optional[list[str]] = None
    if fmt != "jsonl" and src.header:
        first = next(rows, None)
        if first is None:
            raise DataError(f"{path}: task {task.name!r}: split {split!r} is empty")
        header = [h.strip() for h in first[1]]
    index_of: dict[str, int] = {}
    if fmt != "jsonl":
        for name, column in columns.items():
            if name not in fields:
                continue
            if isinstance(column, int):
                index_of[name] = column
            elif header is not None and header.count(column) > 1:
                raise DataError(f"{path}: task {task.name!r}: field {name!r}: column {column!r} appears "
                                f"{header.count(column)} times in the header; name the one meant in 'columns' "
                                "by its 0-based index")
            elif header is not None and column in header:
                index_of[name] = header.index(column)
            elif header is None:
                raise DataError(
                    f"{path}: task {task.name!r}: field {name!r} names column {column!r}, "
                    "but the file has no header; give a 0-based column index in 'columns'"
                )
            else:
                hint = (" (the header starts with a UTF-8 BOM: read it with encoding utf-8-sig)"
                        if header[0].startswith("\ufeff") else did_you_mean(str(column), header))
                raise DataError(
                    f"{path}: task {task.name!r}: field {name!r}: no column {column!r} in the "
                    f"header{hint} (columns: {', '.join(header)})"
                )
    target = columns.get(task.target_column)
    # Without labels the check still runs when the split gives the label's column by index:
    # a prediction file one row short would otherwise be off by a line against its source.
    if (header is not None and isinstance(target, int)
            and all(isinstance(columns[name], int) for name in fields)):
        _check_header_is_no_row(header, target, task, path)

    examples = Examples(texts=[], targets=[], lines=[], source=path)
    for line, row in rows:
        if fmt == "jsonl":
            try:
                obj = json.loads(row)
            except json.JSONDecodeError as err:
                raise DataError(f"{path} line {line}: task {task.name!r}: invalid JSON: {err.msg}") from None
            if not isinstance(obj, dict):
                raise DataError(f"{path} line {line}: task {task.name!r}: expected a JSON object "
                                "(.json and .jsonl files are JSON lines: one object per line)")
            values = {}
            for name in fields:
                key = columns[name]
                if key not in obj:
                    raise DataError(f"{path} line {line}: task {task.name!r}: field {name!r}: "
                                    f"no key {key!r} (keys: {', '.join(map(str, obj))})")
                values[name] = _json_field(obj[key], name, task, f"{path} line {line}")
        else:
            values = {}
            for name, index in index_of.items():
                if not -len(row) <= index < len(row):
                    raise DataError(
                        f"{path} line {line}: task {task.name!r}: field {name!r}: the line has "
                        f"{len(row)} field{'' if len(row) == 1 else 's'}, column {index} is missing"
                    )
                values[name] = row[index]
        _append_example(examples, task, values, line, f"{path} line {line}", labeled)
    return _non_empty(examples, task, split)


def _check_header_is_no_row(header: list[str], target_index: int, task: TaskDef, path: str) -> None:
    """A file whose columns are all given by index may have no header: read with the
    default ``header: true`` its first row would vanish without a word. A first line whose
    target is a valid label or number is a row, not a header."""
    if not -len(header) <= target_index < len(header):
        return
    try:
        task.task_type.parse_target(header[target_index], task.labels)
    except ValueError:
        return  # a column name, as a header has
    raise DataError(f"{path} line 1: task {task.name!r}: reads as a row, not a header (its "
                    f"{task.target_column!r} is {header[target_index]!r}): if it is data, set "
                    "'header: false' in the source; if it is a header, name the columns by its "
                    "names in 'columns'")


def _note_empty_texts(examples: Examples, task: TaskDef) -> None:
    """Empty text is legal but is usually a column mapped to the wrong place: say so."""
    empty = [(line, field) for text, line in zip(examples.texts, examples.lines)
             for field, value in zip(task.text_fields, text) if not value.strip()]
    if empty:
        line, field = empty[0]
        logger.warning("%s: task %r: %d empty text field(s), the first at line %d (field %r)",
                       examples.source, task.name, len(empty), line, field)


def _json_field(value, name: str, task: TaskDef, where: str):
    """A JSON (or hub) value as the text of a field. Numbers count as their text, as in tsv / csv:
    {"label": 5} is label "5", not index 5 (index semantics are for hub ClassLabel ids)."""
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)  # repr round-trips floats exactly
    kind = {bool: "a boolean", type(None): "null", list: "a list", dict: "an object"}[type(value)]
    raise DataError(f"{where}: task {task.name!r}: field {name!r}: expected text or a number, "
                    f"got {kind}")


def _append_example(examples: Examples, task: TaskDef, values: dict, line: int, where: str,
                    labeled: bool = True) -> None:
    """Parse the target of one row (one-line error naming ``where``) and keep the row."""
    try:
        target = (task.task_type.parse_target(values[task.target_column], task.labels) if labeled
                  else task.task_type.missing_target)
    except ValueError as err:
        raise DataError(f"{where}: task {task.name!r}: field {task.target_column!r}: {err}") from None
    examples.texts.append(tuple(str(values[f]) for f in task.text_fields))
    examples.targets.append(target)
    examples.lines.append(line)


def _non_empty(examples: Examples, task: TaskDef, split: str) -> Examples:
    if not examples.texts:
        raise DataError(f"{examples.source}: task {task.name!r}: split {split!r} has no rows")
    _note_empty_texts(examples, task)
    return examples


def read_hub_split(task: TaskDef, split: str, src: HubSource, labeled: bool = True) -> Examples:
    try:
        import datasets

        with _quiet_hub():
            dataset = datasets.load_dataset(src.hub, src.name, split=src.split, revision=src.revision)
    except Exception as err:  # the datasets library raises many types; the user needs one line
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        offline = "" if os.environ.get("HF_HUB_OFFLINE") else (
            " (without network access, HF_HUB_OFFLINE=1 fails at once instead of retrying)")
        raise DataError(f"{task.where()}: split {split!r}: cannot load {src.describe()}: {first}{offline}") from None
    columns = dict(src.columns or {})
    examples = Examples(texts=[], targets=[], lines=[], source=src.describe())
    names = {name: columns.get(name, name) for name in _fields_read(task, labeled)}
    for name, column in names.items():
        if column not in dataset.column_names:
            raise DataError(f"{task.where(name)}: {src.describe()} has no column {column!r} "
                            f"(columns: {', '.join(dataset.column_names)})")
    target_feature = dataset.features.get(names.get(task.target_column))
    class_ids = _class_id_reader(task, src, target_feature)
    if labeled and class_ids is None and task.labels and _holds_integers(target_feature) \
            and not all(label.lstrip("-").isdigit() for label in task.labels):
        raise DataError(f"{task.where('labels')}: {src.describe()} column {names[task.target_column]!r} "
                        f"holds numbers, not class names or ClassLabel ids; give 'labels' as its values "
                        "(e.g. '0', '1')")
    for row_number, row in enumerate(dataset, start=1):
        where = f"{src.describe()} row {row_number}"
        values = {name: _json_field(row[column], name, task, where) for name, column in names.items()
                  if not (labeled and name == task.target_column and class_ids)}
        if labeled and class_ids:
            values[task.target_column] = class_ids(row[names[task.target_column]])
        _append_example(examples, task, values, row_number, where, labeled)
    return _non_empty(examples, task, split)


def _holds_integers(feature) -> bool:
    return str(getattr(feature, "dtype", "")).startswith(("int", "uint"))


def _class_id_reader(task: TaskDef, src: HubSource, feature):
    """How the ids of a hub ClassLabel column become targets, or None for any other column
    (read as text, as in files: a plain number column holds labels, not positions).

    The dataset's class names are matched by name when they are the task's labels, in any
    order; otherwise its ids index the ``labels`` list, which must have one entry per class.

    Raises:
        DataError: the ClassLabel has another number of classes than ``labels``.
    """
    names = getattr(feature, "names", None)  # only datasets.ClassLabel has names
    if names is None or task.labels is None:
        return None
    if sorted(names) == sorted(task.labels):
        return lambda class_id: names[class_id] if isinstance(class_id, int) and 0 <= class_id < len(names) else class_id
    if len(names) != len(task.labels):
        raise DataError(f"{task.where('labels')}: {src.describe()} has {len(names)} classes "
                        f"({', '.join(names)}); give {len(names)} labels, the ids' names in order")
    return lambda class_id: class_id


@contextlib.contextmanager
def _quiet_hub():
    """Silence the hub client's reports while a dataset loads: unreachable, it logs every
    retry (twice, through its own handler and the root one) before the error we report."""
    loggers = [logging.getLogger(name) for name in ("huggingface_hub", "datasets", "filelock")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def read_split(task: TaskDef, split: str, data_dir: str, labeled: bool = True) -> Examples:
    """The examples of one split. ``labeled=False`` reads only the text fields (the targets
    are the task type's ``missing_target``), for predictions on data without labels."""
    if split not in task.splits:
        raise DataError(f"{task.where()}: no split {split!r} (splits: {', '.join(task.splits)})")
    src = task.splits[split]
    if isinstance(src, HubSource):
        return read_hub_split(task, split, src, labeled)
    return read_file_split(task, split, src, data_dir, labeled)


# ---------------------------------------------------------------------------------------
# Tokenization, cached between runs


@dataclass
class TokenizedSplit:
    """Ragged token ids of one split, stored flat with offsets (cheap to cache and slice)."""

    input_ids: np.ndarray  # [total_tokens] int32
    token_type_ids: Optional[np.ndarray]  # [total_tokens] int8, or None
    offsets: np.ndarray  # [num_examples + 1] int64
    targets: np.ndarray  # [num_examples]
    lines: np.ndarray  # [num_examples]

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def fingerprint(self) -> str:
        """A digest of exactly what a model sees of this split (token ids, token types,
        targets): another file, tokenizer, length limit or subset gives another one."""
        digest = hashlib.sha256()
        for array in (self.input_ids, self.token_type_ids, self.offsets, self.targets):
            digest.update(b"-" if array is None else np.ascontiguousarray(array).tobytes())
        return digest.hexdigest()[:16]

    def subset(self, indices: Sequence[int]) -> "TokenizedSplit":
        indices = np.asarray(indices, dtype=np.int64)
        lengths = self.lengths[indices]
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        gather = np.concatenate(
            [np.arange(self.offsets[i], self.offsets[i + 1]) for i in indices]
        ) if len(indices) else np.zeros(0, dtype=np.int64)
        return TokenizedSplit(
            input_ids=self.input_ids[gather],
            token_type_ids=None if self.token_type_ids is None else self.token_type_ids[gather],
            offsets=offsets,
            targets=self.targets[indices],
            lines=self.lines[indices],
        )


def tokenizer_fingerprint(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        settings = json.loads(backend.to_str())
        # each call sets these to its own arguments (max_length is in the cache key already):
        # kept in, the key would depend on what was tokenized before
        settings["truncation"] = settings["padding"] = None
        state = json.dumps(settings, sort_keys=True)
    else:  # a slow tokenizer: its vocabulary and the options it was built with (lower-casing, ...)
        options = {k: v for k, v in tokenizer.init_kwargs.items() if k != "name_or_path"}
        state = json.dumps([tokenizer.get_vocab(), options], sort_keys=True, default=str)
    # which end a long text loses lives on the Python side, not in the backend's settings
    side = getattr(tokenizer, "truncation_side", "right")
    return hashlib.sha256(f"{type(tokenizer).__name__}|{side}|{state}".encode()).hexdigest()[:16]


def default_cache_dir() -> str:
    return os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "mtsmart")


def tokenize_examples(examples: Examples, tokenizer, max_length: int, dtype,
                      cache_dir: Optional[str] = None) -> TokenizedSplit:
    """Tokenize (pairs handled by the tokenizer), truncating to ``max_length``.

    The result is cached under ``cache_dir`` keyed by the texts, the tokenizer's full
    state and ``max_length``, so a changed file or tokenizer never reuses stale ids."""
    digest = hashlib.sha256()
    digest.update(f"{tokenizer_fingerprint(tokenizer)}|{max_length}|{np.dtype(dtype).str}".encode())
    for text, target, line in zip(examples.texts, examples.targets, examples.lines):
        digest.update("\x1f".join(text).encode())
        digest.update(f"\x1e{target}\x1c{line}\x1d".encode())  # lines are cached too
    key = digest.hexdigest()[:32]
    path = os.path.join(cache_dir, f"{key}.npz") if cache_dir else None
    if path and os.path.exists(path):
        try:
            with np.load(path) as cached:
                return TokenizedSplit(
                    input_ids=cached["input_ids"],
                    token_type_ids=cached["token_type_ids"] if cached["has_types"] else None,
                    offsets=cached["offsets"],
                    targets=cached["targets"],
                    lines=cached["lines"],
                )
        except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):
            pass  # a damaged cache entry (not a zip, cut short, empty) is rebuilt below

    columns = list(zip(*examples.texts))
    second = list(columns[1]) if len(columns) > 1 else None
    encoded = tokenizer(list(columns[0]), second, truncation=True, max_length=max_length,
                        padding=False)
    ids = encoded["input_ids"]
    lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    flat = np.fromiter((t for x in ids for t in x), dtype=np.int32, count=int(offsets[-1]))
    types = encoded.get("token_type_ids")
    flat_types = (np.fromiter((t for x in types for t in x), dtype=np.int8, count=int(offsets[-1]))
                  if types is not None else None)
    result = TokenizedSplit(
        input_ids=flat,
        token_type_ids=flat_types,
        offsets=offsets,
        targets=np.asarray(examples.targets, dtype=dtype),
        lines=np.asarray(examples.lines, dtype=np.int64),
    )
    if path:
        os.makedirs(cache_dir, exist_ok=True)
        with replacing(path, "wb") as handle:
            np.savez(handle, input_ids=flat, offsets=offsets, targets=result.targets, lines=result.lines,
                     token_type_ids=flat_types if flat_types is not None else np.zeros(0, np.int8),
                     has_types=np.array(flat_types is not None))
    return result


# ---------------------------------------------------------------------------------------
# Batching


def collate(split: TokenizedSplit, indices: Sequence[int], pad_token_id: int,
            pad_to_multiple_of: Optional[int] = None) -> dict[str, torch.Tensor]:
    """Pad the examples ``indices`` to the longest of them (dynamic padding).

    Returns input_ids / attention_mask / (token_type_ids) as [batch, seq] and labels
    as [batch], plus ``index``: the examples' positions in the split."""
    lengths = [int(split.offsets[i + 1] - split.offsets[i]) for i in indices]
    width = max(lengths)
    if pad_to_multiple_of:
        width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
    input_ids = np.full((len(indices), width), pad_token_id, dtype=np.int64)
    attention = np.zeros((len(indices), width), dtype=np.int64)
    types = np.zeros((len(indices), width), dtype=np.int64) if split.token_type_ids is not None else None
    for row, (i, n) in enumerate(zip(indices, lengths)):
        start = split.offsets[i]
        input_ids[row, :n] = split.input_ids[start:start + n]
        attention[row, :n] = 1
        if types is not None:
            types[row, :n] = split.token_type_ids[start:start + n]
    batch = {
        "input_ids": torch.from_numpy(input_ids),
        "attention_mask": torch.from_numpy(attention),
        "labels": torch.as_tensor(split.targets[list(indices)]),
        "index": torch.as_tensor(np.asarray(indices, dtype=np.int64)),
    }
    if types is not None:
        batch["token_type_ids"] = torch.from_numpy(types)
    return batch


def epoch_batches(lengths: np.ndarray, batch_size: int, seed: int, epoch: int,
                  length_grouped: bool = True) -> list[np.ndarray]:
    """The batches of one epoch, as arrays of example indices; a pure function of its
    arguments so that a resumed run replays the same order.

    Length-grouped (the default): shuffle, sort by length inside windows of
    ``LENGTH_GROUP_WINDOW`` batches, cut into batches, shuffle the batches. Similar
    lengths share a batch (less padding) while the order stays random."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    if length_grouped:
        window = batch_size * LENGTH_GROUP_WINDOW
        order = np.concatenate([
            chunk[np.argsort(-lengths[chunk], kind="stable")]
            for chunk in np.split(order, range(window, len(order), window))
        ])
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    if length_grouped:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def num_batches(num_examples: int, batch_size: int) -> int:
    return -(-num_examples // batch_size)


class TaskStream:
    """An endless stream of one task's training batches, epoch after epoch.

    Its position is two integers, so a checkpoint can resume it exactly."""

    def __init__(self, split: TokenizedSplit, batch_size: int, seed: int, pad_token_id: int,
                 length_grouped: bool = True, stream_id: int = 0):
        self.split = split
        self.batch_size = batch_size
        self.seed = seed
        self.stream_id = stream_id
        self.pad_token_id = pad_token_id
        self.length_grouped = length_grouped
        self.epoch = 0
        self.position = 0
        self._batches: Optional[list[np.ndarray]] = None

    def __len__(self) -> int:
        return num_batches(len(self.split), self.batch_size)

    def _current(self) -> list[np.ndarray]:
        if self._batches is None:
            self._batches = epoch_batches(self.split.lengths, self.batch_size,
                                          self.seed * 1000 + self.stream_id, self.epoch,
                                          self.length_grouped)
        return self._batches

    def next_batch(self) -> dict[str, torch.Tensor]:
        batches = self._current()
        if self.position >= len(batches):
            self.epoch += 1
            self.position = 0
            self._batches = None
            batches = self._current()
        indices = batches[self.position]
        self.position += 1
        return collate(self.split, indices, self.pad_token_id)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
        self._batches = None


def eval_batches(split: TokenizedSplit, batch_size: int, pad_token_id: int) -> Iterator[dict]:
    """Batches sorted by length (least padding); ``index`` restores the file order."""
    order = np.argsort(-split.lengths, kind="stable")
    for start in range(0, len(order), batch_size):
        yield collate(split, order[start:start + batch_size], pad_token_id)


def padding_stats(lengths: np.ndarray, batches: list[np.ndarray]) -> tuple[int, int]:
    """(real tokens, padded tokens) over a list of batches, for throughput reports."""
    real = int(sum(lengths[b].sum() for b in batches))
    padded = int(sum(lengths[b].max() * len(b) for b in batches))
    return real, padded


def check_max_length(task: TaskDef, tokenizer, encoder_name: str = "the encoder") -> None:
    """Refuse a max_length beyond what the tokenizer says its encoder takes (see
    model.fit_tokenizer_to_positions): longer inputs would run past the encoder's
    position embeddings, mid-run."""
    limit = tokenizer.model_max_length
    if limit < 1_000_000 and task.max_length > limit:  # tokenizers without a limit say 1e30
        raise ConfigError(f"{task.where('max_length')}: {task.max_length} tokens, but {encoder_name} takes "
                          f"at most {limit} (valid: 8 to {limit})")


def load_tokenized(task: TaskDef, split: str, tokenizer, data_dir: str,
                   cache_dir: Optional[str], labeled: bool = True) -> TokenizedSplit:
    """Read and tokenize one split of one task (cached); ``labeled`` as in read_split."""
    check_max_length(task, tokenizer)
    examples = read_split(task, split, data_dir, labeled)
    dtype = np.int64 if task.task_type.target_dtype == torch.long else np.float32
    return tokenize_examples(examples, tokenizer, task.max_length, dtype, cache_dir)


def stratified_subset(targets: np.ndarray, size: int, seed: int, stratify: bool = True) -> np.ndarray:
    """``size`` example indices drawn without replacement, deterministic in ``seed``.

    With ``stratify`` (classification) every label keeps its share of the pool (largest
    remainders get the leftover places, and every label present gets at least one place
    when ``size`` allows). Returned sorted, so the subset does not depend on draw order."""
    n = len(targets)
    size = min(int(size), n)
    rng = np.random.default_rng([seed, 104729])
    if not stratify:
        return np.sort(rng.choice(n, size=size, replace=False))
    classes, counts = np.unique(targets, return_counts=True)
    quota = counts / n * size
    places = np.floor(quota).astype(np.int64)
    if size >= len(classes):
        places = np.maximum(places, 1)
    while places.sum() > size:  # the minimum of one place can overshoot: take from the largest
        places[np.argmax(places)] -= 1
    leftover = size - places.sum()
    order = np.argsort(-(quota - places), kind="stable")
    for i in order[:leftover]:
        places[i] += 1
    chosen = [rng.choice(np.flatnonzero(targets == c), size=min(k, cnt), replace=False)
              for c, k, cnt in zip(classes, places, counts)]
    return np.sort(np.concatenate(chosen))
