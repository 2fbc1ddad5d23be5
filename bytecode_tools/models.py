"""Build-time model checks: refuse what the device would refuse, earlier and louder."""

from __future__ import annotations

from vmcontainer.inference.validate import validate_model_bytes


def check_model(name: str, blob: bytes) -> None:
    """Raise ``ModelError`` if ``blob`` is not a model the device will accept."""
    validate_model_bytes(name, blob)
