"""``vmtool`` model commands (build-model, quantize, bench-model)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add the model commands to ``vmtool``."""
