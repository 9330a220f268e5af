"""Delivery over C-STORE to a real pynetdicom SCP on loopback, and the outbox."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE, evt
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from neuroseg.dicom_out import DeliveryUnavailable, EncodeOptions, Peer, deliver, encode_study, write_outbox
from neuroseg.dicom_out.enum import DeliveryStatus
from neuroseg.dicom_out.send import VERIFICATION, echo, load_objects
from tests.dicom_out.synthetic import synthetic_study
from tests.services import free_port

ENCAPSULATED_STL = "1.2.840.10008.5.1.4.1.1.104.3"
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"


@pytest.fixture(scope="module")
def objects():
    study = synthetic_study((6, 24, 24))
    return encode_study(study.request(EncodeOptions(maps={"probability"}, mesh_formats={"stl"})))


class RecordingPacs:
    """A pynetdicom SCP that stores what it accepts and can refuse by SOP class."""

    def __init__(self, sop_classes: set[str], refuse_with: dict[str, int] | None = None,
                 require_called_ae: bool = False, ssl_context=None,
                 transfer_syntaxes: tuple[str, ...] = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)) -> None:
        self.received: list[str] = []
        self.received_bytes: dict[str, bytes] = {}
        self.associations: set[int] = set()
        self.refuse_with = refuse_with or {}
        self.ae = AE(ae_title="TESTPACS")
        self.ae.require_called_aet = require_called_ae
        for uid in sop_classes:
            self.ae.add_supported_context(uid, list(transfer_syntaxes))
        self.ae.add_supported_context(VERIFICATION)
        self.server = self.ae.start_server(("127.0.0.1", 0), block=False, ssl_context=ssl_context,
                                           evt_handlers=[(evt.EVT_C_STORE, self.handle_store)])
        self.port = self.server.server_address[1]

    def handle_store(self, event) -> int:
        sop_class = str(event.request.AffectedSOPClassUID)
        if sop_class in self.refuse_with:
            return self.refuse_with[sop_class]
        self.received.append(str(event.request.AffectedSOPInstanceUID))
        self.associations.add(id(event.assoc))
        self.received_bytes[self.received[-1]] = event.request.DataSet.getvalue()
        return 0x0000

    def stop(self) -> None:
        self.server.shutdown()


@pytest.fixture
def pacs_factory() -> Iterator:
    started: list[RecordingPacs] = []

    def start(**kwargs) -> RecordingPacs:
        pacs = RecordingPacs(**kwargs)
        started.append(pacs)
        return pacs

    yield start
    for pacs in started:
        pacs.stop()


def test_every_object_is_stored(objects, pacs_factory) -> None:
    pacs = pacs_factory(sop_classes={obj.sop_class_uid for obj in objects})
    results = deliver(objects, Peer("TESTPACS", "127.0.0.1", pacs.port, timeout=10))
    assert [result.kind for result in results] == [obj.kind for obj in objects]
    assert all(result.outcome is DeliveryStatus.SUCCESS and result.status == 0 for result in results)
    assert pacs.received == [obj.sop_instance_uid for obj in objects]


def test_several_associations_share_the_objects_and_the_results_keep_their_order(objects, pacs_factory,
                                                                                 tmp_path) -> None:
    written = write_outbox(objects, tmp_path / "out")
    pacs = pacs_factory(sop_classes={obj.sop_class_uid for obj in objects},
                        transfer_syntaxes=(DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian))
    seen = []
    results = deliver(written, Peer("TESTPACS", "127.0.0.1", pacs.port, timeout=10), associations=2,
                      on_result=seen.append)
    assert [result.sop_instance_uid for result in results] == [obj.sop_instance_uid for obj in written]
    assert all(result.outcome is DeliveryStatus.SUCCESS for result in results)
    assert sorted(pacs.received) == sorted(obj.sop_instance_uid for obj in written)
    assert len(pacs.associations) == 2 and len(seen) == len(written)
    # no peer: every association fails, and nothing was recorded
    with pytest.raises(DeliveryUnavailable) as raised:
        deliver(written, Peer("TESTPACS", "127.0.0.1", free_port(), timeout=2), associations=2)
    assert raised.value.results == []


def test_a_pacs_that_allows_one_association_still_gets_every_object(objects, pacs_factory, tmp_path) -> None:
    written = write_outbox(objects, tmp_path / "out")
    pacs = pacs_factory(sop_classes={obj.sop_class_uid for obj in objects})
    pacs.ae.maximum_associations = 1
    results = deliver(written, Peer("TESTPACS", "127.0.0.1", pacs.port, timeout=10), associations=2)
    assert [result.sop_instance_uid for result in results] == [obj.sop_instance_uid for obj in written]
    assert all(result.outcome is DeliveryStatus.SUCCESS for result in results)
    assert sorted(pacs.received) == sorted(obj.sop_instance_uid for obj in written)


def test_shares_balance_the_decoded_size_and_keep_the_order(objects) -> None:
    from neuroseg.dicom_out.send import _decoded_bytes, _shares

    shares = _shares(objects, 2)
    assert len(shares) == 2 and sorted(i for share in shares for i, _ in share) == list(range(len(objects)))
    assert all([i for i, _ in share] == sorted(i for i, _ in share) for share in shares)
    largest = sorted(range(len(objects)), key=lambda i: -_decoded_bytes(objects[i]))[:2]
    assert {i for i, _ in shares[0]} & set(largest) and {i for i, _ in shares[1]} & set(largest)
    assert len(_shares(objects[:1], 4)) == 1


def test_a_written_object_is_sent_as_its_file_not_encoded_again(objects, pacs_factory, tmp_path, monkeypatch) -> None:
    import pynetdicom.association
    from pynetdicom.dsutils import split_dataset

    written = write_outbox(objects, tmp_path / "out")
    assert any(obj.dataset.file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian for obj in written)
    own_syntaxes = {str(obj.dataset.file_meta.TransferSyntaxUID) for obj in written}
    pacs = pacs_factory(sop_classes={obj.sop_class_uid for obj in objects},
                        transfer_syntaxes=(*sorted(own_syntaxes), ExplicitVRLittleEndian))

    def no_encoding(*args, **kwargs):
        raise AssertionError("a written object was encoded again")

    monkeypatch.setattr(pynetdicom.association, "encode", no_encoding)
    results = deliver(written, Peer("TESTPACS", "127.0.0.1", pacs.port, timeout=10))
    assert all(result.outcome is DeliveryStatus.SUCCESS for result in results), [r.message for r in results]
    for obj in written:
        _, offset = split_dataset(obj.path)
        assert pacs.received_bytes[obj.sop_instance_uid] == obj.path.read_bytes()[offset:]
    monkeypatch.undo()
    # a peer that does not take a file's own transfer syntax gets the data set converted, as before
    plain = pacs_factory(sop_classes={obj.sop_class_uid for obj in objects})
    results = deliver(written, Peer("TESTPACS", "127.0.0.1", plain.port, timeout=10))
    assert all(result.outcome is DeliveryStatus.SUCCESS for result in results)
    assert sorted(plain.received) == sorted(obj.sop_instance_uid for obj in written)


def test_a_sop_class_the_pacs_does_not_support_fails_alone(objects, pacs_factory) -> None:
    pacs = pacs_factory(sop_classes={obj.sop_class_uid for obj in objects} - {ENCAPSULATED_STL})
    results = deliver(objects, Peer("TESTPACS", "127.0.0.1", pacs.port, timeout=10))
    failed = [result for result in results if not result.ok]
    assert {result.kind for result in failed} == {obj.kind for obj in objects if obj.sop_class_uid == ENCAPSULATED_STL}
    assert all(result.status is None and "did not accept SOP class 1.2.840.10008.5.1.4.1.1.104.3" in result.message
               for result in failed)
    assert pacs.received == [obj.sop_instance_uid for obj in objects if obj.sop_class_uid != ENCAPSULATED_STL]


def test_a_failure_status_is_recorded_and_the_rest_still_go(objects, pacs_factory) -> None:
    pacs = pacs_factory(sop_classes={obj.sop_class_uid for obj in objects},
                        refuse_with={COMPREHENSIVE_3D_SR: 0xA700})
    results = deliver(objects, Peer("TESTPACS", "127.0.0.1", pacs.port, timeout=10))
    sr = next(result for result in results if result.kind == "sr")
    assert sr.outcome is DeliveryStatus.FAILURE and sr.status == 0xA700
    assert sr.message.startswith("refused with status 0xA700")
    assert sr.to_dict()["status"] == "0xA700"
    assert len(pacs.received) == len(objects) - 1


def test_a_warning_status_counts_as_stored(objects, pacs_factory) -> None:
    pacs = pacs_factory(sop_classes={obj.sop_class_uid for obj in objects},
                        refuse_with={COMPREHENSIVE_3D_SR: 0xB000})
    results = deliver(objects, Peer("TESTPACS", "127.0.0.1", pacs.port, timeout=10))
    sr = next(result for result in results if result.kind == "sr")
    assert sr.outcome is DeliveryStatus.WARNING and sr.ok


def test_no_listener_raises_delivery_unavailable(objects) -> None:
    port = free_port()
    with pytest.raises(DeliveryUnavailable, match=f"cannot deliver to TESTPACS@127.0.0.1:{port}"):
        deliver(objects, Peer("TESTPACS", "127.0.0.1", port, timeout=5))


def test_a_rejected_association_raises_delivery_unavailable(objects, pacs_factory) -> None:
    pacs = pacs_factory(sop_classes={obj.sop_class_uid for obj in objects}, require_called_ae=True)
    with pytest.raises(DeliveryUnavailable, match="association rejected"):
        deliver(objects, Peer("WRONGAE", "127.0.0.1", pacs.port, timeout=5))


def test_echo_times_an_answering_peer_and_gives_none_for_a_silent_one(pacs_factory) -> None:
    pacs = pacs_factory(sop_classes=set(), require_called_ae=True)
    assert 0 < echo(Peer("TESTPACS", "127.0.0.1", pacs.port, timeout=5)) < 5
    assert echo(Peer("WRONGAE", "127.0.0.1", pacs.port, timeout=5)) is None
    assert echo(Peer("TESTPACS", "127.0.0.1", free_port(), timeout=2)) is None


def test_each_result_is_reported_as_it_comes_and_hidden_files_are_not_sent(objects, pacs_factory, tmp_path) -> None:
    folder = tmp_path / "files"
    write_outbox(objects[:3], folder)
    (folder / ".partial.dcm").write_bytes((folder / f"{objects[0].kind}.dcm").read_bytes())
    loaded = load_objects([folder])
    assert sorted(obj.kind for obj in loaded) == sorted(obj.kind for obj in objects[:3])
    pacs = pacs_factory(sop_classes={obj.sop_class_uid for obj in loaded})
    seen = []
    results = deliver(loaded, Peer("TESTPACS", "127.0.0.1", pacs.port, timeout=10), on_result=seen.append)
    assert seen == results and all(result.ok for result in results) and len(pacs.received) == 3


def test_tls_with_a_client_certificate(pacs_factory, tmp_path) -> None:
    import ssl

    from neuroseg.dicom_out.send import client_tls_context
    from tests.listener.test_scp import _make_certificates
    from tests.worker.test_delivery import some_objects

    certs = _make_certificates(tmp_path / "certs")
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(certs["ca.pem"]))
    server.verify_mode = ssl.CERT_REQUIRED
    server.load_cert_chain(str(certs["server.pem"]), str(certs["server.key"]))
    objects = some_objects("tls")
    pacs = pacs_factory(sop_classes={obj.sop_class_uid for obj in objects}, ssl_context=server)
    tls = client_tls_context(certs["ca.pem"], certs["client.pem"], certs["client.key"])
    results = deliver(objects, Peer("TESTPACS", "127.0.0.1", pacs.port, timeout=10, tls=tls,
                                         tls_server_name="localhost"))
    assert all(result.ok for result in results) and len(pacs.received) == len(objects)
    assert echo(Peer("TESTPACS", "127.0.0.1", pacs.port, tls=tls, tls_server_name="localhost"))
    assert echo(Peer("TESTPACS", "127.0.0.1", pacs.port, timeout=3)) is None, "plain TCP is refused"
    without_certificate = client_tls_context(certs["ca.pem"])
    with pytest.raises(DeliveryUnavailable):
        deliver(objects, Peer("TESTPACS", "127.0.0.1", pacs.port, timeout=5, tls=without_certificate,
                              tls_server_name="localhost"))


def test_compressed_objects_go_decompressed_to_a_peer_without_their_compression(objects, pacs_factory) -> None:
    compressed = [obj for obj in objects if obj.dataset.file_meta.TransferSyntaxUID.is_compressed]
    assert compressed, "the encoders compress some objects (Parametric Maps, key images)"
    pacs = pacs_factory(sop_classes={obj.sop_class_uid for obj in compressed})  # little-endian only
    results = deliver(compressed, Peer("TESTPACS", "127.0.0.1", pacs.port, timeout=10))
    assert all(result.outcome is DeliveryStatus.SUCCESS for result in results)
    assert pacs.received == [obj.sop_instance_uid for obj in compressed], "same UIDs: lossless, the same objects"
    assert all(obj.dataset.file_meta.TransferSyntaxUID.is_compressed for obj in compressed), "originals untouched"


def test_delivering_nothing_opens_no_association() -> None:
    assert deliver([], Peer("X", "127.0.0.1", 1)) == []


def test_outbox_writes_each_object_atomically_and_replaces_on_rewrite(objects, tmp_path: Path) -> None:
    folder = tmp_path / "outbox" / "study"
    paths = [obj.path for obj in write_outbox(objects, folder)]
    assert [path.name for path in paths] == [f"{obj.kind}.dcm" for obj in objects]
    assert [obj.path for obj in write_outbox(objects, folder)] == paths
    assert sorted(folder.iterdir()) == sorted(paths), "no temporary files left behind"
    for obj, path in zip(objects, paths):
        assert pydicom.dcmread(path).SOPInstanceUID == obj.sop_instance_uid
    loaded = load_objects([folder])
    assert sorted(obj.sop_instance_uid for obj in loaded) == sorted(obj.sop_instance_uid for obj in objects)


def test_written_objects_are_copied_to_another_outbox_not_encoded_again(objects, tmp_path: Path, monkeypatch) -> None:
    written = write_outbox(objects, tmp_path / "job")

    def no_encoding(*args, **kwargs):
        raise AssertionError("a written object was encoded again")

    monkeypatch.setattr(pydicom, "dcmwrite", no_encoding)
    copied = write_outbox(written, tmp_path / "outbox")
    assert [obj.path.parent for obj in copied] == [tmp_path / "outbox"] * len(written)
    for before, after in zip(written, copied):
        assert after.path.read_bytes() == before.path.read_bytes()
    again = write_outbox(copied, tmp_path / "outbox")  # onto itself: the files stay as they are
    assert all(obj.path.is_file() for obj in again)
    assert not [p for p in (tmp_path / "outbox").iterdir() if p.name.startswith(".")]


def test_rewriting_the_outbox_with_fewer_kinds_removes_the_ones_no_longer_made(objects, tmp_path: Path) -> None:
    folder = tmp_path / "outbox" / "study"
    write_outbox(objects, folder)
    (folder / "notes.txt").write_text("not ours to remove")
    kept = [obj for obj in objects if not obj.kind.startswith("pmap-")]  # maps switched off since
    assert len(kept) < len(objects)
    paths = [obj.path for obj in write_outbox(kept, folder)]
    assert sorted(folder.glob("*.dcm")) == sorted(paths)
    assert sorted(obj.sop_instance_uid for obj in load_objects([folder])) == \
        sorted(obj.sop_instance_uid for obj in kept)
    assert (folder / "notes.txt").is_file()
