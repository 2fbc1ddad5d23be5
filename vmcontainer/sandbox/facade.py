"""Read-only module facades: what a script gets from ``import``.

A facade is an instance of a one-off class whose class dict holds exactly the
allowed members, so attribute loads are plain (fast) and nothing else exists
to walk to.  Facades are shared by every call, so they refuse writes; and they
are never proxies of a real module (a proxy's ``AttributeError.obj`` would hand
the real module out).
"""

from __future__ import annotations

import types
from collections.abc import Mapping
from typing import Any

from ..scheduler.scope import refuse


class Facade:
    """Base of every module facade; instances are immutable."""

    __slots__ = ()
    _vm_name: str = "facade"

    def __setattr__(self, name: str, value: Any) -> None:
        raise refuse("violation", f"module {self._vm_name!r} is read-only")

    def __delattr__(self, name: str) -> None:
        raise refuse("violation", f"module {self._vm_name!r} is read-only")

    def __repr__(self) -> str:
        return f"<module {self._vm_name!r} (sandbox facade)>"

    def __reduce__(self) -> Any:
        raise refuse("violation", "facades cannot be pickled")


def make_facade(name: str, members: Mapping[str, Any]) -> Facade:
    """Build an immutable facade named ``name`` exposing exactly ``members``.

    Python functions are stored as staticmethods so they do not bind to the
    facade instance.
    """
    ns: dict[str, Any] = {"__slots__": (), "_vm_name": name}
    for key, value in members.items():
        if key.startswith("_"):
            raise ValueError(f"facade {name}: member {key!r} starts with '_'")
        ns[key] = staticmethod(value) if isinstance(value, types.FunctionType) else value
    cls = type(f"facade.{name}", (Facade,), ns)
    return cls()
