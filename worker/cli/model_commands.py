"""Subcommands of this stage (filled in by the stage's issue)."""

from __future__ import annotations

import argparse


def register(commands: argparse._SubParsersAction, bench: argparse._SubParsersAction) -> None:
    """Add this stage's subcommands and bench targets."""
