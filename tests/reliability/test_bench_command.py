"""``neuroseg bench reliability``: the table from a suite summary, and the scenario itself."""

from __future__ import annotations

import json

import pytest

from neuroseg.worker.cli import main


def test_summary_mode_prints_the_table_and_fails_on_a_loss(tmp_path, capsys):
    summary = tmp_path / "summary.json"
    totals = {"studies": 3, "instances": 40, "faults_injected": 2, "instances_lost": 0, "duplicates_delivered": 0,
              "fuzz_cases": 10_250, "echo_max_seconds": 0.3}
    summary.write_text(json.dumps({"totals": totals}))
    assert main(["bench", "reliability", "--summary", str(summary)]) == 0
    out = capsys.readouterr().out
    assert "instances lost (must be 0)" in out and "10250" in out
    summary.write_text(json.dumps({"totals": {**totals, "instances_lost": 1}}))
    assert main(["bench", "reliability", "--summary", str(summary)]) == 1


@pytest.mark.slow
@pytest.mark.integration
def test_scenario_kills_the_listener_mid_push_and_loses_nothing(tmp_path, shared_data, capsys):
    out = tmp_path / "bench.json"
    code = main(["bench", "reliability", "--studies", "4", "--senders", "2", "--fuzz-cases", "300",
                 "--dicom-dir", str(shared_data / "real-dicom" / "siemens-prisma-t1-sagittal-prone"),
                 "--json", str(out)])
    figures = json.loads(out.read_text())
    assert code == 0, figures
    assert figures["faults_injected"] == 1 and figures["instances"] == 4 * 16
    assert figures["instances_lost"] == 0 and figures["duplicates_delivered"] == 0
    assert figures["fuzz_cases"] == 300 and figures["fuzz_crashes"] == 0
