"""Enhanced (multi-frame) MR series through the loader and the pipeline.

The multi-frame test files are built from classic single-frame series with
highdicom's legacy converter (``highdicom.legacy.LegacyConvertedEnhancedMRImage``):
one file per series, every slice a frame with its plane position in the
per-frame functional groups, as an Enhanced MR file from a current scanner
keeps them. The real Enhanced MR file in the shared data is checked against
dcm2niix in ``tests/worker/test_loading.py``.
"""

from __future__ import annotations

import copy

import highdicom as hd
import numpy as np
import pydicom
import pytest

from neuroseg.dicom_out.mr_series import StudyIdentity, build_mr_series
from neuroseg.model.enhanced import frame_stacks
from neuroseg.worker import pipeline
from neuroseg.worker.jobstore import ClaimOutcome, JobStore
from neuroseg.worker.loading import series_to_volume
from tests.dicom_out.dciodvfy import assert_dciodvfy_clean
from tests.worker.helpers import axial_affine, build_study
from tests.worker.test_loading import oblique_affine


def legacy_converted(datasets: list, series_number: int = 90) -> pydicom.Dataset:
    """One Legacy Converted Enhanced MR image of ``datasets`` (highdicom), with the classic series' UID."""
    return hd.legacy.LegacyConvertedEnhancedMRImage(
        legacy_datasets=list(datasets), series_instance_uid=str(datasets[0].SeriesInstanceUID),
        series_number=series_number, sop_instance_uid=hd.UID(), instance_number=1)


def sagittal_affine(spacing=(2.5, 1.5, 1.5), origin=(-20.0, -30.0, 40.0)) -> np.ndarray:
    """Sagittal slices: rows run head to foot, columns posterior, slices along the normal (to the right)."""
    affine = np.eye(4)
    affine[:3, 0] = [-spacing[0], 0, 0]
    affine[:3, 1] = [0, 0, -spacing[1]]
    affine[:3, 2] = [0, spacing[2], 0]
    affine[:3, 3] = origin
    return affine


def two_stack_file():
    """A sagittal stack of 7 slices and an axial stack of 4 in one multi-frame file (a localizer beside the scan).

    Built with highdicom's legacy converter from two classic series of one
    study and frame of reference; the converter keeps each frame's orientation.
    """
    identity = StudyIdentity(uid_seed="two-stacks")
    sagittal = np.random.default_rng(1).integers(0, 1000, size=(7, 16, 20)).astype(np.int16)
    axial = np.random.default_rng(2).integers(0, 1000, size=(4, 16, 20)).astype(np.int16)
    main = [copy.deepcopy(ds) for ds in build_mr_series(sagittal, sagittal_affine(), study=identity,
                                                        series_number=5, role="T1")]
    localizer = [copy.deepcopy(ds) for ds in build_mr_series(axial, axial_affine(spacing=(5.0, 1.5, 1.5)),
                                                             study=identity, series_number=6, role="T1")]
    for ds in localizer:  # one series, one frame of reference, as in one acquisition
        ds.SeriesInstanceUID = main[0].SeriesInstanceUID
        ds.FrameOfReferenceUID = main[0].FrameOfReferenceUID
        ds.InstanceNumber = int(ds.InstanceNumber) + 100
    return legacy_converted(localizer[:2] + main[::-1] + localizer[2:]), sagittal


def test_oblique_multiframe_matches_its_single_frame_series():
    identity = StudyIdentity(uid_seed="oblique-enhanced")
    volume = np.random.default_rng(3).integers(0, 1000, size=(6, 16, 20)).astype(np.int16)
    datasets = build_mr_series(volume, oblique_affine(), study=identity, series_number=3, role="FLAIR")
    classic = series_to_volume(datasets)
    enhanced = series_to_volume([legacy_converted([copy.deepcopy(ds) for ds in datasets][::-1])])
    np.testing.assert_array_equal(enhanced.array, classic.array)
    np.testing.assert_allclose(enhanced.affine, classic.affine, atol=1e-3)
    assert enhanced.notes == []


def test_two_stacks_in_one_file_give_the_larger_stack_with_a_note():
    enhanced, sagittal = two_stack_file()
    stacks = frame_stacks(enhanced)
    assert [len(stack) for stack in stacks] == [7, 4]
    loaded = series_to_volume([enhanced])
    np.testing.assert_array_equal(loaded.array, sagittal)
    np.testing.assert_allclose(loaded.affine, sagittal_affine(), atol=1e-3)
    assert sorted(loaded.frame_numbers) == sorted(stacks[0].frame_numbers)
    assert len(loaded.notes) == 1 and "2 stacks" in loaded.notes[0] and "4 frame(s)" in loaded.notes[0]


def test_predict_reads_a_multiframe_folder_as_the_loader_does(tmp_path):
    from neuroseg.model.io import read_dicom_folder

    enhanced, sagittal = two_stack_file()
    enhanced.save_as(tmp_path / "enhanced.dcm", enforce_file_format=True)
    array, affine = read_dicom_folder(tmp_path)
    loaded = series_to_volume([pydicom.dcmread(tmp_path / "enhanced.dcm")])
    np.testing.assert_array_equal(array, loaded.array)
    np.testing.assert_allclose(affine, loaded.affine, atol=1e-6)


@pytest.mark.parametrize("enhanced_role", ["FLAIR", "T1ce"])
def test_a_study_with_an_enhanced_series_goes_through_the_pipeline(tmp_path, make_settings, tiny_checkpoint,
                                                                    enhanced_role):
    """An Enhanced FLAIR is an input sequence; an Enhanced T1ce is also the reference series.

    Every SEG and Parametric Map frame references a slice of the reference
    (a frame number of the Enhanced file when it is the reference), and every
    output passes dciodvfy.
    """

    def to_enhanced(label: str, datasets: list) -> list:
        return [legacy_converted(datasets[::-1])] if label == enhanced_role else datasets

    study = build_study(tmp_path / "spool", f"enhanced-{enhanced_role}", roles=("T1ce", "FLAIR"),
                        damage=to_enhanced)
    reference = study.series["T1ce"]
    slices = len(reference) if enhanced_role != "T1ce" else int(reference[0].NumberOfFrames)
    settings = make_settings(model_path=tiny_checkpoint, mc_samples=2)
    store = JobStore.from_settings(settings)
    job_id, _ = store.create_job(study.manifest())
    assert store.claim(job_id, worker="test:1").outcome is ClaimOutcome.CLAIMED
    assert pipeline.run_job(store, job_id, settings) == "done"
    detail = store.get_job(job_id)
    assert sorted(detail.sequences_used) == ["flair", "t1ce"]
    encoded = pipeline.job_folder(settings, job_id) / "dicom"
    reference_uids = {str(ds.SOPInstanceUID) for ds in reference}
    seen = set()
    for output in detail.outputs:
        path = encoded / f"{output.kind}.dcm"
        ds = pydicom.dcmread(path)
        if output.kind == "seg" or output.kind.startswith("pmap-"):
            items = [item for frame in ds.PerFrameFunctionalGroupsSequence
                     for derivation in frame.get("DerivationImageSequence", [])
                     for item in derivation.SourceImageSequence]
            assert {str(item.ReferencedSOPInstanceUID) for item in items} == reference_uids, output.kind
            if enhanced_role == "T1ce":
                assert {int(item.ReferencedFrameNumber) for item in items} == set(range(1, slices + 1))
            assert (int(ds.Rows), int(ds.Columns)) == (int(reference[0].Rows), int(reference[0].Columns))
            seen.add(output.kind.split("-")[0])
        assert_dciodvfy_clean(path)
    assert seen == {"seg", "pmap"}


def test_the_real_enhanced_file_is_the_reference_of_every_object(shared_data, tmp_path):
    """The Siemens XA30 file keeps pixel measures and orientation per frame; the objects still reference its frames."""
    from neuroseg.dicom_out import EncodeOptions, EncodeRequest, encode_study

    path = next((shared_data / "real-dicom" / "siemens-xa30-enhanced-t1w").glob("*.dcm"))
    volume = series_to_volume([pydicom.dcmread(path)])
    labels = np.zeros(volume.array.shape, np.uint8)
    labels[40:52, 50:70, 50:70] = 2
    labels[44:48, 56:64, 56:64] = 4
    probability = (labels > 0).astype(np.float32)
    request = EncodeRequest(
        reference_series=volume.datasets, reference_frames=volume.frame_numbers, labels=labels,
        model_name="test-model", model_version="0", probabilities={"ncr": probability * 0, "ed": probability,
                                                                   "et": probability},
        entropy=probability * 0.1, sequences_used=("t1ce",), reference_role="T1ce",
        options=EncodeOptions(series_tag="test"))
    assert request.grid_shape == (96, 128, 128)
    np.testing.assert_allclose(request.reference_affine(), volume.affine, atol=1e-4)
    objects = encode_study(request)
    kinds = {item.kind for item in objects}
    assert {"seg", "sr"} <= kinds and any(kind.startswith("pmap-") for kind in kinds)
    for item in objects:
        out = tmp_path / f"{item.kind}.dcm"
        item.dataset.save_as(out, enforce_file_format=True)
        if item.kind == "seg":
            frames = item.dataset.PerFrameFunctionalGroupsSequence
            references = [(str(source.ReferencedSOPInstanceUID), int(source.ReferencedFrameNumber))
                          for frame in frames for source in frame.DerivationImageSequence[0].SourceImageSequence]
            assert {uid for uid, _ in references} == {str(volume.datasets[0].SOPInstanceUID)}
            assert {number for _, number in references} == set(range(1, 97))
            # a frame on slice k references the frame of slice k
            for frame, (_, number) in zip(frames[:96], references[:96]):
                position = [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient]
                source = volume.datasets[0].PerFrameFunctionalGroupsSequence[number - 1]
                np.testing.assert_allclose(position, [float(v) for v in
                                                      source.PlanePositionSequence[0].ImagePositionPatient], atol=1e-3)
        assert_dciodvfy_clean(out)


def test_orientation_jitter_within_the_tolerance_keeps_one_stack():
    """Per-frame cosines that differ in the 4th decimal, across a rounding boundary, are one stack; 20 degrees is another."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    def frame(cosines):
        item, plane = Dataset(), Dataset()
        plane.ImageOrientationPatient = list(cosines)
        item.PlaneOrientationSequence = Sequence([plane])
        return item

    ds = Dataset()
    jittered = [[1, 0.00499 + 0.00002 * k, 0, 0, 1, 0] for k in range(6)]
    tilted = [[1, 0, 0, 0, np.cos(np.radians(20)), np.sin(np.radians(20))]] * 2
    ds.NumberOfFrames = 8
    ds.PerFrameFunctionalGroupsSequence = Sequence([frame(c) for c in jittered + tilted])
    assert [stack.frame_numbers for stack in frame_stacks(ds)] == [(1, 2, 3, 4, 5, 6), (7, 8)]


@pytest.mark.slow
@pytest.mark.integration
def test_neuroseg_serve_takes_an_enhanced_t1ce_and_answers_on_its_frames(tmp_path, make_settings):
    """Pushed over C-STORE into ``neuroseg serve``: the Enhanced T1ce file is the reference of the results.

    Sent with pynetdicom: DCMTK storescu does not propose the Legacy Converted
    Enhanced MR SOP class by default, and skips such a file.
    """
    from pynetdicom import AE

    from neuroseg.worker.jobstore import JobStore
    from tests.services import wait_for
    from tests.worker.helpers import wait_for_state
    from tests.worker.serve_helpers import ServeProcess

    def send(folder, port: int) -> None:
        files = sorted(path for path in folder.rglob("*.dcm"))
        datasets = [pydicom.dcmread(path) for path in files]
        ae = AE(ae_title="STORESCU")
        for sop_class in {str(ds.SOPClassUID) for ds in datasets}:
            ae.add_requested_context(sop_class, [str(datasets[0].file_meta.TransferSyntaxUID)])
        association = ae.associate("127.0.0.1", port, ae_title="NEUROSEG")
        assert association.is_established
        try:
            for ds in datasets:
                assert association.send_c_store(ds).Status == 0x0000
        finally:
            association.release()

    def to_enhanced(label: str, datasets: list) -> list:
        return [legacy_converted(datasets[::-1])] if label == "T1ce" else datasets

    data_dir = tmp_path / "data"
    study = build_study(tmp_path / "send", "serve-enhanced", roles=("T1ce", "FLAIR"), damage=to_enhanced)
    enhanced = study.series["T1ce"][0]
    serve = ServeProcess(data_dir, tmp_path / "serve.log").start(timeout=120)
    try:
        send(tmp_path / "send", serve.port)
        settings = make_settings(data_dir=data_dir)
        store = JobStore.from_settings(settings)
        wait_for(lambda: bool(store.list_jobs(study_instance_uid=study.study_instance_uid)), 120,
                 "the listener to hand the study to the queue")
        job = store.list_jobs(study_instance_uid=study.study_instance_uid)[0]
        assert wait_for_state(store, job.id, 300) == "done", store.get_job(job.id).error
        outbox = settings.outbox_dir / study.study_instance_uid
        seg = pydicom.dcmread(outbox / "seg.dcm", stop_before_pixels=True)
        items = [item for frame in seg.PerFrameFunctionalGroupsSequence
                 for item in frame.DerivationImageSequence[0].SourceImageSequence]
        detail = store.get_job(job.id)
        if {str(item.ReferencedSOPInstanceUID) for item in items} != {str(enhanced.SOPInstanceUID)}:
            pytest.fail(f"the SEG is not on the Enhanced T1ce: {detail!r}"[:3000])
        assert {int(item.ReferencedFrameNumber) for item in items} == set(range(1, int(enhanced.NumberOfFrames) + 1))
        for path in sorted(outbox.glob("*.dcm")):
            assert_dciodvfy_clean(path)
    finally:
        status = serve.stop()
    assert status == 0, serve.log()[-3000:]
