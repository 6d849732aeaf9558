"""Lower modules never import higher ones; only the CLI reads sys.argv.

Checked on the source with ``ast`` (function-local imports included), so nothing is
imported to run it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "mtsmart"
MODULES = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")


def imported_modules(source: str, module: str) -> set[str]:
    """Full names of the mtsmart modules ``module``'s source imports."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "mtsmart" or alias.name.startswith("mtsmart."):
                    found.add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from . import x / from .x import y
                base = "mtsmart" + (f".{node.module}" if node.module else "")
            else:
                base = node.module or ""
            if base != "mtsmart" and not base.startswith("mtsmart."):
                continue
            if base == "mtsmart":  # from mtsmart import train, smart
                found.update(f"mtsmart.{alias.name}" for alias in node.names)
            else:
                found.add(base)
    found.discard(f"mtsmart.{module}")
    return found


def reads_argv(source: str) -> bool:
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and node.attr == "argv":
            return True
        if isinstance(node, ast.ImportFrom) and node.module == "sys" and any(a.name == "argv" for a in node.names):
            return True
    return False


def imports_of(module: str) -> set[str]:
    return imported_modules((PACKAGE / f"{module}.py").read_text(encoding="utf-8"), module)


def test_package_modules_found():
    assert {"config", "errors", "losses", "metrics", "smart", "train", "cli"} <= set(MODULES)


@pytest.mark.parametrize("module", ["config", "errors", "losses", "metrics"])
def test_base_modules_import_only_errors(module):
    assert imports_of(module) <= {"mtsmart.errors"}


@pytest.mark.parametrize("module", ["errors", "cpu_allocator"])
def test_leaf_modules_import_nothing_from_mtsmart(module):
    assert imports_of(module) == set()


@pytest.mark.parametrize("module", ["run_folder", "summary", "dry_run"])
def test_what_reads_a_run_folder_needs_no_trainer(module):
    assert imports_of(module) & {"mtsmart.train", "mtsmart.cli"} == set()


def test_smart_is_pure():
    forbidden = {f"mtsmart.{m}" for m in ("train", "cli", "config", "model", "data")}
    assert imports_of("smart") & forbidden == set()


@pytest.mark.parametrize("module", MODULES)
def test_only_cli_reads_argv(module):
    if module == "cli":
        return
    assert not reads_argv((PACKAGE / f"{module}.py").read_text(encoding="utf-8"))


# The trainer sits at the top, under the CLI only.
TRAINER_IMPORTERS = ("train", "cli", "adaptation")  # adaptation orchestrates many runs


@pytest.mark.parametrize("module", MODULES)
def test_only_train_and_cli_import_the_trainer(module):
    if module in TRAINER_IMPORTERS:
        return
    assert "mtsmart.train" not in imports_of(module), f"mtsmart/{module}.py imports mtsmart.train"


@pytest.mark.parametrize("module", MODULES)
def test_nothing_but_main_imports_the_cli(module):
    if module in ("cli", "__main__"):
        return
    assert "mtsmart.cli" not in imports_of(module)


# The checker itself must see every spelling of an import.
@pytest.mark.parametrize("source, expected", [
    ("import mtsmart.train", {"mtsmart.train"}),
    ("import mtsmart.train as t", {"mtsmart.train"}),
    ("from mtsmart import train, smart", {"mtsmart.train", "mtsmart.smart"}),
    ("from mtsmart.train import Trainer", {"mtsmart.train"}),
    ("from . import train", {"mtsmart.train"}),
    ("from .train import Trainer", {"mtsmart.train"}),
    ("def f():\n    from mtsmart.train import Trainer\n", {"mtsmart.train"}),
    ("import os\nfrom typing import Any\nimport mtsmartish", set()),
])
def test_import_checker(source, expected):
    assert imported_modules(source, "x") == expected


@pytest.mark.parametrize("source, expected", [
    ("import sys\nsys.argv[1:]", True),
    ("from sys import argv", True),
    ("import sys\nsys.exit(0)", False),
])
def test_argv_checker(source, expected):
    assert reads_argv(source) is expected


@pytest.mark.parametrize("module", ["arguments", "setting_notes"])
def test_only_the_cli_imports_the_command_line_modules(module):
    importers = {m for m in MODULES if f"mtsmart.{module}" in imports_of(m)}
    assert importers <= {"cli"}, importers
