"""Keep freed memory inside the process during CPU training on glibc (Linux).

glibc hands large freed blocks back to the operating system (blocks above its mmap
threshold are unmapped, and a free heap top above the trim threshold is released), so a
training step that frees its activations may page-fault them in again on the next step. A
SMART step at 16 × 128 on MiniLM frees about 550 MiB of activations each time; in the S1
benchmark, which alternates steps of different footprints, that cost 0.4-0.9 of a plain
step, and a real full-SMART run on RTE was 1-6% slower (docs/RESULTS.md, S1). Raising both
thresholds makes glibc keep the memory for the next step, as a caching allocator does.

Must not import any other mtsmart module.
"""

from __future__ import annotations

import ctypes
import os
import sys

# mallopt parameters (glibc's malloc.h)
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3

# Blocks up to 32 MiB (glibc's largest allowed mmap threshold on 64-bit) come from the heap;
# up to 2 GiB of free heap top is kept (mallopt takes a C int).
MMAP_THRESHOLD = 32 * 1024 * 1024
TRIM_THRESHOLD = 2**31 - 1
TOP_PAD = 256 * 1024 * 1024


def keep_freed_memory() -> bool:
    """Tell glibc to keep freed memory for reuse; True when it was done.

    Does nothing outside Linux, without glibc (musl), or when any ``MALLOC_*`` environment
    variable is set: the user's own allocator settings win."""
    if not sys.platform.startswith("linux") or any(k.startswith("MALLOC_") for k in os.environ):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return all(mallopt(param, value) == 1 for param, value in (
        (_M_MMAP_THRESHOLD, MMAP_THRESHOLD),
        (_M_TRIM_THRESHOLD, TRIM_THRESHOLD),
        (_M_TOP_PAD, TOP_PAD)))
