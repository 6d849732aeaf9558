"""cpu_allocator: glibc keeps freed activations for the next step, unless the user set
their own MALLOC_* variables."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

import pytest
import torch

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
