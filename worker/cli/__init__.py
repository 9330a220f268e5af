"""The ``neuroseg`` command.

Each stage owns one module here that adds its subcommands (and its ``bench``
targets) through ``register(commands, bench)``. A command's handler receives
the parsed arguments and returns an exit status. Heavy imports (torch,
highdicom, Celery) happen inside handlers, so ``neuroseg --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from neuroseg.worker.settings import CONFIG_FILE_VARIABLE, SettingsError, get_settings

log = logging.getLogger(__name__)

COMMAND_MODULES = (
    "neuroseg.worker.cli.listen_commands",
    "neuroseg.worker.cli.worker_commands",
    "neuroseg.worker.cli.admin_commands",
    "neuroseg.worker.cli.model_commands",
    "neuroseg.worker.cli.training_commands",
    "neuroseg.worker.cli.quality_commands",
    "neuroseg.worker.cli.output_commands",
    "neuroseg.worker.cli.reliability_commands",
    "neuroseg.worker.cli.study_bench",
)


def package_version() -> str:
    """The installed version of neuroseg."""
    try:
        return version("neuroseg")
    except PackageNotFoundError:
        return "0+unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="neuroseg",
        description="DICOM microservice for glioma MRI segmentation with uncertainty and Grad-CAM.",
    )
    parser.add_argument("--version", action="version", version=f"neuroseg {package_version()}")
    parser.add_argument(
        "--config", type=Path, metavar="FILE",
        help=f"TOML or YAML settings file (same as {CONFIG_FILE_VARIABLE}=FILE); environment variables win",
    )
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    bench_parser = commands.add_parser("bench", help="measure speed and memory against a baseline in the same run")
    bench = bench_parser.add_subparsers(dest="bench_target", metavar="TARGET", required=True)
    config = commands.add_parser("config", help="print the effective settings (secrets masked) and exit")
    config.set_defaults(handler=show_config)
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(commands, bench)
    return parser


def show_config(args: argparse.Namespace) -> int:
    """Print every setting as ``NEUROSEG_NAME=value``; secrets are masked."""
    settings = get_settings()
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if isinstance(value, list):
            value = ",".join(getattr(item, "value", str(item)) for item in value)
        elif hasattr(value, "get_secret_value"):
            value = "********"
        else:
            value = getattr(value, "value", value)
        print(f"NEUROSEG_{name.upper()}={'' if value is None else value}")
    return 0


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``neuroseg`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    if args.config is not None:
        # exported so that child processes (Celery workers) read the same file
        os.environ[CONFIG_FILE_VARIABLE] = str(args.config.resolve())
    get_settings.cache_clear()
    try:
        get_settings()
    except SettingsError as exc:
        print(f"neuroseg: configuration error: {exc}", file=sys.stderr)
        return 2
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
