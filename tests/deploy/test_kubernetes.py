"""deploy/k8s: every kustomization builds, validates against the Kubernetes
schemas and is wired consistently (selectors, ports, probes, secrets, settings)."""

from __future__ import annotations

import base64
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from neuroseg.worker.settings import Settings, load_settings
from tests.deploy.cli_check import assert_cli_accepts
from tests.deploy.manifests import (
    K8S,
    build_kustomization,
    kubectl,
    kubectl_kustomize,
    kustomizations,
    python_kustomize,
)

KUBERNETES_VERSION = "1.30.0"
WORKLOADS = ("Deployment", "StatefulSet")
CUSTOM_KINDS = {"ScaledObject"}
FOLDERS = kustomizations()
IDS = [str(folder.relative_to(K8S)) for folder in FOLDERS]


def by_key(documents: list[dict]) -> dict[tuple[str, str], dict]:
    return {(doc["kind"], doc["metadata"]["name"]): doc for doc in documents}


@pytest.fixture(scope="module", params=FOLDERS, ids=IDS)
def built(request) -> tuple[Path, dict[tuple[str, str], dict]]:
    return request.param, by_key(build_kustomization(request.param))


def pod_specs(resources):
    for (kind, name), doc in resources.items():
        if kind in WORKLOADS:
            yield name, doc["spec"]["template"]["spec"]


def containers(resources):
    for name, spec in pod_specs(resources):
        for container in spec["containers"]:
            yield name, spec, container


def test_kustomize_layout_has_base_and_overlays():
    assert {"base", "overlays/cpu", "overlays/tls"} <= set(IDS)


def test_every_yaml_file_under_deploy_parses():
    deploy = K8S.parent
    files = sorted(deploy.rglob("*.yaml")) + sorted(deploy.rglob("*.yml"))
    assert files
    for path in files:
        documents = list(yaml.safe_load_all(path.read_text()))
        assert any(doc is not None for doc in documents), f"{path} is empty"


@pytest.mark.skipif(kubectl() is None, reason="kubectl is not installed; the Python builder is used instead")
@pytest.mark.parametrize("folder", FOLDERS, ids=IDS)
def test_python_builder_agrees_with_kubectl_kustomize(folder):
    # the fallback used where kubectl is missing must build what kubectl builds
    assert by_key(python_kustomize(folder)) == by_key(kubectl_kustomize(folder))


def test_resources_validate_against_the_kubernetes_schemas(built):
    folder, resources = built
    for (kind, name), doc in resources.items():
        if kind in CUSTOM_KINDS:
            continue
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(part) for part in exc.path)
            pytest.fail(f"{folder.name}: {kind}/{name} at {path}: {exc.message}")


def test_workload_selectors_match_their_pod_labels(built):
    _, resources = built
    for (kind, name), doc in resources.items():
        if kind in WORKLOADS:
            selector = doc["spec"]["selector"]["matchLabels"]
            labels = doc["spec"]["template"]["metadata"]["labels"]
            assert selector.items() <= labels.items(), f"{kind}/{name} selects {selector}, pods have {labels}"


def test_services_select_a_workload_and_target_a_declared_port(built):
    _, resources = built
    for (kind, name), service in resources.items():
        if kind != "Service":
            continue
        selector = service["spec"]["selector"]
        matches = [
            doc["spec"]["template"]["spec"] for (kind_, _), doc in resources.items()
            if kind_ in WORKLOADS and selector.items() <= doc["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert len(matches) == 1, f"Service/{name} selects {len(matches)} workloads"
        spec = matches[0]
        ports = {port.get("name"): port["containerPort"] for container in spec["containers"]
                 for port in container.get("ports", [])}
        for port in service["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            assert target in ports or target in ports.values(), f"Service/{name} targets {target}, not declared"


def test_listener_service_and_port_match_the_settings_default(built):
    _, resources = built
    service = resources[("Service", "neuroseg-listener")]
    assert [port["port"] for port in service["spec"]["ports"]] == [Settings.model_fields["port"].default] == [11112]
    listener = resources[("Deployment", "neuroseg-listener")]
    assert listener["spec"]["replicas"] == 1
    assert listener["spec"]["strategy"]["type"] == "Recreate"


def test_probes_point_at_declared_ports_and_real_routes(built):
    _, resources = built
    probed = set()
    for workload, _, container in containers(resources):
        ports = {port.get("name") for port in container.get("ports", [])} | {
            port["containerPort"] for port in container.get("ports", [])}
        for probe_name in ("startupProbe", "readinessProbe", "livenessProbe"):
            probe = container.get(probe_name)
            if probe is None:
                continue
            probed.add((workload, probe_name))
            action = probe.get("httpGet") or probe.get("tcpSocket")
            if action is not None:
                assert action["port"] in ports, f"{workload} {probe_name} uses port {action['port']}, not declared"
            if "httpGet" in probe:
                assert probe["httpGet"]["path"] in admin_routes(), f"{workload} {probe_name} path is not a route"
    for workload in ("neuroseg-listener", "neuroseg-admin"):
        assert {(workload, "readinessProbe"), (workload, "livenessProbe")} <= probed


def admin_routes() -> set[str]:
    """Paths the admin app serves (checked against the real app once it exists)."""
    from tests.deploy.app_facts import admin_route_paths

    return admin_route_paths()


def test_every_container_has_requests_limits_and_runs_as_non_root(built):
    _, resources = built
    for workload, spec, container in containers(resources):
        resources_ = container["resources"]
        assert {"cpu", "memory"} <= set(resources_["requests"]), workload
        assert "memory" in resources_["limits"], workload
        assert spec["securityContext"]["runAsNonRoot"] is True, workload
        assert container["securityContext"]["allowPrivilegeEscalation"] is False, workload


def test_gpu_worker_requests_one_gpu_and_the_cpu_overlay_none(built):
    folder, resources = built
    worker = resources[("Deployment", "neuroseg-worker")]["spec"]["template"]["spec"]["containers"][0]
    gpus = worker["resources"]["limits"].get("nvidia.com/gpu")
    if folder.name == "cpu":
        assert gpus is None
        assert worker["args"] == ["worker", "--device", "cpu"]
    else:
        assert gpus == 1
        assert worker["args"] == ["worker", "--device", "cuda:0"]


def test_containers_run_real_cli_commands(built):
    _, resources = built
    for workload, _, container in containers(resources):
        if workload.startswith("neuroseg-") and workload != "neuroseg-redis":
            assert_cli_accepts(container["args"])


def test_volumes_secrets_and_config_maps_exist(built):
    _, resources = built
    secrets = {name: doc for (kind, name), doc in resources.items() if kind == "Secret"}
    config_maps = {name: doc for (kind, name), doc in resources.items() if kind == "ConfigMap"}
    claims = {name: doc for (kind, name), doc in resources.items() if kind == "PersistentVolumeClaim"}
    claim_templates = {
        name: {template["metadata"]["name"] for template in doc["spec"].get("volumeClaimTemplates", [])}
        for (kind, name), doc in resources.items() if kind == "StatefulSet"
    }
    for workload, spec, container in containers(resources):
        volumes = {volume["name"]: volume for volume in spec.get("volumes", [])}
        volumes.update({name: {"name": name} for name in claim_templates.get(workload, ())})
        for mount in container.get("volumeMounts", []):
            assert mount["name"] in volumes, f"{workload} mounts {mount['name']}, which is not a volume"
        for volume in volumes.values():
            if "persistentVolumeClaim" in volume:
                claim = claims[volume["persistentVolumeClaim"]["claimName"]]
                assert claim["spec"]["accessModes"] == ["ReadWriteMany"], "the spool is shared by every pod"
            if "secret" in volume:
                assert volume["secret"]["secretName"] in secrets
        for source in container.get("envFrom", []):
            assert source["configMapRef"]["name"] in config_maps
        for variable in container.get("env", []):
            reference = variable.get("valueFrom", {}).get("secretKeyRef")
            if reference:
                secret = secrets[reference["name"]]
                keys = set(secret.get("stringData", {})) | set(secret.get("data", {}))
                assert reference["key"] in keys, f"{workload} reads missing key {reference['key']}"


def secret_value(secret: dict, key: str) -> str:
    if key in secret.get("stringData", {}):
        return secret["stringData"][key]
    return base64.b64decode(secret["data"][key]).decode()


def test_container_environment_is_valid_settings(built, monkeypatch):
    _, resources = built
    fields = {f"NEUROSEG_{name.upper()}" for name in Settings.model_fields}
    for workload, _, container in containers(resources):
        if workload == "neuroseg-redis":
            continue
        environment = {}
        for source in container.get("envFrom", []):
            environment.update(resources[("ConfigMap", source["configMapRef"]["name"])]["data"])
        for variable in container.get("env", []):
            if "value" in variable:
                environment[variable["name"]] = variable["value"]
            else:
                reference = variable["valueFrom"]["secretKeyRef"]
                environment[variable["name"]] = secret_value(resources[("Secret", reference["name"])], reference["key"])
        unknown = sorted(set(environment) - fields)
        assert not unknown, f"{workload} sets unknown settings {unknown}"
        with monkeypatch.context() as patch:
            for key, value in environment.items():
                patch.setenv(key, value)
            settings = load_settings()
        assert settings.broker_url.startswith("redis://neuroseg-redis:")


def test_worker_scales_on_the_redis_queue(built):
    _, resources = built
    scaled = resources[("ScaledObject", "neuroseg-worker")]
    target = scaled["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) in resources
    trigger = scaled["spec"]["triggers"][0]
    assert trigger["type"] == "redis"
    host, port = trigger["metadata"]["address"].rsplit(":", 1)
    service_name, namespace = host.split(".")[:2]
    redis = resources[("Service", service_name)]
    assert namespace == redis["metadata"]["namespace"]
    assert int(port) in [item["port"] for item in redis["spec"]["ports"]]
    from tests.deploy.app_facts import celery_queue_name

    assert trigger["metadata"]["listName"] == celery_queue_name()


def test_only_the_pacs_may_reach_the_listener(built):
    _, resources = built
    policies = [doc for (kind, _), doc in resources.items() if kind == "NetworkPolicy"]
    deny_all = [doc for doc in policies if doc["spec"]["podSelector"] == {} and "ingress" not in doc["spec"]]
    assert deny_all and deny_all[0]["spec"]["policyTypes"] == ["Ingress"], "ingress must be denied by default"
    listener_labels = resources[("Deployment", "neuroseg-listener")]["spec"]["template"]["metadata"]["labels"]
    selecting = [doc for doc in policies if doc["spec"]["podSelector"]
                 and doc["spec"]["podSelector"]["matchLabels"].items() <= listener_labels.items()]
    assert len(selecting) == 1
    for rule in selecting[0]["spec"]["ingress"]:
        assert rule["ports"] == [{"protocol": "TCP", "port": 11112}]
        assert rule["from"] and all(set(peer) == {"ipBlock"} for peer in rule["from"])
    # no other policy opens anything to the listener's pods
    for doc in policies:
        if doc is selecting[0] or doc in deny_all:
            continue
        selector = doc["spec"]["podSelector"].get("matchLabels", {})
        assert not selector.items() <= listener_labels.items(), doc["metadata"]["name"]


def test_tls_overlay_mounts_the_certificate_the_settings_name(built):
    folder, resources = built
    if folder.name != "tls":
        pytest.skip("TLS is switched on by overlays/tls")
    listener = resources[("Deployment", "neuroseg-listener")]["spec"]["template"]["spec"]
    container = listener["containers"][0]
    env = {item["name"]: item.get("value") for item in container["env"]}
    mount = next(item for item in container["volumeMounts"] if item["name"] == "dicom-tls")
    secret = resources[("Secret", "neuroseg-dicom-tls")]
    for variable, key in (("NEUROSEG_TLS_CERT", "tls.crt"), ("NEUROSEG_TLS_KEY", "tls.key"), ("NEUROSEG_TLS_CA", "ca.crt")):
        assert env[variable] == f"{mount['mountPath']}/{key}"
        assert key in secret["stringData"]
