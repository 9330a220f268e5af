"""The pipeline of one job, wired in one readable place.

::

    STAGES = (load -> model (preprocessing, inference, explaining) -> encode -> deliver)

Each stage is a plain function of a :class:`JobContext`; the job store
records every stage change with its duration and percentage. The stages
write their products under the job folder (``settings.results_dir/<job id>``):

- ``viewer/``: arrays and meshes for the admin 3D viewer (the model's
  ``write_result_folder``);
- ``dicom/``: the encoded DICOM objects, plus ``objects.json`` listing them.

Once the objects are on disk the job's ``resume_stage`` is ``delivering``: a
retry after a delivery failure (PACS down) or a worker death during delivery
sends the stored objects again instead of redoing inference. Reprocessing
gives the same SOP Instance UIDs (derived from study, model version and
object kind), so a redelivered or reprocessed result replaces, never
duplicates, what the PACS holds.

Errors: :class:`InputError` for anything wrong with the study (the job fails
with that reason), :class:`TransientError` for what may pass (PACS down, CUDA
out of memory without CPU fallback), :class:`JobCancelled` when an admin
cancels. The task (:mod:`neuroseg.worker.tasks`) maps them to job states.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom

from neuroseg.common.files import atomic_write
from neuroseg.worker.contracts import StudyManifest
from neuroseg.worker.errors import GpuOutOfMemory, InputError, NeurosegError
from neuroseg.worker.jobstore import STAGE_RANK, JobState, JobStore, OutputRecord
from neuroseg.worker.loading import LoadedStudy, load_study
from neuroseg.worker.settings import Settings

log = logging.getLogger(__name__)

TUMOUR_CLASSES = ("ncr", "ed", "et")
PROGRESS_INTERVAL_S = 0.5


class JobCancelled(NeurosegError):
    """An admin cancelled the job while it ran."""


@dataclass
class JobContext:
    """What the stages of one job share."""

    job_id: str
    settings: Settings
    store: JobStore
    manifest: StudyManifest
    folder: Path
    loaded: LoadedStudy | None = None
    result: Any = None
    objects: list[Any] = field(default_factory=list)
    partial_reasons: list[str] = field(default_factory=list)
    device: str = ""
    model_metadata: dict[str, Any] = field(default_factory=dict)
    quality: dict[str, Any] = field(default_factory=dict)
    viewer_data: Future[None] | None = None
    _last_report: float = field(default=0.0, repr=False)

    def progress(self, percent: float, message: str | None = None) -> None:
        """Record progress of the current stage (at most twice a second); stop the job if an admin cancelled it."""
        now = time.monotonic()
        if now - self._last_report < PROGRESS_INTERVAL_S and 0.0 < percent < 100.0:
            return
        self._last_report = now
        if self.store.report_progress(self.job_id, percent, message):
            raise JobCancelled("cancelled by an admin while running")

    def enter(self, stage: JobState, message: str = "") -> None:
        if self.store.report_progress(self.job_id, 100.0):
            raise JobCancelled("cancelled by an admin while running")
        self.store.enter_stage(self.job_id, stage, message)
        log.info("job %s (study %s): %s %s", self.job_id, self.manifest.study_instance_uid, stage.value, message)

    @property
    def dicom_folder(self) -> Path:
        return self.folder / "dicom"

    @property
    def viewer_folder(self) -> Path:
        return self.folder / "viewer"


@dataclass(frozen=True)
class Stage:
    """One step of the pipeline: the job state it starts in and the function that does it."""

    state: JobState
    run: Callable[[JobContext], None]


# --- stage 1: load ---------------------------------------------------------------------------


def load_volumes(ctx: JobContext) -> None:
    """Read the classified series, validate their geometry and resample them onto the reference grid."""
    ctx.loaded = load_study(ctx.manifest, ctx.settings, progress=ctx.progress)
    ctx.store.record_event("timing", "loading: " + " ".join(f"{part}={seconds:.2f}s" for part, seconds in
                                                            ctx.loaded.timings.items()),
                           job_id=ctx.job_id, study_instance_uid=ctx.manifest.study_instance_uid)
    for note in ctx.loaded.notes:
        ctx.store.record_event("note", note, job_id=ctx.job_id, study_instance_uid=ctx.manifest.study_instance_uid)
    for role, why in ctx.loaded.skipped.items():
        reason = f"{role} series not used: {why}"
        ctx.partial_reasons.append(reason)
        # kept in the timeline so a resumed delivery still ends the job partial
        ctx.store.record_event("partial", reason, job_id=ctx.job_id,
                               study_instance_uid=ctx.manifest.study_instance_uid)


# --- stage 2: the model ------------------------------------------------------------------------

_MODELS: dict[tuple[str, str], Any] = {}


def get_model(settings: Settings, device: str) -> Any:
    """The adapter for ``settings.model_path`` (checkpoint, MONAI bundle, nnU-Net folder) on ``device``, loaded once."""
    from neuroseg.model.adapters import load_adapter

    key = (str(settings.model_path or ""), device)
    model = _MODELS.get(key)
    if model is None:
        started = time.monotonic()
        try:
            model = load_adapter(settings.model_path, device)
        except (FileNotFoundError, ValueError) as exc:
            # a wrong model is a configuration problem: every job would fail the same way
            raise InputError(f"the model cannot be loaded ({settings.model_path or 'shipped weights'}): {exc}") \
                from exc
        _MODELS[key] = model
        log.info("model %s loaded on %s in %.1f s", settings.model_path or "(shipped weights)", device,
                 time.monotonic() - started)
    return model


#: the model's progress stages -> job states
MODEL_STAGES = {"preprocessing": JobState.PREPROCESSING, "inference": JobState.INFERENCE,
                "explaining": JobState.EXPLAINING}


def model_options(settings: Settings) -> dict[str, Any]:
    """The inference options of the settings (TTA, Grad-CAM layer, post-processing, CPU backend) as ``segment``
    keywords."""
    from neuroseg.model.postprocess import PostprocessConfig

    return {"tta": settings.tta, "gradcam_layer": settings.gradcam_layer or None,
            "cpu_backend": settings.cpu_backend.value,
            "postprocess": PostprocessConfig(enabled=settings.postprocess, min_et_ml=settings.min_et_ml,
                                             min_component_ml=settings.min_component_ml)}


def run_model(ctx: JobContext) -> None:
    """Segment, with the model's uncertainty method and Grad-CAM; the job follows the model's own stages."""
    from neuroseg.model.adapters import as_adapter
    from neuroseg.model.runtime import resolve_device

    assert ctx.loaded is not None
    try:
        device = str(resolve_device(ctx.settings.device))
    except ValueError as exc:
        raise InputError(f"NEUROSEG_DEVICE={ctx.settings.device}: {exc}") from exc
    current = {"stage": JobState.PREPROCESSING}

    def progress(stage: str, fraction: float) -> None:
        wanted = MODEL_STAGES.get(stage)
        if wanted is not None and STAGE_RANK[wanted] > STAGE_RANK[current["stage"]]:
            ctx.enter(wanted)
            current["stage"] = wanted
        ctx.progress(100.0 * float(fraction), f"{stage} {100.0 * float(fraction):.0f}%")

    def attempt(on: str) -> Any:
        model = as_adapter(get_model(ctx.settings, on))
        ctx.model_metadata = dict(model.metadata)  # provenance and uncertainty method ride in its model_card
        return model.segment(ctx.loaded.images, ctx.loaded.affine, mc_samples=ctx.settings.mc_samples,
                             progress=progress, **model_options(ctx.settings))

    # bad volumes raise the model's InputError, which is ours: any other error here is a bug
    try:
        result = attempt(device)
    except cuda_out_of_memory_errors() as exc:
        if not device.startswith("cuda"):
            raise
        if not ctx.settings.retry_on_cpu:
            raise GpuOutOfMemory(f"CUDA out of memory on {device} (NEUROSEG_RETRY_ON_CPU is off); "
                                 "retrying later, at most NEUROSEG_OOM_MAX_RETRIES times") from exc
        log.warning("job %s: CUDA out of memory on %s; running on the CPU", ctx.job_id, device)
        ctx.store.record_event("note", f"CUDA out of memory on {device}; ran on the CPU instead",
                               job_id=ctx.job_id)
        _release_cuda()
        device = "cpu"
        result = attempt(device)
    for stage in (JobState.INFERENCE, JobState.EXPLAINING):
        if STAGE_RANK[stage] > STAGE_RANK[current["stage"]]:
            ctx.enter(stage)
            current["stage"] = stage
    ctx.result = result
    card = ctx.model_metadata.get("model_card")
    if card is not None:  # the layer Grad-CAM ran at (a setting may name another than the card's), for the outputs
        ctx.model_metadata["model_card"] = {**card, "gradcam": {**(card.get("gradcam") or {}),
                                                                "layer": result.gradcam_layer}}
    ctx.device = device
    ctx.store.set_model(ctx.job_id, model_name=str(result.model_name), model_version=str(result.model_version),
                        device=device, sequences_used=list(result.sequences_used),
                        volumes_ml=dict(result.volumes_ml))
    assess_quality(ctx)
    # gzip of the viewer's volumes fills the cores that encoding (mostly GIL-bound) leaves idle
    writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="neuroseg-viewer-data")
    ctx.viewer_data = writer.submit(write_viewer_data, ctx)
    writer.shutdown(wait=False)  # the thread ends with its one piece of work; run_job waits for it


def prepare_process() -> None:
    """What a new worker process loads before its first job, beyond imports: highdicom's tables (about 1 s)."""
    from neuroseg.dicom_out import prepare_encoding

    prepare_encoding()


def assess_quality(ctx: JobContext) -> None:
    """Expected Dice and the review flag (:mod:`neuroseg.worker.review`): it informs, it never stops the job."""
    from neuroseg.worker.review import assess_job

    try:
        ctx.quality = assess_job(ctx.loaded, ctx.result, ctx.settings.model_path)
    except Exception as exc:  # noqa: BLE001 - a failed estimate must not cost the radiologist the result
        log.exception("job %s: quality estimate failed", ctx.job_id)
        ctx.store.record_event("note", f"quality estimate failed ({type(exc).__name__}: {exc}); results sent "
                               "without it", job_id=ctx.job_id)
        return
    ctx.store.set_quality(ctx.job_id, ctx.quality)
    if ctx.quality["review_recommended"]:
        ctx.store.record_event("review", "review recommended: " + "; ".join(ctx.quality["reasons"]),
                               job_id=ctx.job_id, study_instance_uid=ctx.manifest.study_instance_uid)


def wait_for_viewer_data(ctx: JobContext) -> str:
    """Wait for the viewer data written beside encoding and delivery; what went wrong, or "".

    The results are in the PACS by then, so a failure here makes the job partial, not failed.
    """
    if ctx.viewer_data is None:
        return ""
    try:
        ctx.viewer_data.result()
    except Exception as exc:  # noqa: BLE001 - named on the job; the delivered results stand
        log.exception("job %s: viewer data not written", ctx.job_id)
        return f"the 3D viewer's data could not be written ({type(exc).__name__}: {exc})"
    return ""


def write_viewer_data(ctx: JobContext) -> None:
    """Arrays and meshes for the admin 3D viewer (``viewer/`` in the job folder)."""
    from neuroseg.model.io import write_result_folder

    write_result_folder(ctx.result, ctx.loaded.images, ctx.loaded.affine, ctx.viewer_folder,
                        model_metadata=ctx.model_metadata, quality=ctx.quality or None)


def cuda_out_of_memory_errors() -> tuple[type[BaseException], ...]:
    """torch's CUDA out-of-memory exception types (``torch.OutOfMemoryError`` since torch 2.5)."""
    import torch

    return tuple({torch.cuda.OutOfMemoryError, getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)})


def _release_cuda() -> None:
    import torch

    _MODELS.clear()
    torch.cuda.empty_cache()


# --- stage 3: encode -----------------------------------------------------------------------------


def encode_outputs(ctx: JobContext) -> None:
    """Write SEG, Parametric Maps, meshes, SR, key images and PDF on the reference grid; keep them on disk."""
    from neuroseg.dicom_out import DicomOutError, EncodeOptions, EncodeRequest, encode_study
    from neuroseg.worker.followup import add_followup_objects

    assert ctx.loaded is not None and ctx.result is not None
    result, loaded = ctx.result, ctx.loaded
    reference = loaded.reference
    others = {role.value: volume.datasets for role, volume in loaded.volumes.items()
              if volume is not reference}
    reference_role = next((role.value for role, volume in loaded.volumes.items() if volume is reference),
                          "reference")
    weights = str(result.model_name)
    tag = "DEMO WEIGHTS research use" if "demo" in weights.lower() or "phantom" in weights.lower() \
        else "research use"
    settings = ctx.settings
    try:
        request = EncodeRequest(
            reference_series=reference.datasets, reference_frames=reference.frame_numbers,
            labels=np.asarray(result.labels),
            model_name=str(result.model_name), model_version=str(result.model_version),
            other_series=others, probabilities=_classes(result.probabilities), variance=_classes(result.variance),
            gradcam=_classes(result.gradcam), entropy=result.entropy, volumes_ml=None,
            sequences_used=tuple(result.sequences_used), reference_role=reference_role,
            model_card=ctx.model_metadata.get("model_card"), quality=ctx.quality or None,
            options=EncodeOptions(
                segmentation_type=settings.segmentation_type.value,
                maps=frozenset(kind.value for kind in settings.send_maps),
                mesh_formats=frozenset(kind.value for kind in settings.mesh_formats),
                reports=frozenset(kind.value for kind in settings.send_reports),
                map_compression=settings.map_compression.value,
                series_tag=tag,
            ),
        )
        ctx.progress(5, "building DICOM objects")
        objects = list(encode_study(request))
        objects = add_followup_objects(ctx, request, objects)  # the prior study, when there is one
    except DicomOutError as exc:  # bad input only: any other ValueError is a bug and must surface as one
        raise InputError(f"the results cannot be encoded on the reference series: {exc}") from exc
    ctx.objects = save_objects(ctx, objects)
    ctx.progress(100, f"{len(objects)} DICOM objects written")


def _classes(arrays: dict[str, Any]) -> dict[str, Any]:
    """The tumour classes of a per-class mapping (the model also returns ``background``)."""
    return {key: value for key, value in arrays.items() if key in TUMOUR_CLASSES}


def save_objects(ctx: JobContext, objects: list[Any]) -> list[Any]:
    """Write each object to ``dicom/<kind>.dcm`` atomically, list them, record them, set resume at delivering.

    Returns the objects with their files (``path``), which delivery sends as written.

    The folder and the job's outputs then hold this set only: what an earlier run made and this one does
    not is removed from both (and named in the job's timeline by ``record_outputs``).
    """
    from neuroseg.dicom_out.send import write_outbox

    folder = ctx.dicom_folder
    saved = write_outbox(objects, folder)
    listing = [{"kind": item.kind, "sop_class_uid": str(item.sop_class_uid),
                "sop_instance_uid": str(item.sop_instance_uid),
                "series_instance_uid": str(item.dataset.get("SeriesInstanceUID", "")),
                "path": item.path.name} for item in saved]
    atomic_write(folder / "objects.json", json.dumps(listing, indent=1))
    ctx.store.record_outputs(ctx.job_id, [
        OutputRecord(kind=item["kind"], sop_instance_uid=item["sop_instance_uid"],
                     series_instance_uid=item["series_instance_uid"], sop_class_uid=item["sop_class_uid"],
                     path=str(folder / item["path"]))
        for item in listing])
    ctx.store.set_resume_stage(ctx.job_id, JobState.DELIVERING)
    return saved


def load_saved_objects(ctx: JobContext) -> list[Any]:
    """The objects an earlier attempt encoded, read back from the job folder."""
    from neuroseg.dicom_out.common import EncodedObject

    index = ctx.dicom_folder / "objects.json"
    if not index.is_file():
        raise InputError(f"job {ctx.job_id} was to resume at delivery but {index} is missing; "
                         "retry it without re-deliver to process the study again")
    objects = []
    for item in json.loads(index.read_text()):
        path = ctx.dicom_folder / item["path"]
        objects.append(EncodedObject(kind=item["kind"], sop_class_uid=item["sop_class_uid"],
                                     sop_instance_uid=item["sop_instance_uid"], dataset=pydicom.dcmread(path),
                                     path=path))
    return objects


def has_outputs(store: JobStore, job_id: str) -> bool:
    """Whether the job has encoded objects on disk (so a give-up means ``partial``, not ``failed``)."""
    detail = store.get_job(job_id)
    return bool(detail and detail.outputs)


# --- stage 4: deliver -----------------------------------------------------------------------------


def deliver_outputs(ctx: JobContext) -> None:
    """Send the objects to every destination (or the outbox); see :mod:`neuroseg.worker.delivery`."""
    from neuroseg.worker.delivery import deliver_job_outputs

    if not ctx.objects:
        ctx.objects = load_saved_objects(ctx)
    problems = deliver_job_outputs(ctx.store, ctx.job_id, ctx.settings, ctx.objects,
                                   study_instance_uid=ctx.manifest.study_instance_uid, progress=ctx.progress)
    ctx.partial_reasons.extend(problems)


# --- the pipeline ------------------------------------------------------------------------------

STAGES = (
    Stage(JobState.LOADING, load_volumes),
    Stage(JobState.PREPROCESSING, run_model),  # moves on to inference and explaining as the model reports
    Stage(JobState.ENCODING, encode_outputs),
    Stage(JobState.DELIVERING, deliver_outputs),
)


def job_folder(settings: Settings, job_id: str) -> Path:
    """Where a job keeps its viewer data and encoded objects."""
    return settings.results_dir / job_id


def run_job(store: JobStore, job_id: str, settings: Settings) -> str:
    """Run a claimed job from the stage it was claimed into; return its final state.

    The job must be claimed (state ``loading``, or ``delivering`` to resume a
    delivery). Ends the job ``done`` or ``partial`` (with the reasons); lets
    :class:`InputError`, :class:`TransientError` and :class:`JobCancelled` out
    for the task to record.
    """
    detail = store.get_job(job_id)
    if detail is None:
        raise KeyError(f"no job {job_id!r}")
    ctx = JobContext(job_id=job_id, settings=settings, store=store, manifest=detail.study_manifest(),
                     folder=job_folder(settings, job_id))
    ctx.folder.mkdir(parents=True, exist_ok=True)
    start = JobState(detail.state)
    if start not in (JobState.LOADING, JobState.DELIVERING):
        raise RuntimeError(f"job {job_id} is {start.value}; claim it before running it")
    if start is JobState.DELIVERING:
        ctx.partial_reasons.extend(event.message for event in detail.events if event.kind == "partial")
    try:
        for stage in STAGES:
            if STAGE_RANK[stage.state] < STAGE_RANK[start]:
                continue
            if stage.state is not start:
                ctx.enter(stage.state)
            stage.run(ctx)
    finally:
        viewer_problem = wait_for_viewer_data(ctx)
    if viewer_problem:
        ctx.partial_reasons.append(viewer_problem)
    if ctx.partial_reasons:
        reason = "; ".join(dict.fromkeys(ctx.partial_reasons))
        store.finish(job_id, JobState.PARTIAL, error=reason)
        return JobState.PARTIAL.value
    store.finish(job_id, JobState.DONE, message=f"done: {len(ctx.objects)} objects delivered")
    return JobState.DONE.value
