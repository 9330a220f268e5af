"""The one entry point: every result object of a study from one request."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed

from neuroseg.common.parallel import usable_cpus
from neuroseg.dicom_out import _iod_cache
from neuroseg.dicom_out.common import EncodedObject, EncodeRequest
from neuroseg.dicom_out.mesh import build_meshes
from neuroseg.dicom_out.pmap import build_parametric_map, map_specs
from neuroseg.dicom_out.reports import build_reports
from neuroseg.dicom_out.seg import build_segmentation
from neuroseg.dicom_out.sr import build_measurement_report

log = logging.getLogger(__name__)


def prepare_encoding() -> None:
    """Load, once per process, what every encoding needs: highdicom's tables of the standard (about 1 s).

    A worker process calls it when it starts, so that its first job does not pay for it.
    """
    _iod_cache.load_tables()


def encode_study(request: EncodeRequest,
                 progress: Callable[[str, float], None] | None = None) -> list[EncodedObject]:
    """Build every result object of one study.

    Order: the SEG, the Parametric Maps, the meshes, the SR (which
    references the SEG), then the key images and the PDF report. UIDs are derived from (StudyInstanceUID, model
    version, object kind), so encoding the same study again with the same
    model version gives the same UIDs and replaces the objects in the PACS.

    Parameters
    ----------
    request: EncodeRequest
        Checked inputs on the reference series' grid.
    progress: callable, optional
        Called as ``progress(kind, seconds)`` after each object is built
        (the worker reports a stage percentage, the benchmark the timings).

    Returns
    -------
    list of EncodedObject
        The objects, ready for :func:`neuroseg.dicom_out.send.deliver` or
        :func:`neuroseg.dicom_out.send.write_outbox`.
    """
    _iod_cache.install()
    builders: list[tuple[str, Callable[[], list[EncodedObject]]]] = [
        ("seg", lambda: [build_segmentation(request)])]
    builders += [(spec.kind, lambda spec=spec: [build_parametric_map(request, spec)]) for spec in map_specs(request)]
    builders += [("meshes", lambda: build_meshes(request)), ("reports", lambda: build_reports(request))]

    def timed(builder: Callable[[], list[EncodedObject]]) -> tuple[list[EncodedObject], float]:
        start = time.perf_counter()
        built = builder()
        return built, time.perf_counter() - start

    # the objects are independent but for the SR, which references the SEG; their compression
    # (deflate, JPEG-LS) and pixel packing release the GIL, so threads share the cores
    with ThreadPoolExecutor(max_workers=usable_cpus(), thread_name_prefix="neuroseg-encode") as pool:
        label_of = {pool.submit(timed, builder): label for label, builder in builders}
        built: dict[str, list[EncodedObject]] = {}
        for future in as_completed(label_of):  # progress from this thread only: the caller's store is not shared
            built[label_of[future]], seconds = future.result()
            if progress is not None:
                progress(label_of[future], seconds)
        segmentation = built["seg"][0]
        sr, seconds = timed(lambda: [build_measurement_report(request, segmentation)])
        if progress is not None:
            progress("sr", seconds)
    objects = [obj for label, _ in builders if label != "reports" for obj in built[label]]
    objects += sr + built["reports"]
    log.info("encoded %d objects for study %s (model %s %s)", len(objects), request.study_instance_uid,
             request.model_name, request.model_version)
    return objects
