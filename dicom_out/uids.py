"""Deterministic DICOM UIDs.

Every UID neuroseg writes is derived from a key with UUID version 5 under one
fixed namespace and turned into a ``2.25.`` UID (PS3.5 Annex B.2), so the same
inputs always give the same UIDs. A reprocessed study (same StudyInstanceUID,
same model version) therefore *replaces* the objects a PACS already holds
instead of duplicating them.

Keys are built by joining their parts with ``"|"``; callers should use
:func:`output_uid` for result objects and :func:`derive_uid` for anything
else (such as the synthetic source series written by :mod:`.mr_series`).
"""

from __future__ import annotations

from uuid import UUID, uuid5

import highdicom as hd

#: Namespace of every neuroseg UID (a fixed, randomly drawn UUID; never change it:
#: changing it would make every reprocessed study duplicate its results).
NEUROSEG_UID_NAMESPACE = UUID("6f1c2a0e-93c4-4d0b-9a57-2f4f3c8e1b6d")


def derive_uid(*parts: object) -> hd.UID:
    """Return the UID derived from ``parts``.

    Parameters
    ----------
    *parts: object
        Pieces of the key; each is turned into text with ``str`` and they are
        joined with ``"|"``. At least one is required.

    Returns
    -------
    highdicom.UID
        A ``2.25.<integer>`` UID of at most 64 characters.

    Raises
    ------
    ValueError
        If no parts are given.
    """
    if not parts:
        raise ValueError("derive_uid needs at least one key part")
    key = "|".join(str(part) for part in parts)
    return hd.UID.from_uuid(str(uuid5(NEUROSEG_UID_NAMESPACE, key)))


def output_uid(study_instance_uid: str, model_version: str, kind: str, what: str = "sop") -> hd.UID:
    """Return the UID of one result object of a study.

    Parameters
    ----------
    study_instance_uid: str
        StudyInstanceUID of the source study.
    model_version: str
        Version of the model that produced the result; a new version gives
        new objects (kept next to the old ones), the same version replaces them.
    kind: str
        Object kind, e.g. ``"seg"``, ``"pmap-probability-ncr"``, ``"sr"``.
    what: str, optional
        Which UID of the object: ``"sop"`` (SOPInstanceUID) or ``"series"``
        (SeriesInstanceUID); other values are allowed for extra UIDs.

    Returns
    -------
    highdicom.UID
        The UID.
    """
    if not study_instance_uid:
        raise ValueError("output_uid needs the source StudyInstanceUID; got an empty value")
    return derive_uid("output", study_instance_uid, model_version, kind, what)
