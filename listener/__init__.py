"""DICOM in: associations, spool, study assembly, series classification.

Public surface (imported lazily so that ``import neuroseg.listener.classify``
does not load pynetdicom):

- :class:`ListenerService` runs the listener in background threads;
- :class:`Spool`, :class:`StudyAssembler`, :class:`RuleSet` are its parts.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "ListenerService": "neuroseg.listener.service",
    "StudyAssembler": "neuroseg.listener.assembly",
    "HandOff": "neuroseg.listener.assembly",
    "RuleSet": "neuroseg.listener.classify",
    "SeriesHeader": "neuroseg.listener.classify",
    "Spool": "neuroseg.listener.spool",
    "StoreStatus": "neuroseg.listener.scp",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'neuroseg.listener' has no attribute {name!r}")
