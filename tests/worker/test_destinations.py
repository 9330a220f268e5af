"""NEUROSEG_DESTINATIONS: C-STORE and DICOMweb entries, and the DICOMweb credentials."""

from __future__ import annotations

import pytest

from neuroseg.worker.settings import DicomDestination, DicomWebDestination, SettingsError, load_settings


def test_destinations_mix_c_store_and_dicomweb_entries():
    settings = load_settings(destinations="PACS@pacs.local:104, https://archive.example.org/dicom-web/ ,"
                                          "HTTP://10.0.0.5:8042/dicom-web")
    assert settings.destinations == [
        DicomDestination(ae_title="PACS", host="pacs.local", port=104),
        DicomWebDestination(url="https://archive.example.org/dicom-web"),
        DicomWebDestination(url="HTTP://10.0.0.5:8042/dicom-web"),
    ]
    assert [str(item) for item in settings.destinations][1] == "https://archive.example.org/dicom-web"


@pytest.mark.parametrize(("value", "message"), [
    ("https://user:secret@archive/dicom-web", "credentials go in NEUROSEG_DICOMWEB_USERNAME"),
    ("https:///dicom-web", "is not a DICOMweb base URL"),
    ("ftp://archive/dicom-web", "not a destination of the form AET@host:port .or a DICOMweb base URL"),
])
def test_a_bad_dicomweb_destination_is_refused_naming_it(value, message):
    with pytest.raises(SettingsError, match=message):
        load_settings(destinations=value)


def test_dicomweb_credentials_are_basic_or_bearer_not_both():
    with pytest.raises(SettingsError, match="either dicomweb_token .* or dicomweb_username"):
        load_settings(dicomweb_token="t", dicomweb_username="u", dicomweb_password="p")
    with pytest.raises(SettingsError, match="dicomweb_username and dicomweb_password must be set together"):
        load_settings(dicomweb_username="u")
    settings = load_settings(dicomweb_token="abc")
    assert settings.dicomweb_token.get_secret_value() == "abc" and "abc" not in repr(settings)
