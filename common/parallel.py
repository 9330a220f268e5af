"""Running independent pieces of one job on every core this process may use.

The heavy pieces of a study (gzip of result volumes, resampling maps, DICOM
encoding) spend their time in C code that releases the GIL (zlib, scipy.ndimage,
numpy), so threads give real parallelism without copying arrays to other
processes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


def usable_cpus() -> int:
    """Cores this process may run on (its CPU affinity, which a container limit narrows), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not on Linux
        return max(1, os.cpu_count() or 1)


def map_in_threads(function: Callable[[Item], Result], items: Iterable[Item], *, name: str,
                   workers: int | None = None) -> list[Result]:
    """``[function(item) for item in items]``, in up to ``workers`` (default :func:`usable_cpus`) threads,
    results in order; the first exception is raised once every piece has finished."""
    items = list(items)
    count = min(len(items), workers or usable_cpus())
    if count <= 1:
        return [function(item) for item in items]
    with ThreadPoolExecutor(max_workers=count, thread_name_prefix=f"neuroseg-{name}") as pool:
        return list(pool.map(function, items))
