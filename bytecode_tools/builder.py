"""Build a bundle from a script: check and compile, pack with models, seal.

The compiler and the sealing code are the device's own (``vmcontainer.sandbox``
and ``vmcontainer.bundle.sealer``), so a bundle is judged by exactly the rules
it will meet on the device.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vmcontainer import __version__ as container_version
from vmcontainer.bundle import format as fmt
from vmcontainer.bundle.keys import KeySource, load_device_public, load_publisher_private
from vmcontainer.bundle.sealer import pack_task, seal
from vmcontainer.sandbox.compiler import compile_task

from .models import check_model


@dataclass
class BuildOptions:
    name: str
    release: int
    entry: str = "main"
    timeout: float = 1.0
    lane: str = "regular"
    models: Mapping[str, bytes] = field(default_factory=dict)
    meta: Mapping[str, Any] = field(default_factory=dict)
    expires_in: float | None = None  # seconds from now; None = no expiry
    requires: Sequence[str] = ()  # tasks whose results feed this one (task graph)
    then: Sequence[str] = ()  # tasks run with this one's result after it succeeds
    warmup: Any = None  # inputs for a dry run at install (preload); None = no dry run
    min_container: str = container_version
    # alias -> reference to a model installed from a model bundle (models.pin_ref/compatible_ref)
    model_refs: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


def build_bundle(
    source: str | bytes | os.PathLike,
    options: BuildOptions,
    *,
    signers: Sequence[KeySource],
    recipients: Sequence[KeySource],
    filename: str = "task.py",
    now: float | None = None,
) -> bytes:
    """Compile ``source`` (text, bytes or a path) and return sealed bundle bytes.

    Raises ``CompileError`` before any key is touched or anything is written.
    """
    if isinstance(source, os.PathLike):
        filename = Path(source).name
        source = Path(source).read_bytes()
    compiled = compile_task(source, filename, entry=options.entry)
    for name, blob in options.models.items():
        check_model(name, blob)
    payload = pack_task(
        compiled.code,
        name=options.name,
        release=options.release,
        entry=options.entry,
        timeout=options.timeout,
        lane=options.lane,
        models=options.models,
        meta=options.meta,
        requires=options.requires,
        then=options.then,
        warmup=options.warmup,
        min_container=options.min_container,
        model_refs=options.model_refs,
    )
    return seal(
        payload,
        signers=[load_publisher_private(s) for s in signers],
        recipients=[load_device_public(r) for r in recipients],
        expires_in=options.expires_in,
        now=now,
    )


def inspect_bundle(data: bytes) -> dict[str, Any]:
    """The clear header and recipients of a bundle; needs no key and verifies nothing."""
    raw = fmt.parse_bundle(data)
    return {
        "header": raw.header,
        "signatures": [kid.hex() for kid, _ in raw.signatures],
        "recipients": [kid.hex() for kid, _ in raw.recipients],
        "size": len(data),
    }
