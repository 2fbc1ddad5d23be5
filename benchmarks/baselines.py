"""The baselines: the same work done with no container around it.

Each baseline is the cheapest honest way to do what the product does, so a
ratio against it is the product's overhead and nothing else:

* ``pool_call`` - a bare ``ThreadPoolExecutor`` hand-off (what ``invoke`` replaces);
* ``PlainScript`` - the task's source under plain ``exec`` (no compiler, no guards);
* ``StockRestrictedScript`` - the source under stock RestrictedPython, for context;
* ``CryptoFloor`` - the cryptography a bundle install cannot avoid;
* ``RawRanker`` - the ranker task's own ``main`` on a raw ORT session;
* ``cooperative_timeout`` - a pool thread that checks its own deadline (timeout floor).
"""

from __future__ import annotations

import builtins
import hashlib
import marshal
import operator
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from types import CodeType
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from sample_tasks.ranker import model as ranker_model
from vmcontainer.bundle import format as fmt
from vmcontainer.bundle.keys import generate_device_key
from vmcontainer.inference.profile import DeviceProfile


def _identity(x: Any) -> Any:
    return x


def pool_call(pool: ThreadPoolExecutor) -> Any:
    """One bare submit+result round trip of a trivial function."""
    return pool.submit(_identity, 1).result()


# -- scripts ---------------------------------------------------------------------


class PlainScript:
    """``main(inputs)`` of ``source`` under plain CPython, re-executing the module
    body into fresh globals on every call exactly as the sandbox does."""

    def __init__(self, source: str, filename: str = "plain.py"):
        self.code = compile(source, filename, "exec")

    def __call__(self, inputs: Any) -> Any:
        g: dict[str, Any] = {"__name__": "plain", "__builtins__": builtins}
        exec(self.code, g)  # the baseline: our own source, unsandboxed
        return g["main"](inputs)


_INPLACE = {
    "+=": operator.iadd, "-=": operator.isub, "*=": operator.imul, "/=": operator.itruediv,
    "//=": operator.ifloordiv, "%=": operator.imod, "**=": operator.ipow,
}


def _inplacevar(op: str, x: Any, y: Any) -> Any:
    """The simple ``_inplacevar_`` an integrator writes for ``name += value``."""
    return _INPLACE[op](x, y)


class _GuardedWritesMeta(type):
    """Marks a script's classes ``_guarded_writes`` so ``full_write_guard`` lets
    their instances be written (RestrictedPython's documented opt-in)."""

    def __new__(mcs, name: str, bases: tuple, ns: dict) -> type:
        ns["_guarded_writes"] = True
        return super().__new__(mcs, name, bases, ns)


def _math_only_import(name: str, *args: Any, **kwargs: Any) -> Any:
    if name != "math":
        raise ImportError(name)
    return __import__(name)


class StockRestrictedScript:
    """``source`` compiled by stock ``RestrictedPython.compile_restricted`` and run with
    its stock guards: ``safer_getattr``, ``full_write_guard``, the guarded iterators
    and unpackers, the default item guard and a simple ``_inplacevar_``.  The plain
    builtins RP's ``safe_builtins`` lacks (``sorted``, ``max``, ``dict``, ...) are added
    unwrapped, as an integrator would."""

    def __init__(self, source: str, filename: str = "restricted.py"):
        from RestrictedPython import compile_restricted, safe_globals
        from RestrictedPython.Eval import default_guarded_getitem, default_guarded_getiter
        from RestrictedPython.Guards import (
            full_write_guard,
            guarded_iter_unpack_sequence,
            guarded_unpack_sequence,
            safer_getattr,
        )

        self.code: CodeType = compile_restricted(source, filename, "exec")
        extra = ("sorted", "max", "min", "sum", "dict", "list", "set", "tuple", "zip", "enumerate")
        bi = dict(safe_globals["__builtins__"], **{n: getattr(builtins, n) for n in extra})
        bi["__import__"] = _math_only_import
        self.base = dict(
            safe_globals,
            __builtins__=bi,
            __name__="restricted",
            __metaclass__=_GuardedWritesMeta,
            _getattr_=safer_getattr,
            _getitem_=default_guarded_getitem,
            _getiter_=default_guarded_getiter,
            _iter_unpack_sequence_=guarded_iter_unpack_sequence,
            _unpack_sequence_=guarded_unpack_sequence,
            _write_=full_write_guard,
            _inplacevar_=_inplacevar,
        )

    def __call__(self, inputs: Any) -> Any:
        g = dict(self.base)
        exec(self.code, g)  # the baseline: our own source, unsandboxed
        return g["main"](inputs)


# -- bundle crypto ---------------------------------------------------------------


class CryptoFloor:
    """The cryptography one install must do, on data of a real bundle's sizes.

    ``minimal()`` is Ed25519 verify of the signed header + AES-256-GCM decrypt of
    the ciphertext + ``marshal.loads`` of the code.  ``full()`` adds what the
    format also requires: the HPKE-P256 unwrap of the content key and the two
    SHA-256 digests (ciphertext and plaintext).
    """

    def __init__(self, bundle: bytes, code: CodeType):
        raw = fmt.parse_bundle(bundle)
        self.message = fmt.signed_message(raw.header_bytes)
        signer = ed25519.Ed25519PrivateKey.generate()
        self.public = signer.public_key()
        self.signature = signer.sign(self.message)
        self.key = AESGCM.generate_key(bit_length=256)
        self.nonce = os.urandom(fmt.NONCE_LEN)
        self.aad = os.urandom(len(raw.header_bytes))
        plaintext = os.urandom(len(raw.ciphertext) - 16)
        self.ciphertext = AESGCM(self.key).encrypt(self.nonce, plaintext, self.aad)
        self.code_bytes = marshal.dumps(code)
        # The same wrap as the bundle's (the device key type the container uses).
        kind = next(k for k, name in fmt.WRAP_NAMES.items() if name == raw.header["wrap"])
        self.device = generate_device_key(kind)
        self.suite = fmt.WRAPS[raw.header["wrap"]]
        self.info = fmt.wrap_info(raw.header_bytes, b"\0" * 16)
        self.wrap = self.suite.encrypt(self.key, self.device.public_key(), info=self.info)

    def minimal(self) -> CodeType:
        self.public.verify(self.signature, self.message)
        AESGCM(self.key).decrypt(self.nonce, self.ciphertext, self.aad)
        return marshal.loads(self.code_bytes)

    def full(self) -> CodeType:
        self.public.verify(self.signature, self.message)
        hashlib.sha256(self.ciphertext).digest()
        key = self.suite.decrypt(self.wrap, self.device, info=self.info)
        plaintext = AESGCM(key).decrypt(self.nonce, self.ciphertext, self.aad)
        hashlib.sha256(plaintext).digest()
        return marshal.loads(self.code_bytes)


def new_session(model_bytes: bytes, profile: DeviceProfile | None = None) -> Any:
    """A bare ORT session with the container's own session options."""
    import onnxruntime as ort

    profile = profile or DeviceProfile()
    return ort.InferenceSession(model_bytes, sess_options=profile.session_options(),
                                providers=["CPUExecutionProvider"])


# -- ranker ----------------------------------------------------------------------


class _RawModel:
    """What the task's ``vm.model("ranker")`` is, minus the container: session.run."""

    def __init__(self, session: Any):
        self.session = session
        self.outputs = [o.name for o in session.get_outputs()]

    def run(self, feeds: dict) -> dict:
        return dict(zip(self.outputs, self.session.run(self.outputs, feeds)))


class RawRanker:
    """The ranker task's own ``main`` under plain Python on a raw, warm ORT session
    (the ``reference_rank`` approach, without its per-call session creation)."""

    def __init__(self, model_bytes: bytes):
        self.model = _RawModel(new_session(model_bytes))
        vm = type("RawVm", (), {"model": lambda _self, name: self.model})()
        self.main = ranker_model.load_task(vm)["main"]

    def __call__(self, inputs: Any) -> Any:
        return self.main(inputs)


# -- timeouts --------------------------------------------------------------------


class DeadlineExpired(Exception):
    pass


def cooperative_timeout(pool: ThreadPoolExecutor, timeout: float,
                        body: Callable[[], Any] | None = None) -> None:
    """The timeout floor: a pool thread runs ``body`` in a loop and checks its own
    deadline (counted from submit, as the container does) before each iteration."""
    deadline = time.monotonic() + timeout

    def spin() -> None:
        clock = time.monotonic
        while True:
            if clock() > deadline:
                raise DeadlineExpired
            if body is not None:
                body()

    try:
        pool.submit(spin).result()
    except DeadlineExpired:
        return
    raise AssertionError("the loop ended without its deadline")
