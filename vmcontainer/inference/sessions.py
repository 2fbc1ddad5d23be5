"""Host-owned ONNX Runtime sessions and the model API scripts see (re-exports).

One ``InferenceSession`` per model digest (``hub``), created by the host with
the device profile's options (``profile``), validated first (``validate``),
shared by every task and thread that uses that model and dropped when no
claim is left.  Scripts get a ``ModelHandle`` (``handle``).  The pieces live in
their own modules; this one keeps the historical import path.
"""

from __future__ import annotations

from .handle import ModelHandle
from .hub import ModelHub
from .loaded import LoadedModel
from .signature import ORT_DTYPES as _ORT_DTYPES
from .signature import Signature, TensorSpec

__all__ = ["_ORT_DTYPES", "LoadedModel", "ModelHandle", "ModelHub", "Signature", "TensorSpec"]
