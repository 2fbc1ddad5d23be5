"""Runtime guards: the checks the compiler could not decide statically.

Each guard raises ``Interrupt("violation")`` - a ``BaseException`` - so a
script cannot catch its own policy violation and carry on probing.
"""

from __future__ import annotations

import re
import secrets
import string
import types
from _string import formatter_field_name_split  # type: ignore[import-not-found]
from typing import Any

import numpy as np

from ..scheduler.scope import Interrupt, fault
from . import policy

_MISSING = object()
_ARRAY_TYPES = (np.ndarray, np.generic)


def violation(message: str) -> Interrupt:
    return fault("violation", message)


def _check_name(name: Any) -> str:
    if type(name) is not str:
        raise violation("attribute names must be plain str")
    if name.startswith("_") or name in policy.DENIED_ATTRIBUTES:
        raise violation(f'attribute "{name}" is not available in the sandbox')
    return name


class _SafeFormatter(string.Formatter):
    """``str.format`` whose field lookups go through ``guarded_getattr``, whose
    ``!r``/``!a`` leave addresses out and whose widths are size-checked."""

    def __init__(self, sizes: SizeGuards | None = None) -> None:
        self.sizes = sizes

    def get_field(self, field_name: str, args: Any, kwargs: Any) -> Any:
        first, rest = formatter_field_name_split(field_name)
        obj = self.get_value(first, args, kwargs)
        for is_attr, key in rest:
            obj = guarded_getattr(obj, key) if is_attr else obj[key]
        return obj, first

    def convert_field(self, value: Any, conversion: str | None) -> Any:
        if conversion == "r":
            return safe_repr(value)
        if conversion == "a":
            return safe_ascii(value)
        return super().convert_field(value, conversion)

    def format_field(self, value: Any, format_spec: str) -> Any:
        if self.sizes is not None:
            return self.sizes.format(value, format_spec)
        return format(value, format_spec)


def _safe_format_method(name: str, obj: Any, sizes: SizeGuards | None) -> Any:
    formatter = _SafeFormatter(sizes)
    if isinstance(obj, str):
        if name == "format":
            return lambda *args, **kwargs: formatter.vformat(obj, args, kwargs)
        return lambda mapping: formatter.vformat(obj, (), mapping)
    # unbound: str.format(fmt, *args)
    if name == "format":
        return lambda fmt, *args, **kwargs: formatter.vformat(str(fmt), args, kwargs)
    return lambda fmt, mapping: formatter.vformat(str(fmt), (), mapping)


def guarded_getattr(obj: Any, name: Any, default: Any = _MISSING, *,
                    sizes: SizeGuards | None = None) -> Any:
    """``getattr`` for scripts, and the target of guarded static attribute loads."""
    name = _check_name(name)
    if name in ("format", "format_map") and (
        isinstance(obj, str) or (isinstance(obj, type) and issubclass(obj, str))
    ):
        return _safe_format_method(name, obj, sizes)
    if name == "obj" and isinstance(obj, BaseException):
        raise violation('attribute "obj" of exceptions is not available in the sandbox')
    if name in policy.ARRAY_DENIED_ATTRIBUTES and _is_numpy(obj):
        raise violation(f'array attribute "{name}" is not available in the sandbox')
    if name in ("astype", "view") and _is_numpy(obj):
        return _checked_dtype_method(getattr(obj, name), name)
    if sizes is not None and name in policy.PADDING_METHODS and isinstance(obj, (str, bytes, bytearray)):
        return sizes.padding(getattr(obj, name), name)
    if sizes is not None and name == "to_bytes" and isinstance(obj, int):
        return sizes.padding(getattr(obj, name), name)
    if default is _MISSING:
        return getattr(obj, name)
    return getattr(obj, name, default)


def _is_numpy(obj: Any) -> bool:
    """numpy arrays and scalars - and their classes (``np.float64.dump(x, path)``)."""
    return isinstance(obj, _ARRAY_TYPES) or (isinstance(obj, type) and issubclass(obj, _ARRAY_TYPES))


def _checked_dtype_method(method: Any, name: str) -> Any:
    """``astype``/``view`` limited to numeric and bool dtypes (no object or void)."""

    def checked(*args: Any, **kwargs: Any) -> Any:
        dtype = kwargs.get("dtype", args[0] if args else None)
        if dtype is not None and not (isinstance(dtype, type) and issubclass(dtype, np.ndarray)):
            try:
                kind = np.dtype(dtype).kind
            except TypeError:
                raise violation(f"{name}: dtype {dtype!r} is not allowed") from None
            if kind not in "biufc" or np.dtype(dtype).fields is not None:
                raise violation(f"{name}: dtype {np.dtype(dtype)} is not allowed in the sandbox")
        elif dtype is not None:
            raise violation(f"{name}: array subclasses are not allowed")
        return method(*args, **kwargs)

    return checked


class SizeGuards:
    """Checks made *before* an operation that could allocate without bound: one C
    call (``10 ** 10 ** 8``, ``[0] * 10 ** 10``) that no checkpoint can interrupt."""

    __slots__ = ("_specs_ok", "max_int_bits", "max_sequence")

    def __init__(self, max_int_bits: int, max_sequence: int):
        self.max_int_bits = max_int_bits
        self.max_sequence = max_sequence
        self._specs_ok: set[str] = set()  # format specs already checked (they are mostly literals)

    def _limit(self, what: str) -> Interrupt:
        return fault("limit", f"{what} exceeds the sandbox's size limit")

    def _repeat(self, seq: Any, times: int) -> None:
        if times > 0 and len(seq) * times > self.max_sequence:
            raise self._limit(f"repeating a sequence of {len(seq)} items {times} times")

    def arith(self, op: str, a: Any, b: Any) -> Any:
        ta, tb = type(a), type(b)
        if ta is float or tb is float:  # fixed-size result: the common case, no checks
            return a * b if op == "*" else a ** b if op == "**" else a << b
        if op == "*":
            if ta is int and tb is int:
                if a.bit_length() + b.bit_length() > self.max_int_bits:
                    raise self._limit("integer product")
            elif tb is int and ta in _SEQUENCES:
                self._repeat(a, b)
            elif ta is int and tb in _SEQUENCES:
                self._repeat(b, a)
            return a * b
        if op == "**":
            if ta is int and tb is int and b > 0 and abs(a) > 1 and a.bit_length() * b > self.max_int_bits:
                raise self._limit("integer power")
            return a ** b
        # "<<"
        if ta is int and tb is int and a and b > 0 and a.bit_length() + b > self.max_int_bits:
            raise self._limit("integer shift")
        return a << b

    def aug(self, op: str, current: Any, value: Any) -> Any:
        """``target op= value`` on an item or attribute: check the result's size from
        the current value, return ``value`` for the real in-place operation."""
        ta, tb = type(current), type(value)
        if ta is float or tb is float:
            return value
        if op == "*":
            if ta is int and tb is int:
                if current.bit_length() + value.bit_length() > self.max_int_bits:
                    raise self._limit("integer product")
            elif tb is int and ta in _SEQUENCES:
                self._repeat(current, value)
            elif ta is int and tb in _SEQUENCES:
                self._repeat(value, current)
        elif op == "**":
            if (ta is int and tb is int and value > 0 and abs(current) > 1
                    and current.bit_length() * value > self.max_int_bits):
                raise self._limit("integer power")
        elif (ta is int and tb is int and current and value > 0
              and current.bit_length() + value > self.max_int_bits):
            raise self._limit("integer shift")
        return value

    def _check_sizes(self, numbers: Any, what: str) -> None:
        for digits in numbers:
            if digits and (len(digits) > 9 or int(digits) > self.max_sequence):
                raise self._limit(what)

    def _check_spec(self, spec: Any) -> None:
        """A format spec's width and precision are sizes to allocate.  Specs other
        than the standard mini-language (a date's strftime pattern) pass unchecked.
        A ``str`` subclass is checked by its text (``format`` reads the text)."""
        if not isinstance(spec, str):
            return  # format() refuses a non-str spec itself
        m = _STANDARD_SPEC.match(str(spec))
        if m is not None:
            self._check_sizes(m.groups(), "format width or precision")
        if type(spec) is str and len(self._specs_ok) < 256:
            self._specs_ok.add(spec)

    def format(self, value: Any, spec: Any = "") -> Any:
        """The script's ``format()``, and every field of ``str.format``."""
        if type(spec) is not str or (spec and spec not in self._specs_ok):
            self._check_spec(spec)
        return format(value, spec)

    def format_field(self, value: Any, conversion: int, spec: Any) -> Any:
        """An f-string field with a conversion or a spec (the compiler routes those
        here): ``!r``/``!a`` without addresses, then a size-checked ``format``."""
        if conversion != -1:
            value = safe_repr(value) if conversion == _R else safe_ascii(value) if conversion == _A else str(value)
        if spec and spec not in self._specs_ok:  # an f-string spec is always an exact str
            self._check_spec(spec)
        return format(value, spec)

    def percent(self, fmt: Any, args: Any) -> Any:
        """``"literal" % args``: each conversion's width and precision (``*`` taken
        from the arguments) checked before formatting; ``%r``/``%a`` address-free."""
        if type(fmt) is not str and type(fmt) is not bytes:
            return fmt % args  # the compiler only routes literals here
        text = fmt if type(fmt) is str else fmt.decode("latin-1")
        positional = tuple(args) if isinstance(args, tuple) else (args,)  # `%` takes tuple subclasses too
        i = 0
        for m in _PERCENT_SPEC.finditer(text):
            if m.group("conv") == "%":
                continue
            for part in (m.group("width"), m.group("precision")):
                if part == "*":
                    star = positional[i] if i < len(positional) else None
                    i += 1
                    if isinstance(star, int) and abs(star) > self.max_sequence:  # -N: left-aligned N
                        raise self._limit("%-format width or precision")
                elif part:
                    self._check_sizes((part,), "%-format width or precision")
            i += 1
        out = fmt % args
        if ("r" in text or "a" in text) and (b"0x" if type(out) is bytes else "0x") in out:
            out = _ADDRESS_BYTES.sub(b"0x...", out) if type(out) is bytes else _ADDRESS.sub("0x…", out)
        return out

    def pow(self, base: Any, exp: Any, mod: Any = None) -> Any:
        if mod is None:
            return self.arith("**", base, exp)
        return pow(base, exp, mod)  # modular: bounded by the modulus

    def padding(self, method: Any, name: str) -> Any:
        def checked(*args: Any, **kwargs: Any) -> Any:
            width = args[0] if args else kwargs.get("width", kwargs.get("tabsize", 8))
            if name == "to_bytes":
                width = args[0] if args else kwargs.get("length", 1)
            if isinstance(width, int) and width > self.max_sequence:
                raise self._limit(f"str.{name} width")
            if (name == "expandtabs" and isinstance(width, int)
                    and len(method.__self__) * max(width, 1) > self.max_sequence):
                raise self._limit("str.expandtabs")
            return method(*args, **kwargs)

        return checked


_R, _A = ord("r"), ord("a")
# [[fill]align][sign][z][#][0][width][grouping][.precision][type]: width and precision
_STANDARD_SPEC = re.compile(r"(?:(?s:.)?[<>=^])?[+\- ]?z?#?0?(\d*)[_,]?(?:\.(\d+))?[a-zA-Z%]?\Z")
_PERCENT_SPEC = re.compile(
    r"%(?:\([^)]*\))?[#0\- +]*(?P<width>\*|\d+)?(?:\.(?P<precision>\*|\d+))?[hlL]?(?P<conv>.)", re.S)

_SEQUENCES = (str, bytes, list, tuple, bytearray)
_SEQUENCES = frozenset(_SEQUENCES)  # type: ignore[assignment]


def guarded_hasattr(obj: Any, name: Any) -> bool:
    """``hasattr`` for scripts: a forbidden name simply is not there (no violation)."""
    if type(name) is not str or name.startswith("_") or name in policy.DENIED_ATTRIBUTES:
        return False
    if name == "obj" and isinstance(obj, BaseException):
        return False
    if name in policy.ARRAY_DENIED_ATTRIBUTES and _is_numpy(obj):
        return False
    return hasattr(obj, name)


_ADDRESS = re.compile(r"0x[0-9a-fA-F]{6,}")
_ADDRESS_BYTES = re.compile(rb"0x[0-9a-fA-F]{6,}")
_HASH_SALT = secrets.randbits(61)


def safe_repr(obj: Any) -> str:
    """``repr`` without host addresses (they defeat ASLR for whoever finds a memory bug)."""
    return _ADDRESS.sub("0x…", repr(obj))


def _script_object_repr(self: Any) -> str:
    """``object.__repr__`` of a script class's instances, without the address."""
    cls = type(self)
    return f"<{cls.__module__}.{cls.__qualname__} object>"


def safe_ascii(obj: Any) -> str:
    return _ADDRESS.sub("0x…", ascii(obj))


def safe_hash(obj: Any) -> int:
    """``hash`` that does not give ``id()`` back: identity-hashed objects get a
    salted hash (stable within the process, like the real one)."""
    h = hash(obj)
    if type(obj).__hash__ is object.__hash__:
        return hash((h, _HASH_SALT))
    return h


def safe_type(obj: Any) -> Any:
    """One-argument ``type()``: for comparing and ``isinstance``, not for making objects.

    Classes that would hand out raw power when called are swapped for their
    facade (``numpy.ndarray(shape)`` is uninitialised heap memory) or refused
    (``type(cls)`` is the real ``type``, which builds classes past the sandbox's
    class hook).
    """
    t = type(obj)
    if issubclass(t, np.ndarray):
        from .modules import get_facades

        return get_facades()["numpy"].ndarray
    if issubclass(t, type):
        raise violation("type() of a class is not available in the sandbox")
    return t


class ScriptTypes:
    """Per-call record of the classes the script defined: only those (and their
    instances, and the script's own functions) accept attribute writes."""

    __slots__ = ("classes", "globals")

    def __init__(self, task_globals: dict[str, Any]):
        self.classes: set[type] = set()
        self.globals = task_globals

    def metaclass(self, name: str, bases: tuple[type, ...], ns: dict[str, Any], **kw: Any) -> type:
        meta: type = type
        for base in bases:
            base_meta = type(base)
            if issubclass(meta, base_meta):
                continue
            if issubclass(base_meta, meta):
                meta = base_meta
                continue
            raise TypeError("metaclass conflict among the bases of " + name)
        cls = meta(name, bases, ns, **kw)
        if cls.__repr__ is object.__repr__:
            # Scripts cannot define __repr__; the default one prints the address, and
            # str(), format(), %-formatting and f-strings all reach it, not just repr().
            cls.__repr__ = _script_object_repr  # type: ignore[method-assign]
        self.classes.add(cls)
        return cls

    def write(self, obj: Any) -> Any:
        cls = type(obj)
        if cls in self.classes:
            return obj
        if isinstance(obj, type) and obj in self.classes:
            return obj
        if cls is types.FunctionType and obj.__globals__ is self.globals:
            return obj
        raise violation(f"cannot set attributes on {cls.__name__} objects")
