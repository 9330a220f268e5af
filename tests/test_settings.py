from pathlib import Path

import pytest

from neuroseg.worker.cli import main
from neuroseg.worker.settings import DicomDestination, MapKind, SettingsError, load_settings


def test_defaults_match_the_documented_contract():
    settings = load_settings()
    assert settings.ae_title == "NEUROSEG"
    assert settings.port == 11112
    assert settings.allowed_calling_aes == []
    assert settings.stable_seconds == 30 and settings.max_wait_seconds == 600
    assert settings.broker_url is None and settings.database_url is None
    assert settings.destinations == []
    assert settings.admin_host == "127.0.0.1" and settings.admin_port == 8080
    assert settings.mc_samples == 20 and settings.device == "auto"


def test_comma_lists_are_read_from_the_environment(monkeypatch):
    monkeypatch.setenv("NEUROSEG_ALLOWED_CALLING_AES", "PACS1, MODALITY ")
    monkeypatch.setenv("NEUROSEG_DESTINATIONS", "ORTHANC@127.0.0.1:4242,BACKUP@[::1]:104")
    monkeypatch.setenv("NEUROSEG_SEND_MAPS", "probability,gradcam")
    settings = load_settings()
    assert settings.allowed_calling_aes == ["PACS1", "MODALITY"]
    assert settings.destinations == [
        DicomDestination(ae_title="ORTHANC", host="127.0.0.1", port=4242),
        DicomDestination(ae_title="BACKUP", host="::1", port=104),
    ]
    assert settings.send_maps == [MapKind.PROBABILITY, MapKind.GRADCAM]


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("NEUROSEG_PORT", "eleven", r"NEUROSEG_PORT='eleven': Input should be a valid integer"),
        ("NEUROSEG_PORT", "70000", r"NEUROSEG_PORT=.70000.: Input should be less than or equal to 65535"),
        ("NEUROSEG_AE_TITLE", "A" * 17, r"NEUROSEG_AE_TITLE=.*is not a DICOM AE title"),
        ("NEUROSEG_DESTINATIONS", "pacs:104", r"NEUROSEG_DESTINATIONS=.*AET@host:port"),
        ("NEUROSEG_DEVICE", "tpu", r"NEUROSEG_DEVICE='tpu': 'tpu' is not a device"),
        ("NEUROSEG_SEND_MAPS", "heatmap", r"NEUROSEG_SEND_MAPS"),
    ],
)
def test_a_wrong_value_names_the_setting_and_what_is_allowed(monkeypatch, variable, value, message):
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError, match=message):
        load_settings()


def test_max_wait_shorter_than_stable_time_is_refused():
    with pytest.raises(SettingsError, match="max_wait_seconds .* must be at least stable_seconds"):
        load_settings(stable_seconds=60, max_wait_seconds=10)


def test_config_file_is_read_and_environment_wins(monkeypatch, tmp_path: Path):
    config = tmp_path / "neuroseg.toml"
    config.write_text('ae_title = "FROMFILE"\nport = 11999\n')
    monkeypatch.setenv("NEUROSEG_CONFIG", str(config))
    monkeypatch.setenv("NEUROSEG_PORT", "12000")
    settings = load_settings()
    assert settings.ae_title == "FROMFILE"
    assert settings.port == 12000


def test_config_file_with_unknown_key_is_refused(monkeypatch, tmp_path: Path):
    config = tmp_path / "neuroseg.yaml"
    config.write_text("aetitle: TYPO\n")
    monkeypatch.setenv("NEUROSEG_CONFIG", str(config))
    with pytest.raises(SettingsError, match="unknown setting.*aetitle"):
        load_settings()


def test_cli_reports_a_configuration_error_in_one_line(monkeypatch, capsys):
    monkeypatch.setenv("NEUROSEG_STABLE_SECONDS", "-1")
    assert main(["config"]) == 2
    error = capsys.readouterr().err.strip()
    assert error == (
        "neuroseg: configuration error: NEUROSEG_STABLE_SECONDS='-1': Input should be greater than 0"
    )


def test_cli_config_prints_settings_and_masks_the_admin_token(monkeypatch, capsys):
    monkeypatch.setenv("NEUROSEG_ADMIN_TOKEN", "s3cret")
    assert main(["config"]) == 0
    output = capsys.readouterr().out
    assert "NEUROSEG_AE_TITLE=NEUROSEG" in output
    assert "NEUROSEG_ADMIN_TOKEN=********" in output
    assert "s3cret" not in output


def test_readme_lists_every_setting():
    from tests.services import REPO_ROOT
    from neuroseg.worker.settings import describe_settings

    readme = (REPO_ROOT / "README.md").read_text()
    missing = [name for name, _, _ in describe_settings() if f"`{name}`" not in readme]
    assert missing == [], f"README configuration table lacks {missing}"


@pytest.mark.parametrize(
    ("variable", "message"),
    [
        ("NEUROSEG_DESTINATION", "unknown setting NEUROSEG_DESTINATION; did you mean NEUROSEG_DESTINATIONS?"),
        ("neuroseg_admintoken", "unknown setting NEUROSEG_ADMINTOKEN; did you mean NEUROSEG_ADMIN_TOKEN?"),
        ("NEUROSEG_CONFG", "unknown setting NEUROSEG_CONFG; did you mean NEUROSEG_CONFIG?"),
        ("NEUROSEG_QQQQQ", "unknown setting NEUROSEG_QQQQQ; the README's settings table lists every name"),
    ],
)
def test_a_misspelt_environment_variable_stops_start_up(monkeypatch, variable, message):
    monkeypatch.setenv(variable, "ORTHANC@127.0.0.1:4242")
    with pytest.raises(SettingsError) as raised:
        load_settings()
    assert str(raised.value) == message


def test_the_cli_names_a_misspelt_variable_in_one_line(monkeypatch, capsys):
    monkeypatch.setenv("NEUROSEG_DESTINATION", "ORTHANC@127.0.0.1:4242")
    assert main(["config"]) == 2
    assert capsys.readouterr().err.strip() == (
        "neuroseg: configuration error: unknown setting NEUROSEG_DESTINATION; did you mean NEUROSEG_DESTINATIONS?"
    )


def test_config_file_with_a_misspelt_key_suggests_the_setting(monkeypatch, tmp_path: Path):
    config = tmp_path / "neuroseg.toml"
    config.write_text('destination = "ORTHANC@127.0.0.1:4242"\n')
    monkeypatch.setenv("NEUROSEG_CONFIG", str(config))
    with pytest.raises(SettingsError) as raised:
        load_settings()
    assert str(raised.value) == f"config file {config}: unknown setting destination; did you mean destinations?"


def test_a_misspelt_override_is_refused():
    with pytest.raises(SettingsError, match="unknown setting stable_second; did you mean stable_seconds?"):
        load_settings(stable_second=1)


def test_valid_names_come_from_the_fields(monkeypatch):
    """A setting added to the model is accepted at once: the check keeps no list of its own."""
    from neuroseg.worker.settings import Settings

    class WithNewSetting(Settings):
        brand_new_setting: int = 1

    monkeypatch.setenv("NEUROSEG_BRAND_NEW_SETTING", "7")
    assert WithNewSetting().brand_new_setting == 7
    with pytest.raises(SettingsError, match="NEUROSEG_BRAND_NEW_SETTING"):
        load_settings()
