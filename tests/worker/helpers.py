"""Helpers for the worker tests: small synthetic studies, manifests, worker processes."""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from neuroseg.dicom_out.mr_series import StudyIdentity, build_mr_series
from neuroseg.worker.contracts import SequenceRole, SeriesManifest, StudyManifest
from neuroseg.worker.jobstore import FINAL_STATES, JobState, JobStore
from tests.services import REPO_ROOT, wait_for

ROLES = ("T1", "T1ce", "T2", "FLAIR")


def blob_volume(shape=(12, 32, 32), seed=0, role="FLAIR") -> np.ndarray:
    """A head-like ellipsoid with a bright blob (a 'tumour'), as int16."""
    rng = np.random.default_rng(seed)
    k, r, c = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    head = (k ** 2 + r ** 2 + c ** 2) < 0.8
    blob = ((k - 0.1) ** 2 + (r + 0.2) ** 2 + (c - 0.2) ** 2) < 0.08
    gain = {"T1": 1.0, "T1ce": 1.6, "T2": 1.3, "FLAIR": 1.5}[role]
    volume = head * 400 + blob * 300 * gain + rng.normal(0, 10, shape)
    return np.clip(volume, 0, None).astype(np.int16)


def axial_affine(spacing=(4.0, 2.0, 2.0), origin=(-32.0, -32.0, -24.0)) -> np.ndarray:
    affine = np.eye(4)
    affine[:3, 0] = [0, 0, spacing[0]]
    affine[:3, 1] = [0, spacing[1], 0]
    affine[:3, 2] = [spacing[2], 0, 0]
    affine[:3, 3] = origin
    return affine


@dataclass
class BuiltStudy:
    study_instance_uid: str
    series: dict[str, list] = field(default_factory=dict)   # label -> datasets
    folders: dict[str, Path] = field(default_factory=dict)
    roles: dict[str, str] = field(default_factory=dict)

    def manifest(self) -> StudyManifest:
        return StudyManifest(
            study_instance_uid=self.study_instance_uid, patient_id="TEST", patient_name="Test^Worker",
            series=tuple(
                SeriesManifest(series_instance_uid=str(self.series[label][0].SeriesInstanceUID),
                               folder=str(self.folders[label]), role=SequenceRole.parse(self.roles[label]),
                               confidence=0.9, reasons=(f"test role {self.roles[label]}",), modality="MR",
                               series_description=str(self.series[label][0].SeriesDescription),
                               series_number=int(self.series[label][0].SeriesNumber),
                               instance_count=len(self.series[label]))
                for label in self.series))


def build_study(root: Path, seed: str, roles=("T1ce", "FLAIR"), shape=(12, 32, 32),
                damage: Callable[[str, list], list] | None = None, affines: dict[str, np.ndarray] | None = None
                ) -> BuiltStudy:
    """Write a small study as spool-like folders ``root/<study>/<series>/``; ``damage`` may alter a series."""
    identity = StudyIdentity(uid_seed=seed, patient_id="TEST", patient_name="Test^Worker")
    study = BuiltStudy(identity.resolved_study_instance_uid)
    for number, role in enumerate(roles, start=2):
        label = role if role not in study.series else f"{role}-{number}"
        real_role = "FLAIR" if role.lower() == "other" else role
        affine = (affines or {}).get(role, axial_affine())
        datasets = build_mr_series(blob_volume(shape, number, real_role), affine, study=identity,
                                   series_number=number, role=real_role)
        datasets = [copy.deepcopy(ds) for ds in datasets]
        if damage is not None:
            datasets = damage(label, datasets)
        folder = root / study.study_instance_uid / str(datasets[0].SeriesInstanceUID)
        folder.mkdir(parents=True, exist_ok=True)
        for ds in datasets:
            ds.save_as(folder / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
        study.series[label], study.folders[label], study.roles[label] = datasets, folder, role
    return study


class WorkerProcess:
    """``neuroseg worker`` as a subprocess with its own environment."""

    def __init__(self, env: dict[str, str], log_path: Path, pool: str = "prefork") -> None:
        self.env = {**{k: v for k, v in os.environ.items() if not k.startswith("NEUROSEG_")}, **env}
        self.log_path = log_path
        self.pool = pool
        self.process: subprocess.Popen | None = None

    def start(self) -> "WorkerProcess":
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "neuroseg.worker", "worker", "--pool", self.pool],
            env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT, start_new_session=True)
        return self

    def stop(self, timeout: float = 30) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        self.process = None

    def kill(self) -> None:
        """kill -9 the whole worker (main process and children)."""
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        self.process = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def wait_for_state(store: JobStore, job_id: str, timeout: float, states=None, worker: WorkerProcess | None = None
                   ) -> str:
    """Wait until the job reaches one of ``states`` (default: any final state); return the state."""
    wanted = {JobState(state).value for state in (states or FINAL_STATES)}

    def reached() -> bool:
        return store.job_state(job_id) in wanted

    try:
        wait_for(reached, timeout, f"job {job_id} to reach {sorted(wanted)}", interval=0.2)
    except TimeoutError:
        detail = store.get_job(job_id)
        tail = worker.log()[-3000:] if worker else ""
        raise AssertionError(f"job {job_id} is {detail.state} ({detail.message}; {detail.error})\n{tail}") from None
    return store.job_state(job_id)


def worker_env(data_dir: Path, broker_url: str | None = None, **extra: str) -> dict[str, str]:
    env = {"NEUROSEG_DATA_DIR": str(data_dir), "NEUROSEG_JOB_STALE_SECONDS": "6", "NEUROSEG_MC_SAMPLES": "2"}
    if broker_url:
        env["NEUROSEG_BROKER_URL"] = broker_url
    env.update(extra)
    return env


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    wait_for(predicate, timeout, what, interval=0.2)
