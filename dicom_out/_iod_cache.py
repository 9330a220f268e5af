"""Memoise highdicom's IOD table lookups.

highdicom asks ``is_attribute_in_iod(attribute, sop_class_uid)`` once or more
per source image for every object it builds, and each call scans every
attribute of every module of the IOD (about 2 ms). With 155-slice sources and
a dozen objects that was most of the encoding time. The answer depends only
on the arguments and the standard's tables shipped with highdicom, so a cache
returns exactly what the original would.

highdicom 0.28 still scans on every call. pyproject.toml pins highdicom to the
versions this patch was checked against; tests/dicom_out/test_iod_cache.py
fails when highdicom caches the lookup itself, changes its signature, or
imports it into a module the patch does not reach.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import highdicom._standard_utils as standard_utils

_MODULES = ("highdicom._standard_utils", "highdicom.base", "highdicom.sr.content")


def install() -> None:
    """Replace ``is_attribute_in_iod`` in highdicom with a cached equivalent (idempotent)."""
    import importlib

    original = standard_utils.is_attribute_in_iod
    if getattr(original, "_neuroseg_cached", False):
        return

    @functools.lru_cache(maxsize=4096)
    def cached(attribute: str, sop_class_uid: str, exclude: tuple[str, ...] | None) -> bool:
        return original(attribute, sop_class_uid, list(exclude) if exclude is not None else None)

    @functools.wraps(original)
    def is_attribute_in_iod(attribute: str, sop_class_uid: str,
                            exclude_path_elements: Sequence[str] | None = None) -> bool:
        exclude = tuple(exclude_path_elements) if exclude_path_elements is not None else None
        return cached(attribute, str(sop_class_uid), exclude)

    is_attribute_in_iod._neuroseg_cached = True  # type: ignore[attr-defined]
    for name in _MODULES:
        module = importlib.import_module(name)
        if getattr(module, "is_attribute_in_iod", None) is original:
            module.is_attribute_in_iod = is_attribute_in_iod


def load_tables() -> None:
    """Parse highdicom's tables of the standard now (a JSON file that takes about 1 s to load, once per process).

    highdicom loads them on its first lookup, which would otherwise be inside
    the first job of every new worker process.
    """
    install()
    standard_utils.get_sop_class_iod_map()
    standard_utils.get_iod_module_map()
    standard_utils.get_module_attribute_map()
