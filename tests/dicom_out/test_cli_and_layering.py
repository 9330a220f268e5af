"""The bench command of dicom_out (its independence of worker and model: tests/test_import_contracts.py)."""

from __future__ import annotations

import json
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
