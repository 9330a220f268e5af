"""The bench command, and that dicom_out stays independent of worker and model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from neuroseg.worker.cli import main


def test_bench_encode_writes_timings_per_object_and_baselines(tmp_path: Path, capsys) -> None:
    out = tmp_path / "bench.json"
    assert main(["--log-level", "WARNING", "bench", "encode", "--shape", "12", "40", "40", "--surface",
                 "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    kinds = [row["kind"] for row in report["objects"]]
    assert kinds[0] == "seg" and kinds[-1] == "sr" and "mesh-surface" in kinds and len(kinds) == 18
    assert report["baseline_source_series_write_s"] > 0 and report["ratio_total_to_source_series_write"] > 0
    assert set(report["build_s"]) >= {"seg", "meshes", "sr", "pmap-gradcam-et"}
    printed = capsys.readouterr().out
    assert "baseline: write the source series" in printed and "pmap-uncertainty-entropy" in printed


def test_bench_encode_refuses_a_degenerate_shape(capsys) -> None:
    assert main(["bench", "encode", "--shape", "1", "40", "40"]) == 2
    assert "needs at least 2 voxels per axis" in capsys.readouterr().err


def test_dicom_out_never_imports_worker_model_celery_or_torch() -> None:
    code = (
        "import sys, pkgutil, importlib, neuroseg.dicom_out as d\n"
        "for m in pkgutil.iter_modules(d.__path__): importlib.import_module('neuroseg.dicom_out.' + m.name)\n"
        "bad = sorted(n for n in sys.modules if n.startswith(('neuroseg.worker', 'neuroseg.model', 'celery', 'torch')))\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.strip() == ""
