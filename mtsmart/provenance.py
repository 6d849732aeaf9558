"""What produced a run: the command, the software versions, the device and a fingerprint of
the data each task trained and was scored on, so a result can be traced and repeated.

``RUN/run.json`` holds one record per session: the run's start, then one per ``--resume``.
Must not import the trainer or the CLI.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import time
from importlib import metadata
from typing import Any, Optional, Sequence

import torch

from mtsmart import __version__
from mtsmart.errors import ConfigError
from mtsmart.metric_logging import write_json

RUN_FILE = "run.json"
PACKAGES = ("torch", "transformers", "tokenizers", "datasets", "numpy", "scikit-learn", "scipy")


def software_versions() -> dict[str, str]:
    """mtsmart, Python and the libraries whose versions can change a result."""
    return dict(_software_versions())


@functools.cache  # looked up once per process: every checkpoint records them
def _software_versions() -> dict[str, str]:
    versions = {"mtsmart": __version__, "python": platform.python_version()}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def encoder_fingerprint(source: str) -> Optional[str]:
    """A short hash of a local encoder folder's config and weights, so a run records WHICH
    weights it started from, not only their path (None for a hub name: the path is all)."""
    if not os.path.isdir(source):
        return None
    digest = hashlib.sha256()
    for name in sorted(os.listdir(source)):
        if name == "config.json" or name.endswith((".safetensors", ".bin")):
            digest.update(name.encode())
            with open(os.path.join(source, name), "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()[:16]


def session_record(command: Optional[Sequence[str]], device: torch.device, replicas: int,
                   data: dict[str, dict[str, dict[str, Any]]], encoder: Optional[dict[str, Any]] = None
                   ) -> dict[str, Any]:
    """``data``: task → split role ("train" / "eval") → {"split", "examples", "fingerprint"};
    ``encoder``: where the weights came from and their fingerprint."""
    return {
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": list(command) if command is not None else None,  # None: called from Python
        "working_directory": os.getcwd(),
        "versions": software_versions(),
        "platform": platform.platform(),
        "device": device_description(device),
        "replicas": replicas,
        **({"encoder": encoder} if encoder is not None else {}),
        "data": data,
    }


def read_sessions(run_dir: str) -> list[dict[str, Any]]:
    path = os.path.join(run_dir, RUN_FILE)
    if not os.path.isfile(path):
        return []  # a run from before run.json: nothing to compare with
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)["sessions"]
    except (ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"{path}: damaged ({err}); it records what produced the run, so the run "
                          "cannot be resumed safely; start again with --overwrite") from None


def check_same_data(run_dir: str, data: dict[str, dict[str, dict[str, Any]]]) -> None:
    """A resumed run continues each data stream at its saved position: on other examples
    it would silently train on something else, so a changed split is refused."""
    sessions = read_sessions(run_dir)
    if not sessions:
        return
    started = sessions[0]["data"]
    for task, roles in data.items():
        for role, now in roles.items():
            before = started.get(task, {}).get(role)
            if before is not None and before["fingerprint"] != now["fingerprint"]:
                raise ConfigError(
                    f"{run_dir}: task {task!r}, {role} split {now['split']!r}: its examples changed "
                    f"since the run started ({before['examples']} examples, fingerprint "
                    f"{before['fingerprint']}; now {now['examples']}, {now['fingerprint']}); resume "
                    f"with the run's data, or start a new run")


def record_session(run_dir: str, session: dict[str, Any], resumed: bool) -> None:
    """A resumed session is appended; a new run starts the file afresh."""
    os.makedirs(run_dir, exist_ok=True)
    earlier = read_sessions(run_dir) if resumed else []
    write_json(os.path.join(run_dir, RUN_FILE), {"sessions": earlier + [session]})
