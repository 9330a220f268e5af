"""Small synthetic result folders and job histories for the admin app tests.

A result folder looks like what the worker writes for a finished job
(``seg.nii.gz`` with BraTS labels, probability, uncertainty and Grad-CAM maps,
the images, ``report.json``), but it is tiny and built from spheres, so the
tests know where every region is.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from neuroseg.worker.contracts import SequenceRole, SeriesManifest, StudyManifest
from neuroseg.worker.jobstore import JobState, JobStore, OutputRecord

# array axis 0 runs right-to-left (flipped on purpose: the viewer must reorient), axis 1 P->A, axis 2 I->S
SHAPE = (40, 36, 28)
SPACING = (2.0, 2.0, 2.5)
AFFINE_RAS = np.array([
    [-SPACING[0], 0, 0, 40.0],
    [0, SPACING[1], 0, -36.0],
    [0, 0, SPACING[2], -30.0],
    [0, 0, 0, 1],
])
# the tumour centre in array indices, off the head centre
TUMOUR_CENTRE = (26.0, 20.0, 15.0)
RADII = {"ncr": 2.5, "et": 4.5, "ed": 7.5}


def _distance(centre: tuple[float, float, float]) -> np.ndarray:
    grid = np.indices(SHAPE, dtype=np.float32)
    return np.sqrt(sum((grid[axis] - centre[axis]) ** 2 for axis in range(3)))


def labels() -> np.ndarray:
    distance = _distance(TUMOUR_CENTRE)
    seg = np.zeros(SHAPE, np.uint8)
    seg[distance <= RADII["ed"]] = 2
    seg[distance <= RADII["et"]] = 4
    seg[distance <= RADII["ncr"]] = 1
    return seg


def _save(folder: Path, name: str, data: np.ndarray) -> None:
    nib.save(nib.Nifti1Image(data, AFFINE_RAS), str(folder / name))


def write_result_folder(folder: Path, *, sequences: tuple[str, ...] = ("t1", "t1ce", "t2", "flair")) -> Path:
    """Write a complete result folder for a 40x36x28 volume with one spherical tumour."""
    folder.mkdir(parents=True, exist_ok=True)
    seg = labels()
    _save(folder, "seg.nii.gz", seg)
    distance = _distance(TUMOUR_CENTRE)
    head = _distance(tuple((size - 1) / 2 for size in SHAPE))
    for index, name in enumerate(sequences):
        image = np.where(head < 13, 400.0 + 60 * index, 0.0).astype(np.float32)
        image[seg == 4] += 300 if name == "t1ce" else 50
        image[seg == 2] += 250 if name in ("t2", "flair") else 0
        image += np.random.default_rng(index).normal(0, 5, SHAPE).astype(np.float32) * (image > 0)
        _save(folder, f"image_{name}.nii.gz", image)
    for key in ("ncr", "ed", "et"):
        probability = np.clip(1.0 - np.abs(distance - RADII[key] + 1.5) / 4.0, 0, 1).astype(np.float32)
        _save(folder, f"prob_{key}.nii.gz", probability)
        _save(folder, f"variance_{key}.nii.gz", (0.05 * probability * (1 - probability)).astype(np.float32))
        # Grad-CAM grows along array axis 0, so the vertex samples have a known trend
        ramp = np.broadcast_to(np.linspace(0, 1, SHAPE[0], dtype=np.float32)[:, None, None], SHAPE)
        _save(folder, f"gradcam_{key}.nii.gz", np.ascontiguousarray(ramp * (distance < 10)))
    entropy = np.clip(np.exp(-((distance - RADII["ed"]) ** 2) / 4.0), 0, 1).astype(np.float32) * 1.2
    _save(folder, "entropy.nii.gz", entropy)
    _save(folder, "mutual_information.nii.gz", (0.3 * entropy).astype(np.float32))
    voxel_ml = float(np.prod(SPACING)) / 1000.0
    volumes = {key: float(np.count_nonzero(seg == value)) * voxel_ml
               for key, value in (("ncr", 1), ("ed", 2), ("et", 4))}
    volumes["wt"] = sum(volumes.values())
    volumes["tc"] = volumes["ncr"] + volumes["et"]
    card = {"name": "neuroseg-unet", "version": "0.1.0-test", "status": "test weights",
            "intended_use": "Tests only. NOT a clinical model.", "limitations": ["Synthetic spheres."],
            "provenance": {"name": "neuroseg-unet", "authors": "Test Lab, Example Hospital", "license": "Apache-2.0"}}
    report = {"volumes_ml": volumes, "model": {"name": "neuroseg-unet", "version": "0.1.0-test", "model_card": card},
              "sequences_used": list(sequences)}
    (folder / "report.json").write_text(json.dumps(report))
    return folder


def manifest(study: str, *, patient_name: str = "Doe^Jane", patient_id: str = "PAT-001",
             description: str = "MRI BRAIN W/WO CONTRAST") -> StudyManifest:
    roles = (("T1", "Ax T1 SE"), ("T1ce", "Ax T1 +C MPRAGE"), ("T2", "Ax T2 FSE"), ("FLAIR", "Ax T2 FLAIR"),
             ("other", "Localizer"))
    series = tuple(
        SeriesManifest(
            series_instance_uid=f"{study}.{number}", folder=f"/spool/{study}/{study}.{number}",
            role=SequenceRole.parse(role), confidence=0.95 if role != "other" else 0.6,
            reasons=(f"SeriesDescription {text!r} matches the {role} rule", "TR/TE consistent"),
            modality="MR", series_description=text, series_number=number, instance_count=24,
        )
        for number, (role, text) in enumerate(roles, start=1)
    )
    return StudyManifest(study_instance_uid=study, series=series, patient_id=patient_id,
                         patient_name=patient_name, accession_number=f"ACC{study[-3:]}", study_description=description)


@dataclass
class Jobs:
    """Ids of the jobs :func:`fill_store` made, one per interesting state."""

    done: str
    failed: str
    queued: str
    running: str


def run_to_done(store: JobStore, job_id: str, results_dir: Path | None, template: Path | None = None) -> None:
    store.claim(job_id, worker="gpu-node-1:4242")
    for stage in (JobState.PREPROCESSING, JobState.INFERENCE, JobState.EXPLAINING, JobState.ENCODING,
                  JobState.DELIVERING):
        store.enter_stage(job_id, stage)
    store.set_model(job_id, model_name="neuroseg-unet", model_version="0.1.0-test", device="cuda:0",
                    sequences_used=["t1", "t1ce", "t2", "flair"], volumes_ml={"wt": 5.1, "tc": 1.2, "et": 0.9})
    store.record_outputs(job_id, [
        OutputRecord("seg", "2.25.1001", "2.25.2001", "1.2.840.10008.5.1.4.1.1.66.4", "seg.dcm"),
        OutputRecord("sr", "2.25.1002", "2.25.2002", "1.2.840.10008.5.1.4.1.1.88.34", "sr.dcm"),
    ])
    store.record_delivery_attempt(job_id, "PACS@10.0.0.5:104", status="retrying", failed=2,
                                  error="association rejected")
    store.record_delivery_attempt(job_id, "PACS@10.0.0.5:104", status="delivered", sent=2)
    store.record_delivery_attempt(job_id, "outbox:/data/outbox", status="delivered", sent=2)
    store.finish(job_id, JobState.DONE)
    if results_dir is not None:
        # where the worker's pipeline writes the viewer data
        if template is not None:
            shutil.copytree(template, results_dir / job_id / "viewer")
        else:
            write_result_folder(results_dir / job_id / "viewer")


def fill_store(store: JobStore, results_dir: Path, template: Path | None = None) -> Jobs:
    """A done job with results, a failed one, a queued one and a running one (created in that order).

    ``template`` is a result folder to copy for the done job (faster than writing one).
    """
    done, _ = store.create_job(manifest("1.2.826.0.1.100", patient_name="Doe^Jane", patient_id="PAT-001"))
    run_to_done(store, done, results_dir, template)
    failed, _ = store.create_job(manifest("1.2.826.0.1.200", patient_name="Roe^Richard", patient_id="PAT-002"))
    store.claim(failed, worker="gpu-node-1:4242")
    store.finish(failed, JobState.FAILED,
                 error="series 1.2.826.0.1.200.3 has a missing slice between 45.0 mm and 55.0 mm")
    queued, _ = store.create_job(manifest("1.2.826.0.1.300", patient_name="Poe^Edgar", patient_id="PAT-003"))
    running, _ = store.create_job(manifest("1.2.826.0.1.400", patient_name="Moe^Anna", patient_id="PAT-004"))
    store.claim(running, worker="gpu-node-2:777")
    store.enter_stage(running, JobState.PREPROCESSING)
    store.enter_stage(running, JobState.INFERENCE)
    store.report_progress(running, 40.0, "MC dropout pass 8 of 20")
    return Jobs(done=done, failed=failed, queued=queued, running=running)
