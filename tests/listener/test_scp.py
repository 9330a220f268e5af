"""The DICOM listener against real peers on loopback: DCMTK storescu/echoscu and pynetdicom."""

from __future__ import annotations

import errno
import logging
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, _config
from pynetdicom.sop_class import CTImageStorage, MRImageStorage, Verification

from neuroseg.listener import durable_write
from neuroseg.listener.scp import StoreStatus, TRANSFER_SYNTAXES
from tests.listener.conftest import (
    CALLING_AE,
    REAL_SERIES,
    copy_series,
    series_files,
    split_file,
    spool_path,
    write_raw_file,
)
from tests.services import require_binary

pytestmark = pytest.mark.integration


MR_CONTEXTS = ((MRImageStorage, [ExplicitVRLittleEndian]), (MRImageStorage, [ImplicitVRLittleEndian]))


def associate(listener, calling_ae=CALLING_AE, called_ae="NEUROSEG", contexts=MR_CONTEXTS):
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
    for abstract, syntaxes in contexts:
        if syntaxes is None:
            ae.add_requested_context(abstract)
        else:
            ae.add_requested_context(abstract, syntaxes)
    return ae.associate("127.0.0.1", listener.port, ae_title=called_ae)


@pytest.fixture
def raw_send(monkeypatch):
    """Send files as their raw encoded bytes (pynetdicom reads only the file meta)."""
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)


def test_import_of_the_scp_pulls_in_no_torch_celery_or_sqlalchemy():
    code = ("import sys, neuroseg.listener.scp, neuroseg.listener.service; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'celery', 'sqlalchemy', 'kombu'}))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_echoscu_gets_success(listener):
    result = subprocess.run(
        [require_binary("echoscu"), "-aet", CALLING_AE, "-aec", "NEUROSEG", "127.0.0.1", str(listener.port)],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("name", REAL_SERIES)
def test_storescu_directory_push_lands_in_the_spool_with_identical_pixel_data(listener, shared_data, name):
    files = series_files(shared_data, name)
    result = subprocess.run(
        [require_binary("storescu"), "-aet", CALLING_AE, "-aec", "NEUROSEG", "127.0.0.1", str(listener.port),
         "+sd", str(files[0].parent)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert len(list(listener.spool.instance_files())) == len(files)
    for path in files:
        source = pydicom.dcmread(path)
        stored = pydicom.dcmread(spool_path(listener, source))
        assert stored.PixelData == source.PixelData
        assert stored.file_meta.SourceApplicationEntityTitle == CALLING_AE


def test_pynetdicom_push_is_stored_byte_for_byte(listener, shared_data, raw_send):
    files = series_files(shared_data, "siemens-prisma-t1-sagittal-prone")
    assoc = associate(listener)
    assert assoc.is_established
    statuses = [assoc.send_c_store(path).Status for path in files]
    assoc.release()
    assert statuses == [0x0000] * len(files)
    for path in files:
        meta, data = split_file(path)
        _, stored = split_file(spool_path(listener, pydicom.dcmread(path, stop_before_pixels=True)))
        assert stored == data  # the dataset as sent, never re-encoded


def test_stored_files_are_valid_part10_files(listener, shared_data, raw_send):
    path = series_files(shared_data, "ge-mr750-t1-mprage-axial")[0]
    assoc = associate(listener)
    assert assoc.send_c_store(path).Status == 0
    assoc.release()
    stored = spool_path(listener, pydicom.dcmread(path, stop_before_pixels=True))
    result = subprocess.run([require_binary("dcmftest"), str(stored)], capture_output=True, text=True)
    assert result.stdout.startswith("yes:"), result.stdout


COMPRESSED = {
    "JPEG baseline": "SC_rgb_dcmtk_+eb+cy+n1.dcm",
    "JPEG extended": "JPEG-lossy.dcm",
    "JPEG lossless": "SC_rgb_jpeg_gdcm.dcm",
    "JPEG-LS lossless": "MR_small_jpeg_ls_lossless.dcm",
    "JPEG 2000": "JPEG2000.dcm",
    "JPEG 2000 lossless": "GDCMJ2K_TextGBR.dcm",
    "RLE": "MR_small_RLE.dcm",
    "deflate": "image_dfl.dcm",
    "big endian": "MR_small_bigendian.dcm",
    "implicit": "MR_small_implicit.dcm",
}


@pytest.mark.parametrize("name", list(COMPRESSED.values()), ids=list(COMPRESSED))
def test_compressed_transfer_syntaxes_are_stored_as_received(listener, raw_send, name):
    path = Path(get_testdata_file(name))
    meta, data = split_file(path)
    assert meta.TransferSyntaxUID in TRANSFER_SYNTAXES
    assoc = associate(listener, contexts=((meta.MediaStorageSOPClassUID, [meta.TransferSyntaxUID]),))
    assert assoc.is_established
    assert assoc.send_c_store(path).Status == 0
    assoc.release()
    stored = spool_path(listener, pydicom.dcmread(path, stop_before_pixels=True))
    stored_meta, stored_data = split_file(stored)
    assert stored_meta.TransferSyntaxUID == meta.TransferSyntaxUID
    assert stored_data == data


def test_enhanced_mr_is_accepted(listener):
    from pynetdicom.sop_class import EnhancedMRImageStorage

    assoc = associate(listener, contexts=((EnhancedMRImageStorage, None), (Verification, None)))
    assert assoc.is_established
    accepted = {context.abstract_syntax for context in assoc.accepted_contexts}
    assoc.release()
    assert EnhancedMRImageStorage in accepted


def test_non_dicom_bytes_get_cannot_understand(listener, tmp_path, raw_send):
    noise = random.Random(7).randbytes(20000)
    path = write_raw_file(tmp_path, noise, MRImageStorage, "1.2.826.0.1.3680043.10.1.1")
    assoc = associate(listener)
    assert assoc.send_c_store(path).Status == StoreStatus.CANNOT_UNDERSTAND
    assoc.release()
    assert list(listener.spool.instance_files()) == []


def _broken_copy(shared_data, tmp_path, **changes) -> Path:
    source = series_files(shared_data, "siemens-prisma-t1-sagittal-prone")[0]
    dataset = pydicom.dcmread(source)
    for keyword, value in changes.items():
        if value is None:
            delattr(dataset, keyword)
        else:
            setattr(dataset, keyword, value)
    buffer = pydicom.filebase.DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    pydicom.filewriter.write_dataset(buffer, dataset)
    return write_raw_file(tmp_path, buffer.getvalue(), MRImageStorage,
                          changes.get("SOPInstanceUID") or "1.2.826.0.1.3680043.10.1.2")


@pytest.mark.parametrize("keyword", ["SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"])
def test_missing_uid_gets_invalid_uid_status(listener, shared_data, tmp_path, raw_send, keyword):
    changes = {keyword: None}
    if keyword != "SOPInstanceUID":
        changes["SOPInstanceUID"] = "1.2.826.0.1.3680043.10.1.2"
    path = _broken_copy(shared_data, tmp_path, **changes)
    assoc = associate(listener)
    assert assoc.send_c_store(path).Status == StoreStatus.INVALID_UID
    assoc.release()
    assert list(listener.spool.instance_files()) == []


def test_uid_with_path_characters_writes_nothing_outside_the_spool(listener, shared_data, tmp_path, raw_send):
    path = _broken_copy(shared_data, tmp_path, SOPInstanceUID="1.2.826.0.1.3680043.10.1.2")
    raw = path.read_bytes()
    series_uid = pydicom.dcmread(path, stop_before_pixels=True).SeriesInstanceUID
    evil = "../../../escaped".ljust(len(series_uid), "x")[: len(series_uid)]
    path.write_bytes(raw.replace(series_uid.encode(), evil.encode()))
    assoc = associate(listener)
    assert assoc.send_c_store(path).Status == StoreStatus.INVALID_UID
    assoc.release()
    data_dir = listener.settings.data_dir
    assert [p for p in data_dir.parent.rglob("*escaped*")] == []
    assert list(listener.spool.instance_files()) == []


def test_dataset_of_another_sop_class_gets_a900(listener, shared_data, tmp_path, raw_send):
    path = _broken_copy(shared_data, tmp_path, SOPInstanceUID="1.2.826.0.1.3680043.10.1.2",
                        SOPClassUID=CTImageStorage)
    assoc = associate(listener)
    assert assoc.send_c_store(path).Status == StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS
    assoc.release()


def test_truncated_pixel_data_gets_c002(listener, shared_data, tmp_path, raw_send):
    source = series_files(shared_data, "siemens-prisma-t1-sagittal-prone")[0]
    meta, data = split_file(source)
    path = write_raw_file(tmp_path, data[:-4000], meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID)
    short = _broken_copy(shared_data, tmp_path, SOPInstanceUID="1.2.826.0.1.3680043.10.1.3",
                         PixelData=bytes(1000))
    assoc = associate(listener)
    assert assoc.send_c_store(path).Status == StoreStatus.INVALID_PIXEL_DATA
    assert assoc.send_c_store(short).Status == StoreStatus.INVALID_PIXEL_DATA
    assoc.release()
    assert list(listener.spool.instance_files()) == []


def test_unknown_calling_ae_is_rejected_and_logged_with_peer_address(listener, caplog):
    caplog.set_level(logging.WARNING, logger="neuroseg.listener.scp")
    assoc = associate(listener, calling_ae="INTRUDER")
    assert assoc.is_rejected
    assert any("association rejected calling_ae=INTRUDER peer=127.0.0.1:" in record.getMessage()
               and "NEUROSEG_ALLOWED_CALLING_AES" in record.getMessage() for record in caplog.records)


def test_wrong_called_ae_is_rejected(listener, caplog):
    caplog.set_level(logging.WARNING, logger="neuroseg.listener.scp")
    assoc = associate(listener, called_ae="SOMEONE_ELSE")
    assert assoc.is_rejected
    assert any("called AE title 'SOMEONE_ELSE' is not ours" in record.getMessage() for record in caplog.records)


def test_empty_allow_list_accepts_any_calling_ae(start_listener):
    listener = start_listener(allowed_calling_aes=[])
    assoc = associate(listener, calling_ae="ANYONE", contexts=((Verification, None),))
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0
    assoc.release()


def test_full_disk_gets_a700_and_keeps_what_was_acknowledged(listener, shared_data, monkeypatch, raw_send):
    files = series_files(shared_data, "siemens-prisma-t1-sagittal-prone")[:4]
    assoc = associate(listener)
    assert assoc.send_c_store(files[0]).Status == 0
    listener.spool.wait_for_files()
    real_write = durable_write.write_new_file

    def full(path, parts, durable):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(durable_write, "write_new_file", full)
    # durable in the journal (its blocks were allocated at start): Success; its file is written behind
    assert assoc.send_c_store(files[1]).Status == 0
    deadline = time.monotonic() + 10
    while listener.spool._write_behind.failure is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert listener.spool._write_behind.failure is not None
    with pytest.raises(OSError, match="No space left"):
        listener.spool.checkpoint()  # the journal keeps the record the spool file lacks
    assert assoc.send_c_store(files[2]).Status == StoreStatus.OUT_OF_RESOURCES
    monkeypatch.setattr(durable_write, "write_new_file", real_write)
    deadline = time.monotonic() + 10
    while True:  # the writer tries again every second
        try:
            listener.spool.wait_for_files()
            break
        except OSError:
            assert time.monotonic() < deadline, "the file written behind never reached the spool"
            time.sleep(0.1)
    assert assoc.send_c_store(files[2]).Status == 0  # the peer's retry succeeds once there is room
    assoc.release()
    stored = {path.stem for path in listener.spool.instance_files()}
    assert stored == {pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID for path in files[:3]}


def test_peer_aborting_mid_association_loses_nothing_acknowledged(listener, shared_data, raw_send):
    files = series_files(shared_data, "siemens-prisma-t1-sagittal-prone")
    assoc = associate(listener)
    acknowledged = [path for path in files[:6] if assoc.send_c_store(path).Status == 0]
    assoc.abort()
    # a peer that drops the TCP connection in the middle of a PDU
    with socket.create_connection(("127.0.0.1", listener.port)) as raw:
        raw.sendall(b"\x01\x00\x00\x00\x10\x00garbage")
    assert len(acknowledged) == 6
    for path in acknowledged:
        source = pydicom.dcmread(path)
        assert pydicom.dcmread(spool_path(listener, source)).PixelData == source.PixelData
    again = associate(listener, contexts=((Verification, None),))  # still serving
    assert again.send_c_echo().Status == 0
    again.release()


def test_duplicate_push_is_stored_once_and_acknowledged(listener, shared_data, raw_send):
    path = series_files(shared_data, "siemens-prisma-t1-sagittal-prone")[0]
    assoc = associate(listener)
    assert [assoc.send_c_store(path).Status for _ in range(3)] == [0, 0, 0]
    assoc.release()
    assert len(list(listener.spool.instance_files())) == 1


def test_two_peers_at_once(listener, shared_data, tmp_path, raw_send):
    import threading

    series = [series_files(shared_data, "siemens-prisma-t1-sagittal-prone")[:8],
              copy_series(series_files(shared_data, "siemens-prisma-t1-sagittal-prone")[:8], tmp_path / "copy", "copy")]
    statuses: list[int] = []

    def push(files):
        assoc = associate(listener)
        statuses.extend(assoc.send_c_store(path).Status for path in files)
        assoc.release()

    threads = [threading.Thread(target=push, args=(files,)) for files in series]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses == [0] * 16
    assert len(list(listener.spool.instance_files())) == 16


def test_stop_lets_the_open_association_finish(start_listener, shared_data, raw_send):
    import threading

    listener = start_listener()
    files = series_files(shared_data, "siemens-prisma-t1-sagittal-prone")[:10]
    assoc = associate(listener)
    first = assoc.send_c_store(files[0]).Status
    stopper = threading.Thread(target=listener.stop, kwargs={"drain_seconds": 20})
    stopper.start()
    rest = [assoc.send_c_store(path).Status for path in files[1:]]
    assoc.release()
    stopper.join(30)
    assert [first, *rest] == [0] * 10
    assert not stopper.is_alive()
    assert len(list(listener.spool.instance_files())) == 10
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", listener.settings.port), timeout=1).close()


def _make_certificates(folder: Path) -> dict[str, Path]:
    openssl = require_binary("openssl")
    folder.mkdir(parents=True, exist_ok=True)
    paths = {name: folder / name for name in ("ca.key", "ca.pem", "server.key", "server.pem", "client.key",
                                               "client.pem")}
    run = lambda *args: subprocess.run([openssl, *args], check=True, capture_output=True)  # noqa: E731
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(paths["ca.key"]), "-out",
        str(paths["ca.pem"]), "-days", "2", "-subj", "/CN=neuroseg test CA")
    for name in ("server", "client"):
        csr = folder / f"{name}.csr"
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(paths[f"{name}.key"]), "-out", str(csr),
            "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1")
        run("x509", "-req", "-in", str(csr), "-CA", str(paths["ca.pem"]), "-CAkey", str(paths["ca.key"]),
            "-CAcreateserial", "-out", str(paths[f"{name}.pem"]), "-days", "2", "-copy_extensions", "copy")
    return paths


def test_tls_with_client_certificates(start_listener, tmp_path):
    import ssl

    certs = _make_certificates(tmp_path / "certs")
    listener = start_listener(tls_cert=certs["server.pem"], tls_key=certs["server.key"], tls_ca=certs["ca.pem"])
    client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(certs["ca.pem"]))
    client.load_cert_chain(str(certs["client.pem"]), str(certs["client.key"]))
    ae = AE(ae_title=CALLING_AE)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", listener.port, ae_title="NEUROSEG", tls_args=(client, "localhost"))
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0
    assoc.release()
    anonymous = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(certs["ca.pem"]))
    refused = ae.associate("127.0.0.1", listener.port, ae_title="NEUROSEG", tls_args=(anonymous, "localhost"))
    assert not refused.is_established
    plain = ae.associate("127.0.0.1", listener.port, ae_title="NEUROSEG")
    assert not plain.is_established


def test_missing_tls_file_is_named(make_settings, tmp_path):
    from neuroseg.listener.scp import build_ssl_context

    settings = make_settings(tls_cert=tmp_path / "nope.pem", tls_key=tmp_path / "nope.key")
    with pytest.raises(ValueError, match="NEUROSEG_TLS_CERT=.*nope.pem: the file does not exist"):
        build_ssl_context(settings)


@pytest.mark.parametrize(("level", "handlers"), [(logging.WARNING, "none"), (logging.INFO, "standard")])
def test_pynetdicom_event_logging_runs_only_when_its_lines_are_shown(make_settings, monkeypatch, level, handlers):
    from neuroseg.listener.scp import build_ae

    monkeypatch.setattr(_config, "LOG_HANDLER_LEVEL", _config.LOG_HANDLER_LEVEL)  # restored after the test
    pynetdicom_log = logging.getLogger("pynetdicom")
    previous = pynetdicom_log.level
    pynetdicom_log.setLevel(level)  # setLevel, not the attribute: it clears logging's level cache
    try:
        build_ae(make_settings())
    finally:
        pynetdicom_log.setLevel(previous)
    assert _config.LOG_HANDLER_LEVEL == handlers


def test_decisions_are_passed_to_the_event_sink(start_listener, shared_data, tmp_path, raw_send):
    events: list[tuple[str, str, str]] = []
    listener = start_listener(on_event=lambda *event: events.append(event))
    assert associate(listener, calling_ae="INTRUDER").is_rejected
    noise = write_raw_file(tmp_path, random.Random(3).randbytes(512), MRImageStorage, "1.2.826.0.1.3680043.10.1.9")
    assoc = associate(listener)
    assert assoc.send_c_store(noise).Status == StoreStatus.CANNOT_UNDERSTAND
    assoc.release()
    kinds = [kind for kind, _, _ in events]
    assert kinds[:3] == ["association-rejected", "association-accepted", "instance-refused"]
    assert "INTRUDER" in events[0][1]
    assert events[2][1].startswith("0xC000 CANNOT_UNDERSTAND")


def test_a_failing_event_sink_never_affects_storage(start_listener, shared_data, raw_send):
    def broken(*event):
        raise RuntimeError("job store down")

    listener = start_listener(on_event=broken)
    assoc = associate(listener)
    assert assoc.send_c_store(series_files(shared_data, "siemens-prisma-t1-sagittal-prone")[0]).Status == 0
    assoc.release()
