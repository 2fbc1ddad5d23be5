"""JSON's C encoder and scanner, made once.

``json.dumps`` and ``JSONDecoder.decode`` rebuild or wrap the C accelerator in
Python on every call (an encoder object per ``dumps``, two regex matches per
``decode``).  On the install and process-mode paths that wrapper costs more than
the C work on a small header, so the hot paths call the accelerator directly.
Inputs are plain decoded or host-built JSON data: there is no circular-reference
check (a cyclic value ends in ``RecursionError``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from json import encoder as _encoder
from json import scanner as _scanner
from typing import Any


def make_encoder(*, sort_keys: bool = False, allow_nan: bool = True) -> Callable[[Any], str]:
    """Compact ASCII JSON (``separators=(",", ":")``, ``ensure_ascii=True``)."""
    plain = json.JSONEncoder(separators=(",", ":"), sort_keys=sort_keys, allow_nan=allow_nan,
                             check_circular=False)
    if _encoder.c_make_encoder is None:  # pragma: no cover - CPython always has the accelerator
        return plain.encode
    c_encode = _encoder.c_make_encoder(None, plain.default, _encoder.encode_basestring_ascii, None,
                                       ":", ",", sort_keys, False, allow_nan)

    def encode(value: Any) -> str:
        return "".join(c_encode(value, 0))

    return encode


def make_decoder(decoder: json.JSONDecoder | None = None) -> Callable[[str], Any]:
    """One JSON value filling the whole text, no surrounding whitespace.  Raises
    ``ValueError`` (including ``JSONDecodeError``) for anything else."""
    scan = _scanner.make_scanner(decoder or json.JSONDecoder())

    def decode(text: str) -> Any:
        try:
            value, end = scan(text, 0)
        except StopIteration:  # empty text, or no JSON value at its start
            raise ValueError("no JSON value") from None
        if end != len(text):
            raise ValueError("extra data after the JSON value")
        return value

    return decode
