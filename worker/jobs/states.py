"""The job state machine: one declared stage order, everything else derived from it.

:data:`STAGE_ORDER` is the only place the order of the running stages is
written. The pipeline's stage ranks (:data:`STAGE_RANK`), the dashboard's
steps (:data:`TIMED_STEPS`), the sets of running, waiting and final states
and the allowed transitions (:data:`TRANSITIONS`) all follow from it.

``queued -> loading -> preprocessing -> inference -> explaining -> encoding
-> delivering -> done``; from any running state a job may end ``failed``
(permanent, with a reason), ``partial`` (some outputs could not be made or
delivered), ``cancelled``, or wait as ``retrying`` (transient error; Celery
retries it). A job resumed after a delivery-only failure is claimed straight
into ``delivering``.
"""

from __future__ import annotations

from enum import Enum


class JobState(str, Enum):
    """Where a job is; the running states double as the recorded stage names."""

    QUEUED = "queued"
    LOADING = "loading"
    PREPROCESSING = "preprocessing"
    INFERENCE = "inference"
    EXPLAINING = "explaining"
    ENCODING = "encoding"
    DELIVERING = "delivering"
    DONE = "done"
    PARTIAL = "partial"
    FAILED = "failed"
    RETRYING = "retrying"
    CANCELLED = "cancelled"


#: The running stages, in the order a job walks them (the one declaration).
STAGE_ORDER: tuple[JobState, ...] = (
    JobState.LOADING, JobState.PREPROCESSING, JobState.INFERENCE, JobState.EXPLAINING,
    JobState.ENCODING, JobState.DELIVERING,
)
#: stage -> its position in :data:`STAGE_ORDER` (the pipeline skips stages ranked before its start).
STAGE_RANK: dict[JobState, int] = {stage: rank for rank, stage in enumerate(STAGE_ORDER)}
RUNNING_STATES = frozenset(STAGE_ORDER)
WAITING_STATES = frozenset({JobState.QUEUED, JobState.RETRYING})
FINAL_STATES = frozenset({JobState.DONE, JobState.PARTIAL, JobState.FAILED, JobState.CANCELLED})
#: The steps a job's time is split into on the dashboard: the waits for a worker, then the stages.
TIMED_STEPS: tuple[JobState, ...] = (JobState.QUEUED, JobState.RETRYING, *STAGE_ORDER)
#: The stages a claim may start a job in: from the beginning, or delivery only (outputs already made).
CLAIM_TARGETS = frozenset({STAGE_ORDER[0], JobState.DELIVERING})

_ENDINGS = FINAL_STATES | {JobState.RETRYING}

#: state -> states it may move to. Claiming moves a waiting job (or a running
#: job whose worker is gone) into the first stage or, to resume delivery, ``delivering``.
TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.QUEUED: CLAIM_TARGETS | {JobState.FAILED, JobState.CANCELLED},
    JobState.RETRYING: CLAIM_TARGETS | {JobState.FAILED, JobState.CANCELLED, JobState.QUEUED},
    **{stage: frozenset({*STAGE_ORDER[rank + 1:rank + 2], *_ENDINGS, *CLAIM_TARGETS})
       for rank, stage in enumerate(STAGE_ORDER)},
    **{state: frozenset({JobState.QUEUED}) for state in FINAL_STATES},
}


class TransitionError(ValueError):
    """A state change that the state machine does not allow."""


def check_transition(old: JobState | str, new: JobState | str) -> None:
    """Raise :class:`TransitionError` unless ``old -> new`` is in :data:`TRANSITIONS`."""
    old, new = JobState(old), JobState(new)
    if new not in TRANSITIONS[old]:
        allowed = ", ".join(sorted(state.value for state in TRANSITIONS[old]))
        raise TransitionError(f"a job cannot go from {old.value} to {new.value}; from {old.value}: {allowed}")
