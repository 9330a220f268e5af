"""The one entry point: every result object of a study from one request."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from neuroseg.dicom_out import _iod_cache
from neuroseg.dicom_out.common import EncodedObject, EncodeRequest
from neuroseg.dicom_out.mesh import build_meshes
from neuroseg.dicom_out.pmap import build_parametric_map, map_specs
from neuroseg.dicom_out.reports import build_reports
from neuroseg.dicom_out.seg import build_segmentation
from neuroseg.dicom_out.sr import build_measurement_report

log = logging.getLogger(__name__)


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
    objects: list[EncodedObject] = []

    def timed(builder: Callable[[], list[EncodedObject]], label: str) -> list[EncodedObject]:
        start = time.perf_counter()
        built = builder()
        seconds = time.perf_counter() - start
        if progress is not None:
            progress(label, seconds)
        return built

    segmentation = timed(lambda: [build_segmentation(request)], "seg")[0]
    objects.append(segmentation)
    for spec in map_specs(request):
        objects.extend(timed(lambda spec=spec: [build_parametric_map(request, spec)], spec.kind))
    objects.extend(timed(lambda: build_meshes(request), "meshes"))
    objects.extend(timed(lambda: [build_measurement_report(request, segmentation)], "sr"))
    objects.extend(timed(lambda: build_reports(request), "reports"))
    log.info("encoded %d objects for study %s (model %s %s)", len(objects), request.study_instance_uid,
             request.model_name, request.model_version)
    return objects
