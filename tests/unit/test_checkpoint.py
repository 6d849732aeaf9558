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


@pytest.fixture()
def cli_signal_handlers():
    """The handlers a command runs with: SIGTERM ends it as Ctrl-C does. SIGINT's is set too:
    a shell's background job starts with SIGINT ignored, which a save rightly leaves so."""
    import signal

    from mtsmart.cli import _terminate

    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    for signum, handler in previous.items():
        signal.signal(signum, handler)


@pytest.mark.parametrize("signum", ["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("during", ["first rename", "second rename", "removing the old one"])
def test_a_signal_while_a_checkpoint_replaces_another_leaves_one_whole_checkpoint(tmp_path, tiny_model_dir,
                                                                                 monkeypatch, signum, during,
                                                                                 cli_signal_handlers):
    """SIGTERM (a scheduler) or Ctrl-C between the renames left no checkpoint under its name,
    only the old one in a temporary folder; during the old one's removal, a half-removed
    folder. The interruption now waits until the checkpoint is in place."""
    import os
    import shutil
    import signal

    from mtsmart import checkpoint

    path, _ = saved(tmp_path, tiny_model_dir, {"a": (2, 0.1)})
    sig = getattr(signal, signum)
    calls = {"replace": 0}
    real_replace, real_rmtree = os.replace, shutil.rmtree

    def replace(src, dst):
        calls["replace"] += 1
        real_replace(src, dst)
        if (during, calls["replace"]) in (("first rename", 1), ("second rename", 2)):
            os.kill(os.getpid(), sig)

    def rmtree(target, *args, **kwargs):
        if during == "removing the old one" and str(target).endswith(".old"):
            os.kill(os.getpid(), sig)
        real_rmtree(target, *args, **kwargs)

    monkeypatch.setattr(checkpoint.os, "replace", replace)
    monkeypatch.setattr(checkpoint.shutil, "rmtree", rmtree)
    with pytest.raises(KeyboardInterrupt):  # Terminated is one
        saved(tmp_path, tiny_model_dir, {"a": (2, 0.1), "b": (1, 0.1)})
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name] == []
    assert set(read_meta(str(path))["heads"]) == {"a", "b"}  # the new one, whole


def test_a_signal_handler_installed_outside_python_is_left_alone(tmp_path, tiny_model_dir, monkeypatch):
    """signal.getsignal says None for a handler a C library installed; Python cannot put such
    a handler back (signal.signal(..., None) raises), so the save does not take it over."""
    import signal

    from mtsmart import checkpoint

    real_signal = signal.signal
    monkeypatch.setattr(checkpoint.signal, "getsignal",
                        lambda signum: None if signum == signal.SIGTERM else signal.default_int_handler)

    def as_if_installed_outside_python(signum, handler):
        previous = real_signal(signum, handler)
        return None if signum == signal.SIGTERM else previous

    monkeypatch.setattr(checkpoint.signal, "signal", as_if_installed_outside_python)
    previous = real_signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        saved(tmp_path, tiny_model_dir, {"a": (2, 0.1)})
        saved(tmp_path, tiny_model_dir, {"a": (2, 0.1), "b": (1, 0.1)})
        assert real_signal(signal.SIGTERM, previous) == signal.SIG_DFL  # untouched
    finally:
        real_signal(signal.SIGTERM, previous)
    assert set(read_meta(str(tmp_path / "ckpt"))["heads"]) == {"a", "b"}


@pytest.mark.parametrize("lost", ["tokenizer.json", "config.json"])
def test_a_checkpoint_copied_without_an_encoder_file_is_refused_naming_it(tmp_path, tiny_model_dir, lost):
    """Without tokenizer.json, tokenizer_config.json alone built a tokenizer of special
    tokens: every word unknown, and evaluate, predict and export ran on with wrong scores."""
    path, _ = saved(tmp_path, tiny_model_dir, {"t": (2, 0.1)})
    (path / "encoder" / lost).unlink()
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(str(path))
    assert f"{lost} is missing" in str(err.value) and "copy it again" in str(err.value)


def test_a_checkpoint_copied_without_its_teacher_says_so(tmp_path, tiny_model_dir):
    """It said a teacher exists only when the run used the Bregman term, which this one did."""
    from transformers import AutoTokenizer, BertModel

    model = MultiTaskModel(BertModel.from_pretrained(str(tiny_model_dir)), {"t": (2, 0.1)}, pooling="cls")
    path = tmp_path / "ckpt"
    save_checkpoint(str(path), model, AutoTokenizer.from_pretrained(str(tiny_model_dir)), {}, TrainConfig(),
                    {"global_step": 1}, teacher_state=model.state_dict())
    load_checkpoint(str(path), weights="teacher")
    (path / "teacher.safetensors").unlink()
    with pytest.raises(CheckpointError, match="teacher.safetensors is missing .* copy it again"):
        load_checkpoint(str(path), weights="teacher")


@pytest.mark.parametrize("signum", ["SIGTERM", "SIGINT"])
def test_a_signal_as_the_temporary_folder_is_made_leaves_nothing_behind(tmp_path, tiny_model_dir, monkeypatch,
                                                                       signum, cli_signal_handlers):
    """A signal after mkdtemp made the folder and before the save had its name left a
    `.NAME.tmp-X` folder that nothing removed (a test sending SIGTERM mid-run met it)."""
    import os
    import signal
    import tempfile

    sig = getattr(signal, signum)
    real_mkdtemp = tempfile.mkdtemp
    made = []

    def mkdtemp_then_signalled(*args, **kwargs):
        folder = real_mkdtemp(*args, **kwargs)
        if kwargs.get("prefix") == ".ckpt.tmp-":  # the save's own, not a library's
            made.append(folder)
            os.kill(os.getpid(), sig)
            for _ in range(1000):  # Python acts on a signal between bytecodes: here, before the return
                pass
        return folder

    monkeypatch.setattr(tempfile, "mkdtemp", mkdtemp_then_signalled)
    with pytest.raises(KeyboardInterrupt):  # Terminated is one
        saved(tmp_path, tiny_model_dir, {"a": (2, 0.1)})
    monkeypatch.undo()
    assert len(made) == 1 and not (tmp_path / "ckpt").exists()
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name] == []


def test_a_folder_is_replaced_whole_or_not_at_all(tmp_path):
    """What save_checkpoint and export build in: the old folder stays until the new one is
    complete, and a failed build leaves nothing of itself."""
    from mtsmart.checkpoint import folder_replacing

    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with folder_replacing(str(target)) as building:
            (tmp_path / building / "new.txt").write_text("new")
            raise RuntimeError("the build failed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert [p.name for p in target.iterdir()] == ["old.txt"]
    with folder_replacing(str(target)) as building:
        (tmp_path / building / "new.txt").write_text("new")
        assert [p.name for p in target.iterdir()] == ["old.txt"]  # not yet replaced
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert [p.name for p in target.iterdir()] == ["new.txt"]
