"""Cloud side: check and compile task scripts, pack them with their models, encrypt and sign.

Public API::

    from bytecode_tools import generate_keys, build_bundle, inspect_bundle
"""

from .builder import BuildOptions, build_bundle, inspect_bundle
from .keygen import generate_keys

__all__ = ["BuildOptions", "build_bundle", "generate_keys", "inspect_bundle"]
