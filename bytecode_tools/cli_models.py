"""``vmtool`` model commands: build-model, quantize, bench-model.

Exit codes follow ``vmtool build``: 0 ok, 2 usage or I/O error, 4 the model
is refused (``ModelError``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from vmcontainer.errors import ModelError


def _fail(command: str, exc: BaseException, code: int) -> int:
    print(f"vmtool {command}: {exc}", file=sys.stderr)
    return code


def _cmd_build_model(args: argparse.Namespace) -> int:
    from .models import build_model_bundle

    try:
        micro_batch = None
        if args.micro_batch:
            window, _, size = args.micro_batch.partition(",")
            micro_batch = {"window_ms": float(window), "max_batch": int(size or 64)}
        meta = json.loads(args.meta) if args.meta else {}
        if not isinstance(meta, dict):
            raise ValueError("--meta must be a JSON object")
        blob = Path(args.model).read_bytes()
        bundle = build_model_bundle(args.name, blob, release=args.release,
                                    signers=[Path(k) for k in args.sign],
                                    recipients=[Path(k) for k in args.to],
                                    micro_batch=micro_batch, meta=meta,
                                    expires_in=args.expires_in)
    except ModelError as exc:
        return _fail("build-model", exc, 4)
    except (ValueError, OSError) as exc:
        return _fail("build-model", exc, 2)
    Path(args.output).write_bytes(bundle)
    print(f"wrote {args.output} ({len(bundle)} bytes): model {args.name} release {args.release}")
    return 0


def _cmd_quantize(args: argparse.Namespace) -> int:
    from .model_quantize import quantize

    try:
        info = quantize(args.model, args.output, static=args.static,
                        calibration=args.calibration, per_channel=args.per_channel)
    except ModelError as exc:
        return _fail("quantize", exc, 4)
    except (ValueError, OSError) as exc:
        return _fail("quantize", exc, 2)
    ratio = info["output_bytes"] / info["input_bytes"]
    print(f"wrote {args.output}: {info['mode']} int8, {info['input_bytes']:,} -> "
          f"{info['output_bytes']:,} bytes ({ratio:.2f}x)")
    return 0


def _cmd_bench_model(args: argparse.Namespace) -> int:
    from .model_bench import bench

    if args.batch < 1 or args.runs < 1:
        return _fail("bench-model", ValueError("--batch and --runs must be >= 1"), 2)
    try:
        report = bench(args.model, batch=args.batch, inputs=args.inputs,
                       reference=args.reference, runs=args.runs, seed=args.seed)
    except ModelError as exc:
        return _fail("bench-model", exc, 4)
    except (ValueError, OSError) as exc:
        return _fail("bench-model", exc, 2)
    print(json.dumps(report.as_dict(), indent=2) if args.json else report.markdown())
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the model commands to ``vmtool``."""
    bm = sub.add_parser("build-model", help="sign and encrypt one model as a model bundle")
    bm.add_argument("name", help="the model name tasks reference (model bundle 'model:NAME')")
    bm.add_argument("model", metavar="FILE.onnx")
    bm.add_argument("--release", type=int, required=True)
    bm.add_argument("--sign", action="append", required=True, metavar="PUBLISHER.key")
    bm.add_argument("--to", action="append", required=True, metavar="DEVICE.pub")
    bm.add_argument("--micro-batch", metavar="WINDOW_MS[,MAX_BATCH]",
                    help="ask devices to merge concurrent runs of this model")
    bm.add_argument("--meta", help="free-form JSON object")
    bm.add_argument("--expires-in", type=float, default=None, help="seconds of validity")
    bm.add_argument("-o", "--output", required=True)
    bm.set_defaults(func=_cmd_build_model)

    q = sub.add_parser("quantize", help="int8-quantize a model with ONNX Runtime")
    q.add_argument("model", metavar="IN.onnx")
    q.add_argument("-o", "--output", required=True, metavar="OUT.onnx")
    q.add_argument("--static", action="store_true",
                   help="static (QDQ) quantization; needs --calibration")
    q.add_argument("--calibration", metavar="DATA.npz",
                   help="arrays keyed by input name, samples along axis 0")
    q.add_argument("--per-channel", action="store_true")
    q.set_defaults(func=_cmd_quantize)

    bn = sub.add_parser("bench-model", help="latency, size and accuracy drift of a model")
    bn.add_argument("model", metavar="FILE.onnx")
    bn.add_argument("--batch", type=int, default=32, help="the batch size N besides 1")
    bn.add_argument("--inputs", metavar="DATA.npz", help="inputs (else seeded random ones)")
    bn.add_argument("--reference", metavar="FLOAT.onnx", help="model to measure drift against")
    bn.add_argument("--runs", type=int, default=2000)
    bn.add_argument("--seed", type=int, default=0)
    bn.add_argument("--json", action="store_true")
    bn.set_defaults(func=_cmd_bench_model)
