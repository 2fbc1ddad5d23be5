"""Bundle format v1: the byte layout, shared by the builder and the verifier.

See docs/bundle-format.md for the byte-by-byte description.  In short::

    bundle   = MAGIC(4) | version u8 | header_len u32 | header
             | nsig u8 | nsig x (kid[16] | ed25519_sig[64])           <- signed header
             | nrcpt u16 | nrcpt x (kid[16] | wrap_len u16 | wrap)    <- NOT signed
             | ct_len u64 | ciphertext                                <- AES-256-GCM, aad = header
    payload  = PMAGIC(4) | manifest_len u32 | manifest | code_len u32 | marshal(code)
             | nmodels u16 | nmodels x (name_len u16 | name | size u64 | bytes)

Integers are big-endian.  The header is canonical JSON (sorted keys, no
spaces, ASCII).  Signatures cover ``SIG_CONTEXT | header`` and the header
carries the ciphertext's SHA-256, so a signature commits to the ciphertext.
The recipients table sits outside the signature so that wraps can be added
later without the signing key; each wrap is bound to the header digest and
to its own key id through HPKE ``info``.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives import hpke

from .. import jsonc
from ..errors import BundleIncompatible, BundleMalformed, BundleTooLarge
from .keys import KID_LEN, device_key_type

MAGIC = b"\x89VMB"
PAYLOAD_MAGIC = b"VMP1"
FORMAT_VERSION = 1
SIG_CONTEXT = b"vmcontainer/bundle/v1/signature\x00"
WRAP_CONTEXT = b"vmcontainer/bundle/v1/content-key\x00"
AEAD_NAME = "AES-256-GCM"
# The header's "wrap": how every recipient's content key is wrapped, by device key type.
WRAP_NAMES = {
    "x25519": "HPKE-X25519-HKDF-SHA256-AES-256-GCM",
    "p256": "HPKE-P256-HKDF-SHA256-AES-256-GCM",
}
WRAPS = {
    WRAP_NAMES["x25519"]: hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM),
    WRAP_NAMES["p256"]: hpke.Suite(hpke.KEM.P256, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM),
}


def wrap_for(device_key: Any) -> tuple[str, hpke.Suite]:
    """The header's wrap name and the HPKE suite for a device key (public or private)."""
    name = WRAP_NAMES[device_key_type(device_key)]
    return name, WRAPS[name]
SIG_LEN = 64
NONCE_LEN = 12
KEY_LEN = 32

MAX_SIGNATURES = 16
MAX_RECIPIENTS = 4096
MAX_WRAP_LEN = 512
LANES = ("core", "regular", "low")


@dataclass(frozen=True)
class SizeCaps:
    """Caps checked before anything else is parsed; a device sets its own."""

    bundle: int = 64 << 20
    header: int = 16 << 10
    manifest: int = 64 << 10
    code: int = 8 << 20
    models: int = 48 << 20


DEFAULT_CAPS = SizeCaps()

HEADER_FIELDS = {
    "format": int,
    "task": str,
    "release": int,
    "python": dict,
    "created": int,
    "expires": (int, type(None)),
    "signers": list,
    "aead": str,
    "wrap": str,
    "nonce": str,
    "ct_sha256": str,
    "ct_len": int,
    "pt_sha256": str,
    "pt_len": int,
}
PYTHON_FIELDS = {"impl": str, "magic": str, "cache_tag": str}


@dataclass
class RawBundle:
    """The framing of a bundle, parsed strictly but not yet trusted."""

    header_bytes: bytes
    header: dict[str, Any]
    signatures: list[tuple[bytes, bytes]]
    recipients: list[tuple[bytes, bytes]]
    ciphertext: bytes

    def encode(self) -> bytes:
        parts = [MAGIC, bytes([FORMAT_VERSION]), struct.pack(">I", len(self.header_bytes)),
                 self.header_bytes, bytes([len(self.signatures)])]
        for kid, sig in self.signatures:
            parts += [kid, sig]
        parts.append(struct.pack(">H", len(self.recipients)))
        for kid, wrap in self.recipients:
            parts += [kid, struct.pack(">H", len(wrap)), wrap]
        parts += [struct.pack(">Q", len(self.ciphertext)), self.ciphertext]
        return b"".join(parts)


_CANONICAL = jsonc.make_encoder(sort_keys=True, allow_nan=False)


def canonical_json(obj: Any) -> bytes:
    """Sorted keys, no whitespace, ASCII, no NaN: the one spelling of a header."""
    return _CANONICAL(obj).encode("ascii")


_CT_DIGEST = re.compile(rb'"ct_sha256":"[0-9a-f]*"')


def aead_aad(header_bytes: bytes) -> bytes:
    """AES-GCM associated data: the canonical header with ``ct_sha256`` blank (the
    ciphertext's digest cannot be known before encrypting).  Taken from the bytes,
    not re-encoded: canonical JSON escapes every quote inside a string and the
    header has no free-form keys, so the field occurs once."""
    return _CT_DIGEST.sub(b'"ct_sha256":""', header_bytes, count=1)


def signed_message(header_bytes: bytes) -> bytes:
    return SIG_CONTEXT + header_bytes


def wrap_info(header_bytes: bytes, recipient_kid: bytes) -> bytes:
    return WRAP_CONTEXT + hashlib.sha256(header_bytes).digest() + recipient_kid


class _Reader:
    """Bounds-checked reads from the front of untrusted bytes."""

    __slots__ = ("buf", "pos")

    def __init__(self, buf: bytes):
        self.buf = buf
        self.pos = 0

    def take(self, n: int, what: str) -> bytes:
        pos = self.pos
        end = pos + n
        if n < 0 or end > len(self.buf):
            raise BundleMalformed(f"truncated {what}")
        self.pos = end
        return self.buf[pos:end]

    def _int(self, fmt: struct.Struct, what: str) -> int:
        pos = self.pos
        if pos + fmt.size > len(self.buf):
            raise BundleMalformed(f"truncated {what}")
        self.pos = pos + fmt.size
        return fmt.unpack_from(self.buf, pos)[0]

    def u8(self, what: str) -> int:
        return self._int(_U8, what)

    def u16(self, what: str) -> int:
        return self._int(_U16, what)

    def u32(self, what: str) -> int:
        return self._int(_U32, what)

    def u64(self, what: str) -> int:
        return self._int(_U64, what)

    def end(self) -> None:
        if self.pos != len(self.buf):
            raise BundleMalformed("trailing bytes after the ciphertext")


_U8, _U16, _U32, _U64 = (struct.Struct(f">{c}") for c in "BHIQ")


class _DuplicateKey(ValueError):
    pass


def _no_dupes(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise _DuplicateKey(next(k for i, (k, _) in enumerate(pairs) if k in dict(pairs[:i])))
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(name)  # NaN, Infinity: not JSON


# Decoders made once, straight onto the C scanner (``json.loads`` with hooks builds a
# new decoder per call).  The strict one refuses duplicate keys; a text checked for
# canonical form afterwards needs only the plain one (C all the way, no hook per object).
_DECODE = jsonc.make_decoder(json.JSONDecoder(object_pairs_hook=_no_dupes, parse_constant=_no_constant))
_PLAIN_DECODE = jsonc.make_decoder(json.JSONDecoder(parse_constant=_no_constant))


def _strict_json(data: bytes, what: str, decode: Callable[[str], Any] = _DECODE) -> dict[str, Any]:
    try:
        obj = decode(data.decode("utf-8"))
    except _DuplicateKey as exc:
        raise BundleMalformed(f"duplicate key {exc.args[0]!r} in {what}") from None
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise BundleMalformed(f"{what} is not valid JSON") from None
    if type(obj) is not dict:
        raise BundleMalformed(f"{what} is not a JSON object")
    return obj


def _exact_types(spec: dict[str, Any]) -> dict[str, frozenset[type]]:
    """A field spec as exact JSON types (``json`` builds exact types, so ``type(v) in``
    is both faster than ``isinstance`` and keeps ``True`` out of int fields)."""
    return {k: frozenset(t if isinstance(t, tuple) else (t,)) for k, t in spec.items()}


def _check_fields(obj: dict[str, Any], spec: dict[str, frozenset[type]], what: str) -> None:
    if obj.keys() != spec.keys():
        missing = sorted(set(spec) - set(obj))
        extra = sorted(set(obj) - set(spec))
        raise BundleMalformed(f"{what} fields wrong (missing {missing}, unknown {extra})")
    for key, types_ in spec.items():
        if type(obj[key]) not in types_:
            raise BundleMalformed(f"{what} field {key!r} has the wrong type")


def parse_bundle(data: bytes, caps: SizeCaps = DEFAULT_CAPS) -> RawBundle:
    """Size caps, then strict parse of the framing and the header.  Trusts nothing."""
    if not isinstance(data, (bytes, bytearray)):
        raise BundleMalformed("bundle must be bytes")
    if len(data) > caps.bundle:
        raise BundleTooLarge(f"bundle is {len(data)} bytes, cap is {caps.bundle}")
    r = _Reader(bytes(data))  # a private copy: nothing can change it while we read
    if r.take(4, "magic") != MAGIC:
        raise BundleMalformed("not a vmcontainer bundle (bad magic)")
    version = r.u8("format version")
    if version != FORMAT_VERSION:
        raise BundleIncompatible(f"bundle format version {version} is not supported")
    header_len = r.u32("header length")
    if header_len > caps.header:
        raise BundleTooLarge(f"header is {header_len} bytes, cap is {caps.header}")
    header_bytes = r.take(header_len, "header")
    nsig = r.u8("signature count")
    if not 1 <= nsig <= MAX_SIGNATURES:
        raise BundleMalformed(f"signature count {nsig} out of range")
    signatures = [(r.take(KID_LEN, "signer id"), r.take(SIG_LEN, "signature")) for _ in range(nsig)]
    nrcpt = r.u16("recipient count")
    if nrcpt > MAX_RECIPIENTS:
        raise BundleMalformed(f"recipient count {nrcpt} out of range")
    recipients = []
    for _ in range(nrcpt):
        kid = r.take(KID_LEN, "recipient id")
        wrap_len = r.u16("wrap length")
        if wrap_len > MAX_WRAP_LEN:
            raise BundleMalformed("wrapped key too long")
        recipients.append((kid, r.take(wrap_len, "wrapped key")))
    ct_len = r.u64("ciphertext length")
    if ct_len > caps.bundle:
        raise BundleTooLarge("ciphertext length over the bundle cap")
    ciphertext = r.take(ct_len, "ciphertext")
    r.end()

    header = _strict_json(header_bytes, "header", _PLAIN_DECODE)
    if canonical_json(header) != header_bytes:  # also refuses duplicate keys: the re-encoding loses one
        raise BundleMalformed("header is not in canonical form")
    _check_fields(header, _HEADER_TYPES, "header")
    _check_fields(header["python"], _PYTHON_TYPES, "header.python")
    if header["ct_len"] != ct_len:
        raise BundleMalformed("header ciphertext length does not match")
    if sorted(kid.hex() for kid, _ in signatures) != sorted(header["signers"]):
        raise BundleMalformed("signature table does not match the header's signers")
    if not header["task"] or len(header["task"]) > 128:
        raise BundleMalformed("task name empty or too long")
    if header["release"] < 0 or header["pt_len"] < 0:
        raise BundleMalformed("negative release or size")
    try:
        if len(bytes.fromhex(header["nonce"])) != NONCE_LEN:
            raise ValueError
        bytes.fromhex(header["ct_sha256"])
        bytes.fromhex(header["pt_sha256"])
    except ValueError:
        raise BundleMalformed("header nonce or digests are not valid hex") from None
    return RawBundle(header_bytes, header, signatures, recipients, ciphertext)


# --- payload --------------------------------------------------------------------------


@dataclass
class Payload:
    manifest: dict[str, Any]
    code: bytes
    models: dict[str, bytes] = field(default_factory=dict)

    def encode(self) -> bytes:
        manifest = canonical_json(self.manifest)
        parts = [PAYLOAD_MAGIC, struct.pack(">I", len(manifest)), manifest,
                 struct.pack(">I", len(self.code)), self.code, struct.pack(">H", len(self.models))]
        for name in sorted(self.models):
            raw_name = name.encode("utf-8")
            blob = self.models[name]
            parts += [struct.pack(">H", len(raw_name)), raw_name, struct.pack(">Q", len(blob)), blob]
        return b"".join(parts)


MANIFEST_FIELDS = {
    "task": str,
    "release": int,
    "entry": str,
    "timeout": (int, float),
    "lane": str,
    "models": dict,
    "triggers": list,
    "requires": list,
    "then": list,
    "warmup": (dict, list, str, int, float, bool, type(None)),
    "min_container": str,
    "meta": dict,
}

# Optional manifest fields (added after v1 shipped; absent = the v1 meaning).  A task
# bundle written before they existed is byte-for-byte what the sealer still writes.
OPTIONAL_MANIFEST_FIELDS = {
    "kind": str,  # "task" (default) or "model": a model bundle carries one model, no script
    "model_refs": dict,  # alias -> reference to a model installed from a model bundle
    "model_info": dict,  # model bundles: {"signature": {...}, "micro_batch": {...} | null}
}
KINDS = ("task", "model")
MODEL_BUNDLE_PREFIX = "model:"  # a model bundle's header/manifest name: "model:" + model name
MODEL_REF_KEYS = {"ref", "policy", "sha256", "signature", "min_release"}
MODEL_REF_POLICIES = ("pin", "compatible")


def manifest_kind(manifest: dict[str, Any]) -> str:
    """``"task"`` or ``"model"`` (manifests without ``kind`` are tasks)."""
    return manifest.get("kind", "task")


_HEADER_TYPES = _exact_types(HEADER_FIELDS)
_PYTHON_TYPES = _exact_types(PYTHON_FIELDS)
_MANIFEST_TYPES = _exact_types(MANIFEST_FIELDS)
_OPTIONAL_TYPES = _exact_types(OPTIONAL_MANIFEST_FIELDS)


def _check_manifest_fields(manifest: dict[str, Any]) -> None:
    extra = manifest.keys() - _MANIFEST_TYPES.keys() - _OPTIONAL_TYPES.keys()
    missing = _MANIFEST_TYPES.keys() - manifest.keys()
    if extra or missing:
        raise BundleMalformed(f"manifest fields wrong (missing {sorted(missing)}, unknown {sorted(extra)})")
    for key, value in manifest.items():
        if type(value) not in (_MANIFEST_TYPES.get(key) or _OPTIONAL_TYPES[key]):
            raise BundleMalformed(f"manifest field {key!r} has the wrong type")


def _check_kind(manifest: dict[str, Any], models: dict[str, bytes]) -> None:
    """A model bundle is named ``model:NAME``, carries exactly model NAME and no refs;
    a task bundle's name never starts with ``model:`` (the two share one namespace
    of bundle names, and anti-rollback reads the name before decryption)."""
    kind = manifest_kind(manifest)
    if kind not in KINDS:
        raise BundleMalformed(f"unknown manifest kind {kind!r}")
    name = manifest["task"]
    if kind == "model":
        model = name[len(MODEL_BUNDLE_PREFIX):] if name.startswith(MODEL_BUNDLE_PREFIX) else ""
        if not model or set(models) != {model} or set(manifest["models"]) != {model}:
            raise BundleMalformed(
                "a model bundle is named 'model:NAME' and carries model NAME only")
        if "model_refs" in manifest or not isinstance(manifest.get("model_info"), dict):
            raise BundleMalformed("a model bundle has model_info and no model_refs")
        return
    if name.startswith(MODEL_BUNDLE_PREFIX):
        raise BundleMalformed(f"task names may not start with {MODEL_BUNDLE_PREFIX!r}")
    if "model_info" in manifest:
        raise BundleMalformed("model_info belongs to model bundles")
    for alias, ref in manifest.get("model_refs", {}).items():
        _check_model_ref(alias, ref, manifest["models"])


def _check_model_ref(alias: str, ref: Any, embedded: dict[str, Any]) -> None:
    what = f"model_refs[{alias!r}]"
    if not alias or len(alias) > 64 or alias in embedded:
        raise BundleMalformed(f"{what}: alias empty, too long or also an embedded model")
    if not isinstance(ref, dict) or not set(ref) <= MODEL_REF_KEYS or "ref" not in ref:
        raise BundleMalformed(
            f"{what} must be an object with 'ref' and only {sorted(MODEL_REF_KEYS)}")
    policy = ref.get("policy", "pin")
    if not isinstance(ref["ref"], str) or not ref["ref"] or policy not in MODEL_REF_POLICIES:
        raise BundleMalformed(
            f"{what}: 'ref' must name a model, policy one of {MODEL_REF_POLICIES}")
    sha = ref.get("sha256")
    if sha is not None and not (isinstance(sha, str) and len(sha) == 64
                                and all(c in "0123456789abcdef" for c in sha)):
        raise BundleMalformed(f"{what}: sha256 must be 64 lowercase hex digits")
    if policy == "pin" and sha is None:
        raise BundleMalformed(f"{what}: a pinned reference needs its sha256")
    if policy == "compatible" and not isinstance(ref.get("signature"), dict):
        raise BundleMalformed(f"{what}: a compatible reference needs the signature it expects")
    min_release = ref.get("min_release", 0)
    if type(min_release) is not int or min_release < 0:
        raise BundleMalformed(f"{what}: min_release must be an int >= 0")


def parse_payload(data: bytes, caps: SizeCaps = DEFAULT_CAPS) -> Payload:
    """Parse the (already authenticated) plaintext.  Raises BundleMalformed."""
    r = _Reader(data)
    if r.take(4, "payload magic") != PAYLOAD_MAGIC:
        raise BundleMalformed("bad payload magic")
    manifest_len = r.u32("manifest length")
    if manifest_len > caps.manifest:
        raise BundleTooLarge("manifest over its cap")
    manifest = _strict_json(r.take(manifest_len, "manifest"), "manifest")
    _check_manifest_fields(manifest)
    if manifest["lane"] not in LANES:
        raise BundleMalformed(f"unknown lane {manifest['lane']!r}")
    if not manifest["timeout"] > 0:
        raise BundleMalformed("manifest timeout must be positive")
    for key in ("requires", "then"):
        if not all(isinstance(n, str) and n for n in manifest[key]):
            raise BundleMalformed(f"manifest {key!r} must list task names")
    code_len = r.u32("code length")
    if code_len > caps.code:
        raise BundleTooLarge("code over its cap")
    code = r.take(code_len, "code")
    models: dict[str, bytes] = {}
    total = 0
    for _ in range(r.u16("model count")):
        name = r.take(r.u16("model name length"), "model name").decode("utf-8", "replace")
        size = r.u64("model size")
        total += size
        if total > caps.models:
            raise BundleTooLarge("models over their cap")
        models[name] = r.take(size, "model")
    r.end()
    _check_kind(manifest, models)
    return Payload(manifest, code, models)
