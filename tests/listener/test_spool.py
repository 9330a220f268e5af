"""The spool: atomic durable writes, duplicates, group commit of folder flushes, recovery."""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path

import pytest

from neuroseg.listener import durable_write
from neuroseg.listener import spool as spool_module
from neuroseg.listener.header_check import InstanceHeader
from neuroseg.listener.spool import Spool

MR = "1.2.840.10008.5.1.4.1.1.4"
EXPLICIT = "1.2.840.10008.1.2.1"


def _header(sop="1.2.3.4.5", series="1.2.3.4.1", study="1.2.3.4"):
    return InstanceHeader(MR, sop, study, series, EXPLICIT)


def test_store_writes_the_file_at_its_uid_path(tmp_path):
    spool = Spool(tmp_path / "spool")
    stored = spool.store(_header(), [b"abc", b"def"])
    spool.wait_for_files()
    assert stored.path == tmp_path / "spool" / "1.2.3.4" / "1.2.3.4.1" / "1.2.3.4.5.dcm"
    assert stored.path.read_bytes() == b"abcdef"
    assert stored.created and stored.new_study
    assert not [name for name in os.listdir(stored.path.parent) if name.endswith(".tmp")]


def test_duplicate_sop_instance_is_stored_once(tmp_path):
    spool = Spool(tmp_path / "spool")
    spool.store(_header(), [b"first"])
    again = spool.store(_header(), [b"second"])
    elsewhere = spool.store(_header(series="1.2.3.4.2"), [b"third"])
    spool.wait_for_files()
    assert not again.created and not elsewhere.created
    assert again.path.read_bytes() == b"first"
    assert len(list(spool.instance_files())) == 1


def test_duplicates_are_found_after_a_restart(tmp_path):
    first = Spool(tmp_path / "spool")
    first.store(_header(), [b"first"])
    first.close()
    assert not Spool(tmp_path / "spool").store(_header(), [b"second"]).created


def test_concurrent_duplicates_are_stored_once(tmp_path):
    spool = Spool(tmp_path / "spool")
    results = []
    threads = [threading.Thread(target=lambda i=i: results.append(spool.store(_header(), [bytes([i]) * 1000])))
               for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(result.created for result in results) == 1
    spool.wait_for_files()
    assert len(list((tmp_path / "spool" / "1.2.3.4" / "1.2.3.4.1").iterdir())) == 1


def test_store_without_a_journal_flushes_file_and_folder(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(durable_write.os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    Spool(tmp_path / "spool", journal_bytes=0).store(_header(), [b"x"])
    # the file, the series folder, and the three new folders' parents
    assert len(synced) >= 2


def test_failed_write_leaves_nothing_at_the_final_name(tmp_path, monkeypatch):
    spool = Spool(tmp_path / "spool", journal_bytes=0)  # written on the caller's thread

    def full_disk(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(durable_write.os, "write", full_disk)
    with pytest.raises(OSError, match="No space left"):
        spool.store(_header(), [b"x"])
    monkeypatch.undo()
    assert list(spool.instance_files()) == []
    assert [path for path in (tmp_path / "spool").rglob("*") if path.is_file() and path.parent.name != ".journal"] == []
    assert spool.store(_header(), [b"x"]).created  # a retry after the failure stores it


def test_recover_removes_unfinished_temporary_files(tmp_path):
    spool = Spool(tmp_path / "spool")
    stored = spool.store(_header(), [b"x"])
    spool.wait_for_files()
    leftover = stored.path.parent / ".1.2.3.4.6.dcm.abcdef.tmp"
    leftover.write_bytes(b"half")
    assert Spool(tmp_path / "spool").recover() == 1
    assert not leftover.exists() and stored.path.exists()


def test_spool_lists_studies_series_and_instances(tmp_path):
    spool = Spool(tmp_path / "spool")
    spool.store(_header(), [b"x"])
    spool.store(_header(sop="1.2.3.4.6", series="1.2.3.4.2"), [b"y"])
    spool.wait_for_files()
    (tmp_path / "spool" / "1.2.3.4" / ".study.json").write_text("{}")
    assert spool.studies() == ["1.2.3.4"]
    assert [path.name for path in spool.series_dirs("1.2.3.4")] == ["1.2.3.4.1", "1.2.3.4.2"]
    assert [path.name for path in spool.instances(spool.series_dirs("1.2.3.4")[0])] == ["1.2.3.4.5.dcm"]


def test_store_recreates_folders_removed_by_retention(tmp_path):
    import shutil

    spool = Spool(tmp_path / "spool")
    spool.store(_header(), [b"x"])
    spool.wait_for_files()
    shutil.rmtree(tmp_path / "spool" / "1.2.3.4")
    again = spool.store(_header(sop="1.2.3.4.6"), [b"y"])
    spool.wait_for_files()
    assert again.created and again.path.read_bytes() == b"y"


def test_concurrent_stores_share_folder_flushes_but_none_returns_before_its_own(tmp_path, monkeypatch):
    """Group commit: a flush that began after a file's rename must end before its store returns."""
    import time

    flushes: list[tuple[float, float]] = []
    renames: dict[str, float] = {}
    real_flush, real_replace = durable_write.fsync_directory, spool_module.os.replace

    def slow_flush(path):
        started = time.monotonic()
        time.sleep(0.02)
        real_flush(path)
        flushes.append((started, time.monotonic()))

    def timed_replace(source, target):
        real_replace(source, target)
        renames[Path(target).stem] = time.monotonic()

    spool = Spool(tmp_path / "spool", journal_bytes=0)  # the two-flush path
    spool.store(_header("1.2.3.4.900"), [b"x"])  # make the folders first
    monkeypatch.setattr(durable_write, "fsync_directory", slow_flush)
    monkeypatch.setattr(spool_module.os, "replace", timed_replace)
    returned: dict[str, float] = {}

    def store(index: int) -> None:
        uid = f"1.2.3.4.{1000 + index}"
        spool.store(_header(uid), [b"y" * 100])
        returned[uid] = time.monotonic()

    threads = [threading.Thread(target=store, args=(index,)) for index in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(returned) == 12
    for uid, done in returned.items():
        assert any(start >= renames[uid] and end <= done for start, end in flushes), uid
    assert len(flushes) < 12  # shared


# --- files written behind the journal (write_behind) -------------------------------------

def test_store_returns_before_its_file_is_written_and_a_checkpoint_waits_for_it(tmp_path, monkeypatch):
    gate = threading.Event()
    real_write = durable_write.write_new_file

    def gated_write(path, parts, durable):
        gate.wait(10)
        real_write(path, parts, durable)

    spool = Spool(tmp_path / "spool")
    monkeypatch.setattr(durable_write, "write_new_file", gated_write)
    stored = spool.store(_header(), [b"abc"])
    assert stored.created and not stored.path.exists()  # durable in the journal only
    assert not spool.store(_header(), [b"again"]).created  # a duplicate while its file is pending
    checkpointed = threading.Event()
    checkpoint = threading.Thread(target=lambda: (spool.checkpoint(), checkpointed.set()))
    checkpoint.start()
    assert not checkpointed.wait(0.3)  # a checkpoint discards records: it waits for the file
    gate.set()
    checkpoint.join(10)
    assert checkpointed.is_set() and stored.path.read_bytes() == b"abc"
    spool.close()


def test_a_file_that_cannot_be_written_behind_stays_in_the_journal_and_later_instances_are_refused(
        tmp_path, monkeypatch):
    import time

    spool = Spool(tmp_path / "spool")

    def full_disk(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(durable_write.os, "write", full_disk)
    stored = spool.store(_header(), [b"x"])  # durable: the journal's blocks were allocated when it was made
    deadline = time.monotonic() + 10
    while spool._write_behind.failure is None:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    with pytest.raises(OSError, match="No space left"):
        spool.store(_header(sop="1.2.3.4.6"), [b"y"])  # A700 to the peer, which sends it again later
    with pytest.raises(OSError, match="No space left"):
        spool.checkpoint()  # the record is the only copy: the journal is not emptied
    assert not [path for path in stored.path.parent.iterdir() if path.name.endswith(".tmp")]
    monkeypatch.undo()
    while True:  # the writer tries again every second
        try:
            spool.wait_for_files()
            break
        except OSError:
            assert time.monotonic() < deadline + 10
            time.sleep(0.1)
    assert stored.path.read_bytes() == b"x"
    assert spool.store(_header(sop="1.2.3.4.6"), [b"y"]).created
    spool.close()


def test_an_instance_whose_record_fails_leaves_no_file(tmp_path, monkeypatch):
    from neuroseg.listener.journal import IntakeJournal

    spool = Spool(tmp_path / "spool")
    real_append = IntakeJournal.append

    def failing_append(self, name, parts):
        spool.wait_for_files()  # its file is written first, so the cancel must remove it
        raise OSError(errno.EIO, "flush failed")

    monkeypatch.setattr(IntakeJournal, "append", failing_append)
    with pytest.raises(OSError, match="flush failed"):
        spool.store(_header(), [b"x"])
    monkeypatch.setattr(IntakeJournal, "append", real_append)
    assert list(spool.instance_files()) == []
    assert spool.store(_header(), [b"x"]).created  # the peer's retry is stored, not taken for a duplicate
    spool.close()
