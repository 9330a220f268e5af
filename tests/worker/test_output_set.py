"""Reprocessing replaces a job's output set: objects no longer made are dropped and named, not kept as current."""

from __future__ import annotations

from neuroseg.worker.jobstore import JobStore, OutputRecord
from tests.worker.test_jobstore import make_manifest


def outputs(*kinds: str) -> list[OutputRecord]:
    return [OutputRecord(kind=kind, sop_instance_uid=f"2.25.{abs(hash(kind)) % 10**12}", series_instance_uid="2.25.9",
                         sop_class_uid="1.2.840.10008.5.1.4.1.1.30", path=f"/results/{kind}.dcm") for kind in kinds]


def superseded(store: JobStore, job_id: str) -> list[str]:
    return [event.message for event in store.get_job(job_id).events if event.kind == "superseded"]


def test_a_reprocess_without_a_kind_drops_it_and_names_what_stays_in_the_pacs(make_settings) -> None:
    store = JobStore.from_settings(make_settings())
    first, _ = store.create_job(make_manifest(counts=(20, 20)))
    assert store.record_outputs(first, outputs("seg", "sr", "pmap-gradcam-ncr")) == []
    second, _ = store.create_job(make_manifest(counts=(20, 24)))  # a changed study: the new job replaces the first
    assert store.get_job(second).replaces_job_id == first

    stale = store.record_outputs(second, outputs("seg", "sr"))  # Grad-CAM maps switched off since

    gradcam = outputs("pmap-gradcam-ncr")[0]
    assert [item.sop_instance_uid for item in stale] == [gradcam.sop_instance_uid]
    assert sorted(item.kind for item in store.get_job(second).outputs) == ["seg", "sr"]
    (message,) = superseded(store, second)
    assert message.startswith("1 object(s) of an earlier run are no longer made")
    assert gradcam.sop_instance_uid in message
    assert len(store.get_job(first).outputs) == 3, "the replaced job's history is kept"


def test_running_the_same_job_again_replaces_its_set(make_settings) -> None:
    store = JobStore.from_settings(make_settings())
    job_id, _ = store.create_job(make_manifest())
    store.record_outputs(job_id, outputs("seg", "sr", "mesh-stl-wt"))
    assert [item.kind for item in store.record_outputs(job_id, outputs("seg", "sr"))] == ["mesh-stl-wt"]
    assert sorted(item.kind for item in store.get_job(job_id).outputs) == ["seg", "sr"]
    assert store.record_outputs(job_id, outputs("seg", "sr")) == [] and len(superseded(store, job_id)) == 1
