"""The compose stack for real: deploy/smoke.sh builds the images and runs a study end to end.

Opt-in (``RUN_COMPOSE_SMOKE=1``): it passes end to end on a two-core machine,
but a cold run there takes 25-40 min (debootstrap base, four image builds, and
``vfs`` copying the 2.1 GB image into three containers), so it is not part of
the default or the CI run. With the variable set it fails, not skips,
where docker cannot run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from tests.services import REPO_ROOT, SHARED_DATA

pytestmark = [pytest.mark.slow, pytest.mark.integration]

SMOKE = REPO_ROOT / "deploy" / "smoke.sh"


def docker_runs() -> str | None:
    """None when a docker daemon answers; otherwise why not."""
    if shutil.which("docker") is None:
        return "docker is not installed"
    probe = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=60)
    return None if probe.returncode == 0 else f"docker info failed: {probe.stderr.strip()[-200:]}"


@pytest.mark.timeout(3600)
@pytest.mark.skipif(os.environ.get("RUN_COMPOSE_SMOKE") != "1",
                    reason="the compose smoke test is opt-in: RUN_COMPOSE_SMOKE=1")
def test_smoke_script_runs_the_stack_end_to_end():
    why_not = docker_runs()
    if why_not is not None:
        pytest.fail(f"the compose smoke test needs a running docker: {why_not}")
    # the script downloads the torch wheel with "python3 -m pip": the test's interpreter has pip
    env = {**os.environ, "SMOKE_DATA": str(SHARED_DATA),
           "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ.get('PATH', '')}"}
    env = {name: value for name, value in env.items() if not name.startswith("NEUROSEG_")}
    result = subprocess.run(["bash", str(SMOKE)], env=env, capture_output=True, text=True, timeout=3500)
    output = result.stdout + result.stderr
    print(output[-6000:])
    assert result.returncode == 0, next(
        (line for line in output.splitlines() if line.startswith("SMOKE FAILED")), output[-2000:])
    assert "SMOKE OK" in result.stdout
