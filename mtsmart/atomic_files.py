"""Files written whole or not at all: a reader (TensorBoard, a script polling results.json,
another process sharing the tokenization cache) never sees half of one, and a write cut
short by a full disk or Ctrl-C leaves the old file and no stray temporary beside it."""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import IO, Iterator, Optional


@contextmanager
def replacing(path: str, mode: str = "w", newline: Optional[str] = None) -> Iterator[IO]:
    """Yield a handle to a temporary sibling of ``path`` that replaces it on a clean exit."""
    # The process id keeps two processes that write the same file (a shared cache) apart.
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8", "newline": newline})) as handle:
            yield handle
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
