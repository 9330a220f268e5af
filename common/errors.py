"""The base of neuroseg's own errors, shared by every stage.

:class:`InputError` is the one family that means "the input cannot be
processed as it is": the job fails for good and the message says why. It is a
``ValueError`` so that callers of ``model`` and ``dicom_out`` outside the
service can keep catching that. Any other exception from our code is a bug.

Its members in the stages: ``model.adapters.ModelMismatchError`` (weights that
do not fit the study) and ``dicom_out.common.DicomOutError`` with its
``SourceSeriesError`` and ``GridMismatchError`` (a reference series, array or
encoding setting that cannot be written as DICOM). A plain ``ValueError`` from
a library or from our own code is not one of them: it is a bug and is retried.
"""


class NeurosegError(Exception):
    """Base of neuroseg's own errors."""


class InputError(NeurosegError, ValueError):
    """The study (or a setting it is processed with) cannot be processed as it is; retrying will not help."""
