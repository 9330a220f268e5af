"""Fuzzing the two places where outside bytes enter neuroseg: the listener's
C-STORE handler and the worker's study loading, with mutated real DICOM files
(bit flips, truncation, tag deletion, wrong VRs, bad lengths, garbage values).

Per CI run: 8,500 cases through the real C-STORE handler in-process, 1,500
mutated series through loading, and 250 mutated instances over real
associations (test_fuzz_network.py): 10,250 cases. Each case must finish within
its time limit (no hang), never raise (no crash), and an instance answered
Success must be in the spool byte for byte (no accepted-then-lost instance).
"""

from __future__ import annotations

import shutil
import tempfile
import warnings
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from pydicom.uid import ImplicitVRLittleEndian

from neuroseg.listener.scp import StoreStatus, handle_store
from neuroseg.listener.file_meta import encode_file_meta
from neuroseg.listener.spool import Spool
from neuroseg.worker.contracts import SequenceRole, SeriesManifest
from neuroseg.worker.errors import InputError
from neuroseg.worker.loading import load_series
from tests.reliability.fuzzing import FuzzTally, files_under, hang_guard, scratch_root, store_event
from tests.reliability.mutations import MutatedInstance, MutatedSeries, mutated_instances, mutated_series, seeds

STORE_CASES = 8_500
LOADING_CASES = 1_500
CASE_SECONDS = 20.0
FAILURE_STATUSES = {int(status) for status in StoreStatus} - {StoreStatus.SUCCESS, StoreStatus.PROCESSING_FAILURE}

FUZZ_SETTINGS = dict(
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)


@pytest.fixture(scope="module")
def scratch() -> Path:
    folder = Path(tempfile.mkdtemp(prefix="neuroseg-fuzz-", dir=scratch_root()))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_mutations_start_from_real_files_in_both_little_endian_syntaxes():
    syntaxes = {seed.transfer_syntax_uid for seed in seeds()}
    assert ImplicitVRLittleEndian in syntaxes and len(syntaxes) == 2
    assert all(seed.elements[-1].tag == 0x7FE00010 for seed in seeds()), "every seed ends with its pixel data"


def test_store_handler_survives_mutated_instances(scratch, ledger):
    tally = FuzzTally()

    @settings(max_examples=STORE_CASES, **FUZZ_SETTINGS)
    @given(case=mutated_instances())
    def check(case: MutatedInstance) -> None:
        tally.cases += 1
        root = Path(tempfile.mkdtemp(dir=scratch))
        spool = Spool(root, journal_bytes=1 << 20)
        try:
            check_one_store(case, spool, root, tally)
        finally:
            spool.close()  # its journal's file descriptor, or hundreds of cases exhaust the process's
            shutil.rmtree(root, ignore_errors=True)

    check()
    ledger.add(fuzz_cases=tally.cases, instances=tally.accepted)
    assert tally.cases == STORE_CASES
    # the mutations must not be so gentle that everything passes, nor so rough that nothing does
    assert tally.accepted > STORE_CASES * 0.05 and tally.refused > STORE_CASES * 0.3, tally


def check_one_store(case: MutatedInstance, spool: Spool, root: Path, tally: FuzzTally) -> None:
    seed = case.seed
    event = store_event(case.dataset, seed.transfer_syntax_uid, seed.sop_class_uid, seed.sop_instance_uid)
    with hang_guard(CASE_SECONDS, f"C-STORE of {case.description}"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        status = handle_store(event, spool)
    assert status != StoreStatus.PROCESSING_FAILURE, f"handler hit an unexpected error on {case.description}"
    spool.wait_for_files()  # an acknowledged instance's file is written behind
    stored = files_under(root)
    if status == StoreStatus.SUCCESS:
        tally.accepted += 1
        assert len(stored) == 1, f"Success but {len(stored)} files in the spool for {case.description}"
        (path,) = stored.values()
        assert path.name == f"{seed.sop_instance_uid}.dcm"
        expected = encode_file_meta(seed.sop_class_uid, seed.sop_instance_uid, seed.transfer_syntax_uid,
                                    _implementation_uid(path), _implementation_version(), "FUZZER")
        content = path.read_bytes()
        assert content[len(expected):] == case.dataset, f"stored bytes differ from the sent data set: {case.description}"
        # a second copy is acknowledged and stored once
        assert handle_store(event, spool) == StoreStatus.SUCCESS
        spool.wait_for_files()
        assert files_under(root).keys() == stored.keys() and path.read_bytes() == content
    else:
        tally.refused += 1
        assert status in FAILURE_STATUSES, f"status 0x{status:04X} for {case.description}"
        assert not stored, f"refused (0x{status:04X}) but left {sorted(stored)} for {case.description}"


def _implementation_uid(path: Path) -> str:
    from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID

    return PYNETDICOM_IMPLEMENTATION_UID


def _implementation_version() -> str:
    from pynetdicom import PYNETDICOM_IMPLEMENTATION_VERSION

    return PYNETDICOM_IMPLEMENTATION_VERSION


def test_loading_survives_mutated_series(scratch, ledger):
    tally = FuzzTally()

    @settings(max_examples=LOADING_CASES, **FUZZ_SETTINGS)
    @given(case=mutated_series())
    def check(case: MutatedSeries) -> None:
        tally.cases += 1
        folder = Path(tempfile.mkdtemp(dir=scratch))
        try:
            for number, content in enumerate(case.files):
                (folder / f"{number:04d}.dcm").write_bytes(content)
            manifest = SeriesManifest(series_instance_uid="1.2.3.4", folder=str(folder), role=SequenceRole.FLAIR,
                                      confidence=1.0, reasons=("fuzz",), instance_count=len(case.files))
            with hang_guard(CASE_SECONDS, f"loading {case.description}"), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    volume = load_series(manifest)
                except InputError as exc:
                    tally.input_errors += 1
                    assert str(exc), "an InputError must say why"
                    return
            tally.loaded += 1
            assert volume.array.shape[0] == len(case.files)
            assert volume.affine.shape == (4, 4)
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    check()
    ledger.add(fuzz_cases=tally.cases)
    assert tally.cases == LOADING_CASES
    assert tally.loaded > LOADING_CASES * 0.05 and tally.input_errors > LOADING_CASES * 0.05, tally
