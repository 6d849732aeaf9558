"""run.json: one record per session, and a resume on other examples refused."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from mtsmart.errors import ConfigError
from mtsmart.provenance import (check_same_data, encoder_fingerprint, record_session, session_record,
                                 software_versions)


def data(fingerprint: str) -> dict:
    return {"rte": {"train": {"split": "train", "examples": 3, "fingerprint": fingerprint},
                    "eval": {"split": "dev", "examples": 2, "fingerprint": "dev-1"}}}


def sessions(run_dir) -> list[dict]:
    return json.loads((run_dir / "run.json").read_text())["sessions"]


def test_a_resume_appends_and_a_new_run_starts_afresh(tmp_path):
    cpu = torch.device("cpu")
    record_session(str(tmp_path), session_record(["mtsmart", "train", "a.yaml"], cpu, 1, data("x")), resumed=False)
    record_session(str(tmp_path), session_record(["mtsmart", "train", "--resume"], cpu, 1, data("x")), resumed=True)
    assert [s["command"][-1] for s in sessions(tmp_path)] == ["a.yaml", "--resume"]
    assert sessions(tmp_path)[0]["versions"] == software_versions()
    assert software_versions()["torch"] == torch.__version__
    record_session(str(tmp_path), session_record(None, cpu, 1, data("y")), resumed=False)
    assert [s["command"] for s in sessions(tmp_path)] == [None]


def test_changed_examples_are_named(tmp_path):
    record_session(str(tmp_path), session_record(None, torch.device("cpu"), 1, data("x")), resumed=False)
    check_same_data(str(tmp_path), data("x"))
    check_same_data(str(tmp_path / "before-run-json"), data("y"))  # nothing recorded: nothing to compare
    with pytest.raises(ConfigError, match=r"task 'rte', train split 'train': its examples changed .*fingerprint x; now 3, y"):
        check_same_data(str(tmp_path), data("y"))


def test_a_changed_evaluation_split_is_named_too(tmp_path):
    """The dev split picks the best checkpoint and stops the run early: a resume scored
    on other examples would compare selection scores of two different sets."""
    record_session(str(tmp_path), session_record(None, torch.device("cpu"), 1, data("x")), resumed=False)
    changed = data("x")
    changed["rte"]["eval"] = {"split": "dev", "examples": 2, "fingerprint": "dev-2"}
    with pytest.raises(ConfigError, match=r"task 'rte', eval split 'dev': its examples changed .*fingerprint dev-1; now 2, dev-2"):
        check_same_data(str(tmp_path), changed)


def test_a_damaged_run_json_refuses_the_resume(tmp_path):
    """run.json cut short (a crash while it was written) cannot vouch for the data: the
    resume is refused instead of skipping the check."""
    (tmp_path / "run.json").write_text('{"sessions": [{"data"', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"run.json: damaged .*cannot be resumed safely"):
        check_same_data(str(tmp_path), data("x"))


def test_a_session_records_how_many_replicas_ran_it(tmp_path):
    """Under torchrun the number of processes changes the dropout and noise draws: run.json
    is where a later reader finds it."""
    assert session_record(["mtsmart", "train"], torch.device("cpu"), 4, data("x"))["replicas"] == 4


def test_a_missing_library_is_recorded_as_not_installed(monkeypatch):
    """A library that is not installed is named as such rather than dropped from the record
    or stopping the run."""
    from importlib import metadata

    import mtsmart.provenance as provenance

    real = metadata.version

    def version(package):
        if package == "datasets":
            raise metadata.PackageNotFoundError(package)
        return real(package)

    monkeypatch.setattr(provenance.metadata, "version", version)
    provenance._software_versions.cache_clear()
    try:
        versions = provenance.software_versions()
    finally:
        provenance._software_versions.cache_clear()
    assert versions["datasets"] == "not installed"
    assert set(versions) == {"mtsmart", "python", *provenance.PACKAGES}


def test_the_encoder_fingerprint_is_of_its_config_and_every_byte_of_its_weights(tmp_path):
    """Two folders of the same weights share a fingerprint; another config, or a change
    anywhere in a weights file larger than one read (1 MiB), gives another; tokenizer files
    do not count; a hub name has none (the name is the record)."""
    encoder = tmp_path / "encoder"
    encoder.mkdir()
    (encoder / "config.json").write_text('{"hidden_size": 32}')
    weights = bytearray(b"w" * (3 << 20))
    (encoder / "model.safetensors").write_bytes(bytes(weights))
    (encoder / "vocab.txt").write_text("a\nb\n")
    first = encoder_fingerprint(str(encoder))
    assert first is not None and len(first) == 16

    copy = tmp_path / "copy"
    shutil.copytree(encoder, copy)
    (copy / "vocab.txt").write_text("c\n")
    assert encoder_fingerprint(str(copy)) == first

    weights[(2 << 20) + 5] = ord("x")  # past the first read
    (copy / "model.safetensors").write_bytes(bytes(weights))
    assert encoder_fingerprint(str(copy)) != first

    (encoder / "config.json").write_text('{"hidden_size": 64}')
    assert encoder_fingerprint(str(encoder)) != first

    assert encoder_fingerprint("sentence-transformers/all-MiniLM-L6-v2") is None


def test_weights_saved_the_older_way_count_in_the_fingerprint(tmp_path):
    """pytorch_model.bin, as encoders saved before safetensors are: other weights there must
    give another fingerprint."""
    encoder = tmp_path / "encoder"
    encoder.mkdir()
    (encoder / "config.json").write_text('{"hidden_size": 32}')
    (encoder / "pytorch_model.bin").write_bytes(b"weights one")
    first = encoder_fingerprint(str(encoder))
    (encoder / "pytorch_model.bin").write_bytes(b"weights two")
    assert encoder_fingerprint(str(encoder)) != first


def test_a_split_the_first_session_did_not_record_is_not_compared(tmp_path):
    """A resume's data may name a task or split role the run's first session lacks (a run
    from an older mtsmart recorded no eval role): nothing to compare, so no refusal."""
    first = {"rte": {"train": {"split": "train", "examples": 3, "fingerprint": "x"}}}
    record_session(str(tmp_path), session_record(None, torch.device("cpu"), 1, first), resumed=False)
    check_same_data(str(tmp_path), {**data("x"), "cola": data("z")["rte"]})
