"""``vmtool quantize``: int8 quantization with ONNX Runtime's own quantizer.

Dynamic quantization (the default) needs no data: weights become int8 and
activations are quantized on the fly per run - the usual first step for
MLPs and transformers on phones.  Static quantization (``--static``)
quantizes activations too, with ranges measured on calibration data (an
``.npz`` whose arrays are keyed by input name, samples along axis 0), in the
QDQ format ORT's CPU and mobile EPs fuse.  The result goes through the same
checks as any model a device would load.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from vmcontainer.errors import ModelError

from .models import check_model


def calibration_samples(path: str | Path, input_names: list[str],
                        limit: int = 256) -> list[dict[str, np.ndarray]]:
    """Feeds of one sample each (axis 0 kept, length 1) from an ``.npz`` file."""
    with np.load(path, allow_pickle=False) as data:
        missing = sorted(set(input_names) - set(data.files))
        if missing:
            raise ModelError(f"calibration data has no arrays for inputs {missing} "
                             f"(it has {sorted(data.files)})")
        arrays = {n: data[n] for n in input_names}
    counts = {a.shape[0] if a.ndim else 0 for a in arrays.values()}
    if len(counts) != 1 or 0 in counts:
        raise ModelError("calibration arrays must share a non-empty first (sample) axis")
    n = min(counts.pop(), limit)
    return [{k: v[i:i + 1] for k, v in arrays.items()} for i in range(n)]


def quantize(src: str | Path, dst: str | Path, *, static: bool = False,
             calibration: str | Path | None = None, per_channel: bool = False) -> dict[str, Any]:
    """Quantize ``src`` into ``dst``; return sizes.  Raises ``ModelError``."""
    try:
        from onnxruntime.quantization import (
            CalibrationDataReader,
            QuantFormat,
            QuantType,
            quantize_dynamic,
            quantize_static,
        )
    except ImportError as exc:  # onnxruntime.quantization needs the onnx package
        raise ModelError(f"quantization needs the 'onnx' package (vmcontainer[tools]): {exc}"
                         ) from None
    src, dst = Path(src), Path(dst)
    blob = src.read_bytes()
    check_model(_stem(src), blob)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer's "consider pre-processing" warnings
    try:
        if not static:
            quantize_dynamic(src, dst, weight_type=QuantType.QInt8, per_channel=per_channel)
        else:
            if calibration is None:
                raise ModelError("--static needs --calibration DATA.npz")
            import onnxruntime as ort

            names = [i.name for i in ort.InferenceSession(
                blob, providers=["CPUExecutionProvider"]).get_inputs()]
            samples = calibration_samples(calibration, names)

            class Reader(CalibrationDataReader):  # type: ignore[misc]
                def __init__(self) -> None:
                    self._it: Iterator[dict[str, np.ndarray]] = iter(samples)

                def get_next(self) -> dict[str, np.ndarray] | None:
                    return next(self._it, None)

            # ORT writes its augmented calibration model to its own temporary directory.
            quantize_static(src, dst, Reader(), quant_format=QuantFormat.QDQ,
                            per_channel=per_channel, activation_type=QuantType.QInt8,
                            weight_type=QuantType.QInt8,
                            calibration_providers=["CPUExecutionProvider"])
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(f"quantization failed: {type(exc).__name__}: {str(exc)[:300]}") from None
    finally:
        root.setLevel(level)
    out = dst.read_bytes()
    check_model(_stem(dst), out)  # what a device will be asked to load
    return {"input_bytes": len(blob), "output_bytes": len(out),
            "mode": "static" if static else "dynamic"}


def _stem(path: Path) -> str:
    stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in path.stem)[:64]
    return stem or "model"
