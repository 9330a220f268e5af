"""One exception tree for job processing.

``InputError`` is permanent: the job fails and the message says why.
``TransientError`` may succeed later (PACS down, broker hiccup, CUDA out of
memory): Celery retries it with backoff. Lower layers (``model``, ``dicom_out``)
raise their own ``ValueError`` subclasses; the worker maps them here.
"""


class NeurosegError(Exception):
    """Base of neuroseg's own errors."""


class InputError(NeurosegError):
    """The study cannot be processed as it is; retrying will not help."""


class TransientError(NeurosegError):
    """A temporary failure; the same job may succeed on retry."""



# Celery's soft time limit, raised inside a job by a signal (billiard comes with Celery).
# A broad ``except Exception`` that turns parse failures into InputError must re-raise it:
# the job's time ran out, the file is not at fault.
from billiard.exceptions import SoftTimeLimitExceeded as JobInterrupted  # noqa: E402
