"""A prior that only the PACS holds (``NEUROSEG_PRIOR_QUERY=true``): find it, retrieve it, process it first.

Called by :mod:`neuroseg.worker.followup` when a finished study has no
processed prior in the job store:

1. C-FIND (Study Root) at the first DICOM destination for the patient's MR
   studies: PatientID and IssuerOfPatientID as keys, birth date and sex
   checked on each answer (a mismatch is another patient, never a prior);
2. the newest earlier study we never processed is fetched with C-GET;
3. the instances are handed to our own listener by C-STORE, the normal
   intake: spool, study assembly and series classification make it an
   ordinary job, which this job marks as its prior
   (:meth:`~neuroseg.worker.jobs.followups.FollowupLog.mark_awaiting_prior`);
4. this worker claims that job and runs it in-process, so the prior is
   processed first even with a single worker (its queued task then finds
   it finished), and the comparison goes on as for any processed prior.

Every failure on the way (no DICOM destination, the PACS down or refusing,
nothing earlier, the listener not taking the instances, the prior job
failing) is a ``followup`` note on the job; the study's own results are
still delivered.
"""

from __future__ import annotations

import logging
import shutil
import time
from typing import Any

from neuroseg.worker.followup import note_followup
from neuroseg.worker.jobstore import FINAL_STATES, ClaimOutcome, JobState, PatientIdentity, worker_identity
from neuroseg.worker.settings import DicomDestination, Settings

log = logging.getLogger(__name__)

#: seconds the job waits beyond the listener's assembly time for the retrieved study to become a job
INTAKE_MARGIN_S = 60.0
POLL_S = 0.5


def _stop(ctx: Any, message: str) -> str:
    """Note on the job why no prior comes from the PACS, and hand the reason back."""
    note_followup(ctx, message)
    return message


def pacs_peer(settings: Settings) -> Any:
    """The PACS to query: the first C-STORE destination (None when only DICOMweb or the outbox is configured)."""
    from neuroseg.dicom_out.send import Peer

    destination = next((item for item in settings.destinations if isinstance(item, DicomDestination)), None)
    if destination is None:
        return None
    return Peer(destination.ae_title, destination.host, destination.port,
                calling_ae_title=settings.calling_ae_title, timeout=30.0)


def listener_peer(settings: Settings) -> Any:
    """Our own listener, where retrieved instances enter the normal intake."""
    from neuroseg.dicom_out.send import Peer, client_tls_context

    tls = client_tls_context(settings.tls_ca) if settings.tls_cert is not None else None
    if settings.prior_intake is not None:  # compose or Kubernetes: the listener is another container or pod
        intake = settings.prior_intake
        return Peer(intake.ae_title, intake.host, intake.port, calling_ae_title=settings.calling_ae_title, tls=tls)
    host = "127.0.0.1" if settings.bind_address in ("", "0.0.0.0", "::") else settings.bind_address
    return Peer(settings.ae_title, host, settings.port, calling_ae_title=settings.calling_ae_title, tls=tls)


def _candidates(ctx: Any, matches: list[Any], identity: PatientIdentity, date: str, time_of_day: str) -> list[Any]:
    """The PACS's earlier studies of exactly this patient that no job of ours has processed, newest first."""
    kept = []
    for match in matches:
        if match.study_instance_uid == ctx.manifest.study_instance_uid:
            continue
        if (match.patient_birth_date, match.patient_sex) != (identity.patient_birth_date, identity.patient_sex):
            note_followup(ctx, f"PACS study {match.study_instance_uid} has the same PatientID but birth date "
                  f"{match.patient_birth_date or '(none)'} and sex {match.patient_sex or '(none)'}: "
                  "a different patient (or an identity error), not retrieved")
            continue
        if not match.study_date or (match.study_date, match.study_time) >= (date, time_of_day):
            continue
        if ctx.store.list_jobs(study_instance_uid=match.study_instance_uid, limit=1):
            continue  # ours already (and not comparable, or find_prior would have found it)
        kept.append(match)
    return sorted(kept, key=lambda item: (item.study_date, item.study_time), reverse=True)


def fetch_prior_from_pacs(ctx: Any) -> str | None:
    """Retrieve and process the patient's newest earlier PACS study: None when it was processed, else why not.

    ``ctx`` is the :class:`~neuroseg.worker.pipeline.JobContext` of the current job, whose time point is recorded.
    """
    from neuroseg.dicom_out.query import QueryRefused, find_studies, get_study
    from neuroseg.dicom_out.send import DeliveryUnavailable

    settings, store = ctx.settings, ctx.store
    peer = pacs_peer(settings)
    if peer is None:
        return _stop(ctx, "NEUROSEG_PRIOR_QUERY is on but no DICOM (AET@host:port) destination is configured to ask "
                     "for a prior; nothing compared")
    identity = store.identity_of(ctx.job_id)
    point = store.get_time_point(ctx.job_id)
    if identity is None or point is None or not identity.patient_id or not point.study_date:
        return "no PatientID or StudyDate: no prior asked for"  # find_prior already noted why
    try:
        matches = find_studies(peer, identity.patient_id, identity.issuer_of_patient_id)
    except (DeliveryUnavailable, QueryRefused) as exc:
        return _stop(ctx, f"the PACS query for an earlier study failed ({exc}); results sent without a comparison")
    candidates = _candidates(ctx, matches, identity, point.study_date, point.study_time)
    if not candidates:
        return _stop(ctx, f"the PACS {peer} holds no earlier MR study of this patient that we have not processed")
    prior = candidates[0]
    folder = settings.data_dir / "prior-retrieve" / prior.study_instance_uid
    store.mark_awaiting_prior(ctx.job_id, prior.study_instance_uid,
                              f"retrieving prior study {prior.study_instance_uid} of {prior.study_date} from {peer}")
    try:
        return _retrieve_and_process(ctx, peer, prior, folder, get_study)
    except (DeliveryUnavailable, QueryRefused) as exc:
        return _stop(ctx, f"the prior study {prior.study_instance_uid} could not be retrieved ({exc}); "
                     "results sent without a comparison")
    finally:
        shutil.rmtree(folder, ignore_errors=True)  # the listener's spool holds what it took


def _retrieve_and_process(ctx: Any, peer: Any, prior: Any, folder: Any, get_study: Any) -> str | None:
    from neuroseg.dicom_out.send import deliver, load_objects

    settings, store = ctx.settings, ctx.store
    retrieved = get_study(peer, prior.study_instance_uid, folder)
    note_followup(ctx, f"retrieved prior study {prior.study_instance_uid} of {prior.study_date} from {peer} by C-GET "
          f"({len(retrieved.files)} MR instances" + (f", {retrieved.failed} not sent" if retrieved.failed else "")
          + ")")
    listener = listener_peer(settings)
    results = deliver(load_objects(retrieved.files), listener)
    failed = [result for result in results if not result.ok]
    if failed:
        return _stop(ctx, f"our listener {listener} did not take {len(failed)} of {len(results)} retrieved "
                     f"instances ({failed[0].message}); nothing compared")
    prior_job = _wait_for_job(store, prior.study_instance_uid, settings.stable_seconds + INTAKE_MARGIN_S)
    if prior_job is None:
        return _stop(ctx, f"the retrieved prior study {prior.study_instance_uid} did not become a job within "
                     f"{settings.stable_seconds + INTAKE_MARGIN_S:.0f} s; nothing compared")
    store.record_event("followup", f"retrieved from the PACS as the prior of job {ctx.job_id}; processed first",
                       job_id=prior_job, study_instance_uid=prior.study_instance_uid)
    state = _process(store, prior_job, settings)
    if state not in (JobState.DONE.value, JobState.PARTIAL.value):
        return _stop(ctx, f"the prior study {prior.study_instance_uid} (job {prior_job}) ended {state}; "
                     "nothing compared")
    note_followup(ctx, f"prior study {prior.study_instance_uid} processed as job {prior_job}")
    return None


def _wait_for_job(store: Any, study_instance_uid: str, timeout: float) -> str | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs = store.list_jobs(study_instance_uid=study_instance_uid, limit=1)
        if jobs:
            return jobs[0].id
        time.sleep(POLL_S)
    return None


def _process(store: Any, job_id: str, settings: Settings) -> str:
    """Run ``job_id`` here, now (or wait for the worker that has it); its final state."""
    from neuroseg.worker import pipeline
    from neuroseg.worker.errors import InputError
    from neuroseg.worker.tasks import Heartbeat

    claim = store.claim(job_id, worker=worker_identity(), max_attempts=settings.job_max_attempts)
    if claim.outcome is ClaimOutcome.CLAIMED:
        with Heartbeat(store, job_id, interval=max(1.0, settings.job_stale_seconds / 6)):
            try:
                return pipeline.run_job(store, job_id, settings)
            except InputError as exc:
                store.finish(job_id, JobState.FAILED, error=str(exc))
                return JobState.FAILED.value
            except Exception as exc:  # noqa: BLE001 - its own task retries it; this job goes on without it
                log.exception("prior job %s failed in-process", job_id)
                store.mark_retrying(job_id, f"processed as a prior: {type(exc).__name__}: {exc}", 0.0)
                return JobState.RETRYING.value
    deadline = time.monotonic() + settings.task_soft_time_limit
    while time.monotonic() < deadline:  # another worker has it: the comparison waits for its result
        state = store.job_state(job_id)
        if state in {item.value for item in FINAL_STATES}:
            return state
        time.sleep(POLL_S * 4)
    return store.job_state(job_id) or "missing"
