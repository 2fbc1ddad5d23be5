"""``vmc``: run a script from source or a built bundle, on this machine, in the sandbox.

Exit codes: 0 ok, 1 the task raised, 2 usage, 3 bundle rejected,
4 compile error or sandbox violation, 5 timeout (or cancelled).
With ``--json`` exactly one JSON object is printed on stdout.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .errors import (
    BundleError,
    CompileError,
    SandboxViolation,
    TaskCancelled,
    TaskTimeout,
    VmError,
)

EXIT_OK, EXIT_TASK, EXIT_USAGE, EXIT_BUNDLE, EXIT_POLICY, EXIT_TIMEOUT = 0, 1, 2, 3, 4, 5


def to_jsonable(value: Any) -> Any:
    """Results as strict JSON: arrays become (nested) lists, NaN and infinities null."""
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, bytes):
        return value.hex()
    return value


def exit_code_for(exc: BaseException) -> int:
    if isinstance(exc, (TaskTimeout, TaskCancelled)):
        return EXIT_TIMEOUT
    if isinstance(exc, BundleError):
        return EXIT_BUNDLE
    if isinstance(exc, (CompileError, SandboxViolation)):
        return EXIT_POLICY
    return EXIT_TASK


def _load_inputs(args: argparse.Namespace) -> Any:
    if args.timeout is not None and not args.timeout > 0:
        raise ValueError("--timeout must be positive")
    if args.input is not None and args.input_file is not None:
        raise ValueError("give --input or --input-file, not both")
    if args.input_file is not None:
        return json.loads(Path(args.input_file).read_text())
    if args.input is not None:
        return json.loads(args.input)
    return None


def _models(specs: list[str]) -> dict[str, bytes]:
    out = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--model takes NAME=FILE.onnx, got {spec!r}")
        out[name] = Path(path).read_bytes()
    return out


def _report(args: argparse.Namespace, run) -> int:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    try:
        result = run()
    except (VmError, ValueError) as exc:
        code = exit_code_for(exc) if isinstance(exc, VmError) else EXIT_TASK
        if args.json:
            print(json.dumps({"ok": False, "error": {"type": type(exc).__name__, "message": str(exc)}},
                             allow_nan=False))
        else:
            print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
            tb = getattr(exc, "script_traceback", "")
            if tb:
                print(tb, file=sys.stderr)
        return code
    elapsed_ms = (time.perf_counter() - start) * 1000
    if args.json:
        print(json.dumps({"ok": True, "result": to_jsonable(result),
                          "elapsed_ms": round(elapsed_ms, 3)}, allow_nan=False))
    else:
        print(json.dumps(to_jsonable(result), indent=2))
    return EXIT_OK


def _cmd_run(args: argparse.Namespace) -> int:
    from .testing import run_script

    try:
        inputs = _load_inputs(args)
        models = _models(args.model)
        source = Path(args.script)
        if not source.is_file():
            raise ValueError(f"no such script: {args.script}")
    except (ValueError, OSError) as exc:
        print(f"vmc run: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return _report(args, lambda: run_script(source, inputs, entry=args.entry,
                                            timeout=args.timeout, models=models,
                                            isolation=args.isolation))


def _cmd_invoke(args: argparse.Namespace) -> int:
    from .container import Container

    try:
        inputs = _load_inputs(args)
        bundle = Path(args.bundle).read_bytes()
        container = Container(trust=[Path(t) for t in args.trust], device_key=Path(args.key),
                              workers=1, isolation=args.isolation)
    except (ValueError, OSError) as exc:
        print(f"vmc invoke: {exc}", file=sys.stderr)
        return EXIT_USAGE

    def run() -> Any:
        with container:
            info = container.install(bundle)
            return container.invoke(info.name, inputs, timeout=args.timeout)

    return _report(args, run)


def _cmd_stats(args: argparse.Namespace) -> int:
    """Install bundles, drive calls at them, print ``Container.metrics()``."""
    from concurrent.futures import wait

    from .container import Container

    try:
        inputs = _load_inputs(args)
        bundles = [Path(b).read_bytes() for b in args.bundle]
        container = Container(trust=[Path(t) for t in args.trust], device_key=Path(args.key),
                              workers=args.workers, isolation=args.isolation)
    except (ValueError, OSError) as exc:
        print(f"vmc stats: {exc}", file=sys.stderr)
        return EXIT_USAGE
    with container:
        try:
            names = [container.install(b).name for b in bundles]
        except VmError as exc:
            print(f"vmc stats: {type(exc).__name__}: {exc}", file=sys.stderr)
            return exit_code_for(exc)
        pending = []
        for i in range(args.calls):
            name = args.task or names[i % len(names)]
            try:
                pending.append(container.submit(name, inputs, timeout=args.timeout))
            except VmError:
                pass  # rejected calls are counted in the metrics
            if len(pending) >= args.concurrency:
                wait(pending)
                pending = []
        wait(pending)
        snapshot = container.metrics()
    if args.json:
        print(json.dumps(snapshot, sort_keys=True))
    else:
        for name, t in snapshot["tasks"].items():
            lat = t.get("latency", {})
            print(f"{name:20s} calls {t.get('calls', 0):7d} ok {t.get('successes', 0):7d} "
                  f"failed {sum(t.get('failures', {}).values()):5d} timeouts {t.get('timeouts', 0):5d} "
                  f"p50 {lat.get('p50_ms', 0):8.3f} ms p99 {lat.get('p99_ms', 0):8.3f} ms "
                  f"breaker {t.get('breaker', {}).get('state', '-')}")
    return EXIT_OK


def _add_io(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input", help="inputs as a JSON string")
    p.add_argument("--input-file", help="inputs from a JSON file")
    p.add_argument("--timeout", type=float, default=None, help="seconds")
    p.add_argument("--json", action="store_true", help="print exactly one JSON object")
    p.add_argument("--isolation", choices=["thread", "process"], default="thread",
                   help="run the task in a worker thread (default) or a worker process")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vmc", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"vmc {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="compile and run a script in the sandbox")
    run.add_argument("script")
    run.add_argument("--entry", default="main")
    run.add_argument("--model", action="append", default=[], metavar="NAME=FILE.onnx")
    _add_io(run)
    run.set_defaults(func=_cmd_run)
    inv = sub.add_parser("invoke", help="verify, install and invoke a built bundle")
    inv.add_argument("bundle")
    inv.add_argument("--trust", action="append", required=True, metavar="PUBLISHER.pub")
    inv.add_argument("--key", required=True, metavar="DEVICE.key")
    _add_io(inv)
    inv.set_defaults(func=_cmd_invoke)
    st = sub.add_parser("stats", help="install bundles, drive calls, print the container's metrics")
    st.add_argument("bundle", nargs="+")
    st.add_argument("--trust", action="append", required=True, metavar="PUBLISHER.pub")
    st.add_argument("--key", required=True, metavar="DEVICE.key")
    st.add_argument("--task", help="task to call (default: round-robin over the bundles)")
    st.add_argument("--calls", type=int, default=100)
    st.add_argument("--concurrency", type=int, default=8)
    st.add_argument("--workers", type=int, default=2)
    _add_io(st)
    st.set_defaults(func=_cmd_stats)

    from . import cli_update

    cli_update.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(message)s")
    logging.getLogger("vmcontainer").setLevel(logging.INFO)
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
