"""deploy/compose: the compose file validates and wires the services together."""

from __future__ import annotations

import json

import pytest
import yaml
from compose_spec import PyCompose
from compose_spec.models import ComposeSpecification

from neuroseg.worker.settings import Settings, load_settings
from tests.deploy.cli_check import assert_cli_accepts
from tests.deploy.manifests import COMPOSE_FILE, DEPLOY, interpolate, load_compose, read_env_file

ENV_EXAMPLE = DEPLOY / "compose" / "env.example"
NEUROSEG_SERVICES = ("listener", "worker-gpu", "worker-cpu", "admin")


@pytest.fixture(scope="module")
def compose() -> dict:
    # env.example leaves the secrets empty: the admin sets them
    return load_compose({**read_env_file(ENV_EXAMPLE), "POSTGRES_PASSWORD": "p" * 24, "NEUROSEG_ADMIN_TOKEN": "t" * 32})


def test_compose_file_validates_against_the_compose_specification(compose):
    # the compose_spec parser rejects unknown keys and malformed values
    # (ports, durations, image references), then checks that every volume,
    # network, config and secret a service uses is declared
    body = {key: value for key, value in compose.items() if not key.startswith("x-")}
    parsed = PyCompose.from_json(json.dumps(body))
    parsed.validate()
    ComposeSpecification.model_validate(body)
    assert set(parsed.service_names()) == {
        "listener", "worker-gpu", "worker-cpu", "admin", "redis", "postgres", "flower", "orthanc"
    }


def test_compose_refuses_to_start_without_the_secrets():
    raw = yaml.safe_load(COMPOSE_FILE.read_text())
    env = read_env_file(ENV_EXAMPLE)
    for secret in ("POSTGRES_PASSWORD", "NEUROSEG_ADMIN_TOKEN"):
        assert env[secret] == "", f"env.example must not ship a value for {secret}"
        filled = {**env, "POSTGRES_PASSWORD": "p" * 24, "NEUROSEG_ADMIN_TOKEN": "t" * 32}
        with pytest.raises(KeyError, match=secret):
            interpolate(raw["services"], {**filled, secret: ""})  # left empty: refused
        without = {key: value for key, value in filled.items() if key != secret}
        with pytest.raises(KeyError, match=secret):
            interpolate(raw["services"], without)


def test_gpu_worker_reserves_one_nvidia_gpu_and_cpu_worker_is_a_profile(compose):
    gpu = compose["services"]["worker-gpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert gpu["profiles"] == ["gpu"]
    assert gpu["build"]["args"]["VARIANT"] == "cuda"
    cpu = compose["services"]["worker-cpu"]
    assert cpu["profiles"] == ["cpu"]
    assert "devices" not in json.dumps(cpu.get("deploy", {}))
    assert compose["services"]["orthanc"]["profiles"] == ["trial"]


def test_redis_persists_the_queue_with_an_append_only_file(compose):
    redis = compose["services"]["redis"]
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert any(volume.endswith(":/data") for volume in redis["volumes"])


@pytest.mark.parametrize("service", NEUROSEG_SERVICES)
def test_neuroseg_service_environment_is_valid_settings(compose, service, monkeypatch):
    environment = compose["services"][service]["environment"]
    fields = {f"NEUROSEG_{name.upper()}" for name in Settings.model_fields}
    unknown = sorted(set(environment) - fields)
    assert not unknown, f"{service} sets unknown settings {unknown}"
    for key, value in environment.items():
        monkeypatch.setenv(key, str(value))
    settings = load_settings()
    assert settings.broker_url == "redis://redis:6379/0"
    assert settings.database_url.startswith("postgresql+psycopg://neuroseg:")
    assert str(settings.data_dir) == "/var/lib/neuroseg"


@pytest.mark.parametrize("service", NEUROSEG_SERVICES)
def test_neuroseg_service_command_is_a_real_cli_command(compose, service):
    assert_cli_accepts(compose["services"][service]["command"])


def test_neuroseg_services_share_the_data_volume_and_wait_for_their_backends(compose):
    for service in NEUROSEG_SERVICES:
        spec = compose["services"][service]
        assert "neuroseg-data:/var/lib/neuroseg" in spec["volumes"], service
        assert spec["depends_on"]["redis"]["condition"] == "service_healthy", service
        assert spec["depends_on"]["postgres"]["condition"] == "service_healthy", service
        assert spec["build"]["dockerfile"] == "deploy/compose/Dockerfile", service
        assert (COMPOSE_FILE.parent / spec["build"]["context"] / "pyproject.toml").is_file(), service


def test_listener_and_admin_publish_their_ports_and_admin_checks_health(compose):
    listener = compose["services"]["listener"]
    assert listener["ports"] == ["11112:11112"]
    admin = compose["services"]["admin"]
    assert admin["ports"] == ["127.0.0.1:8080:8080"]
    assert admin["environment"]["NEUROSEG_ADMIN_HOST"] == "0.0.0.0"
    assert "/health" in " ".join(admin["healthcheck"]["test"])


def test_trial_orthanc_routes_to_the_listener_and_receives_the_results(compose):
    orthanc_service = compose["services"]["orthanc"]
    mounts = {}
    for volume in orthanc_service["volumes"]:
        source, target = volume.split(":")[:2]
        if source.startswith("./"):
            path = COMPOSE_FILE.parent / source
            assert path.is_file(), f"orthanc mounts {source}, which does not exist"
            mounts[target] = path
    config = json.loads(mounts["/etc/orthanc/orthanc.json"].read_text())
    for script in config["LuaScripts"]:
        assert script in mounts, f"Orthanc runs {script}, which is not mounted"
    ae_title, host, port = config["DicomModalities"]["neuroseg"]
    environment = compose["services"]["listener"]["environment"]
    assert ae_title == environment["NEUROSEG_AE_TITLE"]
    assert (host, port) == ("listener", int(environment["NEUROSEG_PORT"]))
    assert config["DicomAet"] in environment["NEUROSEG_ALLOWED_CALLING_AES"].split(",")
    assert environment["NEUROSEG_DESTINATIONS"] == f"{config['DicomAet']}@orthanc:{config['DicomPort']}"
