"""run.json: one record per session, and a resume on other examples refused."""

from __future__ import annotations

import json

import pytest
import torch

from mtsmart.errors import ConfigError
from mtsmart.provenance import check_same_data, record_session, session_record, software_versions


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
