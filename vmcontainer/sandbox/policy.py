"""The sandbox policy: every name the compiler and the runtime decide on, in one place.

The compiler (``sandbox.transformer``) and the runtime (``sandbox.guards``,
``sandbox.runtime``) both read these sets, so a script that compiles on the
cloud side is judged by exactly the rules the device enforces.

Attribute access is decided at compile time where the name is static:

* ``DENIED_ATTRIBUTES`` - never reachable: a compile error, and refused by
  ``getattr`` at run time.  Names that exist only on interpreter internals
  (frames, generators, code, tracebacks) or that hand out raw memory.
* ``GUARDED_ATTRIBUTES`` - names that are harmless on the script's own objects
  but dangerous on some host types (``str.format`` traverses attributes,
  ``ndarray.base`` exposes a parent buffer, ``AttributeError.obj`` leaks the
  object).  These compile to a runtime check.
* Everything else not starting with ``_`` compiles to a plain attribute load:
  no guard call, full interpreter speed.  This is safe because everything a
  script can reach is a facade or a value built for it (see docs/sandbox.md).
"""

from __future__ import annotations

# Names the compiler injects; scripts can never bind them (they start with "_").
GETATTR = "_vm_getattr_"
WRITE = "_vm_write_"
STOP = "_vm_stop_"  # the checkpoint flag: raised when the call must look at the clock
EXPIRED = "_vm_expired_"  # the checkpoint's slow path (CallScope.checkpoint)
# Checkpoints of bundles built before the flag: ``_vm_clock_() > _vm_deadline_``.
CLOCK = "_vm_clock_"
DEADLINE = "_vm_deadline_"
METACLASS = "__metaclass__"  # RestrictedPython's class hook name
TYPE = "_vm_type_"  # the real type(), for the inline write check (scripts cannot name it)
CLASSES = "_vm_classes_"  # the call's set of script-defined classes
FLOAT = "_vm_float_"  # the real float type, for the inline arithmetic check
AUG = "_vm_aug_"  # size check of `target op= value` on items and attributes
ARITH = "_vm_arith_"  # size check before * ** << whose operands are not small constants
FORMAT = "_vm_format_"  # an f-string field with a spec or a conversion: width checked, !r address-free
PERCENT = "_vm_percent_"  # `"literal" % args`: widths and precisions checked, %r address-free

DENIED_ATTRIBUTES: frozenset[str] = frozenset(
    {
        # traceback, frame, code, generator, coroutine, async generator internals
        "tb_frame", "tb_next", "tb_lasti",
        "f_back", "f_builtins", "f_code", "f_generator", "f_globals", "f_locals", "f_trace",
        "co_code", "co_consts", "co_names",
        "gi_frame", "gi_code", "gi_yieldfrom",
        "cr_await", "cr_frame", "cr_code", "cr_origin",
        "ag_await", "ag_frame", "ag_code",
        # type internals
        "mro",
        # raw memory / files on numpy objects
        "ctypes", "setflags", "tofile", "getfield", "setfield",
    }
)

# name -> why it is checked at run time (documentation; the checks live in guards.py)
GUARDED_ATTRIBUTES: dict[str, str] = {
    "format": "str.format traverses attributes of its arguments",
    "format_map": "str.format_map traverses attributes of its arguments",
    "obj": "AttributeError.obj hands out the object the lookup failed on",
    "data": "ndarray.data is a writable memoryview of the buffer",
    "base": "ndarray.base exposes the parent buffer of a view",
    "flags": "ndarray.flags can make a read-only view writable",
    "dump": "ndarray.dump writes a pickle to a file",
    "dumps": "ndarray.dumps pickles",
    "astype": "ndarray.astype(object) makes object arrays",
    "view": "ndarray.view can reinterpret memory as object or structured dtypes",
    "ljust": "str padding allocates its width argument",
    "rjust": "str padding allocates its width argument",
    "center": "str padding allocates its width argument",
    "zfill": "str padding allocates its width argument",
    "expandtabs": "tab expansion multiplies the string",
    "to_bytes": "int.to_bytes allocates its length argument",
}

# Padding methods whose first argument is a width to allocate.
PADDING_METHODS: frozenset[str] = frozenset({"ljust", "rjust", "center", "zfill", "expandtabs"})

# A constant operand at most this large keeps * ** << unguarded (x * 2, n ** 2, b << 8).
SMALL_CONSTANT = 64

# Attributes refused on numpy arrays and scalars when reached through a guard.
ARRAY_DENIED_ATTRIBUTES: frozenset[str] = frozenset({"data", "base", "flags", "dump", "dumps"})

# Modules a script may import; each is a curated facade (sandbox.modules), never the real module.
ALLOWED_MODULES: frozenset[str] = frozenset(
    {
        "math", "json", "collections", "itertools", "functools", "heapq", "bisect",
        "statistics", "datetime", "re", "random", "string", "operator", "hashlib",
        "base64", "typing", "numpy", "vm",
    }
)

# Builtins handed to scripts.  Anything absent (open, eval, exec, compile, id,
# globals, vars, dir, input, breakpoint, memoryview, setattr, delattr,
# BaseException, SystemExit, KeyboardInterrupt, GeneratorExit, ...) does not exist
# for a script.  Wrapped ones are built in sandbox.guards.
PLAIN_BUILTINS: tuple[str, ...] = (
    "abs", "all", "any", "ascii", "bin", "bool", "bytes", "callable", "chr",
    "classmethod", "complex", "dict", "divmod", "enumerate", "filter", "float",
    "frozenset", "hash", "hex", "int", "isinstance", "issubclass", "iter", "len",
    "list", "map", "max", "min", "next", "object", "oct", "ord", "pow", "property",
    "range", "repr", "reversed", "round", "set", "slice", "sorted", "staticmethod",
    "str", "sum", "super", "tuple", "zip", "bytearray",
    # exceptions a script may raise and catch
    "Exception", "ArithmeticError", "AssertionError", "AttributeError", "IndexError",
    "KeyError", "LookupError", "NameError", "NotImplementedError", "OverflowError",
    "RecursionError", "RuntimeError", "StopIteration", "TypeError", "UnicodeError",
    "UnicodeDecodeError", "UnicodeEncodeError", "ValueError", "ZeroDivisionError",
    "ArithmeticError", "FloatingPointError", "MemoryError",
    "NotImplemented", "Ellipsis",
)

# Largest source the cloud compiler accepts; larger scripts are almost surely an attack.
MAX_SOURCE_BYTES = 1 << 20
