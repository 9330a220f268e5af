"""Check that a command line written in a deployment file is one the CLI accepts."""

from __future__ import annotations

import contextlib
import io
import shlex
from collections.abc import Sequence

from neuroseg.worker.cli import build_parser


def assert_cli_accepts(argv: Sequence[str] | str) -> None:
    """Parse ``argv`` (without the leading ``neuroseg``) with the real parser; fail with its message."""
    words = shlex.split(argv) if isinstance(argv, str) else list(argv)
    if words and words[0].endswith("neuroseg"):
        words = words[1:]
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            build_parser().parse_args(words)
    except SystemExit as exc:
        raise AssertionError(f"`neuroseg {' '.join(words)}` is rejected by the CLI: {stderr.getvalue().strip()}") from exc
