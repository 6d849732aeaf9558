"""checkpoint.py at the level of single files: heads that share a name prefix, the data
folder a checkpoint records, and checkpoints of another format. Whole runs saving,
resuming and reloading are in tests/e2e."""

from __future__ import annotations

import json

import pytest
import torch

from mtsmart.checkpoint import FORMAT_VERSION, load_checkpoint, read_meta, save_checkpoint
from mtsmart.config import TrainConfig
from mtsmart.errors import CheckpointError
from mtsmart.model import MultiTaskModel


def saved(tmp_path, tiny_model_dir, heads, data_dir=None):
    from transformers import AutoTokenizer, BertModel

    model = MultiTaskModel(BertModel.from_pretrained(str(tiny_model_dir)), heads, pooling="cls")
    path = tmp_path / "ckpt"
    save_checkpoint(str(path), model, AutoTokenizer.from_pretrained(str(tiny_model_dir)), {}, TrainConfig(),
                    {"global_step": 1}, data_dir=data_dir)
    return path, model


def test_heads_whose_names_share_a_prefix_load_their_own_weights(tmp_path, tiny_model_dir):
    path, model = saved(tmp_path, tiny_model_dir, {"sst": (2, 0.1), "sst2": (3, 0.1)})
    loaded = load_checkpoint(str(path))
    for name in ("sst", "sst2"):
        for key, value in model.heads[name].state_dict().items():
            assert torch.equal(loaded.model.heads[name].state_dict()[key], value), (name, key)


def test_a_relative_data_dir_is_recorded_as_an_absolute_path(tmp_path, tiny_model_dir, monkeypatch):
    """Commands that read the checkpoint from another folder still find the data."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    path, _ = saved(tmp_path, tiny_model_dir, {"a": (2, 0.1)}, data_dir="data")
    monkeypatch.chdir(tmp_path / "data")
    assert load_checkpoint(str(path)).data_dir == str(tmp_path / "data")


def test_a_checkpoint_of_another_format_is_refused_in_one_line(tmp_path):
    (tmp_path / "meta.json").write_text(json.dumps({"format_version": FORMAT_VERSION + 1, "heads": {},
                                                    "pooling": "cls"}))
    with pytest.raises(CheckpointError, match=f"format {FORMAT_VERSION + 1} is not supported"):
        read_meta(str(tmp_path))
