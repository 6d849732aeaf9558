"""What a crash leaves for a resumed run to put right: the folder layouts of a
save_checkpoint cut short, and an evaluation log that ran ahead of the checkpoint."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import pytest

from mtsmart.checkpoint import recover_interrupted_save
from mtsmart.metric_logging import drop_records_after, write_json


def folder(path: Path, step: Optional[int]) -> Path:
    """A stand-in checkpoint: complete (meta.json with its step) unless step is None."""
    path.mkdir(parents=True)
    (path / "heads.safetensors").write_text(f"weights of {path.name}")
    if step is not None:
        (path / "meta.json").write_text(json.dumps({"global_step": step}))
    return path


def step_of(path: Path) -> int:
    return json.loads((path / "meta.json").read_text())["global_step"]


@pytest.mark.parametrize("layout, expected_step", [
    # killed between the two renames: only temporary names, both complete
    ({".last.tmp-a": 30, ".last.tmp-a.old": 20}, 30),
    # killed once the new one was complete, before the renames
    ({"last": 20, ".last.tmp-a": 30}, 30),
    # killed while the new one was being written: it is incomplete
    ({"last": 20, ".last.tmp-a": None}, 20),
    # killed while the replaced one was being deleted
    ({"last": 30, ".last.tmp-a.old": 20}, 30),
    # killed inside an earlier recovery, after moving last/ aside
    ({".last.tmp-b": 20, ".last.tmp-a": 30, ".last.tmp-a.old": 10}, 30),
])
def test_the_newest_complete_checkpoint_takes_the_name(tmp_path, layout, expected_step):
    for name, step in layout.items():
        folder(tmp_path / name, step)
    folder(tmp_path / ".best.tmp-z", 30)  # another checkpoint's leftovers are not touched
    recover_interrupted_save(str(tmp_path / "last"))
    assert step_of(tmp_path / "last") == expected_step
    assert sorted(p.name for p in tmp_path.iterdir()) == [".best.tmp-z", "last"]


def test_a_tie_keeps_the_folder_already_named(tmp_path):
    folder(tmp_path / "last", 30)
    folder(tmp_path / ".last.tmp-a", 30)
    recover_interrupted_save(str(tmp_path / "last"))
    assert (tmp_path / "last" / "heads.safetensors").read_text() == "weights of last"
    assert [p.name for p in tmp_path.iterdir()] == ["last"]


def test_nothing_to_recover_leaves_everything_as_it_is(tmp_path):
    folder(tmp_path / "last", 20)
    recover_interrupted_save(str(tmp_path / "last"))
    recover_interrupted_save(str(tmp_path / "missing" / "last"))
    assert [p.name for p in tmp_path.iterdir()] == ["last"] and step_of(tmp_path / "last") == 20


def test_the_log_loses_records_past_the_checkpoint_and_a_torn_last_line(tmp_path):
    log = tmp_path / "metrics.jsonl"
    records = [{"global_step": step, "split": "dev", "results": {"rte": {"accuracy": step / 100}}}
               for step in (10, 20, 30)]
    torn = json.dumps({"global_step": 40, "split": "dev"})[:-7]
    log.write_text("".join(json.dumps(r) + "\n" for r in records) + torn, encoding="utf-8")
    drop_records_after(str(log), 20)
    assert [json.loads(line) for line in log.read_text().splitlines()] == records[:2]
    drop_records_after(str(tmp_path / "absent.jsonl"), 20)
    assert not (tmp_path / "absent.jsonl").exists()


# ---- proposed by the mutation audit
def test_a_resumed_run_folder_has_both_its_checkpoints_put_right(tmp_path):
    """recover_run_folder (train --resume, finetune --resume) finishes best/ as well as last/:
    a kill between best/'s two renames left it without its name."""
    from mtsmart.run_folder import recover_run_folder

    folder(tmp_path / ".best.tmp-a", 20)
    folder(tmp_path / ".best.tmp-a.old", 10)
    folder(tmp_path / "last", 20)
    folder(tmp_path / ".last.tmp-b", None)
    recover_run_folder(str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best", "last"]
    assert step_of(tmp_path / "best") == 20 and step_of(tmp_path / "last") == 20


def test_a_resume_finishes_the_interrupted_save_before_it_reads_the_folder(tmp_path):
    """prepare_resume, what `train --resume` runs first: the newest complete save takes
    last/'s name and nothing is left under a temporary one."""
    from mtsmart.run_folder import prepare_resume

    (tmp_path / "run.json").write_text("{}")
    folder(tmp_path / ".last.tmp-a", 30)
    folder(tmp_path / ".last.tmp-a.old", 20)
    prepare_resume(str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last", "run.json"]
    assert step_of(tmp_path / "last") == 30


def test_a_recovered_save_is_as_readable_as_any_file_the_user_writes(tmp_path):
    """A save killed after its last file, before the permissions it ends with, is private
    (mkdtemp gives 0700, safetensors 0600); recovered as it was, a serving process or a
    colleague could not read it."""
    import os

    folder(tmp_path / "last", 20)
    new = folder(tmp_path / ".last.tmp-a", 30)
    os.chmod(new / "meta.json", 0o600)
    os.chmod(new, 0o700)
    recover_interrupted_save(str(tmp_path / "last"))
    umask = os.umask(0)
    os.umask(umask)
    assert step_of(tmp_path / "last") == 30
    for path in [tmp_path / "last", *(tmp_path / "last").rglob("*")]:
        assert path.stat().st_mode & 0o777 == (0o777 if path.is_dir() else 0o666) & ~umask, path


@pytest.mark.parametrize("cut_short_by", [KeyboardInterrupt(), OSError(28, "No space left on device")],
                         ids=["ctrl-c", "disk-full"])
def test_a_json_write_cut_short_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch, cut_short_by):
    path = tmp_path / "results.json"
    write_json(str(path), {"step": 1})

    def dump_then_fail(record, handle, **kwargs):
        handle.write('{"step": ')
        raise cut_short_by

    monkeypatch.setattr(json, "dump", dump_then_fail)
    with pytest.raises(type(cut_short_by)):
        write_json(str(path), {"step": 2})
    assert json.loads(path.read_text()) == {"step": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]
