"""DICOM out: SEG, Parametric Maps, surface meshes, SR, and delivery to the PACS.

The public surface is kept short; import from the submodules for the rest.
This package never imports ``neuroseg.worker`` or ``neuroseg.model``: it takes
pydicom datasets plus arrays already on the reference series' grid, and plain
values for delivery.
"""

from neuroseg.dicom_out.mr_series import StudyIdentity, write_mr_series, write_study_from_nifti

__all__ = [
    "StudyIdentity",
    "write_mr_series",
    "write_study_from_nifti",
]
