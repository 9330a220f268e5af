"""The worker's call of the per-study quality estimate (:mod:`neuroseg.model.quality`).

The estimate informs the reader; it never stops a job. Should it fail, the job
goes on without it and its timeline says why.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from neuroseg.worker.loading import MODEL_KEYS, LoadedStudy

log = logging.getLogger(__name__)

_FITS: dict[str, Any] = {}


@dataclass(frozen=True)
class _Outcome:
    reason: str


def quality_model(model_path: Path | str | None) -> Any:
    """The stored quality fit of the configured model, read once per process."""
    from neuroseg.model.quality import load_quality_model

    key = str(model_path or "")
    if key not in _FITS:
        _FITS[key] = load_quality_model(model_path)
    return _FITS[key]


def registration_outcomes(loaded: LoadedStudy) -> dict[str, _Outcome]:
    """Each co-registered sequence's outcome, from the load notes (``"<role> co-registered to ...: <reason>"``)."""
    outcomes = {}
    for role in loaded.volumes:
        prefix = f"{role.value} co-registered to "
        for note in loaded.notes:
            if note.startswith(prefix) and ": " in note:
                outcomes[MODEL_KEYS[role]] = _Outcome(note.split(": ", 1)[1])
    return outcomes


def assess_job(loaded: LoadedStudy, result: Any, model_path: Path | str | None) -> dict[str, Any]:
    """The ``quality`` block of the job (``{}`` when the estimate itself failed; the caller records that)."""
    from neuroseg.model.quality import assess_result

    native = {MODEL_KEYS[role]: (volume.array, volume.affine) for role, volume in loaded.volumes.items()
              if MODEL_KEYS.get(role) in loaded.images}
    quality = assess_result(result, loaded.images, loaded.affine, native=native,
                            registrations=registration_outcomes(loaded), model=quality_model(model_path))
    return quality.to_report()
