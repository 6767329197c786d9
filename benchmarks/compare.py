"""``python -m benchmarks.compare REV``: this tree against another commit, side by side.

For a change that must not make things slower: the project's transform of the bench day (1M
calls; peak extra RSS too) and the fetch of a 200k-call day with 100 ms of latency, each in a
fresh process, rounds interleaved (the order turned each round) so a neighbour's load falls
on both alike. The other commit runs from a temporary git worktree with this virtualenv.
Prints a table and the medians as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tabulate import tabulate

from benchmarks.data import ensure_day

ROOT = Path(__file__).resolve().parents[1]
FETCH = (
    "import json; from benchmarks import fetch; print(json.dumps(fetch.measure("
    "latency_ms=100, concurrency=8, rate=0, calls_per_day=200_000)))"
)


def _run(tree: Path, args: list[str]) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run(
        [sys.executable, *args], cwd=tree, env=env, capture_output=True, text=True, timeout=1800
    )
    if out.returncode:
        raise SystemExit(f"{tree}: {' '.join(args)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


@contextmanager
def other_tree(rev: str) -> Iterator[Path]:
    """``rev`` checked out in a temporary git worktree (run with this virtualenv)."""
    with tempfile.TemporaryDirectory(prefix="cdr-bench-") as tmp:
        other = Path(tmp) / "tree"
        subprocess.run(
            ["git", "worktree", "add", "--detach", "-f", str(other), rev],
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
        try:
            yield other
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(other)], cwd=ROOT)


def measure(tree: Path, data: Path) -> dict[str, float]:
    transform = _run(tree, ["-m", "benchmarks.worker", "ours", str(data), "-"])
    fetched = _run(tree, ["-c", FETCH])
    return {
        "transform_rec_s": transform["records"] / transform["seconds"],
        "transform_rss_mb": transform["rss_mb"],
        "fetch_of_ideal": fetched["ratio"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rev", help="the commit to compare against, e.g. HEAD~3")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--records", type=int, default=1_000_000)
    args = parser.parse_args(argv)
    data = ensure_day(args.records)
    with other_tree(args.rev) as other:
        trees = {args.rev: other, "this tree": ROOT}
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
        names = list(trees)
        for r in range(args.rounds):
            for name in names[r % 2 :] + names[: r % 2]:
                runs[name].append(measure(trees[name], data))
                print(f"round {r + 1} {name}: {runs[name][-1]}", file=sys.stderr)
    medians = {
        name: {k: statistics.median(run[k] for run in results) for k in results[0]}
        for name, results in runs.items()
    }
    rows = [[name, *(f"{v:,.3g}" for v in m.values())] for name, m in medians.items()]
    print(tabulate(rows, headers=["", *next(iter(medians.values()))]))
    print(json.dumps(medians))
    return 0


if __name__ == "__main__":
    sys.exit(main())
