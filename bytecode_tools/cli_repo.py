"""``vmtool repo``: the over-the-air update repository (TUF)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``repo`` command group to ``vmtool``."""
