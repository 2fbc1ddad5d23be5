"""``vmtool``: the cloud-side toolchain (keygen, check, build, inspect)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from vmcontainer import __version__
from vmcontainer.errors import CompileError, ModelError, VmError


def _cmd_keygen(args: argparse.Namespace) -> int:
    try:
        ids = _keygen(args.out, args.force, args.device_key)
    except FileExistsError as exc:
        print(f"vmtool keygen: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    print(f"publisher key id {ids['publisher']}: {out / 'publisher.key'} (keep in the cloud), "
          f"{out / 'publisher.pub'} (ship to devices as the trust root)")
    print(f"device key id    {ids['device']}: {out / 'device.key'} (stays on the device), "
          f"{out / 'device.pub'} (the cloud encrypts bundles to it)")
    return 0


def _keygen(out: str, force: bool, device_key: str) -> dict[str, str]:
    from .keygen import generate_keys

    return generate_keys(out, overwrite=force, device_key=device_key)


def _print_diagnostics(exc: CompileError, path: Path) -> None:
    for d in exc.diagnostics:
        print(f"{path}:{d.line}:{d.col}: {d.message}", file=sys.stderr)


def _cmd_check(args: argparse.Namespace) -> int:
    from vmcontainer.sandbox.compiler import check_source

    path = Path(args.script)
    try:
        check_source(path.read_bytes(), path.name, entry=args.entry)
    except CompileError as exc:
        _print_diagnostics(exc, path)
        return 4
    except OSError as exc:
        print(f"vmtool check: {exc}", file=sys.stderr)
        return 2
    print(f"{path}: ok")
    return 0


def _cmd_build(args: argparse.Namespace) -> int:
    from .builder import BuildOptions, build_bundle

    path = Path(args.script)
    try:
        models = {}
        for spec in args.model:
            name, sep, file = spec.partition("=")
            if not sep:
                raise ValueError(f"--model takes NAME=FILE.onnx, got {spec!r}")
            models[name] = Path(file).read_bytes()
        meta = json.loads(args.meta) if args.meta else {}
        warmup = json.loads(args.warmup) if args.warmup else None
        from .models import parse_ref_spec

        model_refs = dict(parse_ref_spec(spec) for spec in args.model_ref)
        options = BuildOptions(name=args.name, release=args.release, entry=args.entry,
                               timeout=args.timeout, lane=args.lane, models=models, meta=meta,
                               expires_in=args.expires_in, requires=args.requires,
                               then=args.then, warmup=warmup, model_refs=model_refs)
        bundle = build_bundle(path, options, signers=[Path(k) for k in args.sign],
                              recipients=[Path(k) for k in args.to])
    except CompileError as exc:
        _print_diagnostics(exc, path)
        return 4
    except ModelError as exc:
        print(f"vmtool build: {exc}", file=sys.stderr)
        return 4
    except (ValueError, OSError) as exc:
        print(f"vmtool build: {exc}", file=sys.stderr)
        return 2
    Path(args.output).write_bytes(bundle)
    print(f"wrote {args.output} ({len(bundle)} bytes): {args.name} release {args.release}")
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from .builder import inspect_bundle

    try:
        info = inspect_bundle(Path(args.bundle).read_bytes())
    except (VmError, OSError) as exc:
        print(f"vmtool inspect: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 3
    if args.json:
        print(json.dumps(info, indent=2, sort_keys=True))
        return 0
    h = info["header"]
    print(f"task       {h['task']} release {h['release']}")
    print(f"python     {h['python']['impl']} {h['python']['cache_tag']} magic {h['python']['magic']}")
    print(f"created    {h['created']}  expires {h['expires']}")
    print(f"signers    {', '.join(info['signatures'])}")
    print(f"recipients {', '.join(info['recipients'])}")
    print(f"payload    {h['pt_len']} bytes plaintext, {h['ct_len']} bytes ciphertext ({h['aead']})")
    print(f"size       {info['size']} bytes")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vmtool", description=__doc__)
    parser.add_argument("--version", action="version", version=f"vmtool {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    kg = sub.add_parser("keygen", help="create publisher and device key pairs")
    kg.add_argument("--out", required=True)
    kg.add_argument("--force", action="store_true", help="overwrite existing key files")
    kg.add_argument("--device-key", choices=("x25519", "p256"), default="x25519",
                    help="device key type: x25519 (default, faster unwrap) or p256 (the type "
                         "hardware keystores make)")
    kg.set_defaults(func=_cmd_keygen)

    ck = sub.add_parser("check", help="lint a script against the sandbox policy")
    ck.add_argument("script")
    ck.add_argument("--entry", default="main")
    ck.set_defaults(func=_cmd_check)

    b = sub.add_parser("build", help="compile, encrypt and sign a task bundle")
    b.add_argument("script")
    b.add_argument("--name", required=True)
    b.add_argument("--release", type=int, required=True)
    b.add_argument("--sign", action="append", required=True, metavar="PUBLISHER.key")
    b.add_argument("--to", action="append", required=True, metavar="DEVICE.pub")
    b.add_argument("--model", action="append", default=[], metavar="NAME=FILE.onnx")
    b.add_argument("--model-ref", action="append", default=[],
                   metavar="ALIAS=FILE.onnx[,name=NAME][,policy=pin|compatible]",
                   help="use a model installed from a model bundle (see docs/models.md)")
    b.add_argument("--timeout", type=float, default=1.0)
    b.add_argument("--lane", default="regular", choices=["core", "regular", "low"])
    b.add_argument("--entry", default="main")
    b.add_argument("--meta", help="free-form JSON object")
    b.add_argument("--expires-in", type=float, default=None, help="seconds of validity")
    b.add_argument("--requires", action="append", default=[], metavar="TASK",
                   help="a task whose result feeds this one (repeatable)")
    b.add_argument("--then", action="append", default=[], metavar="TASK",
                   help="a task to run with this one's result after success (repeatable)")
    b.add_argument("--warmup", help="JSON inputs for a dry run at install")
    b.add_argument("-o", "--output", required=True)
    b.set_defaults(func=_cmd_build)

    ins = sub.add_parser("inspect", help="print a bundle's clear header")
    ins.add_argument("bundle")
    ins.add_argument("--json", action="store_true")
    ins.set_defaults(func=_cmd_inspect)

    # Command groups that live in their own modules.
    from . import cli_models, cli_repo

    cli_models.register(sub)
    cli_repo.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
