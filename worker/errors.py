"""One exception tree for job processing, classified by type.

- :class:`InputError` (from :mod:`neuroseg.common.errors`, so ``model`` and
  ``dicom_out`` can raise it too) is permanent: the job fails and the message
  says why.
- :class:`TransientError` may succeed later (PACS or DICOMweb server down,
  broker hiccup): Celery retries it with backoff, at most
  ``NEUROSEG_DELIVERY_MAX_RETRIES`` times.
- :class:`GpuOutOfMemory` is transient too, with its own limit
  (``NEUROSEG_OOM_MAX_RETRIES``), when ``NEUROSEG_RETRY_ON_CPU`` is off.
- Anything else is a bug: the job records the traceback and is retried once.
"""

from neuroseg.common.errors import InputError, NeurosegError

__all__ = ["GpuOutOfMemory", "InputError", "JobInterrupted", "NeurosegError", "TransientError"]


class TransientError(NeurosegError):
    """A temporary failure; the same job may succeed on retry."""


class GpuOutOfMemory(TransientError):
    """CUDA ran out of memory and the job may not fall back to the CPU; retry when the GPU is freer."""


# Celery's soft time limit, raised inside a job by a signal (billiard comes with Celery).
# A broad ``except Exception`` that turns parse failures into InputError must re-raise it:
# the job's time ran out, the file is not at fault.
from billiard.exceptions import SoftTimeLimitExceeded as JobInterrupted  # noqa: E402
