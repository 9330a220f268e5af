"""``neuroseg phantom``, ``neuroseg train`` and ``neuroseg evaluate``.

Heavy imports (torch, MONAI, nilearn) happen inside the handlers so that
``neuroseg --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

log = logging.getLogger(__name__)


def register(commands: argparse._SubParsersAction, bench: argparse._SubParsersAction) -> None:
    """Add this stage's subcommands and bench targets."""
    phantom = commands.add_parser(
        "phantom",
        help="generate synthetic glioma phantoms (BraTS 2021 layout) or compare them with real images",
        description="Generate multi-contrast glioma phantoms from the MNI152 anatomy that nilearn ships, "
                    "written as <out>/<case>/<case>_{t1,t1ce,t2,flair,seg}.nii.gz; or, with "
                    "--compare-real, compare phantom intensity statistics with real skull-stripped cases.",
    )
    phantom.add_argument("--out", type=Path, help="folder to write the cases into")
    phantom.add_argument("-n", "--count", type=int, default=10, help="number of phantoms (default 10)")
    phantom.add_argument("--seed", type=int, default=0, help="seed of the first case; case i uses seed+i")
    phantom.add_argument("--anatomy-spacing", type=float, default=1.0, metavar="MM",
                         help="resolution the anatomy is built at (default 1 mm; coarser is faster)")
    phantom.add_argument("--output-spacing", type=float, default=None, metavar="MM",
                         help="force an isotropic axial output grid of this spacing (default: random grids)")
    phantom.add_argument("--skull-probability", type=float, default=None,
                         help="chance of keeping skull and scalp (default 0.4)")
    phantom.add_argument("--prefix", default="Phantom", help="case name prefix (default Phantom)")
    phantom.add_argument("--compare-real", type=Path, action="append", metavar="DIR",
                         help="compare with the real cases in DIR (repeatable) instead of writing phantoms")
    phantom.add_argument("--json", type=Path, metavar="FILE", help="also write the comparison as JSON")
    phantom.set_defaults(handler=run_phantom)

    train = commands.add_parser(
        "train",
        help="train the segmentation network on BraTS-layout cases (phantoms, BraTS 2021/2023)",
    )
    train.add_argument("--data", type=Path, action="append", metavar="DIR",
                       help="folder of cases (repeatable): BraTS 2021/2023 layout or T1/FLAIR/GT_W")
    train.add_argument("--data-weight", type=float, action="append", metavar="W",
                       help="share of the patches drawn from each --data folder, in the same order "
                            "(default: every case equally likely)")
    train.add_argument("--out", type=Path, required=True, metavar="CKPT", help="checkpoint to write")
    train.add_argument("--work-dir", type=Path, metavar="DIR",
                       help="cache, metrics and plots (default: <out>.work next to the checkpoint)")
    train.add_argument("--steps", type=int, default=1000, help="optimiser steps (default 1000)")
    train.add_argument("--batch-size", type=int, default=2)
    train.add_argument("--patch", type=int, default=48, help="cubic patch size in voxels (default 48)")
    train.add_argument("--spacing", type=float, default=2.0, metavar="MM",
                       help="isotropic voxel size the network works at (default 2 mm)")
    train.add_argument("--channels", default="8,16,32,64", help="U-Net widths per level (default 8,16,32,64)")
    train.add_argument("--lr", type=float, default=3e-3, help="peak learning rate of AdamW (default 3e-3)")
    train.add_argument("--weight-decay", type=float, default=1e-4)
    train.add_argument("--warmup", type=int, default=20, help="linear warm-up steps (default 20)")
    train.add_argument("--tumour-fraction", type=float, default=0.7,
                       help="share of patches centred on tumour (default 0.7)")
    train.add_argument("--dropout-sequences", type=float, default=0.35,
                       help="chance that a training sample drops some sequences (default 0.35)")
    train.add_argument("--val-fraction", type=float, default=0.1,
                       help="share of cases held out for validation (default 0.1)")
    train.add_argument("--val-data", type=Path, action="append", metavar="DIR",
                       help="folder of validation-only cases (repeatable), never trained on")
    train.add_argument("--val-every", type=int, default=100, help="validate every N steps (default 100)")
    train.add_argument("--checkpoint-every", type=int, default=50,
                       help="write a resumable checkpoint every N steps (default 50)")
    train.add_argument("--wt-only-weight", type=float, default=1.0,
                       help="loss weight of cases with a whole-tumour-only label (default 1)")
    train.add_argument("--no-background-dice", action="store_true",
                       help="leave the background class out of the Dice term (helps small tumour classes)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    train.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    train.add_argument("--resume", action="store_true", help="continue from the work folder's last state")
    train.add_argument("--init", type=Path, metavar="CKPT",
                       help="start from these weights (fine-tuning; same layers, window and spacing may differ)")
    train.add_argument("--name", default="neuroseg-unet", help="model name recorded in the checkpoint")
    train.add_argument("--model-version", default="0.1.0", help="model version recorded in the checkpoint")
    train.add_argument("--embed-card", type=Path, metavar="JSON",
                       help="do not train: put this model card JSON into the metadata of --out (weights unchanged)")
    train.add_argument("--export-state", type=Path, metavar="WORK_DIR",
                       help="do not train: write --out from the last saved state of an interrupted run")
    train.set_defaults(handler=run_train)

    evaluate = commands.add_parser(
        "evaluate",
        help="Dice/HD95 (ET, TC, WT), calibration and uncertainty AUROC of a model or saved predictions",
    )
    evaluate.add_argument("--data", type=Path, required=True, metavar="DIR", help="folder of labelled cases")
    source = evaluate.add_mutually_exclusive_group()
    source.add_argument("--model", type=Path, metavar="PATH",
                        help="checkpoint, MONAI bundle or nnU-Net v2 folder (default: the shipped weights)")
    source.add_argument("--pred", type=Path, metavar="DIR",
                        help="saved predictions: <DIR>/<case>/seg.nii.gz (neuroseg predict) or <DIR>/<case>.nii.gz")
    evaluate.add_argument("--sequences", default=None,
                          help="comma list of sequences to use, e.g. t1,flair (default all present)")
    evaluate.add_argument("--mc-samples", type=int, default=10, help="MC dropout passes (default 10)")
    evaluate.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    evaluate.add_argument("--tta", action="store_true", help="test-time augmentation by flips")
    evaluate.add_argument("--postprocess", action="store_true",
                          help="post-process the labels as the service does (NEUROSEG_MIN_ET_ML, NEUROSEG_MIN_COMPONENT_ML)")
    evaluate.add_argument("--json", type=Path, metavar="FILE", help="write per-case and mean metrics as JSON")
    evaluate.add_argument("--reliability", type=Path, metavar="PNG",
                          help="plot the quality estimate's expected Dice against the true Dice (with --model)")
    evaluate.set_defaults(handler=run_evaluate)


def run_phantom(args: argparse.Namespace) -> int:
    from neuroseg.model.phantom import PhantomConfig, generate_phantoms
    from neuroseg.model.phantom_realism import compare_with_real, format_comparison

    if args.compare_real:
        report = compare_with_real(args.compare_real, count=args.count, seed=args.seed)
        print(format_comparison(report))
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(report, indent=1))
        return 0
    if args.out is None:
        print("neuroseg phantom: give --out DIR (or --compare-real DIR)", file=sys.stderr)
        return 2
    overrides = {"anatomy_spacing_mm": args.anatomy_spacing, "output_spacing_mm": args.output_spacing}
    if args.skull_probability is not None:
        overrides["skull_probability"] = args.skull_probability
    try:
        config = PhantomConfig(**overrides)
        paths = generate_phantoms(args.out, args.count, args.seed, config, prefix=args.prefix)
    except ValueError as exc:
        print(f"neuroseg phantom: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {len(paths)} phantoms to {args.out}")
    return 0


def run_train(args: argparse.Namespace) -> int:
    from neuroseg.model.train import TrainConfig, embed_model_card, export_state, train

    if args.embed_card is not None:
        try:
            embed_model_card(args.out, args.embed_card)
        except (ValueError, FileNotFoundError) as exc:
            print(f"neuroseg train: {exc}", file=sys.stderr)
            return 2
        print(f"embedded {args.embed_card} in {args.out}")
        return 0
    if args.export_state is not None:
        try:
            result = export_state(args.export_state, args.out, command=" ".join(["neuroseg", *sys.argv[1:]]))
        except ValueError as exc:
            print(f"neuroseg train: {exc}", file=sys.stderr)
            return 2
        print(f"wrote {args.out} from the state at step {result.steps}: {result.summary()}")
        return 0
    if not args.data:
        print("neuroseg train: give at least one --data DIR", file=sys.stderr)
        return 2
    try:
        channels = tuple(int(c) for c in args.channels.split(","))
        config = TrainConfig(
            data_dirs=tuple(args.data), steps=args.steps, batch_size=args.batch_size,
            patch_size=args.patch, spacing_mm=args.spacing, channels=channels, lr=args.lr,
            weight_decay=args.weight_decay, warmup_steps=args.warmup, tumour_fraction=args.tumour_fraction,
            sequence_dropout=args.dropout_sequences, val_fraction=args.val_fraction,
            val_every=args.val_every, checkpoint_every=args.checkpoint_every,
            wt_only_weight=args.wt_only_weight, background_dice=not args.no_background_dice,
            seed=args.seed, device=args.device, val_dirs=tuple(args.val_data or ()),
            data_weights=tuple(args.data_weight or ()),
            threads=args.threads, name=args.name, version=args.model_version,
        )
        result = train(config, out=args.out, work_dir=args.work_dir, resume=args.resume,
                       init=args.init, command=" ".join(["neuroseg", *sys.argv[1:]]))
    except ValueError as exc:
        print(f"neuroseg train: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}: {result.summary()}")
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from neuroseg.model.evaluate import evaluate_model, evaluate_predictions, format_table, write_json

    try:
        if args.pred is not None:
            result = evaluate_predictions(args.data, args.pred)
        else:
            sequences = tuple(s.strip() for s in args.sequences.split(",")) if args.sequences else None
            postprocess = None
            if args.postprocess:
                from neuroseg.model.postprocess import PostprocessConfig
                from neuroseg.worker.settings import get_settings

                settings = get_settings()
                postprocess = PostprocessConfig(min_et_ml=settings.min_et_ml,
                                                min_component_ml=settings.min_component_ml)
            result = evaluate_model(args.data, args.model, device=args.device, mc_samples=args.mc_samples,
                                    sequences=sequences, tta=args.tta, postprocess=postprocess)
    except ValueError as exc:
        print(f"neuroseg evaluate: {exc}", file=sys.stderr)
        return 2
    print(format_table(result))
    if args.json:
        write_json(result, args.json)
    if args.reliability is not None:
        if args.pred is not None:
            print("neuroseg evaluate: --reliability needs the model's own output (--model), not --pred",
                  file=sys.stderr)
            return 2
        from neuroseg.model.evaluate import reliability_png

        print(f"wrote {reliability_png(result, args.reliability)}")
    return 0
