"""Light data types shared by the listener and the worker (no heavy imports).

The listener hands a complete study to the queue as a :class:`StudyManifest`;
the worker reads the same manifest back from the job store. Both sides import
this module, so it must stay free of torch, Celery and SQLAlchemy.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any


class SequenceRole(str, Enum):
    """The role a series plays in a glioma study."""

    T1 = "T1"
    T1CE = "T1ce"
    T2 = "T2"
    FLAIR = "FLAIR"
    OTHER = "other"

    @classmethod
    def parse(cls, value: str) -> "SequenceRole":
        """Case-insensitive lookup; raises ``ValueError`` naming the allowed roles."""
        for role in cls:
            if role.value.lower() == str(value).strip().lower():
                return role
        raise ValueError(f"{value!r} is not a sequence role; use one of {', '.join(r.value for r in cls)}")


@dataclass(frozen=True)
class SeriesManifest:
    """One received series and the role the classifier gave it.

    ``folder`` is the spool folder holding its instances
    (``<spool>/<StudyInstanceUID>/<SeriesInstanceUID>``).
    """

    series_instance_uid: str
    folder: str
    role: SequenceRole
    confidence: float
    reasons: tuple[str, ...]
    modality: str = ""
    series_description: str = ""
    series_number: int | None = None
    sop_class_uid: str = ""
    instance_count: int = 0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["role"] = self.role.value
        data["reasons"] = list(self.reasons)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SeriesManifest":
        values = dict(data)
        values["role"] = SequenceRole.parse(values["role"])
        values["reasons"] = tuple(values.get("reasons", ()))
        return cls(**values)


@dataclass(frozen=True)
class StudyManifest:
    """A complete study as the listener hands it to the queue."""

    study_instance_uid: str
    series: tuple[SeriesManifest, ...]
    patient_id: str = ""
    patient_name: str = ""
    accession_number: str = ""
    study_description: str = ""
    calling_ae_titles: tuple[str, ...] = ()
    # why the study was considered complete: "stable" or "max_wait"
    completion_reason: str = "stable"
    notes: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["series"] = [item.to_dict() for item in self.series]
        data["calling_ae_titles"] = list(self.calling_ae_titles)
        data["notes"] = list(self.notes)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "StudyManifest":
        values = dict(data)
        values["series"] = tuple(SeriesManifest.from_dict(item) for item in values["series"])
        values["calling_ae_titles"] = tuple(values.get("calling_ae_titles", ()))
        values["notes"] = tuple(values.get("notes", ()))
        return cls(**values)

    def roles(self) -> dict[SequenceRole, SeriesManifest]:
        """The series chosen for each role (the classifier already resolved ties)."""
        return {item.role: item for item in self.series if item.role is not SequenceRole.OTHER}
