"""deploy/systemd units and the example configuration files."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from neuroseg.worker.settings import CONFIG_FILE_VARIABLE, Settings, get_settings, load_settings
from tests.deploy.cli_check import assert_cli_accepts
from tests.deploy.manifests import DEPLOY, SYSTEMD, read_env_file, read_unit

UNITS = sorted(SYSTEMD.glob("*.service"))
SETTING_NAMES = {f"NEUROSEG_{name.upper()}" for name in Settings.model_fields}
VENV_BIN = "/opt/neuroseg/venv/bin/"


def test_units_exist_for_listener_worker_per_gpu_and_admin():
    assert {path.name for path in UNITS} == {
        "neuroseg-listener.service", "neuroseg-worker@.service", "neuroseg-admin.service"
    }
    target = read_unit(SYSTEMD / "neuroseg.target")
    wanted = target["Unit"]["Wants"][0].split()
    assert {"neuroseg-listener.service", "neuroseg-admin.service"} <= set(wanted)


@pytest.mark.parametrize("path", UNITS, ids=[path.name for path in UNITS])
def test_unit_runs_a_real_command_as_the_service_user(path):
    unit = read_unit(path)
    service = unit["Service"]
    assert service["User"] == ["neuroseg"]
    assert service["EnvironmentFile"] == ["/etc/neuroseg/neuroseg.env"]
    assert service["Restart"] == ["always"]
    assert service["ReadWritePaths"] == ["/var/lib/neuroseg"]
    assert service["NoNewPrivileges"] == ["yes"]
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]
    (exec_start,) = service["ExecStart"]
    words = shlex.split(exec_start)
    if words[0] == "/bin/sh":
        # the worker template maps the instance name to a device: try both kinds
        script = words[2]
        for instance, device in (("0", "cuda:0"), ("cpu", "cpu")):
            expanded = script.replace("%i", instance)
            command = re.search(r"exec (\S+) (.*)$", expanded).group(2).replace('"$device"', device)
            assert re.search(r"exec " + re.escape(VENV_BIN + "neuroseg"), expanded)
            assert_cli_accepts(command)
    else:
        assert words[0] == VENV_BIN + "neuroseg"
        assert_cli_accepts(words[1:])


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_units_pass_systemd_analyze_verify(tmp_path):
    # verify needs the executables to exist: point them at /bin/true in a copy
    names = []
    for path in [*UNITS, SYSTEMD / "neuroseg.target"]:
        text = path.read_text().replace(VENV_BIN + "neuroseg", "/bin/true")
        text = text.replace("EnvironmentFile=/", "EnvironmentFile=-/")
        name = path.name.replace("@.service", "@0.service")
        (tmp_path / name).write_text(text)
        names.append(str(tmp_path / name))
    result = subprocess.run(["systemd-analyze", "verify", "--man=no", *names],
                            capture_output=True, text=True, timeout=60)
    problems = [line for line in (result.stdout + result.stderr).splitlines() if str(tmp_path) in line]
    assert result.returncode == 0 and not problems, "\n".join(problems) or result.stderr


def test_systemd_environment_file_holds_only_valid_settings(monkeypatch):
    values = read_env_file(SYSTEMD / "neuroseg.env.example")
    unknown = sorted(set(values) - SETTING_NAMES)
    assert not unknown, f"neuroseg.env.example sets unknown settings {unknown}"
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    settings = load_settings()
    assert settings.broker_url and settings.database_url.startswith("postgresql+psycopg://")
    assert settings.allowed_calling_aes, "a production example names the PACS's calling AE"


def test_example_config_file_loads(monkeypatch):
    monkeypatch.setenv(CONFIG_FILE_VARIABLE, str(DEPLOY / "neuroseg.example.toml"))
    monkeypatch.delenv("NEUROSEG_DATA_DIR")  # environment variables win over the file
    get_settings.cache_clear()
    settings = get_settings()
    assert str(settings.destinations[0]) == "PACS01@pacs.example.org:104"
    assert settings.allowed_calling_aes == ["PACS01", "ORTHANC"]
    assert settings.data_dir == Path("/var/lib/neuroseg")
    get_settings.cache_clear()


def test_every_setting_named_in_deploy_exists():
    names: set[str] = set()
    for path in DEPLOY.rglob("*"):
        if path.is_file() and path.suffix not in (".json",):
            names |= set(re.findall(r"\bNEUROSEG_[A-Z_]+\b", path.read_text()))
    # compose-only variables (publishing and image choice) are not neuroseg settings
    compose_only = {"NEUROSEG_IMAGE_TAG", "NEUROSEG_DICOM_PUBLISH", "NEUROSEG_CPU_WORKER_CPUS", CONFIG_FILE_VARIABLE}
    unknown = sorted(names - SETTING_NAMES - compose_only)
    assert not unknown, f"deploy/ names settings that do not exist: {unknown}"


def test_postgresql_url_of_the_examples_works_with_the_job_store():
    """The job store opens the ``postgresql+psycopg`` URL the deployments use (skipped without a server)."""
    import sqlalchemy

    url = os.environ.get("NEUROSEG_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    try:
        engine = sqlalchemy.create_engine(url, connect_args={"connect_timeout": 2})
        with engine.connect() as connection:
            assert connection.execute(sqlalchemy.text("select 1")).scalar() == 1
    except sqlalchemy.exc.OperationalError as exc:
        pytest.skip(f"no PostgreSQL server to try: {exc.orig}")
    finally:
        engine.dispose()
