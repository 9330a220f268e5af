"""Query/retrieve from the PACS: C-FIND (Study Root) for a patient's studies, C-GET of one study into a folder.

The follow-up step uses these to find a patient's earlier MR study that only
the PACS holds (``NEUROSEG_PRIOR_QUERY``). They talk to the same :class:`Peer`
as :func:`~neuroseg.dicom_out.send.deliver` and raise the same
:class:`~neuroseg.dicom_out.send.DeliveryUnavailable` when the PACS cannot be
reached or refuses the association; a PACS that answers the request itself
with a failure status raises :class:`QueryRefused`.

C-GET brings the instances back over our own association (no C-MOVE
destination to configure on the PACS): we propose the storage SOP classes of
MR images with the SCP role, and each C-STORE that arrives is written to the
folder atomically before we answer Success.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset

from neuroseg.common.files import atomic_write
from neuroseg.dicom_out.send import UNCOMPRESSED, DeliveryUnavailable, Peer, association

log = logging.getLogger(__name__)

STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
STUDY_ROOT_GET = "1.2.840.10008.5.1.4.1.2.2.3"
#: the image storage classes a prior MR study is retrieved in (classic and enhanced MR)
MR_STORAGE = ("1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.5.1.4.1.1.4.1")
#: C-FIND/C-GET statuses that mean "more is coming" (PS3.4 C.4.1.1.4, C.4.3.1.4)
PENDING = frozenset({0xFF00, 0xFF01})
#: C-GET finished with some sub-operations failed or with warnings (the instances that came are kept)
GET_WARNING = 0xB000


class QueryRefused(RuntimeError):
    """The PACS took the association but refused or failed the C-FIND or C-GET (status in the message)."""


@dataclass(frozen=True)
class StudyMatch:
    """One study the PACS reported for a patient (empty strings for attributes it did not return)."""

    study_instance_uid: str
    study_date: str
    study_time: str
    patient_id: str
    issuer_of_patient_id: str
    patient_birth_date: str
    patient_sex: str
    modalities: tuple[str, ...]
    study_description: str = ""


@dataclass(frozen=True)
class Retrieved:
    """What a C-GET brought: the files written and the final status (``0x0000`` or the warning ``0xB000``)."""

    files: tuple[Path, ...]
    status: int
    failed: int = 0


def _text(dataset: Dataset, keyword: str) -> str:
    return str(dataset.get(keyword, "") or "").strip()


def find_studies(peer: Peer, patient_id: str, issuer_of_patient_id: str = "", modality: str = "MR",
                 ) -> list[StudyMatch]:
    """The patient's studies with ``modality`` that ``peer`` holds, by C-FIND at STUDY level (Study Root).

    PatientID (and IssuerOfPatientID when known) are matching keys; birth date,
    sex, date and time are asked for so the caller can check the identity
    itself: a PACS may ignore a matching key it does not index, so the answers
    are filtered here too.

    Raises
    ------
    DeliveryUnavailable
        The PACS is down or refuses the association.
    QueryRefused
        The PACS refuses the query (a failure status, or no Study Root FIND context).
    """
    if not patient_id:
        raise ValueError("a C-FIND for a patient's studies needs a PatientID")
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.PatientID = patient_id
    query.IssuerOfPatientID = issuer_of_patient_id
    query.ModalitiesInStudy = modality
    for keyword in ("StudyInstanceUID", "StudyDate", "StudyTime", "PatientBirthDate", "PatientSex",
                    "StudyDescription"):
        setattr(query, keyword, "")
    matches: list[StudyMatch] = []
    with association(peer, [(STUDY_ROOT_FIND, UNCOMPRESSED)], purpose="query") as assoc:
        if not any(context.abstract_syntax == STUDY_ROOT_FIND for context in assoc.accepted_contexts):
            raise QueryRefused(f"{peer} does not accept Study Root C-FIND")
        for status, identifier in assoc.send_c_find(query, STUDY_ROOT_FIND):
            code = getattr(status, "Status", None)
            if code is None:  # aborted or timed out; Orthanc aborts a C-FIND from an AE it does not know
                how = "aborted the association" if assoc.is_aborted else "stopped answering"
                raise QueryRefused(f"{peer} {how} during the C-FIND (does it accept queries from our AE "
                                   f"title {peer.calling_ae_title}?)")
            if code in PENDING and identifier is not None:
                modalities = identifier.get("ModalitiesInStudy", "") or ()
                modalities = (modalities,) if isinstance(modalities, str) else tuple(modalities)
                matches.append(StudyMatch(
                    study_instance_uid=_text(identifier, "StudyInstanceUID"),
                    study_date=_text(identifier, "StudyDate"), study_time=_text(identifier, "StudyTime"),
                    patient_id=_text(identifier, "PatientID"),
                    issuer_of_patient_id=_text(identifier, "IssuerOfPatientID"),
                    patient_birth_date=_text(identifier, "PatientBirthDate"),
                    patient_sex=_text(identifier, "PatientSex"),
                    modalities=tuple(str(item) for item in modalities if str(item)),
                    study_description=_text(identifier, "StudyDescription")))
            elif code != 0x0000:
                raise QueryRefused(f"{peer} refused the C-FIND for the patient's studies: status 0x{code:04X}")
    # the PACS may match loosely (or ignore a key): keep exactly this patient's studies of this modality
    return [match for match in matches if match.study_instance_uid and match.patient_id == patient_id
            and (not match.modalities or modality in match.modalities)]


def get_study(peer: Peer, study_instance_uid: str, folder: Path,
              sop_classes: Sequence[str] = MR_STORAGE) -> Retrieved:
    """Retrieve one study from ``peer`` with C-GET into ``folder/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``.

    Instances of other SOP classes (our own results, reports) are not asked
    for: only ``sop_classes`` are proposed, so the PACS counts them as failed
    sub-operations and the final status is the warning ``0xB000``.

    Raises
    ------
    DeliveryUnavailable
        The PACS is down or refuses the association.
    QueryRefused
        The PACS refuses the retrieve, or it ends with nothing retrieved.
    """
    from pynetdicom import evt

    folder.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    def on_store(event: Any) -> int:
        dataset = event.dataset
        series, sop = str(dataset.get("SeriesInstanceUID", "")), str(dataset.get("SOPInstanceUID", ""))
        if not series or not sop or any(not part.replace(".", "").isdigit() for part in (series, sop)):
            return 0xA900  # without valid UIDs there is no safe file name
        target = folder / series
        target.mkdir(exist_ok=True)
        path = atomic_write(target / f"{sop}.dcm", event.encoded_dataset())  # on disk before Success
        written.append(path)
        return 0x0000

    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = study_instance_uid
    final, failed = None, 0
    with association(peer, [(STUDY_ROOT_GET, UNCOMPRESSED)], scp_roles=sop_classes,
                     handlers=[(evt.EVT_C_STORE, on_store)], purpose="query") as assoc:
        if not any(context.abstract_syntax == STUDY_ROOT_GET for context in assoc.accepted_contexts):
            raise QueryRefused(f"{peer} does not accept Study Root C-GET")
        for status, identifier in assoc.send_c_get(query, STUDY_ROOT_GET):
            code = getattr(status, "Status", None)
            if code is None:
                raise DeliveryUnavailable(f"{peer} stopped answering the C-GET of study {study_instance_uid}")
            if code in PENDING:
                continue
            final, failed = code, int(getattr(status, "NumberOfFailedSuboperations", 0) or 0)
    if final not in (0x0000, GET_WARNING) or not written:
        status = "no answer" if final is None else f"status 0x{final:04X}"
        raise QueryRefused(f"{peer} did not return study {study_instance_uid} by C-GET ({status}, "
                           f"{len(written)} instances received)")
    log.info("C-GET of study %s from %s: %d instances (status 0x%04X)", study_instance_uid, peer, len(written),
             final)
    return Retrieved(files=tuple(written), status=final, failed=failed)
