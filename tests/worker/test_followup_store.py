"""Finding the prior in the job store: same patient only (ID, issuer, birth date, sex), earlier, finished."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from neuroseg.worker.jobstore import JobState, JobStore, PatientIdentity
from tests.worker.test_jobstore import make_manifest

JANE = PatientIdentity("P1", "HOSP-A", "19700101", "F")


@pytest.fixture
def store(database_url, tmp_path) -> JobStore:
    return JobStore(database_url or f"sqlite:///{tmp_path / 'jobs.sqlite'}")


def _finished(store: JobStore, study: str, identity: PatientIdentity, date: str, time: str = "",
              state: JobState = JobState.DONE) -> str:
    job_id, _ = store.create_job(make_manifest(study))
    store.claim(job_id, worker="w:1")
    store.record_time_point(job_id, study, identity, date, time)
    if state is not JobState.LOADING:
        store.finish(job_id, state)
    return job_id


def test_the_newest_earlier_study_of_the_same_patient_is_the_prior(store):
    first = _finished(store, "1.1", JANE, "20260101")
    second = _finished(store, "1.2", JANE, "20260301")
    _finished(store, "1.9", JANE, "20261201")  # later than the current study: not a prior
    current = _finished(store, "1.3", JANE, "20260601", state=JobState.LOADING)
    search = store.find_prior(current)
    assert search.prior is not None and search.prior.job_id == second and search.notes == ()
    line = store.patient_time_line(JANE.key)
    assert [point.job_id for point in line] == [first, second, _job_of(store, "1.9")]


def _job_of(store: JobStore, study: str) -> str:
    return next(job.id for job in store.list_jobs() if job.study_instance_uid == study)


def test_another_hospital_or_another_person_with_the_same_id_is_never_the_prior(store):
    _finished(store, "2.1", PatientIdentity("P1", "HOSP-B", "19700101", "F"), "20260101")  # another hospital
    _finished(store, "2.2", PatientIdentity("P1", "HOSP-A", "19811111", "M"), "20260201")  # same ID, not Jane
    _finished(store, "2.3", JANE, "20260301", state=JobState.FAILED)  # no results to compare with
    current = _finished(store, "2.4", JANE, "20260601", state=JobState.LOADING)
    search = store.find_prior(current)
    assert search.prior is None
    assert len(search.notes) == 1 and "2.2" in search.notes[0] and "different patient" in search.notes[0]


def test_two_priors_on_one_day_need_distinct_times(store):
    _finished(store, "3.1", JANE, "20260301", "080000")
    later = _finished(store, "3.2", JANE, "20260301", "093000")
    current = _finished(store, "3.3", JANE, "20260601", state=JobState.LOADING)
    search = store.find_prior(current)
    assert search.prior.job_id == later and "2 earlier studies on 20260301" in search.notes[0]

    _finished(store, "4.1", PatientIdentity("P2", "", "", ""), "20260301")
    _finished(store, "4.2", PatientIdentity("P2", "", "", ""), "20260301")
    current = _finished(store, "4.3", PatientIdentity("P2", "", "", ""), "20260601", state=JobState.LOADING)
    search = store.find_prior(current)
    assert search.prior is None and "ambiguous" in search.notes[0]


def test_the_comparison_is_kept_on_the_time_point(store):
    prior = _finished(store, "5.1", JANE, "20260101")
    current = _finished(store, "5.2", JANE, "20260601", state=JobState.LOADING)
    store.set_comparison(current, "compared", "ET +50 %", prior_job_id=prior, summary={"regions": {"et": 1}})
    point = store.get_time_point(current)
    assert (point.status, point.prior_job_id, point.summary) == ("compared", prior, {"regions": {"et": 1}})
    # a retry records the time point again and forgets the old comparison
    store.record_time_point(current, "5.2", JANE, "20260601", "")
    assert store.get_time_point(current).status == "no_prior"


def test_revision_0004_makes_the_time_points_table_as_frozen_here(store):
    inspector = sa.inspect(store.engine)
    columns = [(column["name"], column["nullable"]) for column in inspector.get_columns("time_points")]
    assert columns == [
        ("job_id", False), ("study_instance_uid", False), ("patient_key", False), ("patient_id", False),
        ("issuer_of_patient_id", False), ("patient_birth_date", False), ("patient_sex", False),
        ("study_date", False), ("study_time", False), ("status", False), ("prior_job_id", True), ("note", False),
        ("summary", False), ("recorded_at", False)]
    assert sorted(index["name"] for index in inspector.get_indexes("time_points")) == [
        "ix_time_points_patient_id", "ix_time_points_patient_key", "ix_time_points_study_instance_uid"]
    assert [(item["constrained_columns"], item["referred_table"])
            for item in inspector.get_foreign_keys("time_points")] == [(["job_id"], "jobs")]
