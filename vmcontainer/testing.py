"""Test a task script locally in the very same sandbox the device uses.

``run_script`` compiles with the production compiler and policy, packs and
seals an in-memory bundle with ephemeral keys (the production sealer), installs
it into a real ``Container`` (the production verifier) and invokes it - so it
returns the same results and raises the same errors a device would.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .bundle.keys import generate_device_key, generate_publisher_key, private_pem, public_pem
from .bundle.sealer import pack_task, seal
from .container import Container
from .sandbox.compiler import compile_task

_keys_lock = threading.Lock()
_keys: tuple[Any, Any] | None = None


def ephemeral_keys() -> tuple[Any, Any]:
    """One publisher and one device key per process (key generation costs milliseconds)."""
    global _keys
    with _keys_lock:
        if _keys is None:
            _keys = (generate_publisher_key(), generate_device_key())
        return _keys


def _source_of(path_or_source: str | os.PathLike) -> tuple[bytes | str, str]:
    if isinstance(path_or_source, os.PathLike) or (
        isinstance(path_or_source, str) and "\n" not in path_or_source
        and path_or_source.endswith(".py")
    ):
        path = Path(path_or_source)
        return path.read_bytes(), path.name
    return path_or_source, "script.py"


def _model_bytes(models: Mapping[str, bytes | str | os.PathLike] | None) -> dict[str, bytes]:
    out = {}
    for name, value in (models or {}).items():
        out[name] = value if isinstance(value, bytes) else Path(value).read_bytes()
    return out


def build_test_bundle(
    path_or_source: str | os.PathLike,
    *,
    name: str = "script",
    release: int = 1,
    entry: str = "main",
    timeout: float = 5.0,
    models: Mapping[str, bytes | str | os.PathLike] | None = None,
    **manifest: Any,
) -> bytes:
    """Compile and seal a bundle with the process's ephemeral keys.

    ``manifest`` takes the other ``pack_task`` fields: lane, requires, then, warmup, meta.
    """
    source, filename = _source_of(path_or_source)
    compiled = compile_task(source, filename, entry=entry)
    publisher, device = ephemeral_keys()
    payload = pack_task(compiled.code, name=name, release=release, entry=entry,
                        timeout=timeout, models=_model_bytes(models), **manifest)
    return seal(payload, signers=[publisher], recipients=[device.public_key()])


def test_container(**kwargs: Any) -> Container:
    """A container that trusts the ephemeral keys."""
    publisher, device = ephemeral_keys()
    return Container(trust=public_pem(publisher.public_key()), device_key=private_pem(device),
                     **kwargs)


test_container.__test__ = False  # type: ignore[attr-defined]  # not a pytest test


def run_script(
    path_or_source: str | os.PathLike,
    inputs: Any = None,
    *,
    entry: str = "main",
    timeout: float | None = None,
    models: Mapping[str, bytes | str | os.PathLike] | None = None,
    isolation: str = "thread",
) -> Any:
    """Run ``main(inputs)`` (or ``entry``) of a script exactly as a device would;
    ``isolation="process"`` runs it in a worker process, as ``Container`` would."""
    bundle = build_test_bundle(path_or_source, entry=entry, models=models,
                               timeout=timeout if timeout is not None else 5.0)
    with test_container(workers=1, isolation=isolation) as container:
        container.install(bundle)
        return container.invoke("script", inputs, timeout=timeout)
