"""A real glioma study with neuroseg's results in a DICOMweb PACS, for the viewer test.

The BraTS 2023 case ``brats-gli-00001-000`` (four sequences, 240x240x155 at
1 mm) becomes four DICOM MR series, goes through the worker pipeline
in-process with the shipped weights, and both the source series and every
result object end up in Orthanc.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import httpx
import pydicom

from neuroseg.dicom_out.mr_series import StudyIdentity, write_study_from_nifti
from neuroseg.worker import pipeline
from neuroseg.worker.contracts import SequenceRole, SeriesManifest, StudyManifest
from neuroseg.worker.jobstore import ClaimOutcome, JobStore
from neuroseg.worker.settings import Settings
from tests.services import OrthancServer

BRATS_CASE = "brats-gli-00001-000"
BRATS_ROLES = {"T1": "t1n", "T1ce": "t1c", "T2": "t2w", "FLAIR": "t2f"}


@dataclass
class StoredStudy:
    """What the viewer test needs to know about the study in the PACS."""

    study_instance_uid: str
    source_series: dict[str, str]          # role -> SeriesInstanceUID
    outputs: dict[str, str]                # output kind ("seg", "sr", "pmap-...") -> SeriesInstanceUID


def write_brats_study(shared_data: Path, out: Path) -> tuple[StudyManifest, dict[str, list[Path]]]:
    """The real BraTS case as four DICOM MR series under ``out/<role>/`` and its study manifest."""
    source = shared_data / "real-mri" / BRATS_CASE
    identity = StudyIdentity(patient_name="BraTS^GLI^00001", patient_id="BRATS-GLI-00001-000",
                             uid_seed=f"{BRATS_CASE}-viewer", study_description="MR BRAIN TUMOUR (BraTS 2023)")
    written = write_study_from_nifti(
        {role: source / f"BraTS-GLI-00001-000-{key}.nii.gz" for role, key in BRATS_ROLES.items()}, out, identity)
    series = []
    for role, files in written.items():
        first = pydicom.dcmread(files[0], stop_before_pixels=True)
        series.append(SeriesManifest(
            series_instance_uid=str(first.SeriesInstanceUID), folder=str(files[0].parent),
            role=SequenceRole.parse(role), confidence=1.0, reasons=(f"{BRATS_CASE} {BRATS_ROLES[role]}",),
            modality="MR", series_description=str(first.SeriesDescription),
            series_number=int(first.SeriesNumber), instance_count=len(files)))
    manifest = StudyManifest(study_instance_uid=identity.resolved_study_instance_uid, series=tuple(series),
                             patient_id=identity.patient_id, patient_name=identity.patient_name)
    return manifest, written


def upload(orthanc: OrthancServer, files: list[Path]) -> None:
    """Store files in Orthanc through its REST API (one POST per instance)."""
    with httpx.Client(base_url=orthanc.url, timeout=60) as client:
        for path in files:
            response = client.post("/instances", content=path.read_bytes())
            response.raise_for_status()


def process_into_pacs(settings: Settings, manifest: StudyManifest, written: dict[str, list[Path]],
                      orthanc: OrthancServer) -> StoredStudy:
    """Send the source series to Orthanc, run the pipeline with Orthanc as destination, list what is stored."""
    upload(orthanc, [path for files in written.values() for path in files])
    store = JobStore.from_settings(settings)
    job_id, _ = store.create_job(manifest)
    claim = store.claim(job_id, worker="viewer-test:1")
    if claim.outcome is not ClaimOutcome.CLAIMED:
        raise RuntimeError(f"could not claim job {job_id}: {claim}")
    state = pipeline.run_job(store, job_id, settings)
    detail = store.get_job(job_id)
    if state != "done":
        raise RuntimeError(f"the pipeline ended {state}: {detail.error}")
    return StoredStudy(
        study_instance_uid=manifest.study_instance_uid,
        source_series={series.role.value: series.series_instance_uid for series in manifest.series},
        outputs={output.kind: output.series_instance_uid for output in detail.outputs})
