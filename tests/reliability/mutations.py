"""Hypothesis strategies that mutate real DICOM files (bit flips, truncation,
tag deletion, wrong VRs, bad lengths, garbage values) for the fuzz tests.

The seeds are real scanner files from ``../shared/data/real-dicom`` read at
test time. Each seed is indexed once: where its data set starts (after the
preamble and file meta) and where each top-level element's header and value
lie, so mutations can aim at element boundaries and not only at random bytes.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import pydicom
from hypothesis import strategies as st
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from tests.services import SHARED_DATA

REAL_DICOM = SHARED_DATA / "real-dicom"
SEED_SERIES = ("ge-mr750-t1-mprage-axial", "ge-signa-pd-axial-20", "siemens-prisma-t1-sagittal-prone")
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
VRS = [b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT", b"OB", b"OD", b"OF",
       b"OL", b"OW", b"PN", b"SH", b"SL", b"SQ", b"SS", b"ST", b"TM", b"UC", b"UI", b"UL", b"UN", b"UR", b"US",
       b"UT", b"ZZ", b"\x00\x00", b"\xff\xfe"]


@dataclass(frozen=True)
class Element:
    """Offsets of one top-level element of a data set, relative to the data set's start."""

    tag: int
    start: int          # first byte of the tag
    vr_offset: int      # first byte of the VR (explicit VR only; -1 otherwise)
    length_offset: int  # first byte of the length field
    length_size: int    # 2 or 4
    value_offset: int
    length: int


@dataclass(frozen=True, eq=False)  # identity hash: hypothesis hashes what it samples
class Seed:
    """A real DICOM file split into preamble + file meta and the data set, with its element index."""

    name: str
    head: bytes      # preamble, "DICM" and the file meta group, as in the file
    dataset: bytes   # the data set as a peer sends it in a C-STORE
    transfer_syntax_uid: str
    sop_class_uid: str
    sop_instance_uid: str
    elements: tuple[Element, ...]

    @property
    def file_bytes(self) -> bytes:
        return self.head + self.dataset


def index_elements(dataset: bytes, implicit: bool) -> tuple[Element, ...]:
    """Top-level elements of a little-endian data set (undefined-length sequences skipped over)."""
    elements, offset = [], 0
    while offset + 8 <= len(dataset):
        group, number = struct.unpack_from("<HH", dataset, offset)
        tag = (group << 16) | number
        if implicit:
            (length,) = struct.unpack_from("<I", dataset, offset + 4)
            vr_offset, length_offset, length_size, value_offset = -1, offset + 4, 4, offset + 8
        else:
            vr = dataset[offset + 4:offset + 6]
            vr_offset = offset + 4
            if vr in _LONG_VRS:
                (length,) = struct.unpack_from("<I", dataset, offset + 8)
                length_offset, length_size, value_offset = offset + 8, 4, offset + 12
            else:
                (length,) = struct.unpack_from("<H", dataset, offset + 6)
                length_offset, length_size, value_offset = offset + 6, 2, offset + 8
        if length == 0xFFFFFFFF:
            end = _skip_undefined(dataset, value_offset)
            if end is None:
                break
            elements.append(Element(tag, offset, vr_offset, length_offset, length_size, value_offset, end - value_offset))
            offset = end
            continue
        elements.append(Element(tag, offset, vr_offset, length_offset, length_size, value_offset, length))
        offset = value_offset + length
    return tuple(elements)


def _skip_undefined(dataset: bytes, offset: int) -> int | None:
    """End of an undefined-length value (after its sequence delimiter), by scanning for it."""
    marker = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    found = dataset.find(marker, offset)
    return None if found < 0 else found + len(marker)


def _split(data: bytes, name: str) -> Seed:
    buffer = io.BytesIO(data)
    ds = pydicom.dcmread(buffer, stop_before_pixels=True)
    meta_buffer = io.BytesIO(data)
    pydicom.filereader.read_preamble(meta_buffer, False)
    pydicom.filereader._read_file_meta_info(meta_buffer)
    head_length = meta_buffer.tell()
    transfer_syntax = str(ds.file_meta.TransferSyntaxUID)
    dataset = data[head_length:]
    return Seed(name=name, head=data[:head_length], dataset=dataset, transfer_syntax_uid=transfer_syntax,
                sop_class_uid=str(ds.SOPClassUID), sop_instance_uid=str(ds.SOPInstanceUID),
                elements=index_elements(dataset, implicit=transfer_syntax == ImplicitVRLittleEndian))


def _implicit_copy(path: Path) -> bytes:
    """The same instance re-encoded in Implicit VR Little Endian (the other common syntax)."""
    ds = pydicom.dcmread(path)
    for tag in [tag for tag in ds.keys() if tag.group == 0]:  # some GE files carry command elements
        del ds[tag]
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    buffer = io.BytesIO()
    ds.save_as(buffer, implicit_vr=True, little_endian=True, enforce_file_format=True)
    return buffer.getvalue()


@lru_cache(maxsize=1)
def seeds() -> tuple[Seed, ...]:
    """Four files of each real series (under 1 MB), plus an Implicit VR copy of one of each."""
    result = []
    for series in SEED_SERIES:
        # brain_001.dcm of the GE PD series carries 2.5 MB of zero padding after its
        # pixel data (311,000 empty elements): a fine edge case, too slow as a seed
        files = sorted(path for path in (REAL_DICOM / series).iterdir() if path.stat().st_size < 1_000_000)
        picks = [files[i * (len(files) - 1) // 3] for i in range(4)]
        for path in picks:
            result.append(_split(path.read_bytes(), f"{series}/{path.name}"))
        result.append(_split(_implicit_copy(picks[0]), f"{series}/{picks[0].name} (implicit VR)"))
    assert all(seed.transfer_syntax_uid in (ExplicitVRLittleEndian, ImplicitVRLittleEndian) for seed in result)
    return tuple(result)


# --- mutations on the encoded data set ------------------------------------------------------
def _pick(draw, items):
    """One of ``items`` by index (cheap: no hashing of the items)."""
    return items[draw(st.integers(0, len(items) - 1))]


def _bit_flips(draw, data: bytearray, seed: Seed) -> str:
    count = draw(st.integers(1, 8))
    # mostly in the header part (before the pixel data), where flips change meaning
    header_end = next((element.start for element in seed.elements if element.tag == 0x7FE00010), len(data))
    for _ in range(count):
        limit = header_end if draw(st.integers(0, 9)) else len(data)
        position = draw(st.integers(0, max(0, limit - 1)))
        data[position] ^= 1 << draw(st.integers(0, 7))
    return f"{count} bit flip(s)"


def _truncate(draw, data: bytearray, seed: Seed) -> str:
    if draw(st.booleans()):
        cut = draw(st.integers(0, len(data)))
    else:
        element = _pick(draw, seed.elements)
        cut = element.value_offset + element.length // 2
    del data[cut:]
    return f"truncated at {cut}"


def _delete_element(draw, data: bytearray, seed: Seed) -> str:
    element = _pick(draw, seed.elements)
    del data[element.start:element.value_offset + element.length]
    return f"deleted ({element.tag >> 16:04X},{element.tag & 0xFFFF:04X})"


def _wrong_vr(draw, data: bytearray, seed: Seed) -> str:
    explicit = [element for element in seed.elements if element.vr_offset >= 0]
    if not explicit:
        return _bad_length(draw, data, seed)
    element = _pick(draw, explicit)
    vr = draw(st.sampled_from(VRS))
    data[element.vr_offset:element.vr_offset + 2] = vr
    return f"VR of ({element.tag >> 16:04X},{element.tag & 0xFFFF:04X}) set to {vr!r}"


def _bad_length(draw, data: bytearray, seed: Seed) -> str:
    element = _pick(draw, seed.elements)
    maximum = 0xFFFF if element.length_size == 2 else 0xFFFFFFFF
    value = draw(st.one_of(st.sampled_from([0, 1, 3, maximum, maximum - 1, element.length + 1, element.length * 2]),
                           st.integers(0, maximum)))
    value = min(value, maximum)
    fmt = "<H" if element.length_size == 2 else "<I"
    struct.pack_into(fmt, data, element.length_offset, value)
    return f"length of ({element.tag >> 16:04X},{element.tag & 0xFFFF:04X}) set to {value}"


def _garbage_value(draw, data: bytearray, seed: Seed) -> str:
    element = _pick(draw, [element for element in seed.elements if 0 < element.length <= 256])
    garbage = draw(st.one_of(
        st.binary(min_size=element.length, max_size=element.length),
        st.sampled_from([b"../" * (element.length // 3) + b"x" * (element.length % 3),
                         b"\x00" * element.length, b"9" * element.length, b"\\" * element.length]),
    ))
    data[element.value_offset:element.value_offset + element.length] = garbage
    return f"value of ({element.tag >> 16:04X},{element.tag & 0xFFFF:04X}) replaced"


# element-aware mutations use the seed's offsets, so at most one runs, first;
# byte-level ones (any number) follow on whatever bytes are left
ELEMENT_MUTATIONS = (_truncate, _delete_element, _wrong_vr, _bad_length, _garbage_value)


def _flip_anywhere(draw, data: bytearray) -> str:
    position = draw(st.integers(0, len(data) - 1))
    data[position] ^= 1 << draw(st.integers(0, 7))
    return f"bit flip at {position}"


def _cut_anywhere(draw, data: bytearray) -> str:
    cut = draw(st.integers(0, len(data)))
    del data[cut:]
    return f"truncated at {cut}"


def _insert_anywhere(draw, data: bytearray) -> str:
    position = draw(st.integers(0, len(data)))
    data[position:position] = draw(st.binary(min_size=1, max_size=16))
    return f"bytes inserted at {position}"


BYTE_MUTATIONS = (_flip_anywhere, _cut_anywhere, _insert_anywhere)


class MutatedInstance:
    """A mutated data set and how it was made (a plain class: hypothesis prints its short repr)."""

    __slots__ = ("seed", "dataset", "description")

    def __init__(self, seed: Seed, dataset: bytes, description: str) -> None:
        self.seed, self.dataset, self.description = seed, dataset, description

    @property
    def file_bytes(self) -> bytes:
        return self.seed.head + self.dataset

    def __repr__(self) -> str:
        return f"MutatedInstance({self.description!r}, {len(self.dataset)} bytes)"


def mutate(draw, seed: Seed, max_byte_mutations: int = 2) -> tuple[bytes, str]:
    """Mutate ``seed``'s data set: an optional element-aware mutation (or a burst
    of bit flips in the header), then up to ``max_byte_mutations`` byte-level
    ones. About one case in seven is left unchanged."""
    data = bytearray(seed.dataset)
    steps = []
    first = draw(st.integers(0, len(ELEMENT_MUTATIONS) + 1))
    if first < len(ELEMENT_MUTATIONS):
        steps.append(ELEMENT_MUTATIONS[first](draw, data, seed))
    elif first == len(ELEMENT_MUTATIONS):
        steps.append(_bit_flips(draw, data, seed))
    for _ in range(draw(st.integers(0, max_byte_mutations))):
        if not data:
            break
        steps.append(draw(st.sampled_from(BYTE_MUTATIONS))(draw, data))
    return bytes(data), "; ".join(steps) or "unchanged"


@st.composite
def mutated_instances(draw, max_byte_mutations: int = 2) -> MutatedInstance:
    """One real instance's data set, mutated by :func:`mutate`."""
    all_seeds = seeds()
    seed = all_seeds[draw(st.integers(0, len(all_seeds) - 1))]
    dataset, description = mutate(draw, seed, max_byte_mutations)
    return MutatedInstance(seed=seed, dataset=dataset, description=f"{seed.name}: {description}")


# --- small real series for the loading fuzz ---------------------------------------------------
SERIES_SLICES = 3
CROP = 32


def _cropped(path: Path) -> bytes:
    """A real slice with its real header, its image cut to the top-left CROP x CROP pixels.

    The top-left pixel keeps its ImagePositionPatient, so the geometry stays true.
    """
    ds = pydicom.dcmread(path)
    for tag in [tag for tag in ds.keys() if tag.group == 0]:
        del ds[tag]
    pixels = ds.pixel_array[:CROP, :CROP].copy()
    ds.Rows, ds.Columns = pixels.shape
    ds.PixelData = pixels.tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@lru_cache(maxsize=1)
def series_seeds() -> tuple[tuple[str, tuple[Seed, ...]], ...]:
    """Three consecutive slices from the middle of each real series, cropped small."""
    result = []
    for series in SEED_SERIES:
        files = sorted(path for path in (REAL_DICOM / series).iterdir() if path.stat().st_size < 1_000_000)
        middle = len(files) // 2
        picks = files[middle:middle + SERIES_SLICES]
        result.append((series, tuple(_split(_cropped(path), f"{series}/{path.name}") for path in picks)))
    return tuple(result)


class MutatedSeries:
    """Whole files of a small series, some mutated (a plain class: hypothesis prints its short repr)."""

    __slots__ = ("name", "files", "description")

    def __init__(self, name: str, files: tuple[bytes, ...], description: str) -> None:
        self.name, self.files, self.description = name, files, description

    def __repr__(self) -> str:
        return f"MutatedSeries({self.description!r})"


@st.composite
def mutated_series(draw) -> MutatedSeries:
    """A real three-slice series with one to three of its files mutated (or none, now and then)."""
    all_series = series_seeds()
    name, slices = all_series[draw(st.integers(0, len(all_series) - 1))]
    files, steps = [], []
    for number, seed in enumerate(slices):
        if draw(st.integers(0, 2)) == 0:
            dataset, description = mutate(draw, seed)
            steps.append(f"slice {number}: {description}")
            files.append(seed.head + dataset)
        else:
            files.append(seed.file_bytes)
    return MutatedSeries(name=name, files=tuple(files), description=f"{name}: " + ("; ".join(steps) or "unchanged"))
