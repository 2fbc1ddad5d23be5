"""The committed test vector (tests/vectors/v1): installs and runs, and every
documented field of the layout checks out - re-derived here independently of
the verifier (struct offsets, Ed25519, HPKE, AES-GCM by hand)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import marshal
import struct
import sys
from pathlib import Path
from types import CodeType

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from vmcontainer import Container
from vmcontainer import __version__ as container_version
from vmcontainer.bundle import format as fmt
from vmcontainer.bundle.keys import key_id, load_device_private, load_publisher_public
from vmcontainer.bundle.verifier import RUNNING_PYTHON

from ._support import regions

VECTOR = Path(__file__).resolve().parents[1] / "vectors" / "v1"
EXPECTED = json.loads((VECTOR / "expected.json").read_text())
BUNDLE = (VECTOR / "bundle.vmb").read_bytes()

same_interpreter = pytest.mark.skipif(
    EXPECTED["header"]["python"] != RUNNING_PYTHON,
    reason=f"vector built for {EXPECTED['header']['python']['cache_tag']}; bundles are "
           f"per-interpreter and this is {RUNNING_PYTHON['cache_tag']}",
)


def test_vector_files():
    assert sorted(p.name for p in VECTOR.iterdir()) == [
        "bundle.vmb", "device.key", "expected.json", "publisher.pub"]
    assert b"PRIVATE KEY" in (VECTOR / "device.key").read_bytes()
    assert b"PRIVATE" not in (VECTOR / "publisher.pub").read_bytes()
    assert len(BUNDLE) == EXPECTED["size"]


@same_interpreter
def test_vector_installs_and_returns_the_recorded_result():
    with Container(trust=VECTOR / "publisher.pub", device_key=VECTOR / "device.key",
                   workers=1) as c:
        info = c.install(VECTOR / "bundle.vmb")
        assert (info.name, info.release) == ("vector-sum", 3)
        assert info.signers == (EXPECTED["publisher_kid"],)
        assert info.entry == EXPECTED["manifest"]["entry"]
        assert info.meta == {"vector": "v1"}
        assert c.invoke("vector-sum", EXPECTED["inputs"]) == EXPECTED["result"] == {"sum": 10.5}
        assert c.invoke("vector-sum", {"xs": [10, -4]}) == {"sum": 6}


def test_vector_parses_with_every_documented_field():
    raw = fmt.parse_bundle(BUNDLE)
    header = EXPECTED["header"]
    assert raw.header == header
    assert set(header) == set(fmt.HEADER_FIELDS)
    assert set(header["python"]) == set(fmt.PYTHON_FIELDS)
    assert raw.header_bytes == fmt.canonical_json(header)  # canonical JSON, ASCII
    assert header["format"] == fmt.FORMAT_VERSION == 1
    assert (header["task"], header["release"]) == ("vector-sum", 3)
    assert header["created"] == 1_700_000_000 and header["expires"] is None
    assert header["aead"] == "AES-256-GCM"
    assert header["wrap"] == "HPKE-P256-HKDF-SHA256-AES-256-GCM"
    assert len(bytes.fromhex(header["nonce"])) == 12
    assert header["signers"] == [EXPECTED["publisher_kid"]]

    # framing, by raw offsets
    regs = {r.name: BUNDLE[r.start:r.end] for r in regions(BUNDLE)}
    assert list(regs) == ["magic", "version", "header_len", "header", "nsig", "sig_kid[0]",
                          "sig[0]", "nrcpt", "rcpt_kid[0]", "wrap_len[0]", "wrap[0]", "ct_len",
                          "ct_body", "gcm_tag"]
    assert regs["magic"] == b"\x89VMB" and regs["version"] == b"\x01"
    assert struct.unpack(">I", regs["header_len"])[0] == len(raw.header_bytes)
    assert regs["header"] == raw.header_bytes
    assert regs["nsig"] == b"\x01" and struct.unpack(">H", regs["nrcpt"]) == (1,)
    assert struct.unpack(">H", regs["wrap_len[0]"])[0] == len(regs["wrap[0]"]) == 113
    assert struct.unpack(">Q", regs["ct_len"])[0] == header["ct_len"] == header["pt_len"] + 16
    ciphertext = regs["ct_body"] + regs["gcm_tag"]
    assert ciphertext == raw.ciphertext
    assert hashlib.sha256(ciphertext).hexdigest() == header["ct_sha256"]

    # signature: Ed25519 by the trust root over SIG_CONTEXT | header
    publisher = load_publisher_public(VECTOR / "publisher.pub")
    assert regs["sig_kid[0]"] == key_id(publisher) == bytes.fromhex(EXPECTED["publisher_kid"])
    publisher.verify(regs["sig[0]"], b"vmcontainer/bundle/v1/signature\x00" + raw.header_bytes)

    # wrap: HPKE to the device key, info = context | sha256(header) | device kid
    device = load_device_private(VECTOR / "device.key")
    assert regs["rcpt_kid[0]"] == key_id(device.public_key()) == bytes.fromhex(
        EXPECTED["device_kid"])
    info = (b"vmcontainer/bundle/v1/content-key\x00" + hashlib.sha256(raw.header_bytes).digest()
            + regs["rcpt_kid[0]"])
    assert header["wrap"] == fmt.WRAP_NAMES["p256"]  # the v1 vectors use a P-256 device key
    content_key = fmt.wrap_for(device)[1].decrypt(regs["wrap[0]"], device, info=info)
    assert len(content_key) == 32

    # AES-256-GCM, AAD = the canonical header with ct_sha256 blanked
    aad = fmt.canonical_json({**header, "ct_sha256": ""})
    plaintext = AESGCM(content_key).decrypt(bytes.fromhex(header["nonce"]), ciphertext, aad)
    assert len(plaintext) == header["pt_len"]
    assert hashlib.sha256(plaintext).hexdigest() == header["pt_sha256"]

    # payload = PMAGIC | manifest_len | manifest | code_len | code | nmodels
    assert plaintext[:4] == b"VMP1"
    (mlen,) = struct.unpack(">I", plaintext[4:8])
    manifest_bytes = plaintext[8:8 + mlen]
    manifest = json.loads(manifest_bytes)
    assert manifest_bytes == fmt.canonical_json(manifest)
    assert manifest == EXPECTED["manifest"]
    assert set(manifest) == set(fmt.MANIFEST_FIELDS)
    assert (manifest["task"], manifest["release"]) == (header["task"], header["release"])
    assert manifest["models"] == {}
    pos = 8 + mlen
    (clen,) = struct.unpack(">I", plaintext[pos:pos + 4])
    code = plaintext[pos + 4:pos + 4 + clen]
    pos += 4 + clen
    assert plaintext[pos:] == b"\x00\x00"  # no models, nothing after
    payload = fmt.parse_payload(plaintext)
    assert payload.code == code and payload.models == {} and payload.manifest == manifest

    if header["python"]["magic"] == importlib.util.MAGIC_NUMBER.hex():
        obj = marshal.loads(code)
        assert isinstance(obj, CodeType)
        assert obj.co_filename == EXPECTED["code_filename"] == "task.py"  # no build path


def test_vector_generator_still_produces_the_same_shape(tmp_path):
    sys.path.insert(0, str(VECTOR.parent))
    try:
        import make_vectors
    finally:
        sys.path.remove(str(VECTOR.parent))
    fresh = make_vectors.make(tmp_path / "v1")
    assert sorted(p.name for p in (tmp_path / "v1").iterdir()) == sorted(
        p.name for p in VECTOR.iterdir())
    random_fields = {"nonce", "ct_sha256", "pt_sha256", "signers"}
    # The compiled code's size and the manifest's min_container follow the toolchain
    # version (0.2 checkpoints read a flag, not the clock); the layout does not.
    toolchain_fields = {"ct_len", "pt_len"}
    same = {k: v for k, v in EXPECTED["header"].items() if k not in random_fields | toolchain_fields}
    if EXPECTED["header"]["python"] != RUNNING_PYTHON:
        same.pop("python")
    assert {k: fresh["header"][k] for k in same} == same
    assert fresh["header"]["ct_len"] == fresh["header"]["pt_len"] + 16  # the GCM tag
    assert fresh["result"] == EXPECTED["result"]
    assert fresh["manifest"] == {**EXPECTED["manifest"], "min_container": container_version}
    assert (tmp_path / "v1" / "device.key").stat().st_mode & 0o777 == 0o600
