"""``neuroseg predict`` (segment NIfTI/DICOM inputs into a result folder with figures) and ``neuroseg bench model``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from neuroseg.worker.settings import get_settings

log = logging.getLogger(__name__)

SEQUENCE_OPTIONS = ("t1", "t1ce", "t2", "flair")


def register(commands: argparse._SubParsersAction, bench: argparse._SubParsersAction) -> None:
    """Add ``predict`` and ``bench model``."""
    predict = commands.add_parser(
        "predict",
        help="segment a glioma from NIfTI files or DICOM folders into a result folder with figures",
        description="Segment NCR/ED/ET with probability, MC dropout uncertainty and Grad-CAM. Each input is a "
                    "NIfTI file or a folder holding one DICOM series; give any subset with --t1ce or --flair. "
                    "Inputs on different grids are resampled onto the reference (t1ce, else flair). Writes "
                    "seg.nii.gz, prob_*, variance_*, entropy, gradcam_*, report.json and PNG figures.",
    )
    for key in SEQUENCE_OPTIONS:
        predict.add_argument(f"--{key}", type=Path, metavar="P", help=f"{key.upper()} NIfTI file or DICOM folder")
    predict.add_argument("--out", type=Path, required=True, metavar="DIR", help="result folder (created)")
    predict.add_argument("--mc-samples", type=int, default=None, metavar="N",
                         help="Monte Carlo dropout passes (default NEUROSEG_MC_SAMPLES, 20)")
    predict.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N (default NEUROSEG_DEVICE)")
    predict.add_argument("--model", type=Path, default=None, metavar="PATH",
                         help="checkpoint or MONAI bundle folder/zip (default NEUROSEG_MODEL_PATH, else the "
                              "shipped demo weights)")
    predict.add_argument("--seed", type=int, default=0, help="seed of the dropout masks (default 0)")
    predict.add_argument("--no-gradcam", action="store_true", help="skip Grad-CAM")
    predict.add_argument("--no-coregister", action="store_true",
                         help="trust the scanner geometry instead of co-registering the sequences "
                              "(default NEUROSEG_COREGISTER)")
    predict.add_argument("--no-figures", action="store_true", help="skip the PNG figures")
    predict.set_defaults(handler=run_predict)

    model = bench.add_parser(
        "model",
        help="one pass vs naive and cheap MC dropout and Grad-CAM, CPU variants, peak RAM",
        description="Times one deterministic sliding-window pass over a volume of --shape, naive MC dropout "
                    "(N full passes, extrapolated from --naive-passes), our head-only MC, naive Grad-CAM "
                    "(full backward per class) vs ours; CPU bf16 and thread settings on one window; peak RSS "
                    "of a whole segment() call in a fresh process; and, with weights and the phantom generator, "
                    "the uncertainty AUROC of head-only vs full-network MC dropout.",
    )
    model.add_argument("--shape", type=int, nargs=3, default=[240, 240, 155], metavar=("X", "Y", "Z"))
    model.add_argument("--mc-samples", type=int, default=20, metavar="N")
    model.add_argument("--naive-passes", type=int, default=2, metavar="K",
                       help="naive MC passes actually run; the cost of N is extrapolated (default 2)")
    model.add_argument("--device", default=None, help="default NEUROSEG_DEVICE")
    model.add_argument("--model", type=Path, default=None, metavar="PATH",
                       help="checkpoint, MONAI bundle or nnU-Net v2 folder (default: NEUROSEG_MODEL_PATH, else the "
                            "shipped weights, else a random network); for a bundle or nnU-Net model, the cost of "
                            "its flips (and folds) against one plain pass of the same run")
    model.add_argument("--random", action="store_true",
                       help="benchmark a randomly initialised network of the default architecture instead")
    model.add_argument("--threads", type=int, default=None, metavar="N", help="torch CPU threads (default: torch's)")
    model.add_argument("--skip-auroc", action="store_true", help="skip the phantom uncertainty AUROC")
    model.add_argument("--skip-segment", action="store_true", help="skip the whole-study peak-RSS run")
    model.add_argument("--json", type=Path, default=None, metavar="FILE", help="also write the report as JSON")
    model.set_defaults(handler=run_bench_model)


def _progress_bar():
    from tqdm import tqdm

    bar = tqdm(total=100, unit="%", bar_format="{desc:<22} {percentage:3.0f}%|{bar}| {elapsed}", file=sys.stderr)
    weights = {"preprocessing": (0, 10), "inference": (10, 80), "explaining": (80, 100)}

    def update(stage: str, fraction: float) -> None:
        low, high = weights.get(stage, (0, 100))
        bar.set_description_str(stage)
        bar.n = round(low + (high - low) * min(max(fraction, 0.0), 1.0), 1)
        bar.refresh()

    return bar, update


def run_predict(args: argparse.Namespace) -> int:
    """Handler of ``neuroseg predict``."""
    from neuroseg.model.checkpoint import SHIPPED_WEIGHTS
    from neuroseg.model.figures import write_figures
    from neuroseg.model.adapters import load_adapter
    from neuroseg.model.io import load_inputs, write_result_folder
    from neuroseg.worker.pipeline import model_options

    settings = get_settings()
    paths = {key: getattr(args, key) for key in SEQUENCE_OPTIONS if getattr(args, key) is not None}
    mc_samples = args.mc_samples if args.mc_samples is not None else settings.mc_samples
    device = args.device or settings.device
    model_path = args.model or settings.model_path
    if mc_samples < 1:
        print(f"neuroseg predict: --mc-samples {mc_samples}: must be at least 1", file=sys.stderr)
        return 2
    if model_path is None and not SHIPPED_WEIGHTS.is_file():
        print("neuroseg predict: no shipped weights in this installation; give --model PATH or set "
              "NEUROSEG_MODEL_PATH", file=sys.stderr)
        return 2
    try:
        notes: list[str] = []
        images, affine, reference = load_inputs(paths, coregister=settings.coregister and not args.no_coregister,
                                                notes=notes)
        model = load_adapter(model_path, device)
        bar, update = _progress_bar()
        try:
            result = model.segment(images, affine, mc_samples=mc_samples, gradcam=not args.no_gradcam,
                                   seed=args.seed, progress=update, **model_options(settings))
        finally:
            bar.close()
    except (FileNotFoundError, ValueError, TypeError) as exc:
        print(f"neuroseg predict: {exc}", file=sys.stderr)
        return 2
    report = write_result_folder(result, images, affine, args.out, model_metadata=model.metadata, notes=notes)
    if not args.no_figures:
        write_figures(result, images, affine, args.out)
    print(f"model        {result.model_name} {result.model_version} on {model.device}")
    print(f"uncertainty  {model.uncertainty_method}, {result.mc_samples} passes; "
          f"Grad-CAM {result.gradcam_layer or 'off'}")
    for note in notes:
        print(f"input        {note}")
    print(f"reference    {reference} grid {list(result.labels.shape)}; sequences used: {', '.join(result.sequences_used)}")
    print("volumes (mL) " + "  ".join(f"{k.upper()} {v:.1f}" for k, v in report["volumes_ml"].items()))
    print("timings (s)  " + "  ".join(f"{k} {v:.1f}" for k, v in report["timings_s"].items()))
    print(f"written to   {args.out}")
    return 0


def run_bench_model(args: argparse.Namespace) -> int:
    """Handler of ``neuroseg bench model``."""
    from neuroseg.model.adapters import is_bundle, is_nnunet_folder
    from neuroseg.model.benchmark import format_adapter_report, format_report, run_adapter_benchmark, run_benchmark

    import torch

    settings = get_settings()
    if args.threads is not None:
        torch.set_num_threads(max(1, args.threads))
    model_path = None if args.random else (args.model or settings.model_path)
    try:
        if model_path is not None and (is_bundle(Path(model_path)) or is_nnunet_folder(Path(model_path))):
            report = run_adapter_benchmark(Path(model_path), shape=tuple(args.shape),
                                           mc_samples=args.mc_samples, device=args.device or settings.device)
            text = format_adapter_report(report)
        else:
            report = run_benchmark(
                shape=tuple(args.shape), mc_samples=args.mc_samples, naive_passes=args.naive_passes,
                device=args.device or settings.device, model_path=model_path,
                measure_auroc=not args.skip_auroc, measure_whole_study=not args.skip_segment,
                random_weights=args.random,
            )
            text = format_report(report)
    except (FileNotFoundError, ValueError) as exc:
        print(f"neuroseg bench model: {exc}", file=sys.stderr)
        return 2
    print(text)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"written to {args.json}")
    return 0
