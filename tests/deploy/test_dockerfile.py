"""deploy/compose/Dockerfile: installs what the README's install command installs.

The README installs ``pip install torch==X -e ".[test]"``; the image installs
torch at the same pin with the dependencies pyproject.toml declares in one
layer, then neuroseg's own wheel without dependencies, so that a source change
does not rebuild torch.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import tomllib

from neuroseg.worker.settings import Settings
from tests.deploy.cli_check import assert_cli_accepts
from tests.deploy.manifests import DOCKERFILE
from tests.services import REPO_ROOT


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    instructions, pending = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        pending += " " + stripped.removesuffix("\\").strip() if pending else stripped.removesuffix("\\").strip()
        if not stripped.endswith("\\"):
            keyword, _, arguments = pending.partition(" ")
            instructions.append((keyword.upper(), arguments.strip()))
            pending = ""
    return instructions


def readme_install_command() -> list[str]:
    """The quickstart's install command from the README, as words."""
    readme = (REPO_ROOT / "README.md").read_text()
    commands = re.findall(r"^\s*(pip install torch==\S+.*)$", readme, flags=re.MULTILINE)
    assert commands, "README.md has no `pip install torch==...` install command"
    return shlex.split(commands[0])


def normalise(words: list[str]) -> list[str]:
    """Drop the editable flag and extras: ``-e ".[test]"`` -> ``.``."""
    result = []
    for word in words:
        if word in ("-e", "--editable"):
            continue
        result.append(re.sub(r"^(\.|[\w./-]+)\[[^\]]*\]$", r"\1", word))
    return result


def build_args() -> dict[str, str]:
    args = {}
    for keyword, arguments in dockerfile_instructions():
        if keyword == "ARG" and "=" in arguments:
            name, value = arguments.split("=", 1)
            args.setdefault(name, value)
    return args


def dockerfile_pip_installs() -> list[list[str]]:
    """Every ``pip install ...`` of the Dockerfile, build args expanded."""
    args = build_args()
    commands = []
    for keyword, arguments in dockerfile_instructions():
        if keyword != "RUN":
            continue
        for part in arguments.split("&&"):
            words = shlex.split(part)
            if words[:2] == ["pip", "install"]:
                commands.append([re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], word) for word in words])
    return commands


def test_dockerfile_installs_torch_at_the_readme_pin():
    readme = normalise(readme_install_command())
    pins = [word for word in readme if word.startswith("torch==")]
    with_torch = [command for command in dockerfile_pip_installs() if any(w.startswith("torch==") for w in command)]
    assert with_torch, "the Dockerfile never installs torch"
    for command in with_torch:
        assert [w for w in command if w.startswith("torch==")] == pins, f"Dockerfile runs {' '.join(command)!r}"
        assert command[command.index("-r") + 1] == "/tmp/requirements.txt"


def test_dockerfile_requirements_are_the_declared_dependencies(tmp_path):
    """The RUN that writes /tmp/requirements.txt, run here: it lists pyproject.toml's dependencies."""
    run = next(arguments for keyword, arguments in dockerfile_instructions()
               if keyword == "RUN" and "/tmp/requirements.txt" in arguments)
    script = re.search(r'python3 -c "(.*?)" >', run).group(1).replace("\\\\", "\\")
    listed = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True,
                            check=True).stdout.splitlines()
    declared = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert listed == declared


def test_dockerfile_installs_neuroseg_from_its_own_wheel_without_dependencies():
    args_of = {tuple(command) for command in dockerfile_pip_installs()}
    assert ("pip", "install", "--no-deps", "--no-index", "/tmp/dist/*.whl") in args_of
    runs = [arguments for keyword, arguments in dockerfile_instructions() if keyword == "RUN"]
    assert any("pip wheel --no-deps --wheel-dir /dist ." in run for run in runs)


def test_readme_normalisation_keeps_the_torch_pin():
    assert normalise(["pip", "install", "torch==2.13.0", "-e", ".[test]"]) == ["pip", "install", "torch==2.13.0", "."]


def test_dockerfile_is_multi_stage_with_cpu_and_cuda_variants():
    stages = {}
    for keyword, arguments in dockerfile_instructions():
        if keyword == "FROM":
            words = arguments.split()
            assert len(words) == 3 and words[1].upper() == "AS", f"every stage is named: FROM {arguments}"
            stages[words[2]] = words[0]
    assert {"base-cpu", "base-cuda", "deps", "build", "runtime"} <= set(stages)
    assert stages["deps"] == stages["runtime"] == "base-${VARIANT}"
    assert stages["build"] == "deps"
    assert build_args()["VARIANT"] in ("cpu", "cuda")
    copies = [arguments for keyword, arguments in dockerfile_instructions() if keyword == "COPY"]
    assert any(arguments.startswith("--from=build ") for arguments in copies)
    assert any(arguments.startswith("--from=deps ") for arguments in copies)


def test_image_runs_as_a_non_root_user():
    users = [arguments for keyword, arguments in dockerfile_instructions() if keyword == "USER"]
    assert users, "the image must set USER"
    user = users[-1].split(":")[0]
    assert user not in ("0", "root")
    # the last stage is the runtime image and its USER comes after its FROM
    instructions = dockerfile_instructions()
    last_from = max(index for index, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    assert any(keyword == "USER" for keyword, _ in instructions[last_from:])


def test_image_copies_every_package_folder_and_the_ignore_file_keeps_them():
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    folders = {path.split("/")[0] for path in pyproject["tool"]["setuptools"]["package-dir"].values()}
    copied = set()
    for keyword, arguments in dockerfile_instructions():
        if keyword == "COPY" and not arguments.startswith("--from"):
            copied.update(word.rstrip("/") for word in arguments.split()[:-1])
    assert folders | {"pyproject.toml", "README.md"} <= copied
    ignore = (DOCKERFILE.parent / "Dockerfile.dockerignore").read_text().split()
    for name in folders | {"pyproject.toml", "README.md"}:
        assert f"!{name}" in ignore or f"!{name}/" in ignore, f"Dockerfile.dockerignore excludes {name}"


def test_image_exposes_the_default_ports_and_runs_the_cli():
    instructions = dict(reversed(dockerfile_instructions()))  # first occurrence wins
    defaults = Settings.model_fields
    assert set(instructions["EXPOSE"].split()) == {str(defaults["port"].default), str(defaults["admin_port"].default)}
    assert json.loads(instructions["ENTRYPOINT"]) == ["neuroseg"]
    last_cmd = [arguments for keyword, arguments in dockerfile_instructions() if keyword == "CMD"][-1]
    assert_cli_accepts(json.loads(last_cmd))


def test_image_environment_uses_only_known_settings():
    fields = {f"NEUROSEG_{name.upper()}" for name in Settings.model_fields}
    for instruction, arguments in dockerfile_instructions():
        if instruction == "ENV":
            for name in re.findall(r"(NEUROSEG_\w+)=", arguments):
                assert name in fields, f"the Dockerfile sets {name}, which is not a setting"
