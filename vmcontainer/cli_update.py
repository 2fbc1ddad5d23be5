"""``vmc update``: sync a device state directory from an update repository.

::

    vmc update --repo URL --root root.json --state DIR --trust publisher.pub --key device.key
               [--device-id ID] [--channel C] [--tag T ...] [--mandatory-only]
               [--offline] [--json]

Restores the releases recorded in ``--state`` (no network), runs one sync
against ``--repo`` (TUF-verified) and prints what it installed.  The state
directory keeps the device id, the high-water marks, the bundles and the TUF
metadata between runs, exactly as an app embedding ``DeviceSync`` would.
``--offline`` only restores and reports.

Exit codes: 0 synced (possibly nothing new), 2 usage, 3 refused - forged,
stale, replayed or oversized metadata, or a target or bundle refused (the
device keeps its releases), 6 repository unreachable (try later).
With ``--json`` exactly one JSON object is printed.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_USAGE, EXIT_REFUSED, EXIT_UNREACHABLE = 0, 2, 3, 6


def _emit(args: argparse.Namespace, obj: dict[str, Any], lines: list[str]) -> None:
    if args.json:
        print(json.dumps(obj, sort_keys=True))
    else:
        for line in lines:
            print(line)


def _restored_lines(outcomes: list[dict[str, Any]]) -> list[str]:
    return [f"restored {o['task']} release {o['release']} ({o['action']})" for o in outcomes]


def _report_lines(report: dict[str, Any]) -> list[str]:
    lines = []
    for o in report["installed"]:
        how = "signed rollback to" if o["action"] == "rollback" else "installed"
        prev = f" (was {o['previous']})" if o.get("previous") is not None else ""
        lines.append(f"{how} {o['task']} release {o['release']}{prev}")
    running = {o["task"]: o["release"] for o in report.get("restored", [])}
    running.update({o["task"]: o["release"] for o in report["installed"]})
    for t in report["current"]:
        release = running.get(t)
        lines.append(f"up to date: {t}" + (f" release {release}" if release is not None else ""))
    for h in report["held"]:
        lines.append(f"held {h['task']}: {h['reason']}")
    for d in report["deferred"]:
        lines.append(f"deferred {d['task']} release {d['release']}: {d['reason']}")
    for c in report["crash_rollbacks"]:
        lines.append(f"crash rollback {c['task']} release {c['release']} -> {c.get('to')}: "
                     f"{c.get('reason', '')}")
    for f in report["failed"]:
        err = f.get("error", {})
        lines.append(f"FAILED {f['task']} release {f['release']}: "
                     f"{err.get('type', '')}: {err.get('message', '')}")
    meta = report["metadata"]
    lines.append(f"metadata: root v{meta.get('root')}, targets v{meta.get('targets')}, "
                 f"timestamp v{meta.get('timestamp')}; {report['requests']} requests, "
                 f"{report['bytes']} bytes")
    return lines


def _cmd_update(args: argparse.Namespace) -> int:
    from .container import Container
    from .updates import DeviceSync, RepositoryUnreachable, UpdateError

    # urllib3 logs each retry as a warning; the one-line outcome below says it all.
    logging.getLogger("urllib3").setLevel(logging.ERROR)

    try:
        root = Path(args.root).read_bytes() if args.root else None
        container = Container(trust=[Path(t) for t in args.trust], device_key=Path(args.key),
                              workers=1)
    except (ValueError, OSError) as exc:
        print(f"vmc update: {exc}", file=sys.stderr)
        return EXIT_USAGE
    with container:
        try:
            device = DeviceSync(container, args.repo, root=root, state_dir=args.state,
                                device_id=args.device_id, channel=args.channel, tags=args.tag,
                                defer_optional=args.mandatory_only)
        except (UpdateError, ValueError, OSError) as exc:
            print(f"vmc update: {exc}", file=sys.stderr)
            return EXIT_USAGE
        with device:
            restored = [o.to_dict() for o in device.restore()]
            if args.offline:
                _emit(args, {"ok": True, "device_id": device.device_id, "restored": restored,
                             "status": device.status()["installed"]},
                      _restored_lines(restored) or ["nothing to restore"])
                return EXIT_OK
            if not args.repo or root is None:
                print("vmc update: --repo and --root are required (or --offline)",
                      file=sys.stderr)
                return EXIT_USAGE
            try:
                report = device.sync().to_dict()
            except UpdateError as exc:
                code = EXIT_UNREACHABLE if isinstance(exc, RepositoryUnreachable) \
                    else EXIT_REFUSED
                error = {"type": type(exc).__name__, "message": str(exc)}
                _emit(args, {"ok": False, "device_id": device.device_id, "restored": restored,
                             "error": error},
                      [*_restored_lines(restored), f"{error['type']}: {error['message']}"])
                return code
            report["restored"] = restored
            _emit(args, report, _restored_lines(restored) + _report_lines(report))
            return EXIT_OK if report["ok"] else EXIT_REFUSED


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``update`` to ``vmc``."""
    p = sub.add_parser("update", help="restore, then sync tasks from an update repository (TUF)",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("--repo", metavar="URL", help="repository base URL (serves metadata/, targets/)")
    p.add_argument("--root", metavar="ROOT.json", help="trusted root metadata shipped with the app")
    p.add_argument("--state", required=True, metavar="DIR", help="device state directory")
    p.add_argument("--trust", action="append", required=True, metavar="PUBLISHER.pub")
    p.add_argument("--key", required=True, metavar="DEVICE.key")
    p.add_argument("--device-id", default=None, help="default: a random id kept in --state")
    p.add_argument("--channel", default="stable")
    p.add_argument("--tag", action="append", default=[], metavar="TAG",
                   help="device targeting tag (repeatable)")
    p.add_argument("--mandatory-only", action="store_true",
                   help="defer optional updates (metered network, low battery, ...)")
    p.add_argument("--offline", action="store_true", help="only restore from --state")
    p.add_argument("--json", action="store_true", help="print exactly one JSON object")
    p.set_defaults(func=_cmd_update)
