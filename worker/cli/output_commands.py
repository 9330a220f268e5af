"""DICOM-out commands: ``neuroseg bench encode``.

(``neuroseg send`` lives in ``worker_commands``, next to the demo that uses it.)
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

TARGET_SECONDS = 10.0
REPORT_PREFIXES = ("keyimage-", "report-")


def register(commands: argparse._SubParsersAction, bench: argparse._SubParsersAction) -> None:
    """Add this stage's subcommands and bench targets."""
    encode = bench.add_parser(
        "encode",
        help="time and size every result object (SEG, maps, meshes, SR, key images, PDF) of a 4x155x240x240 study",
    )
    encode.add_argument("--shape", type=int, nargs=3, default=(155, 240, 240), metavar=("SLICES", "ROWS", "COLUMNS"),
                        help="reference grid (slices, rows, columns); default 155 240 240")
    encode.add_argument("--surface", action="store_true", help="also build the Surface Segmentation")
    encode.add_argument("--json", type=Path, metavar="FILE", help="also write the figures as JSON")
    encode.set_defaults(handler=run_bench_encode)


#: The sequences of the synthetic study (a full BraTS-style protocol); T1ce is the reference.
STUDY_ROLES = ("T1", "T1ce", "T2", "FLAIR")


def _synthetic_request(shape: tuple[int, int, int], surface: bool) -> Any:
    """A study of four series on one grid (T1ce the reference), and plausible result arrays.

    Every map is asked for, so the figures cover each object kind; the report
    also gives the bytes of the default set alone.
    """
    import numpy as np

    from neuroseg.dicom_out import EncodeOptions, EncodeRequest
    from neuroseg.dicom_out.mr_series import StudyIdentity, build_mr_series

    slices, rows, columns = shape
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    affine[:3, 3] = [-(columns - 1) / 2.0, -(rows - 1) / 2.0, -(slices - 1) / 2.0]
    affine = affine[:, [2, 1, 0, 3]]  # (slices, rows, columns) -> z, y, x
    k, r, c = np.ogrid[:slices, :rows, :columns]
    centre = np.array(shape) / 2.0 + np.array([5.0, -12.0, 18.0])
    radius = np.sqrt(((k - centre[0]) / (slices * 0.16)) ** 2 + ((r - centre[1]) / (rows * 0.14)) ** 2
                     + ((c - centre[2]) / (columns * 0.12)) ** 2)
    brain = np.sqrt(((k - slices / 2) / (slices * 0.42)) ** 2 + ((r - rows / 2) / (rows * 0.4)) ** 2
                    + ((c - columns / 2) / (columns * 0.33)) ** 2) < 1.0
    labels = np.zeros(shape, np.uint8)
    labels[radius < 1.0] = 2
    labels[radius < 0.6] = 4
    labels[radius < 0.35] = 1
    rng = np.random.default_rng(0)
    identity = StudyIdentity(uid_seed="bench-encode", patient_name="Bench^Encode", patient_id="BENCH")
    series = {}
    for number, role in enumerate(STUDY_ROLES, start=2):
        # scanner-like images: tissue contrast plus noise (what makes a real study's bytes)
        image = brain * (300 + 40 * number) + labels.astype(np.float32) * 30 * number + rng.normal(0, 12, shape)
        series[role] = build_mr_series(np.clip(image, 0, None).astype(np.int16), affine, study=identity,
                                       series_number=number, role=role)
    reference = series.pop("T1ce")
    soft = {key: np.clip(1.2 - radius * (0.8 + 0.2 * index), 0, 1).astype(np.float32)
            for index, key in enumerate(("ncr", "ed", "et"))}
    return EncodeRequest(
        reference_series=reference, other_series=series, labels=labels, reference_role="T1ce",
        probabilities=soft, variance={key: (p * (1 - p) * 0.1).astype(np.float32) for key, p in soft.items()},
        gradcam={key: np.sqrt(p).astype(np.float32) for key, p in soft.items()},
        entropy=(soft["ed"] * 0.9).astype(np.float32), sequences_used=tuple(role.lower() for role in STUDY_ROLES),
        model_name="bench-model", model_version="bench",
        options=EncodeOptions(maps={"probability", "uncertainty", "gradcam"},
                              mesh_formats={"stl", "surface"} if surface else {"stl"}),
    )


def _serialise(dataset: Any) -> tuple[float, int]:
    import pydicom

    start = time.perf_counter()
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, dataset, enforce_file_format=True)
    return time.perf_counter() - start, buffer.tell()


def run_encode_benchmark(shape: tuple[int, int, int], surface: bool = False) -> dict[str, Any]:
    """Time every object of one study, plus two baselines measured in the same run.

    Baselines: serialising the source series itself (one MR instance per
    slice), and writing the same number of float32 voxels as one pydicom
    dataset (the floor for one Parametric Map).
    """
    import numpy as np
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid
    from tqdm import tqdm

    from neuroseg.dicom_out import encode_study
    from neuroseg.dicom_out.pmap import map_specs

    request = _synthetic_request(shape, surface)
    start = time.perf_counter()
    series_bytes = 0
    for ds in request.reference_series:
        series_bytes += _serialise(ds)[1]
    baseline_series = time.perf_counter() - start
    study_bytes = series_bytes + sum(_serialise(ds)[1] for series in request.other_series.values() for ds in series)

    volume = Dataset()
    volume.file_meta = FileMetaDataset()
    volume.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    volume.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.30"
    volume.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    volume.SOPClassUID, volume.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.30", volume.file_meta.MediaStorageSOPInstanceUID
    volume.FloatPixelData = np.zeros(shape, np.float32).tobytes()
    baseline_float, _ = _serialise(volume)

    build: dict[str, float] = {}
    steps = 4 + len(map_specs(request))
    with tqdm(total=steps, desc="encode", unit="step", file=sys.stderr) as bar:
        def progress(kind: str, seconds: float) -> None:
            build[kind] = seconds
            bar.update(1)

        start, cpu_start = time.perf_counter(), time.process_time()
        objects = encode_study(request, progress=progress)
        build_total = time.perf_counter() - start
    rows, report_rows = [], []
    write_total = 0.0
    sizes: dict[str, int] = {}
    for obj in objects:
        seconds, size = _serialise(obj.dataset)
        write_total += seconds
        sizes[obj.kind] = size
        group = "meshes" if obj.kind.startswith("mesh-") else obj.kind
        row = {"kind": obj.kind, "build_s": build.get(obj.kind) if group == obj.kind else None,
               "write_s": round(seconds, 4), "megabytes": round(size / 1e6, 3)}
        # key images and PDF: renderings of the results, listed apart from the result objects
        (report_rows if obj.kind.startswith(REPORT_PREFIXES) else rows).append(row)
    default_kinds = _default_kinds(request, [obj.kind for obj in objects])
    default_bytes = sum(sizes[kind] for kind in default_kinds)
    total = build_total + write_total
    cpu_total = time.process_time() - cpu_start
    return {
        "shape": list(shape),
        "objects": rows,
        "reports": report_rows,
        "build_s": {key: round(value, 4) for key, value in build.items()},
        "build_total_s": round(build_total, 3),
        "write_total_s": round(write_total, 3),
        "total_s": round(total, 3),
        "cpu_total_s": round(cpu_total, 3),
        "baseline_source_series_write_s": round(baseline_series, 3),
        "baseline_source_series_megabytes": round(series_bytes / 1e6, 2),
        "baseline_float32_volume_write_s": round(baseline_float, 4),
        "study_series": len(request.other_series) + 1,
        "study_megabytes": round(study_bytes / 1e6, 2),
        "results_megabytes": round(sum(sizes.values()) / 1e6, 2),
        "results_to_study_bytes": round(sum(sizes.values()) / study_bytes, 3),
        "default_kinds": default_kinds,
        "default_results_megabytes": round(default_bytes / 1e6, 2),
        "default_results_to_study_bytes": round(default_bytes / study_bytes, 3),
        "ratio_total_to_source_series_write": round(total / baseline_series, 2) if baseline_series else None,
        "target_s": TARGET_SECONDS,
        "within_target": total < TARGET_SECONDS,
    }


def _default_kinds(request: Any, kinds: list[str]) -> list[str]:
    """The kinds among ``kinds`` that the default options send (default maps, STL meshes)."""
    from dataclasses import replace

    from neuroseg.dicom_out import EncodeOptions
    from neuroseg.dicom_out.pmap import map_specs

    default = EncodeOptions()
    maps = {spec.kind for spec in map_specs(replace(request, options=default))}
    meshes = {f"mesh-{name}" for name in default.mesh_formats}
    return [kind for kind in kinds if kind in maps or (not kind.startswith("pmap-") and (
        not kind.startswith("mesh-") or any(kind == m or kind.startswith(m + "-") for m in meshes)))]


def run_bench_encode(args: argparse.Namespace) -> int:
    shape = tuple(int(v) for v in args.shape)
    if min(shape) < 2:
        print(f"neuroseg bench encode: --shape {shape} needs at least 2 voxels per axis", file=sys.stderr)
        return 2
    logging.getLogger("highdicom").setLevel(max(logging.WARNING, logging.getLogger().level))  # per-object chatter
    report = run_encode_benchmark(shape, surface=args.surface)
    print(f"encode benchmark, grid {shape[0]}x{shape[1]}x{shape[2]} (slices x rows x columns)")
    print(f"{'object':<28}{'build s':>10}{'write s':>10}{'MB':>10}")
    for row in report["objects"] + report["reports"]:
        build = "" if row["build_s"] is None else f"{row['build_s']:.3f}"
        print(f"{row['kind']:<28}{build:>10}{row['write_s']:>10.3f}{row['megabytes']:>10.2f}")
    for group, label in (("meshes", "meshes (all, build)"), ("reports", "key images + PDF (build)")):
        if group in report["build_s"]:
            print(f"{label:<28}{report['build_s'][group]:>10.3f}")
    print(f"{'total build':<28}{report['build_total_s']:>10.3f}")
    print(f"{'total write':<28}{'':>10}{report['write_total_s']:>10.3f}")
    print(f"total {report['total_s']:.2f} s wall, {report['cpu_total_s']:.2f} s CPU of this process "
          f"(target < {TARGET_SECONDS:.0f} s wall: {'met' if report['within_target'] else 'NOT met'})")
    print(f"baseline: write the source series ({report['baseline_source_series_megabytes']} MB,"
          f" {shape[0]} files) {report['baseline_source_series_write_s']:.3f} s -> ratio "
          f"{report['ratio_total_to_source_series_write']}x; one float32 volume "
          f"{report['baseline_float32_volume_write_s']:.3f} s")
    print(f"size: the study ({report['study_series']} series) {report['study_megabytes']} MB; every object above "
          f"{report['results_megabytes']} MB = {report['results_to_study_bytes']}x the study; the default set "
          f"({len(report['default_kinds'])} objects) {report['default_results_megabytes']} MB = "
          f"{report['default_results_to_study_bytes']}x the study")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")
    return 0
