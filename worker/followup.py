"""The follow-up step of a job: find the patient's prior study in the job store and compare the two.

Called from the encode stage once the study's own objects are built
(:func:`add_followup_objects`). It

1. records the study's time point (patient identity, study date and time);
2. looks for the prior (:meth:`~neuroseg.worker.jobs.followups.FollowupLog.find_prior`:
   same PatientID, issuer, birth date and sex, an earlier finished job); with
   ``prior_query`` on and none found, asks the PACS for one and processes it
   first (:mod:`neuroseg.worker.prior_query`);
3. reads the prior's result folder (labels and images on its reference grid)
   and compares (:func:`neuroseg.model.longitudinal.compare`);
4. adds the change SEG to the job's objects and keeps the figures on the time point;
5. leaves the prior's labels, brought onto this study's grid with the
   comparison's registration, in the job folder (:data:`PRIOR_LABELS_FILE`)
   for the 3D viewer's prior surface.

Whatever stops the comparison (no prior, the prior's results gone, no common
sequence, a registration that does not line up, an ambiguous prior) becomes a
``followup`` note on the job and no change objects, never wrong ones; the job
itself is not failed for it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from neuroseg.worker.jobstore import PatientIdentity, PriorSearch, TimePoint

log = logging.getLogger(__name__)

#: the sequence the two studies are registered on, in order of preference
REGISTRATION_ORDER = ("t1ce", "flair", "t2", "t1")
#: the compared prior's labels on the current grid, relative to the job folder (read by the 3D viewer)
PRIOR_LABELS_FILE = Path("followup") / "prior_seg.nii.gz"


def note_followup(ctx: Any, message: str) -> None:
    """A ``followup`` event on the job: what the comparison did, or why it did not."""
    ctx.store.record_event("followup", message, job_id=ctx.job_id, study_instance_uid=ctx.manifest.study_instance_uid)


def _not_compared(ctx: Any, status: str, message: str, prior: TimePoint | None = None) -> None:
    note_followup(ctx, message)
    ctx.store.set_comparison(ctx.job_id, status, message, prior_job_id=prior.job_id if prior else None)


def keep_prior_labels(job_folder: Path, comparison: Any, affine: np.ndarray) -> Path:
    """Write the comparison's prior labels (already on the current grid, ``affine`` LPS) for the 3D viewer."""
    from neuroseg.model.io import write_nifti

    path = Path(job_folder) / PRIOR_LABELS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    write_nifti(np.asarray(comparison.prior_labels, dtype=np.uint8), affine, path)
    return path


def add_followup_objects(ctx: Any, request: Any, objects: list[Any]) -> list[Any]:
    """``objects`` plus the follow-up objects of the job in ``ctx`` (a :class:`~neuroseg.worker.pipeline.JobContext`).

    A comparison that breaks is a note on the job, never a lost result: the study's own objects go out.
    """
    try:
        return _with_followup(ctx, request, objects)
    except Exception as exc:  # noqa: BLE001 - the follow-up must not cost the radiologist the study's result
        log.exception("job %s: follow-up comparison failed", ctx.job_id)
        note_followup(ctx, f"follow-up comparison failed ({type(exc).__name__}: {exc}); results sent without it")
        return objects


def _with_prior_in_report(ctx: Any, request: Any, objects: list[Any], prior: TimePoint, prior_seg: Any,
                          prior_labels: Any, comparison: Any) -> list[Any]:
    """``objects`` with the SR rebuilt to hold the prior time point too (same UIDs: it replaces the plain one)."""
    import pydicom

    from neuroseg.dicom_out.sr import build_measurement_report
    from neuroseg.dicom_out.sr_followup import PriorTimePoint

    segmentation = next((item for item in objects if item.kind == "seg"), None)
    if prior_seg is None or segmentation is None or not any(item.kind == "sr" for item in objects):
        note_followup(ctx, "the prior study has no SEG on record: the SR holds the current time point only")
        return objects
    try:
        prior_seg_ds = pydicom.dcmread(prior_seg.path)
    except (OSError, pydicom.errors.InvalidDicomError) as exc:
        note_followup(ctx, f"the prior study's SEG cannot be read ({exc}): the SR holds the current time point only")
        return objects
    time_point = PriorTimePoint(seg=prior_seg_ds, labels=prior_labels, study_date=prior.study_date,
                                volumes_ml={key: value.prior_ml for key, value in comparison.regions.items()},
                                et_class=comparison.et_class.text)
    report = build_measurement_report(request, segmentation, prior=time_point)
    return [report if item.kind == "sr" else item for item in objects]


def _with_followup(ctx: Any, request: Any, objects: list[Any]) -> list[Any]:
    from neuroseg.dicom_out.change_seg import build_change_segmentation
    from neuroseg.model.io import read_result_folder
    from neuroseg.model.longitudinal import NotComparable, compare
    from neuroseg.worker.pipeline import job_folder

    prior_on_grid = job_folder(ctx.settings, ctx.job_id) / PRIOR_LABELS_FILE
    prior_on_grid.unlink(missing_ok=True)  # a retry that compares nothing must not show an earlier prior
    first = ctx.loaded.reference.datasets[0]
    ctx.store.record_time_point(ctx.job_id, ctx.manifest.study_instance_uid, PatientIdentity.from_dataset(first),
                                str(first.get("StudyDate", "") or ""), str(first.get("StudyTime", "") or ""))
    if not ctx.settings.followup:
        return objects
    search = ctx.store.find_prior(ctx.job_id)
    if search.prior is None and ctx.settings.prior_query \
            and ctx.store.prior_requested_by(ctx.manifest.study_instance_uid) is None:
        from neuroseg.worker.prior_query import fetch_prior_from_pacs

        for note in search.notes:
            note_followup(ctx, note)
        why_not = fetch_prior_from_pacs(ctx)  # notes on the job what it did
        # the PACS had one: it is processed now, so look again
        search = ctx.store.find_prior(ctx.job_id) if why_not is None else PriorSearch(None, ())
        if search.prior is None:
            ctx.store.set_comparison(ctx.job_id, "no_prior", why_not or "; ".join(search.notes))
            return objects
    for note in search.notes:
        note_followup(ctx, note)
    prior = search.prior
    if prior is None:
        ctx.store.set_comparison(ctx.job_id, "no_prior", "; ".join(search.notes))
        return objects
    try:
        folder = read_result_folder(job_folder(ctx.settings, prior.job_id) / "viewer")
    except (FileNotFoundError, ValueError) as exc:
        _not_compared(ctx, "not_comparable", f"prior study {prior.study_instance_uid} (job {prior.job_id}): its "
                      f"results are no longer readable ({exc}); nothing compared", prior)
        return objects
    key = next((name for name in REGISTRATION_ORDER if name in folder.images and name in ctx.loaded.images), None)
    if key is None:
        _not_compared(ctx, "not_comparable", f"prior study {prior.study_instance_uid} shares no sequence with this "
                      f"one (prior {sorted(folder.images)}, now {sorted(ctx.loaded.images)}); nothing compared",
                      prior)
        return objects
    try:
        comparison = compare(folder.labels, folder.images[key], folder.affine, np.asarray(ctx.result.labels),
                             ctx.loaded.images[key], ctx.loaded.affine)
    except NotComparable as exc:
        _not_compared(ctx, "not_comparable", f"prior study {prior.study_instance_uid}: {exc}; nothing compared",
                      prior)
        return objects
    prior_detail = ctx.store.get_job(prior.job_id)
    prior_seg = next((item for item in prior_detail.outputs if item.kind == "seg"), None)
    summary = {**comparison.summary(), "registered_on": key,
               "prior": {"job_id": prior.job_id, "study_instance_uid": prior.study_instance_uid,
                         "study_date": prior.study_date, "study_time": prior.study_time,
                         "seg_sop_instance_uid": prior_seg.sop_instance_uid if prior_seg else "",
                         "seg_series_instance_uid": prior_seg.series_instance_uid if prior_seg else ""}}
    change = build_change_segmentation(request, comparison.change_map, prior.study_instance_uid, prior.study_date)
    objects = _with_prior_in_report(ctx, request, objects, prior, prior_seg, folder.labels, comparison)
    for note in comparison.notes:
        note_followup(ctx, note)
    try:
        keep_prior_labels(job_folder(ctx.settings, ctx.job_id), comparison, ctx.loaded.affine)
    except OSError as exc:  # the viewer loses the prior surface, the comparison still goes out
        note_followup(ctx, f"the prior's labels could not be kept for the 3D viewer ({exc})")
    message = f"compared with prior study of {prior.study_date or 'unknown date'}: {comparison.et_class.text}"
    note_followup(ctx, message)
    ctx.store.set_comparison(ctx.job_id, "compared", message, prior_job_id=prior.job_id, summary=summary)
    return [*objects, change]
