"""Vocabularies that a setting names and a stage acts on, defined once for both.

``worker.settings`` (which the listener imports, so it may not import
``dicom_out``) and ``dicom_out`` both use these.
"""

from __future__ import annotations

from enum import Enum


class MapCompression(str, Enum):
    """Transfer syntax of the Parametric Maps (all lossless)."""

    DEFLATE = "deflate"  # float32 in Deflated Explicit VR Little Endian: what OHIF displays (default)
    JPEG_LS = "jpegls"  # uint16 JPEG-LS lossless: smallest at half JPEG 2000's time
    RLE = "rle"  # uint16 RLE lossless: 2.5x JPEG-LS's bytes
    NONE = "none"  # uint16 Explicit VR Little Endian, for a viewer that reads the stored bytes as they are


class CpuBackend(str, Enum):
    """How the network runs on a CPU (``model.inference``); the worker's ``NEUROSEG_CPU_BACKEND``."""

    AUTO = "auto"  # bf16 where the CPU has native bf16 units and a check window's labels agree, else fp32
    FP32 = "fp32"  # plain float32: the reference path
    BF16 = "bf16"  # bfloat16 autocast, whatever the CPU (emulated bf16 is slower than fp32)
