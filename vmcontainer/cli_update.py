"""``vmc update``: sync a device state directory from an update repository."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``update`` to ``vmc``."""
