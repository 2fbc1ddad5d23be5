"""Inference on ONNX Runtime: host-owned sessions, the watchdog, the script-facing model API.

Modules, one job each:

* ``profile``    - ``DeviceProfile``: session options, providers, limits, micro-batching;
* ``validate``   - the model rules shared by build and load (``onnx_wire`` reads the bytes
  without the ``onnx`` package);
* ``memory``     - the process-wide ORT arena cap;
* ``loaded``     - one model and its session, the per-run hot path;
* ``hub``        - one session per model digest, claims counted;
* ``handle``     - ``vm.model(name)``: what a script sees;
* ``batching``   - opt-in micro-batching;
* ``signature``  - input/output signatures and compatibility;
* ``store``      - models installed from model bundles (``ModelInfo``);
* ``refs``       - task references to those models (pin / compatible);
* ``watchdog``   - terminates runs at their call's deadline.

See docs/models.md.
"""

from .refs import ModelBinding
from .store import ModelIncompatible, ModelInfo, ModelNotInstalled, ModelRefError

__all__ = ["ModelBinding", "ModelIncompatible", "ModelInfo", "ModelNotInstalled",
           "ModelRefError"]
