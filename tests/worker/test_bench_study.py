"""``neuroseg bench study`` on a small study: storescu -> serve -> Orthanc, every stage and ratio in the JSON."""

from __future__ import annotations

import json

import pytest

from neuroseg.worker.cli import main
from neuroseg.worker.cli.study_bench import JOB_STAGES, LOAD_PARTS
from tests.services import SHARED_DATA


@pytest.mark.slow
def test_bench_study_reports_every_stage_against_its_baselines(tmp_path):
    out = tmp_path / "study.json"
    status = main(["bench", "study", "--size", "small", "--mc-samples", "2", "--case",
                   str(SHARED_DATA / "real-mri" / "brats-gli-00001-000"), "--keep", str(tmp_path / "work"),
                   "--json", str(out)])
    report = json.loads(out.read_text())
    assert status == 0, report["job"]
    assert report["job"]["state"] == "done"
    assert report["instances"] == 4 * 39
    assert report["job"]["delivered_instances"] > 0
    stages = report["stages_s"]
    for name in ("receive", "assemble", "queue_wait", *JOB_STAGES, *(f"loading.{part}" for part in LOAD_PARTS)):
        assert name in stages and stages[name] >= 0, name
    assert stages["assemble"] >= report["stable_seconds"] * 0.9
    assert sum(stages[f"loading.{part}"] for part in LOAD_PARTS) <= stages["loading"] + 0.01
    assert report["complete_to_delivered_s"] >= sum(stages[name] for name in JOB_STAGES) * 0.99
    assert report["baselines"]["orthanc_receive_s"] > 0 and report["baselines"]["network_pass_s"] > 0
    ratios = report["ratios"]
    assert ratios["receive_vs_orthanc"] == pytest.approx(stages["receive"] / report["baselines"]["orthanc_receive_s"],
                                                         rel=0.01)
    assert set(ratios) == {"receive_vs_orthanc", "complete_to_delivered_vs_network_pass",
                           "processing_vs_network_pass", "inference_vs_network_pass"}
    names = " ".join(report["peak_rss_mb"])
    assert "serve" in names and "worker" in names
    assert all(mb > 10 for mb in report["peak_rss_mb"].values())
