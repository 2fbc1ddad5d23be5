"""``vmtool repo``: the over-the-air update repository (TUF).

::

    vmtool repo init DIR [--root-keys N --root-threshold T] [--expiry ROLE=DUR ...] [--keep N]
    vmtool repo add DIR BUNDLE [--rollout PCT] [--channel C] [--tags T ...] [--mandatory]
                                [--min-container VERSION] [--publish]
    vmtool repo publish DIR
    vmtool repo rollout DIR TASK --percent P [--release R] [--channel C] [--publish]
    vmtool repo rollback DIR TASK [--to RELEASE] [--channel C] [--publish]
    vmtool repo rotate-keys DIR ROLE [--keys N] [--threshold T] [--publish]
    vmtool repo status DIR [--json]
    vmtool repo serve DIR [--host H] [--port P]

``add``, ``rollout``, ``rollback`` and ``rotate-keys`` stage signed changes;
devices see them after ``publish`` (or with ``--publish``).  Exit codes: 0 ok,
2 usage or refused (the message says why), 3 unreadable bundle.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vmcontainer.errors import VmError


def _repo(args: argparse.Namespace) -> Any:
    from .repo import UpdateRepository

    return UpdateRepository(args.dir)


def _published(repo: Any, args: argparse.Namespace) -> str:
    if not getattr(args, "publish", False):
        return "staged; run `vmtool repo publish` to make it live"
    result = repo.publish()
    return f"published (targets v{result['versions']['targets']}, " \
           f"timestamp v{result['versions']['timestamp']})"


def _cmd_init(args: argparse.Namespace) -> int:
    from .repo import UpdateRepository, parse_duration

    expiry = {}
    for spec in args.expiry:
        role, sep, duration = spec.partition("=")
        if not sep or role not in ("root", "targets", "snapshot", "timestamp"):
            raise ValueError(f"--expiry takes ROLE=DURATION (e.g. timestamp=1d), got {spec!r}")
        expiry[role] = parse_duration(duration)
    repo = UpdateRepository.init(args.dir, root_keys=args.root_keys,
                                 root_threshold=args.root_threshold, expiry=expiry, keep=args.keep)
    print(f"initialized update repository {args.dir}")
    print(f"  serve      {repo.public} (CDN origin: metadata/ and targets/)")
    print(f"  ship       {repo.dir / 'root.json'} with the app (the device's trust anchor)")
    print(f"  keys       {repo.keys.path} (0600; move root keys offline)")
    return 0


def _cmd_add(args: argparse.Namespace) -> int:
    repo = _repo(args)
    try:
        data = Path(args.bundle).read_bytes()
    except OSError as exc:
        print(f"vmtool repo add: {exc}", file=sys.stderr)
        return 3
    try:
        info = repo.add(data, rollout=args.rollout, channel=args.channel, tags=args.tags,
                        mandatory=args.mandatory, min_container=args.min_container)
    except VmError as exc:
        print(f"vmtool repo add: bundle refused: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 3
    print(f"added {info.task} release {info.release} (serial {info.serial}, {info.rollout}% of "
          f"channel {info.channel}{', tags ' + ','.join(info.tags) if info.tags else ''}"
          f"{', mandatory' if info.mandatory else ''}): {_published(repo, args)}")
    return 0


def _cmd_publish(args: argparse.Namespace) -> int:
    result = _repo(args).publish()
    versions = ", ".join(f"{role} v{v}" for role, v in result["versions"].items())
    print(f"published: {versions}")
    if result["retired_keys"]:
        print(f"retired keys (moved to keys/retired/): {', '.join(result['retired_keys'])}")
    return 0


def _cmd_rollout(args: argparse.Namespace) -> int:
    repo = _repo(args)
    info = repo.set_rollout(args.task, args.percent, release=args.release, channel=args.channel)
    print(f"{info.task} release {info.release}: rollout {info.rollout}% of channel "
          f"{info.channel}: {_published(repo, args)}")
    return 0


def _cmd_rollback(args: argparse.Namespace) -> int:
    repo = _repo(args)
    withdrawn, restored = repo.rollback(args.task, channel=args.channel, to=args.to)
    print(f"{args.task}: withdrew release(s) {', '.join(str(r.release) for r in withdrawn)}; "
          f"devices go back to release {restored.release} (serial {restored.serial}): "
          f"{_published(repo, args)}")
    return 0


def _cmd_rotate(args: argparse.Namespace) -> int:
    repo = _repo(args)
    new = repo.rotate_keys(args.role, keys=args.keys, threshold=args.threshold)
    print(f"{args.role}: new key(s) {', '.join(k[:16] for k in new)}: {_published(repo, args)}")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    status = _repo(args).status()
    if args.json:
        print(json.dumps(status, indent=2, sort_keys=True))
        return 0
    for role, r in status["roles"].items():
        print(f"{role:<10} published v{r['published']:<4} staged v{r['staged']:<4} "
              f"expires {r['expires']}  {len(r['keys'])} key(s), threshold {r['threshold']}")
    if status["pending_publish"]:
        print("(staged changes not yet published)")
    for r in status["releases"]:
        flags = [f for f in ("mandatory", "withdrawn", "rollback") if r[f]]
        print(f"{r['task']:<20} release {r['release']:<5} serial {r['serial']:<4} "
              f"{r['rollout']:>4}%  {r['channel']}"
              f"{' tags=' + ','.join(r['tags']) if r['tags'] else ''}"
              f"{' [' + ','.join(flags) + ']' if flags else ''}")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from .repo_serve import RepoServer

    repo = _repo(args)
    server = RepoServer(repo.public, args.host, args.port)
    print(f"serving {repo.public} at {server.url} (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def _guarded(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Refusals (RepoError, bad values, missing files) are one line on stderr, exit 2."""

    def run(args: argparse.Namespace) -> int:
        from .repo import RepoError

        try:
            return func(args)
        except (RepoError, ValueError, OSError) as exc:
            print(f"vmtool repo {args.repo_command}: {exc}", file=sys.stderr)
            return 2

    return run


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``repo`` command group to ``vmtool``."""
    repo = sub.add_parser("repo", help="over-the-air update repository (TUF)",
                          description=__doc__.split("\n\n")[0])
    cmds = repo.add_subparsers(dest="repo_command", required=True)

    def command(name: str, func: Callable[[argparse.Namespace], int], help_: str,
                publish: bool = False) -> argparse.ArgumentParser:
        p = cmds.add_parser(name, help=help_)
        p.add_argument("dir", metavar="DIR")
        if publish:
            p.add_argument("--publish", action="store_true", help="publish right away")
        p.set_defaults(func=_guarded(func))
        return p

    p = command("init", _cmd_init, "create keys and version 1 of every role")
    p.add_argument("--root-keys", type=int, default=1, help="number of root keys (default 1)")
    p.add_argument("--root-threshold", type=int, default=1, help="root signatures required")
    p.add_argument("--expiry", action="append", default=[], metavar="ROLE=DURATION",
                   help="e.g. timestamp=1d, snapshot=7d, targets=90d, root=365d")
    p.add_argument("--keep", type=int, default=5,
                   help="releases kept in metadata per task and channel (default 5)")

    p = command("add", _cmd_add, "stage a bundle as a new release", publish=True)
    p.add_argument("bundle", metavar="BUNDLE")
    p.add_argument("--rollout", type=int, default=100, metavar="PCT",
                   help="percent of devices, 0-100 (default 100)")
    p.add_argument("--channel", default="stable")
    p.add_argument("--tags", nargs="*", default=[], metavar="TAG",
                   help="devices must have all of these tags")
    p.add_argument("--mandatory", action="store_true",
                   help="devices may not defer this update")
    p.add_argument("--min-container", default=None, metavar="VERSION",
                   help="lowest container version that can run it (default: this toolchain's)")

    p = command("publish", _cmd_publish, "make staged changes live; renew expiring metadata")

    p = command("rollout", _cmd_rollout, "change a release's rollout percentage", publish=True)
    p.add_argument("task", metavar="TASK")
    p.add_argument("--percent", type=int, required=True, metavar="P")
    p.add_argument("--release", type=int, default=None, help="default: the newest active release")
    p.add_argument("--channel", default=None)

    p = command("rollback", _cmd_rollback, "withdraw the newest release, re-point the previous",
                publish=True)
    p.add_argument("task", metavar="TASK")
    p.add_argument("--to", type=int, default=None, metavar="RELEASE",
                   help="default: the newest active release before the current one")
    p.add_argument("--channel", default=None)

    p = command("rotate-keys", _cmd_rotate, "replace the keys of a role", publish=True)
    p.add_argument("role", choices=["root", "targets", "snapshot", "timestamp"])
    p.add_argument("--keys", type=int, default=1, help="number of new keys (default 1)")
    p.add_argument("--threshold", type=int, default=None)

    p = command("status", _cmd_status, "roles, versions, expiry and every release")
    p.add_argument("--json", action="store_true")

    p = command("serve", _cmd_serve, "serve public/ over HTTP (development)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
