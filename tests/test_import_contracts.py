"""The design's dependency arrows, as import-linter contracts (``[tool.importlinter]`` in pyproject.toml).

The first test lints the tree as it is. The others lint a copy of the tree,
renamed to another namespace, with one forbidden import added, and expect the
matching contract to break: the contracts are not allowed to pass vacuously.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.services import REPO_ROOT

STAGES = ("listener", "worker", "model", "dicom_out", "common")
COPY = "neuroseg_copy"
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint(cwd: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    # cwd is put on sys.path by lint-imports; --no-cache writes nothing into the tree
    return subprocess.run([str(LINT_IMPORTS), "--no-cache", *extra], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env={"PATH": str(LINT_IMPORTS.parent), "PYTHONPATH": str(cwd)})


def test_the_tree_keeps_every_contract() -> None:
    result = _lint(REPO_ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"Contracts: \d+ kept, 0 broken", result.stdout), result.stdout


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value)  # strings and lists of strings are valid TOML in JSON spelling


def _renamed(text: str) -> str:
    return re.sub(rf"\bneuroseg\.({'|'.join(STAGES)})\b", rf"{COPY}.\1", text)


def _not_python(folder: str, names: list[str]) -> set[str]:
    return {name for name in names if name == "__pycache__" or (not name.endswith(".py") and not Path(folder, name).is_dir())}


@pytest.fixture
def tree_copy(tmp_path: Path) -> Path:
    """The stage folders as the namespace ``neuroseg_copy``, with the project's contracts renamed to it."""
    for stage in STAGES:
        target = tmp_path / COPY / stage
        shutil.copytree(REPO_ROOT / stage, target, ignore=_not_python)
        for path in target.rglob("*.py"):
            path.write_text(_renamed(path.read_text()))
    config = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    lines = ["[tool.importlinter]"]
    lines += [f"{key} = {_toml_value(_renamed_value(value))}" for key, value in config.items() if key != "contracts"]
    for contract in config["contracts"]:
        lines += ["", "[[tool.importlinter.contracts]]"]
        lines += [f"{key} = {_toml_value(_renamed_value(value))}" for key, value in contract.items()]
    (tmp_path / "pyproject.toml").write_text("\n".join(lines) + "\n")
    return tmp_path


def _renamed_value(value: object) -> object:
    if isinstance(value, str):
        return _renamed(value)
    if isinstance(value, list):
        return [_renamed_value(item) for item in value]
    return value


def test_the_renamed_copy_keeps_every_contract(tree_copy: Path) -> None:
    """The copy is faithful: what breaks in the next test breaks because of the added import."""
    result = _lint(tree_copy)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("module", "forbidden_import", "broken"),
    [
        ("listener/classify.py", f"from {COPY}.worker import jobstore",
         "the listener imports only worker.queue, worker.contracts, worker.settings and worker.errors"),
        ("listener/classify.py", "import torch", "the listener and worker.queue never import torch"),
        ("worker/contracts.py", f"from {COPY}.model import network",
         "the listener and worker.queue never import torch"),
        ("dicom_out/uids.py", f"from {COPY}.model import network",
         "dicom_out imports no other stage, not Celery and not torch"),
        ("model/network.py", f"from {COPY}.dicom_out import uids", "model imports no other stage and not Celery"),
        ("model/network.py", "import celery", "model imports no other stage and not Celery"),
        ("worker/web/pages.py", f"from {COPY}.listener import classify", "only worker.cli imports the listener"),
        ("common/files.py", f"from {COPY}.worker import settings",
         "common is a leaf that every stage may import: it imports no stage"),
    ],
    ids=["listener-jobstore", "listener-torch", "listener-torch-through-contracts", "dicom_out-model",
         "model-dicom_out", "model-celery", "web-listener", "common-worker"],
)
def test_a_forbidden_import_breaks_its_contract(tree_copy: Path, module: str, forbidden_import: str,
                                                broken: str) -> None:
    path = tree_copy / COPY / module
    path.write_text(path.read_text() + f"\n\ndef _forbidden() -> None:\n    {forbidden_import}  # noqa\n")
    result = _lint(tree_copy)
    assert result.returncode == 1, result.stdout + result.stderr
    report = " ".join(result.stdout.split())  # the report wraps long contract names
    verdict = re.search(re.escape(broken) + r"[^()]*? (KEPT|BROKEN)", report)
    assert verdict is not None and verdict.group(1) == "BROKEN", report
    importer = f"{COPY}.{module.removesuffix('.py').replace('/', '.')}"
    assert importer in report, report
