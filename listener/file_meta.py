"""The File Meta Information written in front of every received dataset (PS3.10 7.1)."""

from __future__ import annotations

import struct


def _meta_element(element: int, vr: bytes, value: bytes) -> bytes:
    if vr == b"OB":
        return struct.pack("<HH2s2xL", 0x0002, element, vr, len(value)) + value
    return struct.pack("<HH2sH", 0x0002, element, vr, len(value)) + value


def _pad(text: str, pad: bytes) -> bytes:
    raw = text.encode("ascii")
    return raw + pad if len(raw) % 2 else raw


def encode_file_meta(
    sop_class_uid: str,
    sop_instance_uid: str,
    transfer_syntax_uid: str,
    implementation_class_uid: str,
    implementation_version_name: str = "",
    source_ae_title: str = "",
) -> bytes:
    """The 128-byte preamble, ``DICM`` and the File Meta Information group (PS3.10 7.1).

    Encoded directly (explicit VR little endian, with the group length) because
    it is written for every received instance; the result is what pydicom's
    ``write_file_meta_info`` would write for the same values.
    """
    body = b"".join((
        _meta_element(0x0001, b"OB", b"\x00\x01"),
        _meta_element(0x0002, b"UI", _pad(sop_class_uid, b"\x00")),
        _meta_element(0x0003, b"UI", _pad(sop_instance_uid, b"\x00")),
        _meta_element(0x0010, b"UI", _pad(transfer_syntax_uid, b"\x00")),
        _meta_element(0x0012, b"UI", _pad(implementation_class_uid, b"\x00")),
        _meta_element(0x0013, b"SH", _pad(implementation_version_name, b" ")) if implementation_version_name else b"",
        _meta_element(0x0016, b"AE", _pad(source_ae_title.strip(), b" ")) if source_ae_title.strip() else b"",
    ))
    group_length = struct.pack("<HH2sHL", 0x0002, 0x0000, b"UL", 4, len(body))
    return b"\x00" * 128 + b"DICM" + group_length + body
