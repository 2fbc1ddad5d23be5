"""Every benchmark, one command: ``python -m benchmarks [--quick] [--out DIR] [--with-fleet]``.

Runs each benchmark module in its own process (one does not warm or pollute
another), prints its table as it finishes, and writes ``DIR/benchmarks.md``
(all tables, each figure next to the baseline measured in the same run) and
``DIR/benchmarks.json`` (the machine-readable results each module emits).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

# module, arguments, arguments with --quick, writes --json?
SUITES = [
    ("benchmarks.run", [], ["--quick"], True),
    ("benchmarks.scheduler", [], ["--quick"], True),
    ("benchmarks.inference", [], ["--quick"], True),
    ("benchmarks.isolation", [], ["--quick"], True),
    ("benchmarks.soak", ["--calls", "100000"], ["--calls", "20000"], False),
]
FLEET = ("benchmarks.fleet", ["--devices", "1000"], ["--devices", "200"], True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller runs (about a minute in all)")
    ap.add_argument("--out", default="benchmarks/results", help="where the .md and .json go")
    ap.add_argument("--with-fleet", action="store_true",
                    help="also the 1,000-device OTA fleet simulation (about 2 minutes)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    suites = SUITES + ([FLEET] if args.with_fleet else [])
    markdown = [f"# vmcontainer benchmarks ({time.strftime('%Y-%m-%d %H:%M')}, "
                f"{'quick' if args.quick else 'full'})\n"]
    results: dict[str, object] = {}
    failed = []
    for module, full, quick, emits_json in suites:
        cmd = [sys.executable, "-m", module, *(quick if args.quick else full)]
        json_path = out / f"{module.split('.')[-1]}.json"
        if emits_json:
            cmd += ["--json", str(json_path)]
        print(f"==> {' '.join(cmd[1:])}", flush=True)
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        elapsed = time.perf_counter() - start
        print(proc.stdout, flush=True)
        if proc.returncode != 0:
            failed.append(module)
            print(proc.stderr[-2000:], file=sys.stderr)
        markdown.append(f"## {module} ({elapsed:.0f} s{', FAILED' if proc.returncode else ''})\n")
        markdown.append(proc.stdout.strip() + "\n")
        if emits_json and json_path.exists():
            results[module] = json.loads(json_path.read_text())
        else:
            results[module] = {"stdout": proc.stdout}
    (out / "benchmarks.md").write_text("\n".join(markdown))
    (out / "benchmarks.json").write_text(json.dumps(results, indent=2, default=str))
    print(f"wrote {out / 'benchmarks.md'} and {out / 'benchmarks.json'}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
