"""The intake journal: one flush per instance, checkpoints, and replay after a crash or a power loss."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from neuroseg.listener import journal as journal_module
from neuroseg.listener.header_check import InstanceHeader
from neuroseg.listener.journal import JOURNAL_DIR, IntakeJournal, read_records
from neuroseg.listener.spool import Spool

MR = "1.2.840.10008.5.1.4.1.1.4"
EXPLICIT = "1.2.840.10008.1.2.1"


def _header(sop: str, series: str = "1.2.3.4.1", study: str = "1.2.3.4") -> InstanceHeader:
    return InstanceHeader(MR, sop, study, series, EXPLICIT)


def _journal_files(spool_root: Path) -> list[Path]:
    return sorted((spool_root / JOURNAL_DIR).glob("*.journal"))


def test_records_read_back_in_order_and_a_torn_last_record_is_ignored(tmp_path):
    journal = IntakeJournal(tmp_path / "j", segment_bytes=1 << 20).open()
    journal.append("a/b/1.dcm", [b"head", b"-body"])
    journal.append("a/b/2.dcm", [b"second"])
    assert list(read_records(journal.path)) == [("a/b/1.dcm", b"head-body"), ("a/b/2.dcm", b"second")]
    # a crash in the middle of the second record's write: its bytes are half there
    data = bytearray(journal.path.read_bytes())
    start = data.index(b"second")
    data[start + 3:start + 6] = b"\0\0\0"
    journal.path.write_bytes(bytes(data))
    assert list(read_records(journal.path)) == [("a/b/1.dcm", b"head-body")]


def test_a_checkpoint_empties_the_journal_and_old_records_are_never_replayed(tmp_path):
    journal = IntakeJournal(tmp_path / "j", segment_bytes=1 << 20).open()
    journal.append("a/b/1.dcm", [b"one"])
    assert journal.checkpoint(older_than=3600) is False  # too young
    assert journal.checkpoint() is True
    # the old record's bytes are still in the file, but of the previous generation
    assert b"one" in journal.path.read_bytes()
    assert list(read_records(journal.path)) == []
    journal.append("a/b/2.dcm", [b"two"])
    assert list(read_records(journal.path)) == [("a/b/2.dcm", b"two")]
    assert journal.checkpoint() is True and journal.checkpoint() is False  # nothing new


def test_one_flush_per_instance_and_no_fsync_of_files_or_folders(tmp_path, monkeypatch):
    spool = Spool(tmp_path / "spool")
    spool.open_journal()
    spool.store(_header("1.2.3.4.5"), [b"x"])  # folders made
    fsyncs, datasyncs = [], []
    real_fsync, real_fdatasync = os.fsync, os.fdatasync
    monkeypatch.setattr(os, "fsync", lambda fd: (fsyncs.append(fd), real_fsync(fd)))
    monkeypatch.setattr(os, "fdatasync", lambda fd: (datasyncs.append(fd), real_fdatasync(fd)))
    for index in range(5):
        spool.store(_header(f"1.2.3.4.{10 + index}"), [b"y" * 1000])
    assert fsyncs == [] and len(datasyncs) == 5


def test_the_journal_fills_then_checkpoints_and_keeps_going(tmp_path, monkeypatch):
    syncs = []
    real = journal_module.sync_file_system
    monkeypatch.setattr(journal_module, "sync_file_system", lambda fd: (syncs.append(fd), real(fd)))
    spool = Spool(tmp_path / "spool", journal_bytes=4096 + 3 * 1100)
    for index in range(10):
        spool.store(_header(f"1.2.3.4.{10 + index}"), [b"z" * 1000])
    assert len(syncs) == 3  # full after every third instance
    assert len(list(read_records(_journal_files(tmp_path / "spool")[0]))) == 1
    assert sorted(path.read_bytes() for path in spool.instance_files()) == [b"z" * 1000] * 10


def test_an_instance_larger_than_the_journal_is_flushed_the_two_flush_way(tmp_path, monkeypatch):
    spool = Spool(tmp_path / "spool", journal_bytes=8192)
    spool.store(_header("1.2.3.4.5"), [b"x"])
    fsyncs = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (fsyncs.append(fd), real_fsync(fd)))
    stored = spool.store(_header("1.2.3.4.6"), [b"L" * 20000])
    assert stored.path.read_bytes() == b"L" * 20000
    assert len(fsyncs) >= 2  # the file and its folder
    assert [name for name, _ in read_records(_journal_files(tmp_path / "spool")[0])] == ["1.2.3.4/1.2.3.4.1/1.2.3.4.5.dcm"]


def test_concurrent_associations_share_flushes_and_every_record_checks(tmp_path, monkeypatch):
    datasyncs = []
    real_fdatasync = os.fdatasync
    monkeypatch.setattr(os, "fdatasync", lambda fd: (datasyncs.append(fd), real_fdatasync(fd)))
    spool = Spool(tmp_path / "spool")
    spool.open_journal()
    datasyncs.clear()

    def send(association: int) -> None:
        for index in range(25):
            spool.store(_header(f"1.2.3.{association}.{index}", series=f"1.2.3.{association}"),
                        [bytes([association]) * 5000])

    threads = [threading.Thread(target=send, args=(association,)) for association in range(1, 5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    records = list(read_records(_journal_files(tmp_path / "spool")[0]))
    assert len(records) == 100 and len({name for name, _ in records}) == 100
    assert len(datasyncs) <= 100


_CRASHING_LISTENER = """
import os, sys, threading
from neuroseg.listener import durable_write
from neuroseg.listener.header_check import InstanceHeader
from neuroseg.listener.spool import Spool
if sys.argv[2] == "pending":  # the write-behind thread never gets to write a file
    durable_write.write_new_file = lambda path, parts, durable: threading.Event().wait()
spool = Spool(sys.argv[1])
for index in range(20):
    uid = f"1.2.3.4.{100 + index}"
    spool.store(InstanceHeader("1.2.840.10008.5.1.4.1.1.4", uid, "1.2.3.4", "1.2.3.4.1", "1.2.840.10008.1.2.1"),
                [b"DICM", uid.encode() * 50])
if sys.argv[2] == "written":
    spool.wait_for_files()
os._exit(0)  # like kill -9: no checkpoint, the journal stays
"""


def _crash_after_storing_twenty(root: Path, files: str = "written") -> None:
    """A listener process that acknowledged 20 instances dies; ``files``: "written" or "pending" behind."""
    subprocess.run([sys.executable, "-c", _CRASHING_LISTENER, str(root), files], check=True, timeout=120)


def test_replay_after_a_power_loss_restores_every_acknowledged_instance(tmp_path):
    root = tmp_path / "spool"
    _crash_after_storing_twenty(root)
    files = sorted(Spool(root).instance_files())
    expected = {path.name: path.read_bytes() for path in files}
    assert len(expected) == 20
    # what a power loss can leave of files written but not flushed: gone, empty, zero-filled
    files[0].unlink()
    files[1].write_bytes(b"")
    files[2].write_bytes(bytes(len(expected[files[2].name])))
    recovered = Spool(root)
    recovered.recover()
    assert {path.name: path.read_bytes() for path in recovered.instance_files()} == expected
    assert _journal_files(root) == []  # replayed and removed


def test_a_crashed_process_leaves_every_file_and_replay_changes_nothing(tmp_path, monkeypatch):
    root = tmp_path / "spool"
    _crash_after_storing_twenty(root)
    restores = []
    spool = Spool(root)
    monkeypatch.setattr(spool, "_restore", lambda name, payload: restores.append(name))
    spool.recover()
    assert restores == [] and len(list(spool.instance_files())) == 20


def test_a_crash_before_any_file_was_written_behind_loses_nothing_acknowledged(tmp_path):
    root = tmp_path / "spool"
    _crash_after_storing_twenty(root, files="pending")
    assert list(Spool(root).instance_files()) == []  # only the journal holds them
    recovered = Spool(root)
    recovered.recover()
    assert {path.name: path.read_bytes() for path in recovered.instance_files()} == {
        f"1.2.3.4.{100 + index}.dcm": b"DICM" + f"1.2.3.4.{100 + index}".encode() * 50 for index in range(20)}
    assert _journal_files(root) == []


def test_the_journal_of_a_running_listener_is_not_replayed(tmp_path):
    root = tmp_path / "spool"
    running = Spool(root)
    running.store(_header("1.2.3.4.5"), [b"x"])
    Spool(root).recover()  # a second listener starting on the same spool
    assert len(_journal_files(root)) == 1
    assert list(read_records(_journal_files(root)[0])) == [("1.2.3.4/1.2.3.4.1/1.2.3.4.5.dcm", b"x")]
    running.close()
    assert _journal_files(root) == []


def test_a_failed_journal_write_refuses_the_instance_and_leaves_nothing(tmp_path, monkeypatch):
    spool = Spool(tmp_path / "spool")
    spool.open_journal()

    def broken(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", broken)
    with pytest.raises(OSError, match="Input/output"):
        spool.store(_header("1.2.3.4.5"), [b"x"])
    monkeypatch.undo()
    assert list(spool.instance_files()) == []
    assert spool.store(_header("1.2.3.4.5"), [b"x"]).created  # the peer's retry is stored


def test_a_disk_without_room_for_the_journal_still_stores_durably(tmp_path, monkeypatch):
    def no_space(self):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(IntakeJournal, "open", no_space)
    fsyncs = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (fsyncs.append(fd), real_fsync(fd)))
    spool = Spool(tmp_path / "spool")
    assert spool.open_journal() is None
    stored = spool.store(_header("1.2.3.4.5"), [b"x"])
    assert stored.created and stored.path.read_bytes() == b"x"
    assert len(fsyncs) >= 2  # the file and its folder
