"""The one exception type that reaches users as a one-line message.

Must not import anything from mtsmart: every module may raise these.
"""


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


def os_error_line(err: OSError) -> str:
    """An OSError as the CLI prints it: the path, then what went wrong."""
    where = f"{err.filename}: " if err.filename else ""
    return f"{where}{err.strerror or err}"
