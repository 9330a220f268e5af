"""Readers for the deployment files: compose interpolation, a small Kustomize
builder (used when ``kubectl`` is not installed) and env-file parsing.

The Kustomize builder covers what ``deploy/k8s`` uses: ``resources`` (files and
folders with a kustomization), ``namespace``, ``images`` and ``patches``
(JSON 6902 lists and strategic-merge documents whose lists of named items merge
by ``name``). The tests check it against ``kubectl kustomize`` where both exist.
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.services import REPO_ROOT

DEPLOY = REPO_ROOT / "deploy"
COMPOSE_FILE = DEPLOY / "compose" / "compose.yaml"
DOCKERFILE = DEPLOY / "compose" / "Dockerfile"
K8S = DEPLOY / "k8s"
SYSTEMD = DEPLOY / "systemd"

# kinds that are namespaced (Kustomize sets their namespace)
_CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PersistentVolume", "StorageClass",
                   "CustomResourceDefinition"}


# --- env files and compose interpolation --------------------------------------
def read_env_file(path: Path) -> dict[str, str]:
    """``KEY=VALUE`` lines of an env file (comments and blank lines skipped)."""
    values: dict[str, str] = {}
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if "=" not in line:
            raise ValueError(f"{path}:{number}: {line!r} is not KEY=VALUE")
        key, value = line.split("=", 1)
        values[key.strip()] = value.strip()
    return values


_VARIABLE = re.compile(r"\$(?:(?P<escaped>\$)|\{(?P<braced>\w+)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}|(?P<named>\w+))")


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Apply the compose-spec interpolation rules to every string in ``value``.

    Supports ``$$``, ``$VAR``, ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``,
    ``${VAR:?error}`` and ``${VAR?error}``. Unlike docker compose, a variable that
    is unset and has no default raises ``KeyError`` (compose would warn and use "").
    """
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match) -> str:
        if match.group("escaped"):
            return "$"
        name = match.group("braced") or match.group("named")
        op, arg = match.group("op"), match.group("arg")
        current = env.get(name)
        if op == ":-":
            return current if current else arg
        if op == "-":
            return arg if current is None else current
        if op in (":?", "?"):
            if current is None or (op == ":?" and not current):
                raise KeyError(f"{name}: {arg}")
            return current
        if current is None:
            raise KeyError(f"{name} is not set and has no default")
        return current

    return _VARIABLE.sub(substitute, value)


def load_compose(env: dict[str, str]) -> dict[str, Any]:
    """The compose file as docker compose sees it with ``env`` (merge keys resolved)."""
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    extensions = {key: value for key, value in data.items() if key.startswith("x-")}
    body = {key: value for key, value in data.items() if not key.startswith("x-")}
    return {**extensions, **interpolate(body, env)}


# --- kustomize ----------------------------------------------------------------
def kubectl() -> str | None:
    """Path of a ``kubectl`` that has ``kustomize`` built in, or None."""
    return shutil.which("kubectl")


def kubectl_kustomize(folder: Path) -> list[dict[str, Any]]:
    """``kubectl kustomize folder`` parsed into documents."""
    result = subprocess.run([kubectl(), "kustomize", str(folder)], capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise RuntimeError(f"kubectl kustomize {folder} failed: {result.stderr.strip()}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def _load_documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _matches(target: dict[str, Any], doc: dict[str, Any]) -> bool:
    return all(
        doc.get(key) == target[key] if key == "kind" else doc["metadata"].get(key) == target[key]
        for key in ("kind", "name") if key in target
    )


def _pointer(path: str) -> list[str]:
    return [part.replace("~1", "/").replace("~0", "~") for part in path.lstrip("/").split("/")]


def _apply_json_patch(doc: dict[str, Any], operations: list[dict[str, Any]]) -> None:
    for operation in operations:
        *parents, last = _pointer(operation["path"])
        node: Any = doc
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        op = operation["op"]
        if isinstance(node, list):
            index = len(node) if last == "-" else int(last)
            if op == "add":
                node.insert(index, copy.deepcopy(operation["value"]))
            elif op == "replace":
                node[index] = copy.deepcopy(operation["value"])
            elif op == "remove":
                del node[index]
            else:
                raise ValueError(f"JSON patch op {op!r} is not supported by this builder")
        else:
            if op in ("add", "replace"):
                if op == "replace" and last not in node:
                    raise KeyError(f"JSON patch replaces missing path {operation['path']}")
                node[last] = copy.deepcopy(operation["value"])
            elif op == "remove":
                del node[last]
            else:
                raise ValueError(f"JSON patch op {op!r} is not supported by this builder")


def _strategic_merge(base: Any, patch: Any) -> Any:
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = dict(base)
        for key, value in patch.items():
            merged[key] = _strategic_merge(base[key], value) if key in base else copy.deepcopy(value)
        return merged
    if (isinstance(base, list) and isinstance(patch, list)
            and all(isinstance(item, dict) and "name" in item for item in base + patch)):
        # items the patch adds come first, as kustomize writes them
        merged = [copy.deepcopy(item) for item in base]
        names = [item["name"] for item in merged]
        added = []
        for item in patch:
            if item["name"] in names:
                index = names.index(item["name"])
                merged[index] = _strategic_merge(merged[index], item)
            else:
                added.append(copy.deepcopy(item))
        return added + merged
    return copy.deepcopy(patch)


def _set_image(doc: dict[str, Any], images: list[dict[str, Any]]) -> None:
    spec = doc.get("spec", {}).get("template", {}).get("spec", {})
    for container in spec.get("containers", []) + spec.get("initContainers", []):
        name, _, tag = container["image"].partition(":")
        for image in images:
            if image["name"] == name:
                tag = image.get("newTag", tag)
                container["image"] = image.get("newName", name) + (f":{tag}" if tag else "")


def python_kustomize(folder: Path) -> list[dict[str, Any]]:
    """Build ``folder``'s kustomization with the subset of Kustomize that deploy/k8s uses."""
    folder = Path(folder)
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    unknown = set(kustomization) - {"apiVersion", "kind", "namespace", "resources", "images", "patches"}
    if unknown:
        raise ValueError(f"{folder}/kustomization.yaml uses {sorted(unknown)}, which this builder does not know")
    documents: list[dict[str, Any]] = []
    for entry in kustomization.get("resources", []):
        path = (folder / entry).resolve()
        if path.is_dir():
            documents.extend(python_kustomize(path))
        elif path.is_file():
            documents.extend(_load_documents(path))
        else:
            raise FileNotFoundError(f"{folder}/kustomization.yaml lists {entry}, which does not exist")
    for patch in kustomization.get("patches", []):
        content = yaml.safe_load((folder / patch["path"]).read_text())
        if isinstance(content, list):
            targets = [doc for doc in documents if _matches(patch["target"], doc)]
            if not targets:
                raise ValueError(f"patch {patch['path']} matches no resource")
            for doc in targets:
                _apply_json_patch(doc, content)
        else:
            target = {"kind": content["kind"], "name": content["metadata"]["name"]}
            indexes = [index for index, doc in enumerate(documents) if _matches(target, doc)]
            if not indexes:
                raise ValueError(f"patch {patch['path']} matches no resource")
            for index in indexes:
                documents[index] = _strategic_merge(documents[index], content)
    for doc in documents:
        if "namespace" in kustomization and doc["kind"] not in _CLUSTER_SCOPED:
            doc["metadata"]["namespace"] = kustomization["namespace"]
        _set_image(doc, kustomization.get("images", []))
    return documents


def build_kustomization(folder: Path) -> list[dict[str, Any]]:
    """``kubectl kustomize`` where it is installed, else :func:`python_kustomize`."""
    return kubectl_kustomize(folder) if kubectl() else python_kustomize(folder)


def kustomizations() -> list[Path]:
    """Every folder under deploy/k8s that holds a kustomization.yaml."""
    return sorted(path.parent for path in K8S.rglob("kustomization.yaml"))


# --- systemd ------------------------------------------------------------------
def read_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """A systemd unit as ``{section: {key: [values...]}}`` (keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for number, raw in enumerate(Path(path).read_text().splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        if current is None or "=" not in line:
            raise ValueError(f"{path}:{number}: {raw!r} is not a key=value line inside a section")
        key, value = line.split("=", 1)
        current.setdefault(key.strip(), []).append(value.strip())
    return sections
