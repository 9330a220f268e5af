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
