"""Fuzzing the inputs: a valid three-task setup (TSV pairs, CSV regression, JSONL
classification) is broken by one seeded mutation per case (truncation, byte flips,
non-UTF-8 bytes, empty files, very long lines, wrong or missing columns, labels outside the
set, NaN / inf targets, wrong YAML types, unknown or duplicate keys, ...) and
``mtsmart train`` runs on it.

The property: the command either trains (the mutation left valid input) or stops with exit
code 2 and exactly one line on stderr that names the broken file, never a traceback.
Mutations that always make the input invalid must stop it."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import yaml

from mtsmart.cli import main

WORDS = "the a cat dog man woman movie good bad is not very".split()
LABELS = ["no", "yes"]
TOPICS = ["sport", "film", "food"]
CLS_FILES = ("pairs_train.tsv", "pairs_dev.tsv", "topics_train.jsonl", "topics_dev.jsonl")
REG_FILES = ("scores_train.csv", "scores_dev.csv")
DATA_FILES = CLS_FILES + REG_FILES
TASK_FILE = "tasks.yaml"

TASKS = {
    "tasks": {
        "pairs": {"type": "classification", "text_fields": ["a", "b"], "label_field": "label",
                  "labels": LABELS, "max_length": 24,
                  "splits": {"train": {"path": "pairs_train.tsv", "quoting": "none"},
                             "dev": {"path": "pairs_dev.tsv", "quoting": "none"}}},
        "scores": {"type": "regression", "text_fields": ["text"], "target_field": "score",
                   "max_length": 24, "splits": {"train": "scores_train.csv", "dev": "scores_dev.csv"}},
        "topics": {"type": "classification", "text_fields": ["text"], "label_field": "topic",
                   "labels": TOPICS, "max_length": 24,
                   "splits": {"train": "topics_train.jsonl", "dev": "topics_dev.jsonl"}},
    },
    "training": {"batch_size": 4, "max_steps": 1, "eval_every": 1, "save_checkpoints": False,
                 "num_threads": 1},
}


def sentence(rng: random.Random, n: int = 5) -> str:
    return " ".join(rng.choices(WORDS, k=n))


def write_valid_setup(root: Path) -> None:
    rng = random.Random(0)
    for split, n in (("train", 12), ("dev", 6)):
        rows = [f"{sentence(rng)}\t{sentence(rng, 4)}\t{rng.choice(LABELS)}" for _ in range(n)]
        (root / f"pairs_{split}.tsv").write_text("a\tb\tlabel\n" + "\n".join(rows) + "\n")
        rows = [f'"{sentence(rng)}, {sentence(rng, 2)}",{rng.uniform(0, 5):.2f}' for _ in range(n)]
        (root / f"scores_{split}.csv").write_text("text,score\n" + "\n".join(rows) + "\n")
        rows = [json.dumps({"text": sentence(rng), "topic": rng.choice(TOPICS)}) for _ in range(n)]
        (root / f"topics_{split}.jsonl").write_text("\n".join(rows) + "\n")
    (root / TASK_FILE).write_text(yaml.safe_dump(TASKS, sort_keys=False))


# ------------------------------------------------------------------------------ mutations
@dataclass(frozen=True)
class Mutation:
    name: str
    apply: Callable[[Path, random.Random], str]  # returns the file it broke
    always_invalid: bool


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def _data_line(lines: list[bytes], rng: random.Random, path: Path) -> int:
    first = 0 if path.suffix == ".jsonl" else 1
    return rng.randrange(first, len(lines))


def truncate(root, rng, name):
    raw = (root / name).read_bytes()
    (root / name).write_bytes(raw[:rng.randrange(1, len(raw))])
    return name


def flip_bytes(root, rng, name):
    raw = bytearray((root / name).read_bytes())
    for _ in range(rng.randint(1, 6)):
        raw[rng.randrange(len(raw))] = rng.randrange(256)
    (root / name).write_bytes(bytes(raw))
    return name


def insert_bytes(payload: bytes):
    def apply(root, rng, name):
        raw = (root / name).read_bytes()
        lines = _lines(root / name)
        at = sum(len(x) for x in lines[:_data_line(lines, rng, root / name)]) + 1
        (root / name).write_bytes(raw[:at] + payload + raw[at:])
        return name
    return apply


def empty(root, rng, name):
    (root / name).write_bytes(b"")
    return name


def header_only(root, rng, name):
    (root / name).write_bytes(_lines(root / name)[0] if not name.endswith(".jsonl") else b"\n")
    return name


def long_line(root, rng, name):
    """A 300 000-character text field (over csv's default field limit), otherwise valid."""
    path = root / name
    text = " ".join(rng.choices(WORDS, k=60_000))
    if name.startswith("pairs"):
        row = f"{text}\t{sentence(rng)}\tyes\n"
    elif name.startswith("scores"):
        row = f'"{text}",2.5\n'
    else:
        row = json.dumps({"text": text, "topic": "film"}) + "\n"
    path.write_bytes(path.read_bytes() + row.encode())
    return name


def edit_line(edit: Callable[[bytes, random.Random, Path], bytes]):
    def apply(root, rng, name):
        path = root / name
        lines = _lines(path)
        i = _data_line(lines, rng, path)
        lines[i] = edit(lines[i].rstrip(b"\r\n"), rng, path) + b"\n"
        path.write_bytes(b"".join(lines))
        return name
    return apply


def _separator(path: Path) -> bytes:
    return b"\t" if path.suffix == ".tsv" else b","


def drop_last_field(line, rng, path):
    if path.suffix == ".jsonl":
        record = json.loads(line)
        record.pop("topic")
        return json.dumps(record).encode()
    return line.rsplit(_separator(path), 1)[0]


def bad_label(line, rng, path):
    if path.suffix == ".jsonl":
        record = json.loads(line)
        record["topic"] = rng.choice(["maybe", "", "Film", 1, None, ["film"]])
        return json.dumps(record).encode()
    return line.rsplit(b"\t", 1)[0] + b"\t" + rng.choice([b"maybe", b"", b"Yes", b"1"])


def bad_target(line, rng, path):
    value = rng.choice([b"nan", b"NaN", b"inf", b"-inf", b"1e999", b"", b"n/a", b"3,5"])
    if value == b"3,5":
        value = b'"3,5"'
    return line.rsplit(b",", 1)[0] + b"," + value


def wrong_json_type(line, rng, path):
    # (A number where text belongs is read as its text, as in tsv / csv: not broken.)
    return rng.choice([b"[1, 2]", b'"text"', b"null", b"{",
                       json.dumps({"text": None, "topic": "film"}).encode(),
                       json.dumps({"text": ["a", "b"], "topic": "film"}).encode(),
                       json.dumps({"text": {"a": 1}, "topic": "film"}).encode(),
                       json.dumps({"text": True, "topic": "film"}).encode()])


def rename_header(root, rng, name):
    path = root / name
    lines = _lines(path)
    lines[0] = (lines[0].replace(b"label", b"lable").replace(b"score", b"scores")
                .replace(b'"topic"', b'"topik"'))  # a JSONL file names its fields per line
    path.write_bytes(b"".join(lines))
    return name


def delete_file(root, rng, name):
    (root / name).unlink()
    return name


def directory_instead(root, rng, name):
    (root / name).unlink()
    (root / name).mkdir()
    return name


def crlf_and_bom(root, rng, name):
    path = root / name
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes().replace(b"\n", b"\r\n"))
    return name


# YAML mutations -------------------------------------------------------------------------
LEAVES = [("tasks", "pairs", "max_length"), ("tasks", "pairs", "labels"), ("tasks", "pairs", "text_fields"),
          ("tasks", "scores", "type"), ("tasks", "topics", "splits"), ("tasks", "scores", "sampling_weight"),
          ("tasks", "pairs", "head_dropout"), ("training", "batch_size"), ("training", "max_steps"),
          ("training", "optim"), ("training", "smart"), ("training", "seed"), ("tasks", "topics", "metrics")]
JUNK = [[1, 2], {"x": 1}, "many", -1, 0, 1e309, float("nan"), None, True, 2.5, "", [], {}]
REQUIRED = [("tasks", "pairs", "type"), ("tasks", "pairs", "text_fields"), ("tasks", "pairs", "labels"),
            ("tasks", "scores", "target_field"), ("tasks", "topics", "splits"), ("tasks",)]


def _edit_yaml(root: Path, edit) -> str:
    data = yaml.safe_load((root / TASK_FILE).read_text())
    edit(data)
    (root / TASK_FILE).write_text(yaml.safe_dump(data, sort_keys=False))
    return TASK_FILE


def _parent(data, path):
    for key in path[:-1]:
        data = data[key]
    return data


def wrong_type(root, rng, _):
    path, junk = rng.choice(LEAVES), rng.choice(JUNK)
    return _edit_yaml(root, lambda d: _parent(d, path).__setitem__(path[-1], junk))


def unknown_key(root, rng, _):
    where = rng.choice([(), ("tasks", "pairs"), ("training",), ("tasks", "topics", "splits", "train")])

    def edit(data):
        node = data
        for key in where:
            node = node[key]
        if isinstance(node, str):
            _parent(data, where)[where[-1]] = {"path": node, "delimiter": ";"}
        else:
            node["lables" if where else "task"] = 1
    return _edit_yaml(root, edit)


def missing_key(root, rng, _):
    path = rng.choice(REQUIRED)
    return _edit_yaml(root, lambda d: _parent(d, path).pop(path[-1]))


def duplicate_key(root, rng, _):
    text = (root / TASK_FILE).read_text()
    key = rng.choice(["  batch_size: 4\n", "  max_steps: 1\n"])
    (root / TASK_FILE).write_text(text.replace(key, key + key.replace("4", "8").replace("1", "3")))
    return TASK_FILE


def yaml_text(new_text: str):
    def apply(root, rng, _):
        (root / TASK_FILE).write_text(new_text)
        return TASK_FILE
    return apply


def yaml_tabs(root, rng, _):
    text = (root / TASK_FILE).read_text()
    (root / TASK_FILE).write_text(text.replace("\n    type:", "\n\ttype:", 1))
    return TASK_FILE


ON_DATA = [
    ("truncate", truncate, False), ("flip_bytes", flip_bytes, False),
    ("non_utf8", insert_bytes(b"\xff\xfe\xc3("), True), ("nul_byte", insert_bytes(b"\x00"), False),
    ("empty_file", empty, True), ("header_only", header_only, True), ("long_line", long_line, False),
    ("missing_field", edit_line(drop_last_field), True), ("wrong_header", rename_header, True),
    ("deleted", delete_file, True), ("directory", directory_instead, True), ("crlf_bom", crlf_and_bom, False),
]
ON_CLS = [("bad_label", edit_line(bad_label), True)]
ON_REG = [("bad_target", edit_line(bad_target), True)]
ON_JSONL = [("wrong_json_type", edit_line(wrong_json_type), True)]
ON_YAML = [
    ("yaml_truncate", lambda r, g, _: truncate(r, g, TASK_FILE), False),
    ("yaml_flip_bytes", lambda r, g, _: flip_bytes(r, g, TASK_FILE), False),
    ("yaml_non_utf8", lambda r, g, _: insert_bytes(b"\xff\xfe")(r, g, TASK_FILE), True),
    ("yaml_wrong_type", wrong_type, False), ("yaml_unknown_key", unknown_key, True),
    ("yaml_missing_key", missing_key, True), ("yaml_duplicate_key", duplicate_key, True),
    ("yaml_empty", yaml_text(""), True), ("yaml_list", yaml_text("- tasks\n- training\n"), True),
    ("yaml_tabs", yaml_tabs, True),
]


def build_cases(copies: int = 3) -> list[tuple[str, str, Mutation]]:
    """Every mutation, ``copies`` times with different seeded targets and parameters."""
    cases = []
    for copy in range(copies):
        rng = random.Random(copy)
        for name, fn, invalid in ON_DATA:
            cases.append((f"{name}-{copy}", rng.choice(DATA_FILES), Mutation(name, fn, invalid)))
        for group, files in ((ON_CLS, ("pairs_train.tsv", "pairs_dev.tsv")), (ON_REG, REG_FILES),
                             (ON_JSONL, ("topics_train.jsonl", "topics_dev.jsonl"))):
            for name, fn, invalid in group:
                cases.append((f"{name}-{copy}", rng.choice(files), Mutation(name, fn, invalid)))
        for name, fn, invalid in ON_YAML:
            cases.append((f"{name}-{copy}", TASK_FILE, Mutation(name, fn, invalid)))
    return cases


CASES = build_cases()


@pytest.mark.parametrize("case_id,target,mutation", CASES, ids=[c[0] for c in CASES])
def test_broken_input_stops_with_one_line_or_trains(tmp_path, tiny_model_dir, capsys, case_id,
                                                    target, mutation):
    write_valid_setup(tmp_path)
    broken = mutation.apply(tmp_path, random.Random(case_id), target)
    code = main(["train", str(tmp_path / TASK_FILE), "--encoder", str(tiny_model_dir),
                 "--output", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache"),
                 "--data-dir", str(tmp_path), "--quiet"])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    if code == 0:
        assert not mutation.always_invalid, f"{case_id}: invalid input was accepted"
        return
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, f"{case_id}: exit {code}, stderr:\n{err}"
    assert lines[0].startswith("mtsmart: error: ") and broken in lines[0], lines[0]
