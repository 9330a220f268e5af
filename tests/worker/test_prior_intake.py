"""NEUROSEG_PRIOR_INTAKE: where a prior fetched from the PACS is handed to the listener."""

from __future__ import annotations

import pytest

from neuroseg.worker.cli import main
from neuroseg.worker.prior_query import listener_peer
from neuroseg.worker.settings import DicomDestination, SettingsError, load_settings


def test_unset_the_intake_is_our_own_listener_on_this_host():
    peer = listener_peer(load_settings(ae_title="NEUROSEG", port=11112, bind_address="0.0.0.0"))
    assert (peer.ae_title, peer.host, peer.port) == ("NEUROSEG", "127.0.0.1", 11112)
    peer = listener_peer(load_settings(ae_title="NEUROSEG", port=11112, bind_address="10.1.2.3"))
    assert peer.host == "10.1.2.3"


def test_the_intake_can_be_a_listener_on_another_host(monkeypatch):
    monkeypatch.setenv("NEUROSEG_PRIOR_INTAKE", "INTAKE@neuroseg-listener:11112")
    settings = load_settings(calling_ae_title="NSWORKER")
    assert settings.prior_intake == DicomDestination(ae_title="INTAKE", host="neuroseg-listener", port=11112)
    peer = listener_peer(settings)
    assert (peer.ae_title, peer.host, peer.port, peer.calling_ae_title) == (
        "INTAKE", "neuroseg-listener", 11112, "NSWORKER")
    assert listener_peer(load_settings(prior_intake="")).host == "127.0.0.1"  # empty: the default


@pytest.mark.parametrize(("value", "message"), [
    ("neuroseg-listener:11112", "the prior intake is our DICOM listener, given as AET@host:port"),
    ("INTAKE@neuroseg-listener", "the prior intake is our DICOM listener, given as AET@host:port"),
    ("INTAKE@neuroseg-listener:70000", "less than or equal to 65535"),
    ("A_VERY_LONG_AE_TITLE@host:104", "at most 16 characters"),
    ("https://pacs.example.org/dicom-web", "the prior intake is our DICOM listener, given as AET@host:port"),
])
def test_a_wrong_intake_stops_start_up_naming_it(monkeypatch, capsys, value, message):
    monkeypatch.setenv("NEUROSEG_PRIOR_INTAKE", value)
    with pytest.raises(SettingsError, match="NEUROSEG_PRIOR_INTAKE") as raised:
        load_settings()
    assert message in str(raised.value)
    assert main(["config"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("neuroseg: configuration error:") and "NEUROSEG_PRIOR_INTAKE" in error and "\n" not in error
