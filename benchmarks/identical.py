"""``python -m benchmarks.identical [REV]``: do two commits publish the same bytes?

For a change that must not change behaviour: each tree transforms the same raw days (the
bench's clean and dirty days of 1M calls, and a chaos day with every defect the simulator
makes) into a data directory of its own, in a fresh process; then every published file
(datasets and the day's state records) is compared by sha256. Without ``REV`` it prints
this tree's digests.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.compare import other_tree
from benchmarks.data import DAY, ensure_day

ROOT = Path(__file__).resolve().parents[1]
# Every defect at once, well above what a real day holds: duplicates, conflicting copies,
# rejects of each reason, text and millisecond times, soft anomalies and abusive callers.
CHAOS = "chaos"
DAYS = {"bench": (1_000_000, "clean"), "dirty": (1_000_000, "dirty"), "chaos": (60_000, CHAOS)}

# Runs in the tree under test: publish the day, print the published files' digests.
_WORKER = """
import hashlib, json, sys
from pathlib import Path
from zoneinfo import ZoneInfo
from cdr_pipeline.store import open_store
try:
    from cdr_pipeline.day import Day, build_day as validate_day
except ImportError:
    from cdr_pipeline.daily import Day, validate_day
root = Path(sys.argv[1])
validate_day(open_store(root), Day.from_key(sys.argv[2], ZoneInfo("Asia/Shanghai")),
             ZoneInfo("Asia/Shanghai"))
digests = {}
for path in sorted(root.rglob("*")):
    rel = path.relative_to(root).as_posix()
    if path.is_file() and not rel.startswith(("raw/", "_state/lease", "_state/spill")):
        digests[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
print(json.dumps(digests))
"""


def digests(tree: Path, raw: Path) -> dict[str, dict[str, str]]:
    """Each dataset file's sha256 as ``tree`` publishes the day of ``raw``."""
    with tempfile.TemporaryDirectory(prefix="cdr-identical-") as tmp:
        work = Path(tmp) / "data"
        shutil.copytree(raw / "raw", work / "raw")
        out = subprocess.run(
            [sys.executable, "-c", _WORKER, str(work), DAY],
            cwd=tree,
            env={**os.environ, "PYTHONPATH": str(tree)},
            capture_output=True,
            text=True,
            timeout=1800,
        )
        if out.returncode:
            raise SystemExit(f"{tree}: the transform failed:\n{out.stderr[-3000:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rev", nargs="?", help="the commit to compare against, e.g. c78ea0a")
    args = parser.parse_args(argv)
    raws = {name: ensure_day(n, variant) for name, (n, variant) in DAYS.items()}
    ours = {name: digests(ROOT, raw) for name, raw in raws.items()}
    if not args.rev:
        print(json.dumps(ours, indent=1))
        return 0
    with other_tree(args.rev) as other:
        theirs = {name: digests(other, raw) for name, raw in raws.items()}
    same = True
    for name in DAYS:
        for rel in sorted(set(ours[name]) | set(theirs[name])):
            a, b = theirs[name].get(rel), ours[name].get(rel)
            same &= a == b
            print(f"{name:6} {'same' if a == b else 'DIFFERS'}  {rel}")
    print("byte-identical" if same else "the trees publish different bytes")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
