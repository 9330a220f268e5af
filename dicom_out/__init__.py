"""DICOM out: SEG, Parametric Maps, surface meshes, SR, key images, PDF report, and delivery to the PACS.

The public surface is kept short; import from the submodules for the rest.
This package never imports ``neuroseg.worker`` or ``neuroseg.model``: it takes
pydicom datasets plus arrays already on the reference series' grid, and plain
values for delivery.

Typical use (the worker)::

    request = EncodeRequest(reference_series=t1ce_datasets, labels=labels, ...,
                            model_name="neuroseg-unet3d", model_version="1.0",
                            options=EncodeOptions(segmentation_type="BINARY"))
    objects = encode_study(request)
    results = deliver(objects, Peer(ae_title="PACS", host="pacs", port=104))
"""

from neuroseg.dicom_out.common import (
    DicomOutError,
    EncodedObject,
    EncodeOptions,
    EncodeRequest,
    GridMismatchError,
    SourceSeriesError,
)
from neuroseg.dicom_out.encode import encode_study, prepare_encoding
from neuroseg.dicom_out.mesh import Mesh, surface_mesh
from neuroseg.dicom_out.mr_series import StudyIdentity, build_mr_series, write_mr_series, write_study_from_nifti
from neuroseg.dicom_out.send import DeliveryResult, DeliveryUnavailable, Peer, deliver, write_outbox

__all__ = [
    "DeliveryResult",
    "DeliveryUnavailable",
    "DicomOutError",
    "EncodeOptions",
    "EncodeRequest",
    "EncodedObject",
    "GridMismatchError",
    "Mesh",
    "Peer",
    "SourceSeriesError",
    "StudyIdentity",
    "build_mr_series",
    "deliver",
    "encode_study",
    "prepare_encoding",
    "surface_mesh",
    "write_mr_series",
    "write_outbox",
    "write_study_from_nifti",
]
