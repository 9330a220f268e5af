"""The header check of received bytes (and the file meta written in front of them), on encoded datasets."""

from __future__ import annotations

import random
import struct
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

from neuroseg.listener.file_meta import encode_file_meta
from neuroseg.listener.header_check import (
    InvalidUIDError,
    PixelDataError,
    SOPClassMismatchError,
    UnreadableInstanceError,
    check_uid,
    inspect_instance,
)
from tests.listener.conftest import series_files, split_file

MR = "1.2.840.10008.5.1.4.1.1.4"
EXPLICIT = "1.2.840.10008.1.2.1"


def encode(dataset: Dataset, implicit: bool = False) -> bytes:
    buffer = DicomBytesIO()
    buffer.is_little_endian = True
    buffer.is_implicit_VR = implicit
    write_dataset(buffer, dataset)
    return buffer.getvalue()


def mr_dataset(**changes) -> Dataset:
    dataset = Dataset()
    dataset.SOPClassUID = MR
    dataset.SOPInstanceUID = "1.2.3.4.5"
    dataset.StudyInstanceUID = "1.2.3.4"
    dataset.SeriesInstanceUID = "1.2.3.4.1"
    dataset.Rows = 4
    dataset.Columns = 4
    dataset.SamplesPerPixel = 1
    dataset.BitsAllocated = 16
    dataset.BitsStored = 12
    dataset.PixelData = bytes(32)
    for keyword, value in changes.items():
        if value is None:
            delattr(dataset, keyword)
        else:
            setattr(dataset, keyword, value)
    return dataset


@pytest.mark.parametrize("folder", ["ge-mr750-t1-mprage-axial", "ge-signa-pd-axial-20",
                                    "siemens-prisma-t1-sagittal-prone"])
def test_real_series_pass_the_header_check(shared_data, folder):
    for path in series_files(shared_data, folder)[:5]:
        meta, data = split_file(path)
        header = inspect_instance(data, meta.TransferSyntaxUID, meta.MediaStorageSOPClassUID,
                                  meta.MediaStorageSOPInstanceUID)
        dataset = pydicom.dcmread(path, stop_before_pixels=True)
        assert header.study_instance_uid == dataset.StudyInstanceUID
        assert header.series_instance_uid == dataset.SeriesInstanceUID
        assert header.sop_instance_uid == dataset.SOPInstanceUID


@pytest.mark.parametrize("name", [
    "SC_rgb_dcmtk_+eb+cy+n1.dcm", "JPEG-lossy.dcm", "SC_rgb_jpeg_gdcm.dcm", "MR_small_jpeg_ls_lossless.dcm",
    "JPEG2000.dcm", "GDCMJ2K_TextGBR.dcm", "MR_small_RLE.dcm", "image_dfl.dcm",
    "MR_small_bigendian.dcm", "MR_small_implicit.dcm",
])
def test_every_usual_transfer_syntax_passes_the_header_check(name):
    meta, data = split_file(Path(get_testdata_file(name)))
    header = inspect_instance(data, meta.TransferSyntaxUID, meta.MediaStorageSOPClassUID)
    assert header.transfer_syntax_uid == meta.TransferSyntaxUID


def test_implicit_vr_dataset_passes():
    header = inspect_instance(encode(mr_dataset(), implicit=True), "1.2.840.10008.1.2")
    assert header.sop_instance_uid == "1.2.3.4.5"


@pytest.mark.parametrize("keyword", ["SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID"])
def test_missing_uid_is_refused_naming_it(keyword):
    with pytest.raises(InvalidUIDError, match=f"{keyword} is missing"):
        inspect_instance(encode(mr_dataset(**{keyword: None})), EXPLICIT)


@pytest.mark.parametrize("value", ["../../etc", "1.2.3/../../x", "1.2..3", ".1.2", "1.2.3.", "1" * 65, "1.2.a",
                                   "1.2.3\\4"])
def test_uid_that_could_escape_the_spool_is_refused(value):
    with pytest.raises(InvalidUIDError):
        check_uid(value, "StudyInstanceUID")


def test_uid_with_path_characters_in_a_dataset_is_refused():
    dataset = mr_dataset()
    # written as raw bytes so that no library rejects the value on the way
    raw = encode(dataset).replace(b"1.2.3.4.1\x00", b"../../evil")
    with pytest.raises(InvalidUIDError, match="SeriesInstanceUID '../../evil' is not a UID"):
        inspect_instance(raw, EXPLICIT)


def test_sop_class_differing_from_the_context_is_refused():
    with pytest.raises(SOPClassMismatchError, match="differs from the negotiated SOP class 1.2.840.10008.5.1.4.1.1.2"):
        inspect_instance(encode(mr_dataset()), EXPLICIT, sop_class_uid="1.2.840.10008.5.1.4.1.1.2")


def test_sop_instance_differing_from_the_request_is_refused():
    with pytest.raises(SOPClassMismatchError, match="Affected SOP Instance UID 1.2.9"):
        inspect_instance(encode(mr_dataset()), EXPLICIT, sop_instance_uid="1.2.9")


def test_pixel_data_shorter_than_the_image_attributes_is_refused():
    with pytest.raises(PixelDataError, match=r"holds 30 bytes .* needs 32 \(truncated\)"):
        inspect_instance(encode(mr_dataset(PixelData=bytes(30))), EXPLICIT)


def test_multiframe_pixel_data_counts_every_frame():
    with pytest.raises(PixelDataError, match="NumberOfFrames 3 needs 96"):
        inspect_instance(encode(mr_dataset(NumberOfFrames=3)), EXPLICIT)
    inspect_instance(encode(mr_dataset(NumberOfFrames=3, PixelData=bytes(96))), EXPLICIT)


def test_stream_cut_inside_pixel_data_is_refused(shared_data):
    meta, data = split_file(series_files(shared_data, "siemens-prisma-t1-sagittal-prone")[0])
    with pytest.raises(PixelDataError, match="were received \\(truncated\\)"):
        inspect_instance(data[:-5000], meta.TransferSyntaxUID)


def test_encapsulated_pixel_data_cut_short_is_refused():
    meta, data = split_file(Path(get_testdata_file("MR_small_RLE.dcm")))
    delimiter = data.rindex(b"\xfe\xff\xdd\xe0\x00\x00\x00\x00")
    with pytest.raises(UnreadableInstanceError, match="no sequence delimiter"):
        inspect_instance(data[:delimiter], meta.TransferSyntaxUID)
    with pytest.raises(UnreadableInstanceError, match="item at byte 1178 declares 6108 bytes past the end"):
        inspect_instance(data[:-200], meta.TransferSyntaxUID)


def test_encapsulated_pixel_data_with_fewer_fragments_than_frames_is_refused():
    meta, data = split_file(Path(get_testdata_file("MR_small_RLE.dcm")))
    dataset = pydicom.dcmread(get_testdata_file("MR_small_RLE.dcm"))
    dataset.NumberOfFrames = 2
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_dataset(buffer, dataset)
    with pytest.raises(PixelDataError, match="1 non-empty fragment\\(s\\) for 2 frame\\(s\\)"):
        inspect_instance(buffer.getvalue(), meta.TransferSyntaxUID)


def test_random_bytes_are_not_understood():
    noise = random.Random(20261125).randbytes(4096)
    with pytest.raises(UnreadableInstanceError):
        inspect_instance(noise, EXPLICIT)


def test_empty_dataset_is_not_understood():
    with pytest.raises(UnreadableInstanceError, match="empty"):
        inspect_instance(b"", EXPLICIT)


def test_corrupt_deflate_stream_is_not_understood():
    with pytest.raises(UnreadableInstanceError, match="cannot be inflated"):
        inspect_instance(b"\xff" * 64, "1.2.840.10008.1.2.1.99")


def test_file_meta_matches_pydicom(tmp_path):
    meta_bytes = encode_file_meta(MR, "1.2.3.4.5", EXPLICIT, "1.2.3.4", "NEUROSEG_1", "STORESCU")
    path = tmp_path / "x.dcm"
    path.write_bytes(meta_bytes + encode(mr_dataset()))
    dataset = pydicom.dcmread(path)
    assert dataset.file_meta.MediaStorageSOPInstanceUID == "1.2.3.4.5"
    assert dataset.file_meta.SourceApplicationEntityTitle == "STORESCU"
    assert dataset.file_meta.FileMetaInformationGroupLength == len(meta_bytes) - 132 - 12


def test_element_length_past_the_end_is_not_understood():
    data = encode(mr_dataset())
    bad = data[:6] + struct.pack("<H", 0xFFF0) + data[8:]  # SOPClassUID claims 65520 bytes
    with pytest.raises(UnreadableInstanceError, match="declares 65520 bytes"):
        inspect_instance(bad, EXPLICIT)


def test_unknown_vr_is_not_understood():
    data = encode(mr_dataset())
    rows = data.index(b"\x28\x00\x10\x00US")
    bad = data[:rows + 4] + b"TS" + data[rows + 6:]
    with pytest.raises(UnreadableInstanceError, match=r"\(0028,0010\) at byte \d+ has no valid VR \(b'TS'\)"):
        inspect_instance(bad, EXPLICIT)
