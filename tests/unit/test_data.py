"""data.py: reading every real file format, one-line errors with file and line, the
tokenization cache, dynamic padding, epoch batching and resumable task streams."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from mtsmart import data
from mtsmart.data import (
    Examples,
    TaskStream,
    TokenizedSplit,
    collate,
    epoch_batches,
    eval_batches,
    padding_stats,
    read_split,
    tokenize_examples,
)
from mtsmart.errors import DataError
from mtsmart.tasks import parse_task

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "unit"
DATA_DIR = str(FIX)


def cls_task(source: dict, text_fields=("sentence1", "sentence2"), labels=("0", "1"),
             label_field="label", name="t"):
    return parse_task(name, {"type": "classification", "text_fields": list(text_fields),
                             "label_field": label_field, "labels": list(labels),
                             "splits": {"train": source}}, "defs.yaml")


def reg_task(source: dict, text_fields=("sentence1", "sentence2"), target_field="score", name="r"):
    return parse_task(name, {"type": "regression", "text_fields": list(text_fields),
                             "target_field": target_field, "splits": {"train": source}}, "defs.yaml")


def read(task, split="train", data_dir=DATA_DIR):
    return read_split(task, split, data_dir)


# ----------------------------------------------------------------------------- good files


def test_rte_like_quoting_none_and_negative_index():
    task = cls_task({"path": "rte_like.tsv", "quoting": "none",
                     "columns": {"sentence1": 1, "sentence2": 2, "label": -1}},
                    labels=("entailment", "not_entailment"))
    ex = read(task)
    assert ex.source == os.path.join(DATA_DIR, "rte_like.tsv")
    assert ex.lines == [2, 3, 4, 5]
    # The unbalanced quote stays in the text and does not swallow the next lines.
    assert ex.texts[1] == ('"The dog ran fast, said the man.', "The dog is slow.")
    # Line 4 has 5 fields (an empty one before the label): -1 is its last field.
    assert ex.texts[2] == ("A man walks to work.", "A man walks.")
    assert ex.targets == [0, 1, 0, 1]


def test_rte_like_label_by_header_name_reads_the_empty_field():
    # Why glue.yaml takes RTE's label from the last field: by header position, line 4's
    # label is the empty extra field.
    task = cls_task({"path": "rte_like.tsv", "quoting": "none"}, labels=("entailment", "not_entailment"))
    with pytest.raises(DataError) as err:
        read(task)
    assert "rte_like.tsv line 4" in str(err.value) and "''" in str(err.value)


def test_unlabeled_reading_skips_the_target_column_and_only_it(tmp_path):
    # A GLUE-style test file: the labelled file's layout without its label column.
    (tmp_path / "test.tsv").write_text("index\tsentence1\tsentence2\n0\tA cat sat.\tA cat.\n"
                                       "1\tA dog ran.\tA dog.\n")
    (tmp_path / "test.jsonl").write_text('{"sentence1": "A cat sat.", "sentence2": "A cat.", "label": -1}\n')
    rte = {"quoting": "none", "columns": {"sentence1": 1, "sentence2": 2, "label": -1}}
    labeled = read(cls_task({"path": "rte_like.tsv", **rte}, labels=("entailment", "not_entailment")),
                   data_dir=DATA_DIR)
    unlabeled = read_split(cls_task({"path": "rte_like.tsv", **rte}, labels=("entailment", "not_entailment")),
                           "train", DATA_DIR, labeled=False)
    assert unlabeled.texts == labeled.texts and unlabeled.lines == labeled.lines
    assert unlabeled.targets == [-1] * 4
    for source in ({"path": "test.tsv", "quoting": "none", "columns": {"sentence1": 1, "sentence2": 2}},
                   {"path": "test.tsv", **rte},  # label: -1 would be sentence2: not read
                   {"path": "test.jsonl"}):
        ex = read_split(cls_task(source), "train", str(tmp_path), labeled=False)
        assert ex.texts[0] == ("A cat sat.", "A cat."), source
        assert ex.targets == [-1] * len(ex.texts)
        with pytest.raises(DataError, match="label"):  # evaluation and training need the labels
            read(cls_task(source), data_dir=str(tmp_path))
    scores = read_split(reg_task({"path": "test.tsv", "columns": {"sentence1": 1, "sentence2": 2}}),
                        "train", str(tmp_path), labeled=False)
    assert len(scores.targets) == 2 and all(np.isnan(scores.targets))
    # the text fields are still required
    with pytest.raises(DataError, match="'premise'"):
        read_split(cls_task({"path": "test.tsv"}, text_fields=("premise", "sentence2")), "train",
                   str(tmp_path), labeled=False)


def test_minimal_quoting_swallows_lines_after_an_unbalanced_quote():
    # Why the GLUE files need quoting: none. With CSV quoting the quote opened on line 3
    # runs to the end of the file, so the last row is short of fields.
    task = cls_task({"path": "rte_like.tsv", "quoting": "minimal",
                     "columns": {"sentence1": 1, "sentence2": 2, "label": -1}},
                    labels=("entailment", "not_entailment"))
    with pytest.raises(DataError) as err:
        read(task)
    assert "rte_like.tsv line 3" in str(err.value) and "quoting: none" in str(err.value)


def test_a_quote_that_merges_tsv_rows_is_an_error_not_a_lost_row(tmp_path):
    """The rows a stray quote merges can look like one good row (two fields here): the
    reader stops at the quote instead of silently reading two examples as one."""
    (tmp_path / "q.tsv").write_text('sentence\tlabel\n"a b\t1\nc d"\t0\ne f\t1\n', encoding="utf-8")
    task = cls_task({"path": "q.tsv", "quoting": "minimal"}, text_fields=("sentence",))
    with pytest.raises(DataError) as err:
        read_split(task, "train", str(tmp_path))
    assert str(err.value).startswith(f"{tmp_path}/q.tsv line 2: task '{task.name}': ") and "line 3" in str(err.value)
    task = cls_task({"path": "q.tsv", "quoting": "none"}, text_fields=("sentence",))
    assert len(read_split(task, "train", str(tmp_path)).texts) == 3


@pytest.mark.parametrize("fmt, text, line", [
    # a field that opens with a quote and goes on after the closing one: the lenient csv
    # reader drops both quotes ('"Hello" world' became 'Hello world')
    ("tsv", 'sentence\tlabel\nok\t1\n"Hello" world\t0\n', 3),
    ("csv", 'sentence,label\nok,1\n"Hello" world,0\n', 3),
    # a quote never closed in a csv: the lenient reader took the rest of the file as one field
    ("csv", 'sentence,label\nok,1\n"never closed,0\nnext,1\n', 3),
])
def test_quotes_that_minimal_quoting_cannot_read_are_an_error_not_dropped(tmp_path, fmt, text, line):
    (tmp_path / f"q.{fmt}").write_text(text, encoding="utf-8")
    task = cls_task({"path": f"q.{fmt}", "quoting": "minimal"}, text_fields=("sentence",))
    with pytest.raises(DataError) as err:
        read_split(task, "train", str(tmp_path))
    message = str(err.value)
    assert f"q.{fmt} line {line}" in message and "quoting: none" in message
    assert "\n" not in message
    task = cls_task({"path": f"q.{fmt}", "quoting": "none"}, text_fields=("sentence",))
    assert read_split(task, "train", str(tmp_path)).texts[1][0].startswith('"')


def test_minimal_quoting_still_reads_quoted_fields_and_inner_quotes(tmp_path):
    (tmp_path / "q.csv").write_text('sentence,label\n"a, b ""c""",1\nhe said "hi",0\n"two\nlines",1\n',
                                    encoding="utf-8")
    task = cls_task({"path": "q.csv", "quoting": "minimal"}, text_fields=("sentence",))
    assert [t[0] for t in read_split(task, "train", str(tmp_path)).texts] == [
        'a, b "c"', 'he said "hi"', "two\nlines"]


def test_mrpc_like_bom_header_and_named_columns():
    source = {"path": "mrpc_like.tsv", "quoting": "none",
              "columns": {"sentence1": "#1 String", "sentence2": "#2 String", "label": "Quality"}}
    ex = read(cls_task(source))
    assert ex.targets == [1, 0, 1]
    assert ex.texts[0] == ('He called "the witness, a man.', 'He said "the witness" lied.')
    assert ex.texts[2] == ("A movie.", 'A "movie.')
    assert ex.lines == [2, 3, 4]


def test_bom_is_not_part_of_the_first_value_without_header(tmp_path):
    (tmp_path / "bom.tsv").write_bytes("\ufeff1\tthe cat\n0\tthe dog\n".encode("utf-8"))
    task = cls_task({"path": "bom.tsv", "header": False, "columns": {"label": 0, "sentence": 1}},
                    text_fields=("sentence",))
    ex = read(task, data_dir=str(tmp_path))
    assert ex.targets == [1, 0] and ex.texts[0] == ("the cat",)


def test_cola_like_no_header_with_index_columns():
    task = cls_task({"path": "cola_like.tsv", "header": False, "quoting": "none",
                     "columns": {"sentence": 3, "label": 1}}, text_fields=("sentence",))
    ex = read(task)
    assert ex.targets == [1, 0, 1]
    assert ex.lines == [1, 2, 3]  # no header: the first line is data
    assert ex.texts[0] == ("Our friends won't buy this analysis.",)
    assert ex.texts[2] == ('One more "pseudo generalization and I give up.',)  # no final newline


def test_a_headerless_file_read_with_a_header_is_an_error_not_a_lost_row():
    """header: true is the default: CoLA read without 'header: false' lost its first row."""
    task = cls_task({"path": "cola_like.tsv", "quoting": "none", "columns": {"sentence": 3, "label": 1}},
                    text_fields=("sentence",))
    with pytest.raises(DataError, match=r"cola_like.tsv line 1: task 't': reads as a row, not a header "
                                        r"\(its 'label' is '1'\): if it is data, set 'header: false'.*"
                                        r"if it is a header, name the columns by its names"):
        read(task)


def test_prediction_refuses_the_same_headerless_file_instead_of_dropping_its_first_row():
    """predict --split reads without labels; one row short, its output was off by a line."""
    task = cls_task({"path": "cola_like.tsv", "quoting": "none", "columns": {"sentence": 3, "label": 1}},
                    text_fields=("sentence",))
    with pytest.raises(DataError, match=r"cola_like.tsv line 1: task 't': reads as a row, not a header"):
        read_split(task, "train", DATA_DIR, labeled=False)


def test_prediction_reads_a_test_file_whose_header_is_at_the_label_index(tmp_path):
    # GLUE's test files: the dev split's label index lands on a header name, or past the header
    (tmp_path / "test.tsv").write_text("index\tsentence\n0\tA cat sat.\n1\tA dog ran.\n")
    for label in (0, 1, 5):
        task = cls_task({"path": "test.tsv", "columns": {"sentence": 1, "label": label}}, text_fields=("sentence",))
        ex = read_split(task, "train", str(tmp_path), labeled=False)
        assert ex.texts == [("A cat sat.",), ("A dog ran.",)] and ex.lines == [2, 3]


def test_a_header_that_reads_as_a_row_is_read_by_naming_its_columns(tmp_path):
    """The way out the error offers for a real header such as pandas' '0,1' (labels '0', '1')."""
    (tmp_path / "p.csv").write_text("0,1\ngood film,1\nbad film,0\n", encoding="utf-8")
    task = cls_task({"path": "p.csv", "columns": {"sentence": "0", "label": "1"}}, text_fields=("sentence",))
    assert read_split(task, "train", str(tmp_path)).targets == [1, 0]


def test_empty_text_fields_are_read_with_a_note(tmp_path, caplog):
    (tmp_path / "e.tsv").write_text("sentence\tlabel\ngood\t1\n\t0\n   \t1\n", encoding="utf-8")
    task = cls_task({"path": "e.tsv"}, text_fields=("sentence",))
    with caplog.at_level("WARNING"):
        ex = read_split(task, "train", str(tmp_path))
    assert ex.texts == [("good",), ("",), ("   ",)]
    assert "e.tsv: task 't': 2 empty text field(s), the first at line 3 (field 'sentence')" in caplog.text


def test_no_header_with_named_column_is_an_error():
    task = cls_task({"path": "cola_like.tsv", "header": False, "quoting": "none",
                     "columns": {"sentence": 3}}, text_fields=("sentence",))
    with pytest.raises(DataError) as err:
        read(task)
    assert "cola_like.tsv" in str(err.value) and "'label'" in str(err.value) and "no header" in str(err.value)


def test_stsb_like_regression():
    ex = read(reg_task({"path": "stsb_like.tsv", "quoting": "none"}))
    assert ex.targets == [5.0, 3.8, 0.25]
    assert ex.texts[0] == ("A plane is taking off.", "An air plane is taking off.")


def test_sst2_like_crlf_blank_line_and_trailing_space():
    ex = read(cls_task({"path": "sst2_like.tsv", "quoting": "none"}, text_fields=("sentence",)))
    assert ex.targets == [1, 0]
    assert ex.lines == [2, 4]  # the blank line 3 is skipped but still counted
    assert ex.texts[0] == ("it 's a charming and often affecting journey . ",)


def test_csv_with_quoted_commas_and_multiline_field():
    task = cls_task({"path": "pairs.csv"}, text_fields=("premise", "hypothesis"),
                    labels=("entailment", "neutral", "contradiction"))
    ex = read(task)
    assert task.splits["train"].resolved_format == "csv"
    assert ex.texts == [("A man, a plan.", "A plan."), ('He said "hi".', "He spoke."),
                        ("Two\nlines.", "One line.")]
    assert ex.targets == [0, 0, 2]


def test_jsonl():
    task = cls_task({"path": "pairs.jsonl"}, text_fields=("premise", "hypothesis"),
                    labels=("entailment", "neutral", "contradiction"))
    ex = read(task)
    assert ex.texts[1] == ('The cat "sat".', "The cat ran.")
    assert ex.targets == [0, 2, 1]
    assert ex.lines == [1, 3, 4]


def test_jsonl_with_renamed_keys():
    task = cls_task({"path": "pairs.jsonl", "columns": {"a": "premise", "label": "label"}},
                    text_fields=("a",), labels=("entailment", "neutral", "contradiction"))
    assert read(task).texts[0] == ("A man walks.",)


def test_jsonl_numeric_labels_are_label_text():
    # {"stars": 5} with labels "1".."5" is label "5", as the same value in a tsv would be.
    task = cls_task({"path": "stars.jsonl"}, text_fields=("text",), label_field="stars",
                    labels=("1", "2", "3", "4", "5"))
    ex = read(task)
    assert [task.labels[t] for t in ex.targets] == ["1", "5", "3"]


def test_jsonl_numeric_labels_in_custom_order():
    task = cls_task({"path": "stars.jsonl"}, text_fields=("text",), label_field="stars",
                    labels=("5", "4", "3", "2", "1"))
    ex = read(task)
    assert [task.labels[t] for t in ex.targets] == ["1", "5", "3"]


def test_jsonl_numeric_regression_target():
    ex = read(reg_task({"path": "stars.jsonl"}, text_fields=("text",), target_field="stars"))
    assert ex.targets == [1.0, 5.0, 3.0]


def test_jsonl_unicode_line_separator_inside_a_string():
    task = cls_task({"path": "line_separator.jsonl"}, text_fields=("text",), label_field="stars",
                    labels=("1", "2", "3", "4", "5"))
    ex = read(task)
    assert ex.texts == [("first\u2028part",), ("second",)]
    assert ex.lines == [1, 2]


def test_absolute_path_ignores_data_dir():
    task = cls_task({"path": str(FIX / "sst2_like.tsv"), "quoting": "none"}, text_fields=("sentence",))
    assert read(task, data_dir="/nonexistent").targets == [1, 0]


# ----------------------------------------------------------------------------- errors


def single(path, **kw):
    return cls_task({"path": path, "quoting": "none", **kw}, text_fields=("sentence",))


def error_of(task, data_dir=DATA_DIR) -> str:
    with pytest.raises(DataError) as err:
        read(task, data_dir=data_dir)
    msg = str(err.value)
    assert "\n" not in msg
    return msg


def assert_file_line(msg, name, line):
    assert re.search(rf"{re.escape(name)} line {line}\b", msg), msg


def test_label_outside_the_label_list():
    msg = error_of(single("bad_label.tsv"))
    assert_file_line(msg, "bad_label.tsv", 3)
    assert "'7'" in msg and "0, 1" in msg and "'t'" in msg and "'label'" in msg


def test_non_numeric_regression_target():
    msg = error_of(reg_task({"path": "bad_target_text.tsv"}))
    assert_file_line(msg, "bad_target_text.tsv", 3)
    assert "'high'" in msg and "'score'" in msg


@pytest.mark.parametrize("name, line", [("bad_target_nan.tsv", 2), ("bad_target_inf.tsv", 4)])
def test_non_finite_regression_target(name, line):
    msg = error_of(reg_task({"path": name}))
    assert_file_line(msg, name, line)
    assert "finite" in msg


def test_missing_column_in_header():
    msg = error_of(single("missing_column.tsv"))
    assert "missing_column.tsv" in msg and "'label'" in msg and "sentence, gold" in msg


def test_line_with_too_few_fields():
    msg = error_of(single("too_few_fields.tsv"))
    assert_file_line(msg, "too_few_fields.tsv", 3)
    assert "the line has 1 field, column" in msg and "'label'" in msg


def test_negative_indices_reach_the_first_field(tmp_path):
    (tmp_path / "f.tsv").write_text("A cat sat.\t1\nA dog ran.\t0\n")
    task = cls_task({"path": "f.tsv", "header": False, "columns": {"sentence": -2, "label": -1}},
                    text_fields=("sentence",))
    ex = read(task, data_dir=str(tmp_path))
    assert ex.texts == [("A cat sat.",), ("A dog ran.",)] and ex.targets == [1, 0]


def test_a_header_proven_by_a_named_column_is_not_taken_for_a_row(tmp_path):
    # pandas writes a frame with default column names as a header "0<TAB>1"; with the text
    # column named ('0' matched the header), the label's header cell '1' is no row.
    (tmp_path / "f.tsv").write_text("0\t1\nA cat sat.\t1\nA dog ran.\t0\n")
    task = cls_task({"path": "f.tsv", "columns": {"sentence": "0", "label": 1}}, text_fields=("sentence",))
    ex = read(task, data_dir=str(tmp_path))
    assert ex.targets == [1, 0] and ex.lines == [2, 3]


def test_index_beyond_the_last_field():
    msg = error_of(single("bad_label.tsv", columns={"label": 5}))
    assert_file_line(msg, "bad_label.tsv", 2)
    msg = error_of(single("bad_label.tsv", columns={"label": -3}))
    assert_file_line(msg, "bad_label.tsv", 2)


def test_non_utf8_bytes():
    msg = error_of(single("latin1.tsv"))
    assert_file_line(msg, "latin1.tsv", 3)
    assert "encoding" in msg


def test_declared_encoding_reads_latin1():
    ex = read(single("latin1.tsv", encoding="latin-1"))
    assert ex.texts[1] == ("café au lait",)


def test_unknown_encoding():
    msg = error_of(single("latin1.tsv", encoding="klingon-8"))
    assert "'klingon-8'" in msg and "'t'" in msg


@pytest.mark.parametrize("name", ["empty.tsv", "header_only.tsv"])
def test_empty_split(name):
    msg = error_of(single(name))
    assert name in msg and "'train'" in msg and ("empty" in msg or "no rows" in msg)


def test_empty_jsonl(tmp_path):
    (tmp_path / "e.jsonl").write_text("\n\n", encoding="utf-8")
    msg = error_of(single("e.jsonl"), data_dir=str(tmp_path))
    assert "e.jsonl" in msg and "no rows" in msg


def test_file_not_found():
    msg = error_of(single("nope.tsv"))
    assert os.path.join(DATA_DIR, "nope.tsv") in msg and "'t'" in msg and "'train'" in msg


def test_a_directory_is_named_as_one_not_as_a_missing_file(tmp_path):
    (tmp_path / "RTE").mkdir()
    msg = error_of(single("RTE"), data_dir=str(tmp_path))
    assert str(tmp_path / "RTE") in msg and "is a directory" in msg and "'train'" in msg


def test_unknown_split():
    with pytest.raises(DataError) as err:
        read(single("bad_label.tsv"), split="test")
    assert "'test'" in str(err.value) and "train" in str(err.value)


def test_bad_jsonl_lines(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"sentence": "x", "label": "0"}\n{"sentence": "y"\n', encoding="utf-8")
    assert_file_line(error_of(single("a.jsonl"), str(tmp_path)), "a.jsonl", 2)
    (tmp_path / "b.jsonl").write_text('{"sentence": "x", "label": "0"}\n["y", "1"]\n', encoding="utf-8")
    assert_file_line(error_of(single("b.jsonl"), str(tmp_path)), "b.jsonl", 2)
    (tmp_path / "c.jsonl").write_text('{"sentence": "x", "label": "0"}\n\n{"text": "y", "label": "1"}\n',
                                      encoding="utf-8")
    msg = error_of(single("c.jsonl"), str(tmp_path))
    assert_file_line(msg, "c.jsonl", 3)
    assert "'sentence'" in msg


# ----------------------------------------------------------------------------- tokenization


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model_dir))


def make_examples(n=12, seed=0, pair=True):
    rng = np.random.default_rng(seed)
    words = ["the", "cat", "dog", "is", "good", "bad", "a", "man", "movie"]
    texts = []
    for _ in range(n):
        first = " ".join(rng.choice(words, rng.integers(1, 12)))
        second = " ".join(rng.choice(words, rng.integers(1, 6)))
        texts.append((first, second) if pair else (first,))
    return Examples(texts=texts, targets=[int(x) for x in rng.integers(0, 2, n)],
                    lines=list(range(2, n + 2)), source="x.tsv")


def test_tokenize_matches_the_tokenizer(tokenizer):
    ex = make_examples()
    split = tokenize_examples(ex, tokenizer, 16, np.int64)
    assert len(split) == len(ex.texts)
    for i, (a, b) in enumerate(ex.texts):
        expected = tokenizer(a, b, truncation=True, max_length=16)
        start, end = split.offsets[i], split.offsets[i + 1]
        assert split.input_ids[start:end].tolist() == expected["input_ids"]
        assert split.token_type_ids[start:end].tolist() == expected["token_type_ids"]
    assert split.lengths.max() <= 16
    assert split.targets.tolist() == ex.targets and split.targets.dtype == np.int64
    assert split.lines.tolist() == ex.lines


def test_fingerprint_follows_what_the_model_sees(tokenizer, tmp_path):
    ex = make_examples()
    split = tokenize_examples(ex, tokenizer, 16, np.int64)
    # the same examples read again, or from the cache, give the same fingerprint
    assert tokenize_examples(make_examples(), tokenizer, 16, np.int64, cache_dir=str(tmp_path)).fingerprint() \
        == tokenize_examples(ex, tokenizer, 16, np.int64, cache_dir=str(tmp_path)).fingerprint() == split.fingerprint()
    flipped = Examples(texts=ex.texts, targets=[1 - ex.targets[0], *ex.targets[1:]], lines=ex.lines, source="x.tsv")
    other_text = Examples(texts=[("dog " + ex.texts[0][0], ex.texts[0][1]), *ex.texts[1:]], targets=ex.targets,
                          lines=ex.lines, source="x.tsv")
    others = [tokenize_examples(flipped, tokenizer, 16, np.int64),      # one label
              tokenize_examples(ex, tokenizer, 8, np.int64),           # a shorter length limit
              split.subset(range(len(split) - 1)),                     # one example fewer
              split.subset(range(len(split))[::-1])]                   # another order
    fingerprints = {split.fingerprint(), *(o.fingerprint() for o in others)}
    assert len(fingerprints) == 1 + len(others)
    # one word more (with room for it: nothing truncated)
    assert tokenize_examples(other_text, tokenizer, 64, np.int64).fingerprint() \
        != tokenize_examples(ex, tokenizer, 64, np.int64).fingerprint()


def test_the_cache_key_does_not_depend_on_what_was_tokenized_before(tokenizer, tmp_path, monkeypatch):
    before = data.tokenizer_fingerprint(tokenizer)
    tokenizer("the cat", "a dog", truncation=True, max_length=5, padding="max_length")
    assert data.tokenizer_fingerprint(tokenizer) == before
    ex = make_examples()
    tokenize_examples(ex, tokenizer, 64, np.int64, cache_dir=str(tmp_path))
    tokenize_examples(make_examples(seed=1), tokenizer, 8, np.int64)  # another length in between
    monkeypatch.setattr(type(tokenizer), "__call__", lambda *a, **k: pytest.fail("cache missed"))
    tokenize_examples(ex, tokenizer, 64, np.int64, cache_dir=str(tmp_path))


def test_tokenize_cache_hit_gives_identical_result(tokenizer, tmp_path, monkeypatch):
    ex = make_examples()
    first = tokenize_examples(ex, tokenizer, 16, np.int64, cache_dir=str(tmp_path))
    files = sorted(os.listdir(tmp_path))
    assert len(files) == 1 and files[0].endswith(".npz")

    def fail(*args, **kwargs):
        raise AssertionError("the tokenizer ran although the cache holds the result")

    monkeypatch.setattr(type(tokenizer), "__call__", fail)
    second = tokenize_examples(ex, tokenizer, 16, np.int64, cache_dir=str(tmp_path))
    for name in ("input_ids", "token_type_ids", "offsets", "targets", "lines"):
        a, b = getattr(first, name), getattr(second, name)
        assert a.dtype == b.dtype and np.array_equal(a, b), name
    assert sorted(os.listdir(tmp_path)) == files


def test_tokenize_cache_key_changes(tokenizer, tmp_path):
    ex = make_examples()
    tokenize_examples(ex, tokenizer, 16, np.int64, cache_dir=str(tmp_path))
    short = tokenize_examples(ex, tokenizer, 8, np.int64, cache_dir=str(tmp_path))
    assert len(os.listdir(tmp_path)) == 2
    assert short.lengths.max() <= 8
    changed = Examples(texts=[("the man", "a dog")] + ex.texts[1:], targets=ex.targets,
                       lines=ex.lines, source=ex.source)
    tokenize_examples(changed, tokenizer, 16, np.int64, cache_dir=str(tmp_path))
    relabelled = Examples(texts=ex.texts, targets=[1 - t for t in ex.targets], lines=ex.lines,
                          source=ex.source)
    assert tokenize_examples(relabelled, tokenizer, 16, np.int64,
                             cache_dir=str(tmp_path)).targets.tolist() == relabelled.targets
    assert len(os.listdir(tmp_path)) == 4


def test_tokenize_cache_key_follows_the_pair_boundary_and_the_target_dtype(tokenizer, tmp_path):
    one = Examples(texts=[("the cat", "a dog")], targets=[1], lines=[2], source="x.tsv")
    moved = Examples(texts=[("the ca", "ta dog")], targets=[1], lines=[2], source="x.tsv")  # same characters
    tokenize_examples(one, tokenizer, 16, np.int64, cache_dir=str(tmp_path))
    second = tokenize_examples(moved, tokenizer, 16, np.int64, cache_dir=str(tmp_path))
    expected = tokenize_examples(moved, tokenizer, 16, np.int64)
    assert second.input_ids.tolist() == expected.input_ids.tolist()  # not the first pair's entry
    assert second.token_type_ids.tolist() == expected.token_type_ids.tolist()
    as_float = tokenize_examples(one, tokenizer, 16, np.float32, cache_dir=str(tmp_path))
    assert as_float.targets.dtype == np.float32
    assert len(os.listdir(tmp_path)) == 3


def test_a_cached_split_without_token_types_reads_back_without_them(tiny_model_dir, tmp_path):
    from transformers import AutoTokenizer

    no_types = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    no_types.model_input_names = ["input_ids", "attention_mask"]  # as DistilBERT / RoBERTa
    ex = make_examples()
    built = tokenize_examples(ex, no_types, 16, np.int64, cache_dir=str(tmp_path))
    cached = tokenize_examples(ex, no_types, 16, np.int64, cache_dir=str(tmp_path))
    assert built.token_type_ids is None and cached.token_type_ids is None
    assert "token_type_ids" not in collate(cached, [0, 1], 0)


def test_tokenize_cache_key_follows_the_truncation_side(tiny_model_dir, tmp_path):
    """A tokenizer that cuts long texts from the left must not reuse right-cut cached ids."""
    from transformers import AutoTokenizer

    right = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    left = AutoTokenizer.from_pretrained(str(tiny_model_dir), truncation_side="left")
    ex = Examples(texts=[("the cat is good the dog is bad a man",)], targets=[0], lines=[1], source="s")
    cut_right = tokenize_examples(ex, right, 6, np.int64, cache_dir=str(tmp_path))
    cut_left = tokenize_examples(ex, left, 6, np.int64, cache_dir=str(tmp_path))
    assert cut_left.input_ids.tolist() == left(*ex.texts[0], truncation=True, max_length=6)["input_ids"]
    assert cut_left.input_ids.tolist() != cut_right.input_ids.tolist()


def test_tokenize_cache_keeps_line_numbers(tokenizer, tmp_path):
    ex = make_examples()
    tokenize_examples(ex, tokenizer, 16, np.int64, cache_dir=str(tmp_path))
    moved = Examples(texts=ex.texts, targets=ex.targets, lines=[n + 1 for n in ex.lines],
                     source=ex.source)  # e.g. a blank line inserted at the top
    again = tokenize_examples(moved, tokenizer, 16, np.int64, cache_dir=str(tmp_path))
    assert again.lines.tolist() == moved.lines


@pytest.mark.parametrize("damage", ["not a zip", "cut short", "empty"])
def test_damaged_cache_entry_is_rebuilt(tokenizer, tmp_path, damage):
    ex = make_examples()
    first = tokenize_examples(ex, tokenizer, 16, np.int64, cache_dir=str(tmp_path))
    (entry,) = os.listdir(tmp_path)
    whole = (tmp_path / entry).read_bytes()
    (tmp_path / entry).write_bytes({"not a zip": b"not a zip file", "cut short": whole[: len(whole) // 2],
                                    "empty": b""}[damage])
    again = tokenize_examples(ex, tokenizer, 16, np.int64, cache_dir=str(tmp_path))
    assert np.array_equal(first.input_ids, again.input_ids)


def test_an_interrupted_cache_write_leaves_nothing_under_the_entrys_name(tokenizer, tmp_path, monkeypatch):
    """The entry is written beside its name and renamed into place: a run killed while
    writing leaves no half entry for the next run to trust, and no temporary either."""
    ex = make_examples()

    def killed_while_writing(handle, **arrays):
        handle.write(b"PK\x03\x04 torn")
        raise KeyboardInterrupt

    monkeypatch.setattr(data.np, "savez", killed_while_writing)
    with pytest.raises(KeyboardInterrupt):
        tokenize_examples(ex, tokenizer, 16, np.int64, cache_dir=str(tmp_path))
    monkeypatch.undo()
    assert os.listdir(tmp_path) == []
    again = tokenize_examples(ex, tokenizer, 16, np.int64, cache_dir=str(tmp_path))
    assert np.array_equal(again.input_ids, tokenize_examples(ex, tokenizer, 16, np.int64).input_ids)


def test_max_length_equal_to_the_encoders_limit_is_allowed(tokenizer, tmp_path, monkeypatch):
    task = reg_task({"path": "stsb_like.tsv", "quoting": "none"})
    monkeypatch.setattr(tokenizer, "model_max_length", task.max_length)
    assert len(data.load_tokenized(task, "train", tokenizer, DATA_DIR, str(tmp_path))) == 3
    monkeypatch.setattr(tokenizer, "model_max_length", task.max_length - 1)
    with pytest.raises(Exception, match=f"at most {task.max_length - 1}"):
        data.load_tokenized(task, "train", tokenizer, DATA_DIR, str(tmp_path))


def test_load_tokenized_from_file(tokenizer, tmp_path):
    task = reg_task({"path": "stsb_like.tsv", "quoting": "none"})
    split = data.load_tokenized(task, "train", tokenizer, DATA_DIR, str(tmp_path))
    assert split.targets.dtype == np.float32
    assert split.targets.tolist() == pytest.approx([5.0, 3.8, 0.25])
    assert split.lines.tolist() == [2, 3, 4]
    labels = data.load_tokenized(cls_task({"path": "rte_like.tsv", "quoting": "none",
                                           "columns": {"sentence1": 1, "sentence2": 2, "label": -1}},
                                          labels=("entailment", "not_entailment")),
                                 "train", tokenizer, DATA_DIR, str(tmp_path))
    assert labels.targets.dtype == np.int64 and labels.targets.tolist() == [0, 1, 0, 1]  # class ids, for cross-entropy


# ----------------------------------------------------------------------------- collate


def test_collate_pads_to_the_longest(tokenizer):
    split = tokenize_examples(make_examples(20), tokenizer, 32, np.int64)
    indices = [3, 0, 7, 11]
    batch = collate(split, indices, pad_token_id=0)
    lengths = split.lengths[indices]
    width = int(lengths.max())
    assert batch["input_ids"].shape == (4, width)
    assert batch["attention_mask"].shape == (4, width)
    assert batch["input_ids"].dtype == torch.long
    for row, (i, n) in enumerate(zip(indices, lengths)):
        start = split.offsets[i]
        assert batch["input_ids"][row, :n].tolist() == split.input_ids[start:start + n].tolist()
        assert batch["attention_mask"][row, :n].eq(1).all()
        assert batch["attention_mask"][row, n:].eq(0).all()
        assert batch["input_ids"][row, n:].eq(0).all()
    assert batch["attention_mask"].sum().item() == int(lengths.sum())
    assert batch["index"].tolist() == indices
    # each row keeps its own label (distinct labels, so a misalignment cannot coincide)
    labelled = TokenizedSplit(split.input_ids, split.token_type_ids, split.offsets,
                              np.arange(100, 100 + len(split)), split.lines)
    assert collate(labelled, indices, pad_token_id=0)["labels"].tolist() == [100 + i for i in indices]
    assert batch["labels"].tolist() == split.targets[indices].tolist()
    assert batch["labels"].dtype == torch.long


def test_collate_token_types_for_pairs(tokenizer):
    split = tokenize_examples(make_examples(6), tokenizer, 32, np.int64)
    batch = collate(split, [0, 1, 2], pad_token_id=0)
    types = batch["token_type_ids"]
    assert types.shape == batch["input_ids"].shape
    for row in range(3):
        real = types[row][batch["attention_mask"][row].bool()]
        assert real[0] == 0 and real[-1] == 1  # [CLS] first ... second [SEP]
        assert (types[row][~batch["attention_mask"][row].bool()] == 0).all()


def test_collate_regression_labels_and_pad_multiple():
    split = TokenizedSplit(input_ids=np.arange(1, 11, dtype=np.int32), token_type_ids=None,
                           offsets=np.array([0, 3, 10]), targets=np.array([0.5, 1.5], np.float32),
                           lines=np.array([2, 3]))
    batch = collate(split, [0, 1], pad_token_id=99, pad_to_multiple_of=8)
    assert "token_type_ids" not in batch
    assert batch["input_ids"].shape == (2, 8)
    assert batch["input_ids"][0].tolist() == [1, 2, 3] + [99] * 5
    assert batch["labels"].dtype == torch.float32 and batch["labels"].tolist() == [0.5, 1.5]
    assert collate(split, [0, 1], pad_token_id=99, pad_to_multiple_of=7)["input_ids"].shape == (2, 7)  # already one


def test_subset_keeps_rows():
    split = TokenizedSplit(input_ids=np.arange(10, dtype=np.int32), token_type_ids=np.zeros(10, np.int8),
                           offsets=np.array([0, 3, 4, 10]), targets=np.array([0, 1, 0]),
                           lines=np.array([2, 3, 4]))
    sub = split.subset([2, 0])
    assert sub.input_ids.tolist() == [4, 5, 6, 7, 8, 9, 0, 1, 2]
    assert sub.offsets.tolist() == [0, 6, 9] and sub.lines.tolist() == [4, 2]


def test_eval_batches_cover_every_example_once(tokenizer):
    split = tokenize_examples(make_examples(23), tokenizer, 32, np.int64)
    seen = []
    for batch in eval_batches(split, 5, 0):
        seen.extend(batch["index"].tolist())
        assert batch["input_ids"].shape[1] == split.lengths[batch["index"].numpy()].max()
    assert sorted(seen) == list(range(23))
    # sorted by length, longest first: the least padding
    widths = [batch["input_ids"].shape[1] for batch in eval_batches(split, 5, 0)]
    assert widths == sorted(widths, reverse=True) and widths[0] == split.lengths.max()
    assert [int(split.lengths[i]) for i in seen] == sorted(split.lengths.tolist(), reverse=True)


# ----------------------------------------------------------------------------- epoch batches


def skewed_lengths(n=2000, seed=0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(5, 15, n)
    long = rng.random(n) < 0.1
    lengths[long] = rng.integers(100, 128, long.sum())
    return lengths


@pytest.mark.parametrize("grouped", [True, False])
@pytest.mark.parametrize("n, batch_size", [(2000, 16), (37, 8), (5, 8)])
def test_every_index_once_per_epoch(grouped, n, batch_size):
    lengths = skewed_lengths(n)
    batches = epoch_batches(lengths, batch_size, seed=3, epoch=0, length_grouped=grouped)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(n))
    assert len(batches) == data.num_batches(n, batch_size)
    assert all(1 <= len(b) <= batch_size for b in batches)


@pytest.mark.parametrize("grouped", [True, False])
def test_epoch_batches_are_deterministic_and_vary(grouped):
    lengths = skewed_lengths(500)

    def run(seed, epoch):
        return [b.tolist() for b in epoch_batches(lengths, 16, seed, epoch, grouped)]

    assert run(1, 0) == run(1, 0)
    assert run(1, 0) != run(1, 1)
    assert run(1, 0) != run(2, 0)


def test_length_grouping_reduces_padding():
    lengths = skewed_lengths(3000)
    real_g, padded_g = padding_stats(lengths, epoch_batches(lengths, 32, 1, 0, True))
    real_r, padded_r = padding_stats(lengths, epoch_batches(lengths, 32, 1, 0, False))
    assert real_g == real_r == int(lengths.sum())
    assert padded_g >= real_g
    assert padded_g < 0.5 * padded_r


def test_length_grouped_batches_are_not_sorted_globally():
    lengths = skewed_lengths(3000)
    maxima = [int(lengths[b].max()) for b in epoch_batches(lengths, 32, 1, 0, True)]
    assert maxima != sorted(maxima) and maxima != sorted(maxima, reverse=True)


def test_length_grouped_batches_vary_in_make_up_between_epochs():
    # grouping sorts inside windows of LENGTH_GROUP_WINDOW batches, not over the whole split:
    # a global sort would give every epoch the same batches (all lengths differ here)
    lengths = np.arange(4 * 2 * data.LENGTH_GROUP_WINDOW)
    def make_up(epoch):
        return {frozenset(b.tolist()) for b in epoch_batches(lengths, 2, 1, epoch, True)}
    assert make_up(0) != make_up(1)


def test_length_grouped_batch_order_is_shuffled_inside_a_window():
    lengths = np.random.default_rng(0).permutation(40)  # one window: 10 batches of 4
    orders = [[int(lengths[b].max()) for b in epoch_batches(lengths, 4, seed, 0, True)] for seed in range(5)]
    assert any(maxima != sorted(maxima, reverse=True) for maxima in orders)


def test_stratified_subsets_give_leftover_places_by_largest_remainder_and_come_sorted():
    targets = np.array([0] * 70 + [1] * 20 + [2] * 10)
    chosen = data.stratified_subset(targets, 15, seed=1)
    # quotas 10.5 / 3 / 1.5: floors 10, 3, 1; the one place left goes to a .5 remainder, not to label 1's 0
    assert np.bincount(targets[chosen]).tolist() == [11, 3, 1]
    assert chosen.tolist() == sorted(chosen.tolist())  # does not depend on the draw order
    unstratified = data.stratified_subset(targets, 15, seed=1, stratify=False).tolist()
    assert unstratified == sorted(unstratified)


def test_padding_stats_by_hand():
    lengths = np.array([3, 5, 2, 2])
    assert padding_stats(lengths, [np.array([0, 1]), np.array([2, 3])]) == (12, 14)


# ----------------------------------------------------------------------------- task stream


def stream_split(n=45):
    rng = np.random.default_rng(5)
    lengths = rng.integers(2, 9, n)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return TokenizedSplit(input_ids=rng.integers(5, 50, offsets[-1]).astype(np.int32), token_type_ids=None,
                          offsets=offsets, targets=np.arange(n), lines=np.arange(n) + 2)


def test_stream_epochs_cover_the_split():
    stream = TaskStream(stream_split(), batch_size=8, seed=1, pad_token_id=0)
    assert len(stream) == 6
    seen = [stream.next_batch()["index"].tolist() for _ in range(len(stream))]
    assert sorted(i for b in seen for i in b) == list(range(45))
    assert stream.state_dict() == {"epoch": 0, "position": 6}
    second = [stream.next_batch()["index"].tolist() for _ in range(len(stream))]
    assert stream.state_dict() == {"epoch": 1, "position": 6}
    assert sorted(i for b in second for i in b) == list(range(45))
    assert second != seen  # a new epoch is a new order


@pytest.mark.parametrize("grouped", [True, False])
@pytest.mark.parametrize("skip", [0, 4, 6, 13])
def test_stream_resumes_the_identical_batch_sequence(grouped, skip):
    split = stream_split()
    original = TaskStream(split, 8, seed=7, pad_token_id=0, length_grouped=grouped, stream_id=2)
    for _ in range(skip):
        original.next_batch()
    state = original.state_dict()
    expected = [original.next_batch() for _ in range(10)]  # crosses an epoch boundary

    resumed = TaskStream(split, 8, seed=7, pad_token_id=0, length_grouped=grouped, stream_id=2)
    resumed.next_batch()  # a stale position and cached epoch must not leak into the resume
    resumed.load_state_dict(state)
    for a, b in zip(expected, (resumed.next_batch() for _ in range(10))):
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), key


def test_streams_differ_by_stream_id_and_seed():
    split = stream_split()

    def order(seed, stream_id):
        s = TaskStream(split, 8, seed=seed, pad_token_id=0, stream_id=stream_id)
        return [s.next_batch()["index"].tolist() for _ in range(6)]

    assert order(1, 0) == order(1, 0)
    assert order(1, 0) != order(1, 1)
    assert order(1, 0) != order(2, 0)


def test_a_column_named_twice_in_the_header_is_an_error_not_a_guess(tmp_path):
    (tmp_path / "twice.tsv").write_text("sentence1\tsentence1\tlabel\na\tb\t1\n", encoding="utf-8")
    with pytest.raises(DataError) as err:
        read_split(cls_task({"path": "twice.tsv"}), "train", str(tmp_path))
    assert "column 'sentence1' appears 2 times" in str(err.value)


def test_a_quoted_multi_line_text_without_tabs_is_one_field(tmp_path):
    """As pandas writes a text with a line break: a real field, not a stray quote."""
    (tmp_path / "multi.tsv").write_text('sentence\tlabel\n"first line\nsecond line"\t1\nnext\t0\n', encoding="utf-8")
    examples = read_split(cls_task({"path": "multi.tsv"}, text_fields=("sentence",)), "train", str(tmp_path))
    assert examples.texts == [("first line\nsecond line",), ("next",)]


# ---------------------------------------------------------------------------------------
# Hub sources, read from local dataset folders (load_dataset reads them offline)


def _hub_folder(tmp_path, columns: dict, features=None) -> str:
    datasets = pytest.importorskip("datasets")
    folder = tmp_path / "hub"
    folder.mkdir()
    datasets.Dataset.from_dict(columns, features=features).to_parquet(str(folder / "train.parquet"))
    return str(folder)


def test_hub_number_column_holds_labels_not_positions(tmp_path):
    """A plain int column (star ratings) is read as text, as a file's is: 1 is label "1"."""
    folder = _hub_folder(tmp_path, {"text": ["a", "b", "c"], "stars": [1, 5, 3]})
    task = cls_task({"hub": folder, "split": "train"}, text_fields=("text",),
                    labels=[str(i) for i in range(1, 6)], label_field="stars")
    examples = read_split(task, "train", "/")
    assert [task.labels[t] for t in examples.targets] == ["1", "5", "3"]


def test_hub_class_labels_match_by_name_in_any_order(tmp_path):
    datasets = pytest.importorskip("datasets")
    features = datasets.Features({"sentence1": datasets.Value("string"), "sentence2": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["entailment", "not_entailment"])})
    folder = _hub_folder(tmp_path, {"sentence1": ["a", "b"], "sentence2": ["c", "d"], "label": [0, 1]},
                         features)
    (tmp_path / "null").mkdir()  # a missing class id is an error, not a TypeError traceback
    with_null = _hub_folder(tmp_path / "null", {"sentence1": ["a"], "sentence2": ["c"], "label": [None]}, features)
    with pytest.raises(DataError, match=r"row 1: task 't': field 'label': label None is not in the label list"):
        read_split(cls_task({"hub": with_null, "split": "train"}, labels=["entailment", "not_entailment"]),
                   "train", "/")
    for labels in (["entailment", "not_entailment"], ["not_entailment", "entailment"]):
        task = cls_task({"hub": folder, "split": "train"}, labels=labels)
        examples = read_split(task, "train", "/")
        assert [task.labels[t] for t in examples.targets] == ["entailment", "not_entailment"]


def test_a_hidden_hub_label_is_an_error_when_labels_match_by_name(tmp_path):
    # the hub's test splits mark hidden labels -1: never names[-1], the last class
    datasets = pytest.importorskip("datasets")
    features = datasets.Features({"sentence1": datasets.Value("string"), "sentence2": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["entailment", "not_entailment"])})
    folder = _hub_folder(tmp_path, {"sentence1": ["a", "b"], "sentence2": ["c", "d"], "label": [0, -1]}, features)
    task = cls_task({"hub": folder, "split": "train"}, labels=["not_entailment", "entailment"])
    with pytest.raises(DataError, match=r"row 2: task 't': field 'label': .*-1.*hidden label"):
        read_split(task, "train", "/")


def test_hub_class_ids_index_labels_of_other_names_and_count_must_match(tmp_path):
    datasets = pytest.importorskip("datasets")
    features = datasets.Features({"sentence": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["negative", "positive"])})
    folder = _hub_folder(tmp_path, {"sentence": ["bad", "good"], "label": [0, 1]}, features)
    task = cls_task({"hub": folder, "split": "train"}, text_fields=("sentence",), labels=["0", "1"])
    assert read_split(task, "train", "/").targets == [0, 1]
    task = cls_task({"hub": folder, "split": "train"}, text_fields=("sentence",), labels=["0", "1", "2"])
    with pytest.raises(DataError, match=r"task 't': field 'labels': .* has 2 classes \(negative, positive\)"):
        read_split(task, "train", "/")


def test_a_hub_column_the_dataset_lacks_is_named(tmp_path):
    folder = _hub_folder(tmp_path, {"text": ["a good film"], "label": ["1"]})
    task = cls_task({"hub": folder, "split": "train"}, text_fields=("sentence",))
    with pytest.raises(DataError, match=r"task 't': field 'sentence': .* has no column 'sentence' \(columns: text, label\)"):
        read_split(task, "train", "/")


def test_hub_missing_text_is_an_error_not_the_word_none(tmp_path):
    folder = _hub_folder(tmp_path, {"sentence": ["a good film", None], "label": ["1", "0"]})
    task = cls_task({"hub": folder, "split": "train"}, text_fields=("sentence",))
    with pytest.raises(DataError, match=r"row 2: task 't': field 'sentence': expected text or a number, got null"):
        read_split(task, "train", "/")


def test_an_unreachable_hub_is_one_line_without_the_clients_retry_reports(monkeypatch, caplog, capsys):
    datasets = pytest.importorskip("datasets")
    import logging

    def unreachable(*args, **kwargs):
        for attempt in range(1, 6):  # what huggingface_hub logs on each retry
            logging.getLogger("huggingface_hub.utils._http").warning("Retrying in 1s [Retry %d/5].", attempt)
        raise ConnectionError("Couldn't reach 'nyu-mll/glue' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", unreachable)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    task = cls_task({"hub": "nyu-mll/glue", "name": "rte", "split": "train"})
    with caplog.at_level("WARNING"), pytest.raises(DataError) as err:
        read_split(task, "train", "/")
    assert "Retrying" not in caplog.text + capsys.readouterr().err
    assert "Couldn't reach 'nyu-mll/glue'" in str(err.value) and "HF_HUB_OFFLINE=1 fails at once" in str(err.value)
    assert "cannot load hub:nyu-mll/glue/rte[train]" in str(err.value)  # the dataset, its configuration, its split


def test_a_header_column_typo_or_a_bom_is_named(tmp_path):
    (tmp_path / "t.tsv").write_text("sentense\tlabel\ngood\t1\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"no column 'sentence' in the header \(did you mean 'sentense'\?\)"):
        read_split(cls_task({"path": "t.tsv"}, text_fields=("sentence",)), "train", str(tmp_path))
    (tmp_path / "b.tsv").write_text("\ufeffsentence\tlabel\ngood\t1\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"starts with a UTF-8 BOM: read it with encoding utf-8-sig"):
        read_split(cls_task({"path": "b.tsv", "encoding": "utf-8"}, text_fields=("sentence",)), "train",
                   str(tmp_path))


def test_a_json_array_file_says_json_lines_are_expected(tmp_path):
    (tmp_path / "t.json").write_text('[{"sentence": "good", "label": "1"}]', encoding="utf-8")
    with pytest.raises(DataError, match=r"line 1: .*one object per line"):
        read_split(cls_task({"path": "t.json"}, text_fields=("sentence",)), "train", str(tmp_path))


def test_hub_number_column_with_named_labels_says_it_holds_numbers(tmp_path):
    folder = _hub_folder(tmp_path, {"text": ["a", "b"], "label": [0, 1]})
    task = cls_task({"hub": folder, "split": "train"}, text_fields=("text",), labels=["neg", "pos"])
    with pytest.raises(DataError, match=r"field 'labels': .* column 'label' holds numbers, not class names"):
        read_split(task, "train", "/")


# ---- proposed by the mutation audit
def test_index_columns_past_a_shorter_header_read_every_row(tmp_path):
    """Every column by index, the target beyond the header's fields (rows with more fields
    than the header): the header check has nothing to look at, and the rows read."""
    (tmp_path / "f.tsv").write_text("sentence\nA cat sat.\t1\nA dog ran.\t0\n")
    task = cls_task({"path": "f.tsv", "quoting": "none", "columns": {"sentence": 0, "label": 1}},
                    text_fields=("sentence",))
    ex = read(task, data_dir=str(tmp_path))
    assert ex.texts == [("A cat sat.",), ("A dog ran.",)] and ex.targets == [1, 0] and ex.lines == [2, 3]


@pytest.mark.parametrize("blank", ["\t\n", "  \t \n", "   \n"])
def test_a_line_of_only_whitespace_is_skipped_like_a_blank_one(tmp_path, blank):
    (tmp_path / "f.tsv").write_text("sentence\tlabel\nA cat sat.\t1\n" + blank + "A dog ran.\t0\n")
    task = cls_task({"path": "f.tsv"}, text_fields=("sentence",))
    ex = read(task, data_dir=str(tmp_path))
    assert ex.targets == [1, 0] and ex.lines == [2, 4]


@pytest.mark.parametrize("blank", ["   \n", "\t\n", "\r\n"])
def test_a_jsonl_line_of_only_whitespace_is_skipped_like_a_blank_one(tmp_path, blank):
    (tmp_path / "f.jsonl").write_bytes(('{"sentence": "A cat sat.", "label": "1"}\n' + blank
                                        + '{"sentence": "A dog ran.", "label": "0"}\n').encode())
    task = cls_task({"path": "f.jsonl"}, text_fields=("sentence",))
    ex = read(task, data_dir=str(tmp_path))
    assert ex.targets == [1, 0] and ex.lines == [1, 3]


def test_unlabeled_reading_ignores_a_target_column_the_file_lacks(tmp_path):
    """A test file has no label column: the split's 'columns' naming it (by name or by an
    index past its fields) is not looked up when reading without labels."""
    (tmp_path / "test.tsv").write_text("sentence\nA cat sat.\nA dog ran.\n")
    for label in ("gold_label", 5):
        task = cls_task({"path": "test.tsv", "columns": {"label": label}}, text_fields=("sentence",))
        ex = read_split(task, "train", str(tmp_path), labeled=False)
        assert ex.texts == [("A cat sat.",), ("A dog ran.",)] and ex.targets == [-1, -1]


def test_header_names_are_read_without_surrounding_spaces(tmp_path):
    (tmp_path / "f.tsv").write_text(" sentence \tlabel \nA cat sat.\t1\n")
    ex = read(cls_task({"path": "f.tsv"}, text_fields=("sentence",)), data_dir=str(tmp_path))
    assert ex.texts == [("A cat sat.",)] and ex.targets == [1]


def test_a_quote_never_closed_is_named_as_such(tmp_path):
    (tmp_path / "q.csv").write_text('sentence,label\nok,1\n"never closed,0\nnext,1\n', encoding="utf-8")
    task = cls_task({"path": "q.csv", "quoting": "minimal"}, text_fields=("sentence",))
    # the file as resolved and the task, as every other data error names them
    with pytest.raises(DataError, match=rf"^{tmp_path}/q.csv line 3: task '{task.name}': a double quote opened "
                                        r"here is never closed; if quotes"):
        read_split(task, "train", str(tmp_path))
