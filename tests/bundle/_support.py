"""Helpers for the bundle tests: key sets, an Add model, an independent layout
parser and a forger that seals with the real keys but lets a test break one thing.

The layout parser below is written from the format description (``struct`` on
raw offsets), not with ``vmcontainer.bundle.format``, so it cross-checks the
product's parser instead of repeating it.
"""

from __future__ import annotations

import hashlib
import os
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from onnx import TensorProto, helper

from bytecode_tools.builder import BuildOptions, build_bundle
from bytecode_tools.keygen import generate_keys
from vmcontainer.bundle import format as fmt
from vmcontainer.bundle.keys import (
    key_id,
    load_device_private,
    load_device_public,
    load_publisher_private,
    load_publisher_public,
)
from vmcontainer.bundle.sealer import pack_task
from vmcontainer.bundle.verifier import RUNNING_PYTHON
from vmcontainer.container import Container
from vmcontainer.sandbox.compiler import compile_task

# --- keys ---------------------------------------------------------------------------


@dataclass
class KeySet:
    """One ``vmtool keygen`` directory, with the keys also loaded."""

    dir: Path

    @property
    def publisher_key(self) -> Path:
        return self.dir / "publisher.key"

    @property
    def publisher_pub(self) -> Path:
        return self.dir / "publisher.pub"

    @property
    def device_key(self) -> Path:
        return self.dir / "device.key"

    @property
    def device_pub(self) -> Path:
        return self.dir / "device.pub"

    @property
    def signer(self):  # type: ignore[no-untyped-def]
        return load_publisher_private(self.publisher_key)

    @property
    def trust(self):  # type: ignore[no-untyped-def]
        return load_publisher_public(self.publisher_pub)

    @property
    def device(self):  # type: ignore[no-untyped-def]
        return load_device_private(self.device_key)

    @property
    def recipient(self):  # type: ignore[no-untyped-def]
        return load_device_public(self.device_pub)

    @property
    def publisher_kid(self) -> bytes:
        return key_id(self.trust)

    @property
    def device_kid(self) -> bytes:
        return key_id(self.recipient)


def make_keys(directory: Path, device_key: str = "x25519") -> KeySet:
    generate_keys(directory, device_key=device_key)
    return KeySet(directory)


def container_for(keys: KeySet, *, trust: Sequence[KeySet] | None = None, **kwargs: Any) -> Container:
    """A container on ``keys``' device, trusting ``trust`` (default: ``keys``' publisher)."""
    trusted = [k.publisher_pub for k in (trust or [keys])]
    kwargs.setdefault("workers", 1)
    return Container(trust=trusted, device_key=keys.device_key, **kwargs)


# --- an ONNX model and scripts ------------------------------------------------------


def add_model() -> bytes:
    """z = x + y over float32 [N]."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "y"], ["z"])],
        "adder",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N"]),
         helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N"])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model.SerializeToString()


MODEL_SCRIPT = '''\
import numpy as np
import vm

RELEASE = {release}


def main(inputs):
    xs = np.array(inputs["xs"], dtype=np.float32)
    out = vm.model("adder").run({{"x": xs, "y": xs}})
    return {{"release": RELEASE, "doubled": out["z"].tolist()}}
'''

SUM_SCRIPT = 'def main(inputs):\n    return {"sum": sum(inputs["xs"])}\n'


def build(
    keys: KeySet | Sequence[KeySet],
    source: str = SUM_SCRIPT,
    *,
    name: str = "task",
    release: int = 1,
    to: Sequence[KeySet] | None = None,
    now: float | None = None,
    **options: Any,
) -> bytes:
    """``build_bundle`` signed by ``keys`` (one or several) to ``to`` (default: ``keys[0]``)."""
    signers = [keys] if isinstance(keys, KeySet) else list(keys)
    recipients = to if to is not None else signers[:1]
    return build_bundle(
        source,
        BuildOptions(name=name, release=release, **options),
        signers=[k.publisher_key for k in signers],
        recipients=[k.device_pub for k in recipients],
        now=now,
    )


def payload_for(source: str = SUM_SCRIPT, *, name: str = "task", release: int = 1,
                **kwargs: Any) -> fmt.Payload:
    return pack_task(compile_task(source).code, name=name, release=release, **kwargs)


# --- independent layout parser ------------------------------------------------------


@dataclass(frozen=True)
class Region:
    name: str
    start: int
    end: int  # exclusive

    @property
    def kind(self) -> str:
        """The region name without its index (``sig[1]`` -> ``sig``)."""
        return self.name.split("[", 1)[0]


def regions(data: bytes) -> list[Region]:
    """Every byte of a bundle, in order, as named regions (from the documented layout)."""
    out: list[Region] = []
    pos = 0

    def take(name: str, n: int) -> bytes:
        nonlocal pos
        out.append(Region(name, pos, pos + n))
        chunk = data[pos:pos + n]
        assert len(chunk) == n, f"layout parser ran off the end at {name}"
        pos += n
        return chunk

    take("magic", 4)
    take("version", 1)
    (header_len,) = struct.unpack(">I", take("header_len", 4))
    take("header", header_len)
    nsig = take("nsig", 1)[0]
    for i in range(nsig):
        take(f"sig_kid[{i}]", 16)
        take(f"sig[{i}]", 64)
    (nrcpt,) = struct.unpack(">H", take("nrcpt", 2))
    for i in range(nrcpt):
        take(f"rcpt_kid[{i}]", 16)
        (wrap_len,) = struct.unpack(">H", take(f"wrap_len[{i}]", 2))
        take(f"wrap[{i}]", wrap_len)
    (ct_len,) = struct.unpack(">Q", take("ct_len", 8))
    assert ct_len >= 16
    take("ct_body", ct_len - 16)
    take("gcm_tag", 16)
    assert pos == len(data), "layout parser did not consume the whole bundle"
    return out


def region(data: bytes, name: str) -> Region:
    for r in regions(data):
        if r.name == name:
            return r
    raise KeyError(name)


def flip(data: bytes, offset: int, mask: int = 0x01) -> bytes:
    buf = bytearray(data)
    buf[offset] ^= mask
    return bytes(buf)


# --- forging with the real keys -----------------------------------------------------


def forge(
    plaintext: bytes | fmt.Payload,
    *,
    signers: Sequence[Any],
    recipients: Sequence[Any],
    task: str = "task",
    release: int = 1,
    python: dict[str, str] | None = None,
    created: int | None = None,
    expires: int | None = None,
    edit_header: Callable[[dict[str, Any]], None] | None = None,
    aad: Callable[[dict[str, Any]], bytes] = lambda header: fmt.aead_aad(fmt.canonical_json(header)),
    encrypt_nonce: bytes | None = None,
    wrapped_key: bytes | None = None,
    edit_raw: Callable[[fmt.RawBundle], None] | None = None,
) -> bytes:
    """Seal like ``vmcontainer.bundle.sealer.seal``, with hooks to break one thing.

    Signatures are always computed over the final header with the given
    (trusted) ``signers``, so whatever a hook breaks is signed as if by the
    real publisher.
    """
    if isinstance(plaintext, fmt.Payload):
        plaintext = plaintext.encode()
    content_key = AESGCM.generate_key(bit_length=256)
    nonce = os.urandom(fmt.NONCE_LEN)
    created = int(time.time()) if created is None else created
    header: dict[str, Any] = {
        "format": fmt.FORMAT_VERSION,
        "task": task,
        "release": release,
        "python": dict(RUNNING_PYTHON if python is None else python),
        "created": created,
        "expires": expires,
        "signers": sorted(key_id(k.public_key()).hex() for k in signers),
        "aead": fmt.AEAD_NAME,
        "wrap": fmt.wrap_for(recipients[0])[0],
        "nonce": nonce.hex(),
        "ct_sha256": "",
        "ct_len": len(plaintext) + 16,
        "pt_sha256": hashlib.sha256(plaintext).hexdigest(),
        "pt_len": len(plaintext),
    }
    if edit_header is not None:
        edit_header(header)
    ciphertext = AESGCM(content_key).encrypt(encrypt_nonce or nonce, plaintext, aad(header))
    header["ct_sha256"] = hashlib.sha256(ciphertext).hexdigest()
    header_bytes = fmt.canonical_json(header)
    message = fmt.signed_message(header_bytes)
    signatures = [(key_id(k.public_key()), k.sign(message)) for k in signers]
    wraps = []
    for device in recipients:
        kid = key_id(device)
        wraps.append((kid, fmt.wrap_for(device)[1].encrypt(
            content_key if wrapped_key is None else wrapped_key, device,
            info=fmt.wrap_info(header_bytes, kid))))
    raw = fmt.RawBundle(header_bytes, header, signatures, wraps, ciphertext)
    if edit_raw is not None:
        edit_raw(raw)
    return raw.encode()


def resign(raw: fmt.RawBundle, signers: Sequence[Any]) -> None:
    """Replace ``raw``'s signatures with fresh ones over its (possibly edited) header bytes."""
    message = fmt.signed_message(raw.header_bytes)
    raw.signatures[:] = [(key_id(k.public_key()), k.sign(message)) for k in signers]
