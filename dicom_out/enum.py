"""Closed vocabularies of dicom_out."""

from __future__ import annotations

from enum import Enum

from neuroseg.common.enums import MapCompression  # the setting names it too: defined once there

__all__ = [
    "DeliveryStatus", "MapCompression", "MapKind", "MeshFormat", "ReportKind", "SegmentationTypeValues",
    "TumorClass", "TumorRegion",
]


class TumorClass(str, Enum):
    """The three BraTS tumour classes (the keys of the per-class arrays)."""

    NCR = "ncr"
    ED = "ed"
    ET = "et"

    @property
    def label_value(self) -> int:
        """The BraTS label value of this class in the label map (1, 2 or 4)."""
        return _LABEL_VALUES[self]

    @property
    def display_name(self) -> str:
        return _DISPLAY_NAMES[self]


_LABEL_VALUES = {TumorClass.NCR: 1, TumorClass.ED: 2, TumorClass.ET: 4}
_DISPLAY_NAMES = {
    TumorClass.NCR: "necrotic core",
    TumorClass.ED: "edema",
    TumorClass.ET: "enhancing tumour",
}


class TumorRegion(str, Enum):
    """Regions reported in the SR: the classes plus the BraTS unions."""

    NCR = "ncr"
    ED = "ed"
    ET = "et"
    WT = "wt"  # whole tumour: NCR + ED + ET (labels 1, 2, 4)
    TC = "tc"  # tumour core: NCR + ET (labels 1, 4)

    @property
    def label_values(self) -> tuple[int, ...]:
        """BraTS label values that make up this region."""
        return _REGION_LABELS[self]


_REGION_LABELS = {
    TumorRegion.NCR: (1,),
    TumorRegion.ED: (2,),
    TumorRegion.ET: (4,),
    TumorRegion.WT: (1, 2, 4),
    TumorRegion.TC: (1, 4),
}


class MapKind(str, Enum):
    """Groups of Parametric Maps that can be sent."""

    PROBABILITY = "probability"  # mean softmax of each class
    ENTROPY = "entropy"  # the predictive entropy map alone
    UNCERTAINTY = "uncertainty"  # entropy plus the MC dropout SD of each class
    GRADCAM = "gradcam"


class ReportKind(str, Enum):
    """Renderings for viewers that show neither SEG nor Parametric Maps."""

    KEY_IMAGES = "keyimages"  # Secondary Capture key images, one per plane
    PDF = "pdf"  # Encapsulated PDF report


class MeshFormat(str, Enum):
    """How tumour surfaces are delivered."""

    STL = "stl"  # Encapsulated STL, one instance per region
    SURFACE_SEGMENTATION = "surface"  # one Surface Segmentation instance


class SegmentationTypeValues(str, Enum):
    """Segmentation Type (0062,0001) values we write."""

    BINARY = "BINARY"
    LABELMAP = "LABELMAP"


class DeliveryStatus(str, Enum):
    """Outcome of sending one object."""

    SUCCESS = "success"
    WARNING = "warning"  # stored, but the PACS answered a warning status (0xB000, 0xB006, 0xB007)
    FAILURE = "failure"  # refused: failure status, or no accepted presentation context
