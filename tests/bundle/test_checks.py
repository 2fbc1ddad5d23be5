"""One test per ``BundleError`` subclass through a real ``Container``, the check
order, and hot swap.

Bundles that must fail a late check are forged with the real publisher key
(``_support.forge``), so every earlier check passes and the failure is the one
under test.  ``test_forge_positive_control`` proves the forger itself makes
installable bundles.
"""

from __future__ import annotations

import hashlib
import marshal
import os
import struct
import threading
import time
import types

import pytest

import vmcontainer.bundle.sealer as sealer_mod
from vmcontainer import (
    BundleDecryptError,
    BundleError,
    BundleExpired,
    BundleIncompatible,
    BundleIntegrityError,
    BundleMalformed,
    BundleNotForThisDevice,
    BundleRollback,
    BundleSignatureInvalid,
    BundleTooLarge,
)
from vmcontainer.bundle import format as fmt
from vmcontainer.bundle.format import SizeCaps
from vmcontainer.bundle.keys import generate_device_key
from vmcontainer.bundle.sealer import seal
from vmcontainer.bundle.verifier import RUNNING_PYTHON

from ._support import (
    SUM_SCRIPT,
    add_model,
    build,
    container_for,
    forge,
    make_keys,
    payload_for,
    resign,
)

XS = {"xs": [1, 2, 3]}

ALL_BUNDLE_ERRORS = {
    BundleTooLarge, BundleMalformed, BundleSignatureInvalid, BundleIncompatible, BundleExpired,
    BundleRollback, BundleNotForThisDevice, BundleDecryptError, BundleIntegrityError,
}


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    return make_keys(tmp_path_factory.mktemp("checks") / "main")


@pytest.fixture(scope="module")
def other(tmp_path_factory):
    """A second publisher and a second device."""
    return make_keys(tmp_path_factory.mktemp("checks") / "other")


@pytest.fixture
def device(keys):
    with container_for(keys) as c:
        yield c


def refuse(container, data: bytes, expected: type[BundleError], **kwargs) -> BundleError:
    with pytest.raises(BundleError) as info:
        container.install(data, **kwargs)
    assert type(info.value) is expected, f"{type(info.value).__name__}: {info.value}"
    return info.value


def test_every_subclass_is_covered():
    from vmcontainer import errors

    subclasses = {c for c in vars(errors).values()
                  if isinstance(c, type) and issubclass(c, BundleError) and c is not BundleError}
    assert subclasses == ALL_BUNDLE_ERRORS


def test_forge_positive_control(keys, device):
    data = forge(payload_for(), signers=[keys.signer], recipients=[keys.recipient])
    assert device.install(data).name == "task"
    assert device.invoke("task", XS) == {"sum": 6}


# --- 1. size caps --------------------------------------------------------------------


def test_too_large_bundle(keys):
    data = build(keys)
    with container_for(keys, caps=SizeCaps(bundle=len(data) - 1)) as c:
        exc = refuse(c, data, BundleTooLarge)
        assert str(len(data)) in str(exc)


@pytest.mark.parametrize("cap", ["code", "manifest", "models"])
def test_too_large_payload_sections(keys, cap):
    """Payload caps are enforced after decryption too (and still as BundleTooLarge)."""
    data = build(keys, models={"adder": add_model()},
                 source="import vm\ndef main(inputs):\n    return vm.model('adder').inputs\n")
    with container_for(keys, caps=SizeCaps(**{cap: 10})) as c:
        refuse(c, data, BundleTooLarge)
        assert c.tasks() == []
    with container_for(keys) as c:
        assert c.install(data).models == ("adder",)


# --- 2. strict parse -------------------------------------------------------------------


def test_malformed_garbage(device):
    """Framing that parses, around a header that is not JSON."""
    junk = b"not json"
    data = (b"\x89VMB\x01" + struct.pack(">I", len(junk)) + junk + b"\x01" + bytes(16 + 64)
            + struct.pack(">H", 0) + struct.pack(">Q", 0))
    exc = refuse(device, data, BundleMalformed)
    assert "JSON" in str(exc)


@pytest.mark.parametrize("edit", ["non_canonical", "duplicate_key", "missing_field",
                                  "extra_field", "bool_release", "bad_nonce", "empty_task"])
def test_malformed_header_even_when_validly_signed(keys, device, edit):
    """The parser refuses these before any signature is looked at - and the signature
    over these exact bytes is valid, so it is the parse that refuses."""
    def edit_raw(raw):
        h = raw.header_bytes
        if edit == "non_canonical":
            raw.header_bytes = h.replace(b'{"aead"', b'{ "aead"', 1)
        elif edit == "duplicate_key":
            raw.header_bytes = h[:-1] + b',"task":"task"}'
        elif edit == "missing_field":
            raw.header_bytes = fmt.canonical_json({k: v for k, v in raw.header.items()
                                                   if k != "signers"})
        elif edit == "extra_field":
            raw.header_bytes = fmt.canonical_json({**raw.header, "zzz": 1})
        elif edit == "bool_release":
            raw.header_bytes = fmt.canonical_json({**raw.header, "release": True})
        elif edit == "bad_nonce":
            raw.header_bytes = fmt.canonical_json({**raw.header, "nonce": "00" * 11})
        elif edit == "empty_task":
            raw.header_bytes = fmt.canonical_json({**raw.header, "task": ""})
        assert raw.header_bytes != h
        resign(raw, [keys.signer])

    data = forge(payload_for(), signers=[keys.signer], recipients=[keys.recipient],
                 edit_raw=edit_raw)
    refuse(device, data, BundleMalformed)


# --- 3. signatures -----------------------------------------------------------------------


def test_untrusted_signer(keys, other, device):
    refuse(device, build(other, to=[keys]), BundleSignatureInvalid)


def test_threshold_two_with_one_signer(keys, other):
    with container_for(keys, trust=[keys, other], threshold=2) as c:
        exc = refuse(c, build(keys), BundleSignatureInvalid)
        assert "2 required" in str(exc)
        refuse(c, build(other, to=[keys]), BundleSignatureInvalid)


def test_two_of_two_passes(keys, other):
    with container_for(keys, trust=[keys, other], threshold=2) as c:
        info = c.install(build([keys, other], to=[keys]))
        assert set(info.signers) == {keys.publisher_kid.hex(), other.publisher_kid.hex()}
        assert c.invoke("task", XS) == {"sum": 6}


def test_same_signature_twice_does_not_count_twice(keys, other):
    """The header lists the signer twice and the table carries its signature twice:
    it parses, but counts as one signer."""
    kid = keys.publisher_kid.hex()

    def duplicate(raw):
        raw.signatures.append(raw.signatures[0])

    data = forge(payload_for(), signers=[keys.signer], recipients=[keys.recipient],
                 edit_header=lambda h: h.update(signers=[kid, kid]), edit_raw=duplicate)
    with container_for(keys, trust=[keys, other], threshold=2) as c:
        refuse(c, data, BundleSignatureInvalid)
    with container_for(keys) as c:  # one valid signature is enough at threshold 1
        assert c.install(data).signers == (keys.publisher_kid.hex(),)


def test_signatures_swapped_between_signers(keys, other):
    def swap(raw):
        (k0, s0), (k1, s1) = raw.signatures
        raw.signatures[:] = [(k0, s1), (k1, s0)]

    data = forge(payload_for(), signers=[keys.signer, other.signer],
                 recipients=[keys.recipient], edit_raw=swap)
    with container_for(keys, trust=[keys, other]) as c:
        refuse(c, data, BundleSignatureInvalid)


def test_signature_without_the_context_prefix(keys, device):
    """A signature over the bare header (no domain separation) is not accepted."""
    def bare(raw):
        kid, _ = raw.signatures[0]
        raw.signatures[0] = (kid, keys.signer.sign(raw.header_bytes))

    data = forge(payload_for(), signers=[keys.signer], recipients=[keys.recipient],
                 edit_raw=bare)
    refuse(device, data, BundleSignatureInvalid)


def test_ciphertext_swapped_from_another_bundle(keys, device):
    """Header signed, ciphertext from another (equally signed) bundle of the same length."""
    a = forge(payload_for(), signers=[keys.signer], recipients=[keys.recipient])
    b = forge(payload_for(), signers=[keys.signer], recipients=[keys.recipient])
    ra, rb = fmt.parse_bundle(a), fmt.parse_bundle(b)
    assert len(ra.ciphertext) == len(rb.ciphertext)
    ra.ciphertext = rb.ciphertext
    exc = refuse(device, ra.encode(), BundleSignatureInvalid)
    assert "digest" in str(exc)


# --- 4. compatibility --------------------------------------------------------------------


@pytest.mark.parametrize("field, value", [
    ("magic", "cb0d0d0a" if RUNNING_PYTHON["magic"] != "cb0d0d0a" else "f30d0d0a"),
    ("cache_tag", "cpython-399"),
    ("impl", "pypy"),
])
def test_incompatible_python_via_the_real_sealer(keys, device, monkeypatch, field, value):
    """Sealed by ``sealer.seal`` (valid signature) but for another interpreter."""
    monkeypatch.setattr(sealer_mod, "RUNNING_PYTHON", {**RUNNING_PYTHON, field: value})
    data = seal(payload_for(), signers=[keys.signer], recipients=[keys.recipient])
    assert fmt.parse_bundle(data).header["python"][field] == value
    exc = refuse(device, data, BundleIncompatible)
    assert RUNNING_PYTHON["cache_tag"] in str(exc)
    assert device.tasks() == []


@pytest.mark.parametrize("edit", [{"format": 2}, {"aead": "ChaCha20-Poly1305"},
                                  {"wrap": "RSA-OAEP"}])
def test_incompatible_header_fields(keys, device, edit):
    data = forge(payload_for(), signers=[keys.signer], recipients=[keys.recipient],
                 edit_header=lambda h: h.update(edit))
    refuse(device, data, BundleIncompatible)


# --- 5. expiry ------------------------------------------------------------------------------


def test_expired(keys, device):
    refuse(device, build(keys, expires_in=-10), BundleExpired)
    refuse(device, build(keys, now=time.time() - 7200, expires_in=3600), BundleExpired)
    assert device.tasks() == []


def test_not_yet_valid_and_clock_skew(keys, device):
    refuse(device, build(keys, now=time.time() + 3 * 24 * 3600), BundleExpired)
    assert device.install(build(keys, now=time.time() + 3600)).release == 1  # within skew
    assert device.install(build(keys, release=2, expires_in=60)).release == 2


# --- 6. anti-rollback -------------------------------------------------------------------------


def test_rollback(keys, device):
    assert device.install(build(keys, release=2)).release == 2
    refuse(device, build(keys, release=1), BundleRollback)
    assert [(t.name, t.release) for t in device.tasks()] == [("task", 2)]
    assert device.install(build(keys, release=2)).release == 2  # same release: allowed
    assert device.install(build(keys, release=1), allow_rollback=True).release == 1
    assert device.invoke("task", XS) == {"sum": 6}
    # the high-water mark stays at 2 after an explicit rollback ...
    refuse(device, build(keys, release=1, source=SUM_SCRIPT + "\n"), BundleRollback)


def test_rollback_mark_survives_uninstall(keys, device):
    device.install(build(keys, release=5))
    device.uninstall("task")
    refuse(device, build(keys, release=4), BundleRollback)
    assert device.install(build(keys, release=5)).release == 5


def test_rollback_is_per_task(keys, device):
    device.install(build(keys, name="a", release=9))
    assert device.install(build(keys, name="b", release=1)).release == 1


# --- 7. unwrap -----------------------------------------------------------------------------------


def test_not_for_this_device(keys, other, device):
    exc = refuse(device, build(keys, to=[other]), BundleNotForThisDevice)
    assert "no content key" in str(exc)


@pytest.fixture(scope="module")
def p256(tmp_path_factory):
    """A publisher and a device whose key is P-256 (the hardware-keystore type)."""
    return make_keys(tmp_path_factory.mktemp("checks") / "p256", device_key="p256")


def test_both_device_key_types_install_and_run(keys, p256):
    assert fmt.parse_bundle(build(keys)).header["wrap"] == fmt.WRAP_NAMES["x25519"]
    assert fmt.parse_bundle(build(p256)).header["wrap"] == fmt.WRAP_NAMES["p256"]
    for ks in (keys, p256):
        with container_for(ks) as c:
            c.install(build(ks, name="sum"))
            assert c.invoke("sum", {"xs": [1, 2, 3]}) == {"sum": 6}


class _SpySuite:
    def __init__(self) -> None:
        self.calls = 0

    def decrypt(self, *args: object, **kwargs: object) -> bytes:
        self.calls += 1
        raise AssertionError("unwrap attempted")


def test_a_bundle_wrapped_for_the_other_key_type_is_refused_before_any_unwrap(keys, p256):
    """The wrap named in the (signed) header must be this device's: a P-256 key is
    never handed to the X25519 suite, nor the reverse."""
    for device_keys, bundle_keys in ((p256, keys), (keys, p256)):
        # signed by the device's own publisher, encrypted to a key of the other type
        bundle = build(device_keys, to=[bundle_keys])
        with container_for(device_keys) as c:
            spy = c._verifier._suite = _SpySuite()
            exc = refuse(c, bundle, BundleNotForThisDevice)
        assert "needs HPKE-" in str(exc) and spy.calls == 0


def test_one_bundle_cannot_mix_device_key_types(keys, p256):
    with pytest.raises(ValueError, match="all have X25519 keys or all P-256"):
        seal(payload_for(), signers=[keys.signer], recipients=[keys.recipient, p256.recipient])


def test_recipients_stripped_after_signing(keys, device):
    """The recipients table is not signed: removing it keeps the signature valid."""
    data = forge(payload_for(), signers=[keys.signer], recipients=[keys.recipient],
                 edit_raw=lambda raw: raw.recipients.clear())
    refuse(device, data, BundleNotForThisDevice)


def test_wrap_from_another_bundle_does_not_open(keys, device):
    """Wraps are bound to the header digest: this device's wrap from bundle B,
    pasted into bundle A, is refused although both are for this device."""
    a = fmt.parse_bundle(forge(payload_for(), signers=[keys.signer], recipients=[keys.recipient]))
    b = fmt.parse_bundle(forge(payload_for(), signers=[keys.signer], recipients=[keys.recipient]))
    a.recipients = b.recipients
    exc = refuse(device, a.encode(), BundleNotForThisDevice)
    assert "does not open" in str(exc)


def test_wrapped_key_of_the_wrong_length(keys, device):
    data = forge(payload_for(), signers=[keys.signer], recipients=[keys.recipient],
                 wrapped_key=os.urandom(16))
    refuse(device, data, BundleNotForThisDevice)


def test_wrap_of_a_foreign_key_before_the_real_one_is_skipped(keys, device):
    """Anyone can add a wrap of a random key under this device's kid (the table is
    unsigned and the device public key is public); the verifier tries the next one."""
    def prepend_foreign(raw):
        kid, _ = raw.recipients[0]
        foreign = fmt.wrap_for(keys.recipient)[1].encrypt(os.urandom(fmt.KEY_LEN), keys.recipient,
                                         info=fmt.wrap_info(raw.header_bytes, kid))
        raw.recipients.insert(0, (kid, foreign))

    data = forge(payload_for(), signers=[keys.signer], recipients=[keys.recipient],
                 edit_raw=prepend_foreign)
    assert device.install(data).name == "task"
    assert device.invoke("task", XS) == {"sum": 6}


def test_second_wrap_for_this_device_is_tried(keys, device):
    """A bad wrap under this device's key id followed by a good one still opens."""
    def prepend_bad(raw):
        kid, wrap = raw.recipients[0]
        raw.recipients.insert(0, (kid, bytes(len(wrap))))

    data = forge(payload_for(), signers=[keys.signer], recipients=[keys.recipient],
                 edit_raw=prepend_bad)
    assert device.install(data).name == "task"


# --- 8. decrypt ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["aad", "nonce", "key"])
def test_decrypt_error(keys, device, how):
    kwargs = {
        # the AAD of another task's header (the one in the bundle is signed and correct)
        "aad": {"aad": lambda header: fmt.aead_aad(fmt.canonical_json({**header, "task": "other"}))},
        "nonce": {"encrypt_nonce": os.urandom(fmt.NONCE_LEN)},
        "key": {"wrapped_key": os.urandom(fmt.KEY_LEN)},  # another content key
    }[how]
    data = forge(payload_for(), signers=[keys.signer], recipients=[keys.recipient], **kwargs)
    refuse(device, data, BundleDecryptError)
    assert device.tasks() == []


# --- 9 + 10. integrity ------------------------------------------------------------------------------


def _payload_with(code: bytes | None = None, manifest_edit=None, models=None) -> bytes:
    p = payload_for(models=models)
    if code is not None:
        p.code = code
    if manifest_edit:
        manifest_edit(p.manifest)
    return p.encode()


@pytest.mark.parametrize("case", [
    "pt_sha256", "pt_len", "not_code", "bad_marshal", "empty_code", "manifest_task",
    "manifest_release", "manifest_model_missing", "model_digest", "payload_magic",
])
def test_integrity_error(keys, device, case, monkeypatch):
    calls = []
    import vmcontainer.bundle.verifier as verifier_mod

    real_loads = marshal.loads
    monkeypatch.setattr(verifier_mod, "marshal", types.SimpleNamespace(
        loads=lambda b: calls.append(b) or real_loads(b)))
    model = add_model()
    edit_header = None
    if case == "pt_sha256":
        pt = _payload_with()
        def edit_header(h):
            return h.update(pt_sha256=hashlib.sha256(b"x").hexdigest())
    elif case == "pt_len":
        pt = _payload_with()
        def edit_header(h):
            return h.update(pt_len=h["pt_len"] - 1)
    elif case == "not_code":
        pt = _payload_with(code=marshal.dumps(42))
    elif case == "bad_marshal":
        pt = _payload_with(code=b"\xff not marshal data")
    elif case == "empty_code":
        pt = _payload_with(code=b"")
    elif case == "manifest_task":
        pt = _payload_with(manifest_edit=lambda m: m.update(task="other"))
    elif case == "manifest_release":
        pt = _payload_with(manifest_edit=lambda m: m.update(release=7))
    elif case == "manifest_model_missing":
        pt = _payload_with(manifest_edit=lambda m: m["models"].update(
            extra=hashlib.sha256(b"").hexdigest()))
    elif case == "model_digest":
        pt = _payload_with(models={"adder": model},
                           manifest_edit=lambda m: m["models"].update(adder="00" * 32))
    else:  # payload_magic
        pt = b"VMP2" + _payload_with()[4:]
    data = forge(pt, signers=[keys.signer], recipients=[keys.recipient], edit_header=edit_header)
    refuse(device, data, BundleIntegrityError)
    assert device.tasks() == []
    unmarshal_expected = case in ("not_code", "bad_marshal", "empty_code")
    assert bool(calls) == unmarshal_expected, (case, calls)


# --- check order -----------------------------------------------------------------------------------


def test_order_too_large_before_malformed(keys):
    with container_for(keys, caps=SizeCaps(bundle=10)) as c:
        refuse(c, b"garbage-garbage", BundleTooLarge)


def test_order_malformed_before_signature(keys, other, device):
    """Untrusted signer and a non-canonical header: the parse fails first."""
    def edit_raw(raw):
        raw.header_bytes = raw.header_bytes.replace(b'{"aead"', b'{ "aead"', 1)

    data = forge(payload_for(), signers=[other.signer], recipients=[keys.recipient],
                 edit_raw=edit_raw)
    refuse(device, data, BundleMalformed)


def test_order_signature_before_expiry(keys, other, device):
    refuse(device, build(other, to=[keys], expires_in=-10), BundleSignatureInvalid)


def test_order_signature_before_incompatible(keys, other, device, monkeypatch):
    monkeypatch.setattr(sealer_mod, "RUNNING_PYTHON", {**RUNNING_PYTHON, "magic": "00000000"})
    data = seal(payload_for(), signers=[other.signer], recipients=[keys.recipient])
    refuse(device, data, BundleSignatureInvalid)


def test_order_incompatible_before_expiry(keys, device, monkeypatch):
    monkeypatch.setattr(sealer_mod, "RUNNING_PYTHON", {**RUNNING_PYTHON, "magic": "00000000"})
    data = seal(payload_for(), signers=[keys.signer], recipients=[keys.recipient],
                expires_in=-10)
    refuse(device, data, BundleIncompatible)


def test_order_expiry_before_rollback(keys, device):
    device.install(build(keys, release=3))
    refuse(device, build(keys, release=1, expires_in=-10), BundleExpired)


def test_order_rollback_before_unwrap(keys, other, device):
    device.install(build(keys, release=3))
    refuse(device, build(keys, release=1, to=[other]), BundleRollback)


def test_order_unwrap_before_decrypt(keys, other, device):
    data = forge(payload_for(), signers=[keys.signer], recipients=[other.recipient],
                 encrypt_nonce=os.urandom(fmt.NONCE_LEN))
    refuse(device, data, BundleNotForThisDevice)


def test_order_decrypt_before_integrity(keys, device):
    pt = _payload_with(code=marshal.dumps(42))
    data = forge(pt, signers=[keys.signer], recipients=[keys.recipient],
                 aad=lambda header: b"wrong aad")
    refuse(device, data, BundleDecryptError)


def test_failed_install_leaves_running_release_untouched(keys, other, device):
    device.install(build(keys, release=1))
    for bad in (build(other, to=[keys], release=2), build(keys, release=2, to=[other]),
                build(keys, release=2, expires_in=-5)):
        with pytest.raises(BundleError):
            device.install(bad)
        assert [(t.name, t.release) for t in device.tasks()] == [("task", 1)]
        assert device.invoke("task", XS) == {"sum": 6}


def test_device_key_generated_elsewhere_is_a_different_device(keys):
    data = forge(payload_for(), signers=[keys.signer],
                 recipients=[generate_device_key().public_key()])
    with container_for(keys) as c:
        refuse(c, data, BundleNotForThisDevice)


# --- hot swap -----------------------------------------------------------------------------------------

SLOW = '''\
import vm

RELEASE = {release}


def main(inputs):
    spins = 0
    while vm.remaining() > 5.0 - inputs["hold"]:
        spins += 1
    return {{"release": RELEASE, "vm_release": vm.release, "tag": inputs["tag"]}}
'''


def test_hot_swap_keeps_running_calls_on_their_release(keys):
    workers = 3
    with container_for(keys, workers=workers) as c:
        c.install(build(keys, SLOW.format(release=1), name="swap", release=1, timeout=5.0))
        release_2 = build(keys, SLOW.format(release=2), name="swap", release=2, timeout=5.0)
        old = [c.submit("swap", {"hold": 0.5, "tag": i}, timeout=5.0) for i in range(workers)]
        deadline = time.monotonic() + 5
        while not all(f.running() for f in old):
            assert time.monotonic() < deadline, "slow calls never started"
            time.sleep(0.005)
        time.sleep(0.05)  # each running call has picked up release 1 by now

        swapped = threading.Event()

        def install_2():
            c.install(release_2)
            swapped.set()

        t = threading.Thread(target=install_2)
        t.start()
        t.join(5)
        assert swapped.is_set()
        assert not any(f.done() for f in old), "install waited for running calls"
        assert [(i.name, i.release) for i in c.tasks()] == [("swap", 2)]

        new = [c.submit("swap", {"hold": 0.0, "tag": 10 + i}, timeout=5.0) for i in range(4)]
        for i, f in enumerate(old):
            assert f.result(timeout=5) == {"release": 1, "vm_release": 1, "tag": i}
        for i, f in enumerate(new):
            assert f.result(timeout=5) == {"release": 2, "vm_release": 2, "tag": 10 + i}
        assert c.invoke("swap", {"hold": 0.0, "tag": 99}) == {
            "release": 2, "vm_release": 2, "tag": 99}


def test_bool_is_not_an_int_in_header_union_field(keys, device):
    """``expires`` is int-or-null; ``true`` must not pass as the int 1."""
    data = forge(payload_for(), signers=[keys.signer], recipients=[keys.recipient],
                 edit_header=lambda h: h.update(expires=True))
    refuse(device, data, BundleMalformed)


def test_bool_is_not_a_number_in_manifest_timeout(keys, device):
    p = payload_for()
    p.manifest["timeout"] = True
    data = forge(p, signers=[keys.signer], recipients=[keys.recipient])
    refuse(device, data, BundleIntegrityError)


# --- signer table and min_container ----------------------------------------------------------


@pytest.mark.parametrize("how", ["extra_table_entry", "missing_table_entry", "header_lists_other"])
def test_signature_table_must_match_the_header_signers(keys, other, device, how):
    """Validly signed, but the unsigned table disagrees with the signed ``signers`` list."""
    def edit_raw(raw):
        if how == "extra_table_entry":
            raw.signatures.append((other.publisher_kid, bytes(64)))
        elif how == "missing_table_entry":
            del raw.signatures[1]
        else:
            raw.signatures[0] = (other.publisher_kid, raw.signatures[0][1])

    signers = [keys.signer, other.signer] if how == "missing_table_entry" else [keys.signer]
    data = forge(payload_for(), signers=signers, recipients=[keys.recipient], edit_raw=edit_raw)
    refuse(device, data, BundleMalformed)


def test_untrusted_cosigner_listed_in_the_header_is_ignored(keys, other, device):
    data = forge(payload_for(), signers=[keys.signer, other.signer], recipients=[keys.recipient])
    assert device.install(data).signers == (keys.publisher_kid.hex(),)


def test_min_container_above_this_version_is_incompatible(keys, device):
    data = forge(payload_for(min_container="99.0"), signers=[keys.signer],
                 recipients=[keys.recipient])
    exc = refuse(device, data, BundleIncompatible)
    assert "99.0" in str(exc)
    assert device.tasks() == []
    ok = forge(payload_for(min_container="0.0.1"), signers=[keys.signer],
               recipients=[keys.recipient])
    assert device.install(ok).name == "task"


def test_order_unwrap_before_min_container(keys, other, device):
    data = forge(payload_for(min_container="99.0"), signers=[keys.signer],
                 recipients=[other.recipient])
    refuse(device, data, BundleNotForThisDevice)
