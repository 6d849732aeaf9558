"""cpu_allocator: glibc keeps freed activations for the next step, unless the user set
their own MALLOC_* variables."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

import pytest
import torch

import mtsmart.cpu_allocator as cpu_allocator
from mtsmart.cpu_allocator import keep_freed_memory

GLIBC = sys.platform.startswith("linux") and ctypes.util.find_library("c") is not None


def resident_bytes() -> int:
    with open("/proc/self/statm", encoding="ascii") as handle:
        return int(handle.read().split()[1]) * 4096


@pytest.mark.skipif(not GLIBC, reason="glibc (Linux) only")
def test_a_freed_block_stays_resident(monkeypatch):
    for key in [k for k in os.environ if k.startswith("MALLOC_")]:
        monkeypatch.delenv(key)
    assert keep_freed_memory()
    block = torch.ones(24 * 1024 * 1024 // 4)  # 24 MiB, touched
    with_block = resident_bytes()
    del block
    # glibc's default would unmap (or trim) it; kept, resident memory stays where it was
    assert resident_bytes() > with_block - 4 * 1024 * 1024


def test_the_users_malloc_settings_win(monkeypatch):
    monkeypatch.setenv("MALLOC_ARENA_MAX", "2")
    assert keep_freed_memory() is False


class _FakeLibc:
    """glibc's mallopt as seen through ctypes: records what it is asked, refuses ``refuse``."""

    M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3  # glibc's malloc.h

    def __init__(self, refuse=None):
        self.calls, self.refuse = {}, refuse
        libc = self

        def mallopt(param, value):
            libc.calls[param] = value
            return 0 if param == libc.refuse else 1

        self.mallopt = mallopt


@pytest.mark.parametrize("refuse", [None, _FakeLibc.M_MMAP_THRESHOLD, _FakeLibc.M_TRIM_THRESHOLD, _FakeLibc.M_TOP_PAD])
def test_each_threshold_goes_to_its_own_mallopt_and_a_refusal_is_reported(monkeypatch, refuse):
    """Blocks up to 32 MiB from the heap, up to 2 GiB of free heap top kept, 256 MiB of
    top pad: each value reaches its own mallopt parameter (glibc accepts a wrong one
    without complaint), and a setting glibc refuses means the memory is not kept."""
    for key in [k for k in os.environ if k.startswith("MALLOC_")]:
        monkeypatch.delenv(key)
    monkeypatch.setattr(sys, "platform", "linux")
    libc = _FakeLibc(refuse)
    monkeypatch.setattr(cpu_allocator.ctypes, "CDLL", lambda name: libc)
    assert keep_freed_memory() is (refuse is None)
    if refuse is None:
        assert libc.calls == {libc.M_MMAP_THRESHOLD: 32 * 1024 * 1024, libc.M_TRIM_THRESHOLD: 2**31 - 1,
                              libc.M_TOP_PAD: 256 * 1024 * 1024}


def test_training_on_the_cpu_keeps_freed_memory(tmp_path, tiny_model_dir, monkeypatch):
    """The allocator settings only help if the trainer applies them before its first step
    on the CPU."""
    import mtsmart.train as train_module
    from mtsmart.tasks import load_task_file, resolve_data_dir
    from tiny_tasks import write_tiny_tasks

    calls = []
    monkeypatch.setattr(train_module, "keep_freed_memory", lambda: calls.append("kept") or True)
    task_file = load_task_file(str(write_tiny_tasks(tmp_path)),
                               [(["training", "encoder"], str(tiny_model_dir), "test")])
    trainer = train_module.Trainer(task_file.tasks, task_file.training, resolve_data_dir(None, task_file),
                                   str(tmp_path / "run"), cache_dir=str(tmp_path / "cache"), show_progress=False)
    trainer.prepare()
    assert trainer.device.type != "cpu" or calls == ["kept"]
