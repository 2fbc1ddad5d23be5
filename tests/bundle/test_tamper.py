"""Byte-level tampering of a real bundle: every region, several positions each.

The bundle under test is built with ``vmtool``'s own ``build_bundle`` from keys
made by ``generate_keys``: two publishers (the container requires 2-of-2) and
one device, plus a tiny ONNX Add model.  Every tampered copy must be refused
with a ``BundleError`` - the specific subclass wherever the layout makes it
deterministic - and must leave no trace: nothing decrypted, nothing
unmarshalled, no task object built, the installed release (same task name, a
lower release) untouched and still answering correctly.
"""

from __future__ import annotations

import itertools
import os
import struct
import types

import pytest

import vmcontainer.bundle.verifier as verifier_mod
import vmcontainer.container as container_mod
from vmcontainer import (
    BundleError,
    BundleIncompatible,
    BundleMalformed,
    BundleNotForThisDevice,
    BundleSignatureInvalid,
    BundleTooLarge,
)
from vmcontainer.bundle import format as fmt
from vmcontainer.bundle.format import DEFAULT_CAPS, SizeCaps

from ._support import (
    MODEL_SCRIPT,
    add_model,
    build,
    container_for,
    flip,
    make_keys,
    region,
    regions,
)

INPUTS = {"xs": [1.0, 2.5]}
RELEASE_1_RESULT = {"release": 1, "doubled": [2.0, 5.0]}
RELEASE_2_RESULT = {"release": 2, "doubled": [2.0, 5.0]}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Keys, the good release-2 bundle, and a 2-of-2 container running release 1."""
    base = tmp_path_factory.mktemp("tamper")
    pub_a = make_keys(base / "a")  # publisher A + this device
    pub_b = make_keys(base / "b")  # second publisher
    model = add_model()

    def victim(release: int) -> bytes:
        return build([pub_a, pub_b], MODEL_SCRIPT.format(release=release), name="victim",
                     release=release, to=[pub_a], models={"adder": model})

    good = victim(2)
    container = container_for(pub_a, trust=[pub_a, pub_b], threshold=2)
    container.install(victim(1))
    assert container.invoke("victim", INPUTS) == RELEASE_1_RESULT
    ns = types.SimpleNamespace(keys=pub_a, keys_b=pub_b, good=good, container=container,
                               victim=victim)
    yield ns
    container.close()


@pytest.fixture
def spies(monkeypatch):
    """Record whether verification ever got past the signature/unwrap steps."""
    seen: dict[str, int] = {"decrypt": 0, "unmarshal": 0, "load": 0}
    real_aesgcm = verifier_mod.AESGCM
    real_loads = verifier_mod.marshal.loads
    real_task = container_mod.InstalledTask

    class SpyAESGCM:
        def __init__(self, key):
            self._inner = real_aesgcm(key)

        def decrypt(self, *args):
            seen["decrypt"] += 1
            return self._inner.decrypt(*args)

    def spy_loads(data):
        seen["unmarshal"] += 1
        return real_loads(data)

    def spy_task(*args, **kwargs):
        seen["load"] += 1
        return real_task(*args, **kwargs)

    monkeypatch.setattr(verifier_mod, "AESGCM", SpyAESGCM)
    monkeypatch.setattr(verifier_mod, "marshal", types.SimpleNamespace(loads=spy_loads))
    monkeypatch.setattr(container_mod, "InstalledTask", spy_task)
    return seen


def assert_rejected(world, spies, data: bytes, expected: tuple[type[BundleError], ...]):
    """Install must raise one of ``expected`` and change nothing."""
    c = world.container
    with pytest.raises(BundleError) as info:
        c.install(data)
    assert isinstance(info.value, expected), (
        f"got {type(info.value).__name__}: {info.value}; expected {[e.__name__ for e in expected]}"
    )
    assert spies == {"decrypt": 0, "unmarshal": 0, "load": 0}, spies
    assert [(t.name, t.release) for t in c.tasks()] == [("victim", 1)]
    assert c.invoke("victim", INPUTS) == RELEASE_1_RESULT
    return info.value


# --- the good bundle and its layout ------------------------------------------------


def test_good_bundle_installs_and_runs_on_a_fresh_container(world):
    with container_for(world.keys, trust=[world.keys, world.keys_b], threshold=2) as c:
        info = c.install(world.good)
        assert (info.name, info.release, info.models) == ("victim", 2, ("adder",))
        assert len(info.signers) == 2
        assert c.invoke("victim", INPUTS) == RELEASE_2_RESULT


def test_good_bundle_with_spies_decrypts_and_unmarshals_once(world, spies):
    """Positive control for the spies: a good install does trip each of them once."""
    with container_for(world.keys, trust=[world.keys, world.keys_b], threshold=2) as c:
        c.install(world.good)
    assert spies == {"decrypt": 1, "unmarshal": 1, "load": 1}


def test_layout_parser_agrees_with_product_parser(world):
    data = world.good
    regs = {r.name: r for r in regions(data)}
    raw = fmt.parse_bundle(data)
    assert [r.name for r in regions(data)] == [
        "magic", "version", "header_len", "header", "nsig",
        "sig_kid[0]", "sig[0]", "sig_kid[1]", "sig[1]",
        "nrcpt", "rcpt_kid[0]", "wrap_len[0]", "wrap[0]", "ct_len", "ct_body", "gcm_tag",
    ]
    # contiguous and covering every byte
    ordered = regions(data)
    assert ordered[0].start == 0 and ordered[-1].end == len(data)
    assert all(a.end == b.start for a, b in itertools.pairwise(ordered))

    def at(name):
        r = regs[name]
        return data[r.start:r.end]

    assert at("magic") == b"\x89VMB"
    assert at("version") == b"\x01"
    assert at("header") == raw.header_bytes
    assert struct.unpack(">I", at("header_len"))[0] == len(raw.header_bytes)
    assert raw.signatures == [(at("sig_kid[0]"), at("sig[0]")), (at("sig_kid[1]"), at("sig[1]"))]
    assert {at("sig_kid[0]"), at("sig_kid[1]")} == {world.keys.publisher_kid,
                                                    world.keys_b.publisher_kid}
    assert raw.recipients == [(at("rcpt_kid[0]"), at("wrap[0]"))]
    assert at("rcpt_kid[0]") == world.keys.device_kid
    enc = {fmt.WRAP_NAMES["x25519"]: 32, fmt.WRAP_NAMES["p256"]: 65}[raw.header["wrap"]]
    assert struct.unpack(">H", at("wrap_len[0]"))[0] == enc + 32 + 16  # HPKE enc | key | tag
    assert at("ct_body") + at("gcm_tag") == raw.ciphertext
    assert struct.unpack(">Q", at("ct_len"))[0] == raw.header["ct_len"] == len(raw.ciphertext)


# --- one flipped byte per region/position/mask -------------------------------------

FRAMING = (BundleMalformed, BundleTooLarge)  # a length field now points somewhere else
EXACT = {
    "magic": BundleMalformed,
    "version": BundleIncompatible,
    "sig_kid": BundleMalformed,  # the table no longer matches the header's signers list
    "sig": BundleSignatureInvalid,
    "rcpt_kid": BundleNotForThisDevice,
    "wrap": BundleNotForThisDevice,
    "ct_body": BundleSignatureInvalid,  # its digest is in the signed header
    "gcm_tag": BundleSignatureInvalid,
}
REGION_NAMES = [
    "magic", "version", "header_len", "header", "nsig", "sig_kid[0]", "sig[0]", "sig_kid[1]",
    "sig[1]", "nrcpt", "rcpt_kid[0]", "wrap_len[0]", "wrap[0]", "ct_len", "ct_body", "gcm_tag",
]
POSITIONS = ("first", "middle", "last")
MASKS = (0x01, 0x80, 0xFF)


def expected_for(name: str, position: str, mask: int) -> tuple[type[BundleError], ...]:
    kind = name.split("[", 1)[0]
    if kind in EXACT:
        return (EXACT[kind],)
    if kind == "header":
        # invalid/non-canonical JSON, or a still-valid header whose signature fails
        return (BundleMalformed, BundleSignatureInvalid)
    if kind == "header_len" and position in ("first", "middle"):
        return (BundleTooLarge,)  # >= 65536 > the 16 KiB header cap
    if kind == "ct_len":
        if position == "first":
            return (BundleTooLarge,)  # >= 2**56
        if position == "last":
            return (BundleMalformed,)  # off by < 256: truncated or trailing bytes
    if kind == "nsig" and mask in (0x80, 0xFF):
        return (BundleMalformed,)  # 130 / 253 signatures: out of range
    if kind in ("nrcpt", "wrap_len") and position == "first" and mask in (0x80, 0xFF):
        return (BundleMalformed,)  # > MAX_RECIPIENTS / > MAX_WRAP_LEN
    return FRAMING


def _offset(r, position: str) -> int:
    return {"first": r.start, "middle": (r.start + r.end - 1) // 2, "last": r.end - 1}[position]


CASES = [
    pytest.param(name, position, mask, id=f"{name}-{position}-{mask:#04x}")
    for name in REGION_NAMES
    for position in (("first",) if name in ("version", "nsig") else POSITIONS)
    for mask in MASKS
]


@pytest.mark.parametrize("name, position, mask", CASES)
def test_flipped_byte_is_rejected(world, spies, name, position, mask):
    r = region(world.good, name)
    offset = _offset(r, position)
    tampered = flip(world.good, offset, mask)
    assert tampered != world.good
    assert_rejected(world, spies, tampered, expected_for(name, position, mask))


def _digit_in_value(header: bytes, key: str, which: str = "last") -> int:
    """Offset (within the header) of a decimal digit inside the JSON value of ``key``."""
    start = header.index(b'"%s":' % key.encode()) + len(key) + 3
    end = start
    while header[end:end + 1] not in (b",", b"}"):
        end += 1
    digits = [i for i in range(start, end) if header[i:i + 1].isdigit()]
    assert digits, key
    if which == "last":
        return digits[-1]
    # avoid a leading digit of a number (a leading "0" is not valid JSON)
    return digits[len(digits) // 2]


@pytest.mark.parametrize("key", ["created", "release", "pt_len", "pt_sha256",
                                 "ct_sha256", "nonce", "magic"])
def test_semantic_header_edit_keeps_json_valid_but_breaks_the_signature(world, spies, key):
    """A digit swapped inside a value (0<->1, 2<->3, ...): still canonical JSON, so
    it is the signature that must catch it."""
    hdr = region(world.good, "header")
    header = world.good[hdr.start:hdr.end]
    rel = _digit_in_value(header, key, "last" if key in ("created", "release") else "middle")
    tampered = flip(world.good, hdr.start + rel, 0x01)
    edited = fmt.parse_bundle(tampered)  # still parses strictly ...
    assert edited.header_bytes != header
    assert_rejected(world, spies, tampered, (BundleSignatureInvalid,))  # ... but is not signed


@pytest.mark.parametrize("field,fragment", [
    ("signers", "signers"),  # the header's signers must agree with the signature table
    ("ct_len", "length"),    # the header's ciphertext length must agree with the framing
])
def test_header_fields_must_agree_with_the_framing(world, spies, field, fragment):
    hdr = region(world.good, "header")
    header = world.good[hdr.start:hdr.end]
    tampered = flip(world.good, hdr.start + _digit_in_value(header, field, "middle"), 0x01)
    exc = assert_rejected(world, spies, tampered, (BundleMalformed,))
    assert fragment in str(exc)


def test_task_name_edit_is_a_signature_failure(world, spies):
    hdr = region(world.good, "header")
    at = world.good.index(b'"task":"victim"', hdr.start) + len(b'"task":"')
    tampered = flip(world.good, at, 0x01)  # "victim" -> "wictim"
    assert b'"task":"wictim"' in tampered
    assert_rejected(world, spies, tampered, (BundleSignatureInvalid,))


@pytest.mark.parametrize("value", [0, 17, 255])
def test_signature_count_out_of_range(world, spies, value):
    r = region(world.good, "nsig")
    tampered = world.good[:r.start] + bytes([value]) + world.good[r.end:]
    assert_rejected(world, spies, tampered, (BundleMalformed,))


# --- truncation, trailing bytes, empty, oversized, magic, version ------------------


def _cut_points(data: bytes) -> list[int]:
    points = set()
    for r in regions(data):
        points.update({r.start, min(r.start + 1, r.end - 1), r.end - 1})
    points.discard(len(data))
    return sorted(points)


def test_truncation_at_every_region_boundary(world, spies):
    cuts = _cut_points(world.good)
    assert 0 in cuts and len(world.good) - 1 in cuts and len(cuts) > 30
    for cut in cuts:
        assert_rejected(world, spies, world.good[:cut], (BundleMalformed,))


@pytest.mark.parametrize("extra", [b"\x00", os.urandom(16), b"\x89VMB\x01"])
def test_trailing_bytes(world, spies, extra):
    assert_rejected(world, spies, world.good + extra, (BundleMalformed,))


def test_bundle_followed_by_itself(world, spies):
    assert_rejected(world, spies, world.good + world.good, (BundleMalformed,))


def test_empty_input(world, spies):
    exc = assert_rejected(world, spies, b"", (BundleMalformed,))
    assert "magic" in str(exc)


@pytest.mark.parametrize("magic", [b"\x89VMC", b"VMB\x89", b"PK\x03\x04", b"\x00\x00\x00\x00"])
def test_wrong_magic(world, spies, magic):
    assert_rejected(world, spies, magic + world.good[4:], (BundleMalformed,))


@pytest.mark.parametrize("version", [0, 2, 255])
def test_unknown_format_version(world, spies, version):
    tampered = world.good[:4] + bytes([version]) + world.good[5:]
    exc = assert_rejected(world, spies, tampered, (BundleIncompatible,))
    assert str(version) in str(exc)


def test_unknown_version_with_garbage_after_it_is_still_incompatible(world, spies):
    """The version byte is judged before anything after it is parsed."""
    assert_rejected(world, spies, b"\x89VMB\x02" + b"\xff" * 40, (BundleIncompatible,))


def test_oversized_against_container_caps(world, spies):
    n = len(world.good)
    trust = [world.keys, world.keys_b]
    with container_for(world.keys, trust=trust, threshold=2, caps=SizeCaps(bundle=n - 1)) as c:
        with pytest.raises(BundleTooLarge):
            c.install(world.good)
        assert c.tasks() == []
    hdr_len = region(world.good, "header").end - region(world.good, "header").start
    with container_for(world.keys, trust=trust, threshold=2,
                       caps=SizeCaps(header=hdr_len - 1)) as c:
        with pytest.raises(BundleTooLarge):
            c.install(world.good)
        assert c.tasks() == []
    # exactly at the caps is allowed
    with container_for(world.keys, trust=trust, threshold=2,
                       caps=SizeCaps(bundle=n, header=hdr_len)) as c:
        assert c.install(world.good).release == 2
    assert spies["load"] == 1


def test_oversized_input_is_refused_before_parsing(world, spies):
    """Over the default 64 MiB cap: refused on size alone (the magic is not even valid)."""
    huge = b"\x00" * (DEFAULT_CAPS.bundle + 1)
    assert_rejected(world, spies, huge, (BundleTooLarge,))
    # a valid prefix with a huge tail is refused the same way
    assert_rejected(world, spies, world.good + bytes(DEFAULT_CAPS.bundle), (BundleTooLarge,))


def test_rejected_higher_release_does_not_raise_the_rollback_mark(world, spies):
    """After all those refused release-2 bundles, release 1 can still be re-installed."""
    assert_rejected(world, spies, flip(world.good, region(world.good, "sig[0]").start),
                    (BundleSignatureInvalid,))
    info = world.container.install(world.victim(1))
    assert info.release == 1
    assert world.container.invoke("victim", INPUTS) == RELEASE_1_RESULT


# --- the recipients table is outside the signature ---------------------------------


def test_other_recipients_entries_do_not_affect_this_device(tmp_path):
    """Two recipients.  Tampering one device's entry makes that device refuse the
    bundle (BundleNotForThisDevice) while the other device still installs it."""
    pub = make_keys(tmp_path / "pub")
    other = make_keys(tmp_path / "other")
    data = build(pub, name="multi", to=[pub, other])
    kids = {}
    for r in regions(data):
        if r.kind == "rcpt_kid":
            kids[data[r.start:r.end]] = r.name[len("rcpt_kid"):]
    assert set(kids) == {pub.device_kid, other.device_kid}

    def device(keys):
        return container_for(keys, trust=[pub])

    for target, bystander in ((pub, other), (other, pub)):
        idx = kids[target.device_kid]
        for name in (f"rcpt_kid{idx}", f"wrap{idx}"):
            r = region(data, name)
            for off in (r.start, r.end - 1):
                tampered = flip(data, off)
                with device(target) as c:
                    with pytest.raises(BundleNotForThisDevice):
                        c.install(tampered)
                    assert c.tasks() == []
                with device(bystander) as c:
                    assert c.install(tampered).name == "multi"
                    assert c.invoke("multi", {"xs": [1, 2]}) == {"sum": 3}
