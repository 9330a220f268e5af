"""``neuroseg listen`` start-up checks and ``neuroseg bench ingest``."""

from __future__ import annotations

import json

import pytest

from neuroseg.worker.cli import main


def test_listen_refuses_invalid_classification_rules(tmp_path, monkeypatch, capsys):
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules:\n  - {name: broken, roles: [T7], score: 1, when: {tr: [0, 1]}}\n")
    monkeypatch.setenv("NEUROSEG_CLASSIFICATION_RULES", str(rules))
    assert main(["listen"]) == 2
    assert "'T7' is not a sequence role" in capsys.readouterr().err


def test_listen_refuses_a_port_in_use(tmp_path, monkeypatch, capsys):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        monkeypatch.setenv("NEUROSEG_PORT", str(taken.getsockname()[1]))
        monkeypatch.setenv("NEUROSEG_BIND_ADDRESS", "127.0.0.1")
        assert main(["listen"]) == 2
    assert "cannot start" in capsys.readouterr().err


@pytest.mark.integration
def test_bench_ingest_reports_both_receivers(tmp_path, shared_data, capsys):
    report_path = tmp_path / "ingest.json"
    source = shared_data / "real-dicom" / "siemens-prisma-t1-sagittal-prone"
    assert main(["bench", "ingest", "-n", "40", "--rounds", "1", "--source", str(source),
                 "--json", str(report_path)]) == 0
    report = json.loads(report_path.read_text())
    assert report["instances"] == 40
    assert report["storescp"]["all_received"] and report["neuroseg"]["all_received"]
    assert report["ratio"] == pytest.approx(report["neuroseg"]["instances_per_s"]
                                            / report["storescp"]["instances_per_s"], rel=0.01)
    assert "ratio neuroseg/storescp" in capsys.readouterr().out
