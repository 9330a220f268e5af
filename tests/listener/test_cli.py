"""``neuroseg listen`` start-up checks and ``neuroseg bench ingest``."""

from __future__ import annotations

import json
import pstats

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
    assert report["neuroseg_two_flushes"]["all_received"]  # the same listener with the journal off
    assert report["ratio_two_flushes"] > 0
    # pynetdicom answering without storing: the ceiling, acknowledged every instance and is not durable
    assert report["pynetdicom_alone"]["received"] == [40] and not report["pynetdicom_alone"]["durable"]
    assert report["ratio_pynetdicom_alone"] > 0
    assert report["ratio"] == pytest.approx(report["neuroseg"]["instances_per_s"]
                                            / report["storescp"]["instances_per_s"], rel=0.01)
    assert "ratio neuroseg/storescp" in capsys.readouterr().out


@pytest.mark.integration
def test_bench_ingest_over_several_associations_with_a_profile(tmp_path, shared_data, capsys):
    report_path, profile_path = tmp_path / "ingest.json", tmp_path / "profile.txt"
    source = shared_data / "real-dicom" / "siemens-prisma-t1-sagittal-prone"
    assert main(["bench", "ingest", "-n", "30", "--rounds", "1", "--source", str(source), "--associations", "3",
                 "--profile", str(profile_path), "--json", str(report_path)]) == 0
    report = json.loads(report_path.read_text())
    assert report["associations"] == 3 and report["profiled"]
    assert report["storescp"]["received"] == [30] and report["neuroseg"]["received"] == [30]
    # the association threads were profiled: the C-STORE handler and the spool write are in the raw stats
    # (the text report lists the top 40 only, where a loaded machine's lock waits can push the handler out)
    assert "3 association(s)" in profile_path.read_text()
    stats = pstats.Stats(str(profile_path.with_suffix(".pstats")))
    profiled = stats.stats  # type: ignore[attr-defined]
    assert any(name == "handle_store" for _, _, name in profiled)
    assert any(path.endswith("spool.py") and name == "store" for path, _, name in profiled)
    assert "3 association(s) at once" in capsys.readouterr().out
