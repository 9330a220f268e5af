"""``neuroseg quality fit``: fit the per-study quality estimate of a model and store it beside the weights."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(commands: argparse._SubParsersAction, bench: argparse._SubParsersAction) -> None:  # noqa: ARG001
    """Add ``quality fit``."""
    quality = commands.add_parser("quality", help="the per-study quality estimate (expected Dice, review flag)")
    sub = quality.add_subparsers(dest="quality_command", metavar="ACTION", required=True)
    fit = sub.add_parser(
        "fit",
        help="fit expected Dice and the review threshold on validation cases and hard phantoms",
        description="Segments each labelled case given with --data (real validation cases only: never a case "
                    "you later report as a test) and --phantoms hard phantoms (variants easy, noise, thick8, "
                    "bias, thick8-bias, flair-noise, drop-flair, drop-t1ce, misaligned in turn), fits how the "
                    "quality measurements combine into expected Dice per region, picks the lowest WT "
                    "threshold that flags every case with WT Dice < --bad-dice, and writes the fit to "
                    "<weights>.quality.json, where the worker reads it.",
    )
    fit.add_argument("--data", type=Path, action="append", default=[], metavar="DIR",
                     help="a labelled case folder or a folder of cases (repeatable)")
    fit.add_argument("--phantoms", type=int, default=18, metavar="N", help="hard phantoms (default 18)")
    fit.add_argument("--seed", type=int, default=7000, help="seed of the first phantom (default 7000)")
    fit.add_argument("--mc-samples", type=int, default=5, metavar="N", help="MC dropout passes (default 5)")
    fit.add_argument("--model", type=Path, default=None, metavar="PATH",
                     help="checkpoint (default NEUROSEG_MODEL_PATH, else the shipped weights)")
    fit.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    fit.add_argument("--bad-dice", type=float, default=0.7, help="WT Dice below which a case must be flagged")
    fit.add_argument("--out", type=Path, default=None, metavar="FILE",
                     help="where to write the fit (default <weights>.quality.json)")
    fit.add_argument("--samples", type=Path, default=None, metavar="FILE",
                     help="also write the measured cases (to refit later with --from-samples)")
    fit.add_argument("--from-samples", type=Path, default=None, metavar="FILE",
                     help="refit from measured cases written by --samples instead of running the model")
    fit.add_argument("--reliability", type=Path, default=None, metavar="PNG",
                     help="plot expected vs true Dice of the fit cases")
    fit.set_defaults(handler=run_fit)


def run_fit(args: argparse.Namespace) -> int:
    from neuroseg.model.quality import (
        file_sha256,
        fit_quality_model,
        measurements_from_dict,
        quality_model_path,
        reliability_plot,
        write_json,
    )
    from neuroseg.worker.settings import get_settings

    model_path = args.model or get_settings().model_path
    try:
        if args.from_samples is not None:
            stored = json.loads(args.from_samples.read_text())
            samples = [{**s, "measurements": measurements_from_dict(s["measurements"])} for s in stored]
        else:
            from neuroseg.model.evaluate import collect_quality_samples
            from neuroseg.model.runtime import load_model

            model = load_model(model_path, device=args.device)
            samples = collect_quality_samples(model, args.data, mc_samples=args.mc_samples,
                                              phantom_seeds=list(range(args.seed, args.seed + args.phantoms)))
        if args.samples is not None:
            write_json([{**s, "measurements": s["measurements"].to_dict()} for s in samples], args.samples)
        fitted = fit_quality_model(samples, bad_dice=args.bad_dice)
    except (ValueError, FileNotFoundError) as exc:
        print(f"neuroseg quality fit: {exc}", file=sys.stderr)
        return 2
    from neuroseg.model.checkpoint import SHIPPED_WEIGHTS

    weights = Path(model_path) if model_path else Path(SHIPPED_WEIGHTS)
    fitted.weights_sha256 = file_sha256(weights) if weights.is_file() else ""
    from neuroseg.model.runtime import load_model as _load

    fitted.model_version = _load(model_path, device="cpu").version if weights.is_file() else ""
    fitted.fit["command"] = " ".join(["neuroseg", *_inputs_only(sys.argv[1:])])
    out = args.out or quality_model_path(model_path)
    write_json(fitted.to_dict(), out)
    if args.reliability is not None:
        reliability_plot(fitted.fit["cases"], args.reliability, threshold=fitted.wt_threshold,
                         title="quality fit cases (in-sample)")
    summary = fitted.fit
    print(f"{'case':<34}{'kind':>12}{'true WT':>9}{'exp WT':>8}  review  reasons")
    for case in summary["cases"]:
        true_wt, exp_wt = case["true_dice"].get("WT"), case["expected_dice"].get("WT")
        print(f"{case['case'][:33]:<34}{case['kind']:>12}{_f(true_wt):>9}{_f(exp_wt):>8}  "
              f"{'yes' if case['review_recommended'] else 'no':<6}  {'; '.join(case['reasons'])[:120]}")
    print(f"rank correlation (Spearman) expected vs true Dice: {summary['spearman']}; "
          f"bad cases (WT < {args.bad_dice}) flagged {summary['bad_flagged']}/{summary['bad_cases']}, "
          f"good cases flagged {summary['good_flagged']}/{summary['good_cases']}; WT threshold "
          f"{fitted.wt_threshold:.3f}")
    print(f"wrote {out}")
    return 0


def _f(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _inputs_only(argv: list[str]) -> list[str]:
    """The command line without the options that only name outputs (they would record one machine's paths)."""
    kept, skip = [], False
    for item in argv:
        if skip:
            skip = False
            continue
        if item in ("--samples", "--reliability", "--out"):
            skip = True
            continue
        if not item.startswith(("--samples=", "--reliability=", "--out=")):
            kept.append(item)
    return kept
