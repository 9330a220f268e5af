"""The follow-up step in the pipeline: the second study of a patient is compared with the first, in-process."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pydicom

from neuroseg.dicom_out.mr_series import StudyIdentity, build_mr_series
from neuroseg.worker import pipeline
from neuroseg.worker.contracts import SequenceRole, SeriesManifest, StudyManifest
from neuroseg.worker.jobstore import JobStore
from tests.dicom_out.dciodvfy import assert_dciodvfy_clean
from tests.worker.helpers import axial_affine, blob_volume


def _study(root: Path, seed: str, date: str, shift_mm: float, birth_date: str = "19700101",
           roles: tuple[str, ...] = ("T1ce", "FLAIR")) -> StudyManifest:
    """A study of one patient on ``date`` with ``roles``, the head ``shift_mm`` further along x."""
    identity = StudyIdentity(uid_seed=seed, patient_id="FU-1", patient_name="Follow^Up", patient_sex="F",
                             patient_birth_date=birth_date, study_date=date)
    series = []
    for number, role in enumerate(roles, start=2):
        affine = axial_affine(origin=(-32.0 + shift_mm, -32.0, -24.0))
        datasets = [copy.deepcopy(ds) for ds in build_mr_series(blob_volume((12, 32, 32), number, role), affine,
                                                                study=identity, series_number=number, role=role)]
        for ds in datasets:
            ds.IssuerOfPatientID = "HOSP-A"
        folder = root / identity.resolved_study_instance_uid / str(datasets[0].SeriesInstanceUID)
        folder.mkdir(parents=True)
        for ds in datasets:
            ds.save_as(folder / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
        series.append(SeriesManifest(series_instance_uid=str(datasets[0].SeriesInstanceUID), folder=str(folder),
                                     role=SequenceRole.parse(role), confidence=0.9, reasons=("test",),
                                     modality="MR", instance_count=len(datasets)))
    return StudyManifest(study_instance_uid=identity.resolved_study_instance_uid, series=tuple(series),
                         patient_id="FU-1", patient_name="Follow^Up")


def _run(store: JobStore, settings, manifest: StudyManifest) -> str:
    job_id, _ = store.create_job(manifest)
    store.claim(job_id, worker="test:1")
    assert pipeline.run_job(store, job_id, settings) in ("done", "partial")
    return job_id


def test_the_second_study_of_a_patient_is_compared_with_the_first(tmp_path, make_settings, tiny_checkpoint):
    settings = make_settings(model_path=tiny_checkpoint, mc_samples=1, send_maps="", send_reports="")
    store = JobStore.from_settings(settings)
    first = _run(store, settings, _study(tmp_path / "spool", "fu-first", "20260101", 0.0))
    assert store.get_time_point(first).status == "no_prior"
    assert "change-seg" not in {item.kind for item in store.get_job(first).outputs}

    second = _run(store, settings, _study(tmp_path / "spool", "fu-second", "20260401", 6.0))
    point = store.get_time_point(second)
    events = [event.message for event in store.get_job(second).events if event.kind == "followup"]
    assert point.status == "compared", events
    assert point.prior_job_id == first and point.summary["prior"]["study_date"] == "20260101"
    prior_volumes = store.get_job(first).volumes_ml
    assert np.isclose(point.summary["regions"]["wt"]["prior_ml"], prior_volumes["wt"], atol=1e-2)
    assert "research use, not a response assessment" in point.note
    change = next(item for item in store.get_job(second).outputs if item.kind == "change-seg")
    dataset = pydicom.dcmread(change.path)
    assert dataset.StudyInstanceUID == store.get_job(second).study_instance_uid
    assert_dciodvfy_clean(change.path)
    assert [p.job_id for p in store.patient_time_line(point.patient_key)] == [first, second]


def test_same_id_another_birth_date_is_not_compared(tmp_path, make_settings, tiny_checkpoint):
    settings = make_settings(model_path=tiny_checkpoint, mc_samples=1, send_maps="", send_reports="")
    store = JobStore.from_settings(settings)
    _run(store, settings, _study(tmp_path / "spool", "fu-other-1", "20260101", 0.0, birth_date="19811111"))
    second = _run(store, settings, _study(tmp_path / "spool", "fu-other-2", "20260401", 0.0))
    assert store.get_time_point(second).status == "no_prior"
    events = [event.message for event in store.get_job(second).events if event.kind == "followup"]
    assert any("different patient" in message for message in events), events
    assert "change-seg" not in {item.kind for item in store.get_job(second).outputs}


def test_a_prior_that_shares_no_sequence_is_a_note_and_no_change_objects(tmp_path, make_settings, tiny_checkpoint):
    settings = make_settings(model_path=tiny_checkpoint, mc_samples=1, send_maps="", send_reports="")
    store = JobStore.from_settings(settings)
    _run(store, settings, _study(tmp_path / "spool", "fu-flair", "20260101", 0.0, roles=("FLAIR",)))
    second = _run(store, settings, _study(tmp_path / "spool", "fu-t1ce", "20260401", 0.0, roles=("T1ce",)))
    point = store.get_time_point(second)
    assert point.status == "not_comparable", point
    events = [event.message for event in store.get_job(second).events if event.kind == "followup"]
    assert any("shares no sequence with this one" in message for message in events), events
    # the study's own results go out; nothing claims a change it could not measure
    kinds = {item.kind for item in store.get_job(second).outputs}
    assert "seg" in kinds and "change-seg" not in kinds
