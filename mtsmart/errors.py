"""The exceptions that reach users as one-line messages, and which of torchrun's
processes prints each.

Must not import anything from mtsmart: every module may raise these.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Optional


class MtsmartError(Exception):
    """A problem with the user's input (config, task definition, data, checkpoint).

    The CLI prints ``str(error)`` on one line of stderr and exits with code 2, so the
    message must name the file, the task, the field or line, and what would be valid.
    """


class ConfigError(MtsmartError):
    """A YAML file or a command-line override is invalid."""


class DataError(MtsmartError):
    """A data file is missing, empty, or holds a value the task cannot use."""


class CheckpointError(MtsmartError):
    """A checkpoint directory is missing, incomplete or inconsistent."""


class RelayedError(ConfigError):
    """Under torchrun: the main replica's failure, raised on the others so that they stop
    too. The main replica reports it; the others say nothing more."""


class ReplicaError(ConfigError):
    """Under torchrun: a problem of this replica alone (its GPU, its node), which the
    others do not see, so it reports it itself."""


def os_error_line(err: OSError) -> str:
    """An OSError as the CLI prints it: the path, then what went wrong."""
    where = f"{err.filename}: " if err.filename else ""
    return f"{where}{err.strerror or err}"


def torchrun_ranks() -> tuple[int, int]:
    """This process's RANK and LOCAL_RANK as torchrun sets them; (0, 0) for a process alone."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))


def error_line(message: str, error: Optional[BaseException] = None, prog: str = "mtsmart") -> Optional[str]:
    """The line this process prints for an error, or None where another replica prints
    the same one: torchrun's N processes must not print N copies.

    Every replica reads the same command line, task file, encoder and data, so a user
    error (``error`` None, or an MtsmartError) is every replica's: the first replica of
    each node prints it (another node may read other files). A RelayedError is the main
    replica's, printed there. An OSError or a ReplicaError belongs to the replica that met
    it, which prints it under its own name."""
    rank, local_rank = torchrun_ranks()
    if rank != 0:
        if isinstance(error, RelayedError):
            return None
        shared = error is None or (isinstance(error, MtsmartError) and not isinstance(error, ReplicaError))
        if shared and local_rank != 0:
            return None
        message = f"replica {rank}: {message}"
    return f"{prog}: error: {message}"


# torchrun stops every replica as soon as one exits: a replica that leaves an error to
# another to print, and exits first, can cut that one off before its line is out, and
# the user sees no error at all. So it waits this long (the printing replica's exit ends
# the wait sooner, by torchrun's SIGTERM).
SILENT_REPLICA_WAIT_S = 10.0


def report_error(message: str, error: Optional[BaseException] = None, prog: str = "mtsmart") -> None:
    """Print ``error_line``'s line on stderr, or, where another replica prints it, wait for that one."""
    line = error_line(message, error, prog)
    if line is not None:
        print(line, file=sys.stderr)
        return
    try:
        time.sleep(SILENT_REPLICA_WAIT_S)
    except KeyboardInterrupt:  # the SIGTERM that says the printing replica is done
        pass
