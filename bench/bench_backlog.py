"""A slow canary kept backed up for longer than its timeout: what still reaches it.

    .venv/bin/python bench/bench_backlog.py [--seconds 40] [--variant NAME=TREE ...]

The lab of bench_proxy.py (nginx upstream, the `slow` canary answering after 500 ms) and
sidecar with its canary at `workers 32 queue 1024 timeout 10s`, rule `mirror all`,
loaded by `wrk -t1 -c32` for `--seconds` (more than the 10 s timeout, so the queue holds
jobs about to expire). The canary can take 32 / 0.5 s = 64 mirrors/s; the table shows how
many completed, and the primary's req/s and p99 meanwhile. With a FIFO queue the oldest
job, the one a worker takes, is always about to expire: it times out in flight and its
connection is aborted. With adaptive LIFO (`sidecar/pool.py`) the stale ones expire in
the queue unsent and fresh ones complete. `--variant NAME=TREE` measures the sidecar of
another source tree (e.g. a `git worktree` of an older commit); default: this tree.
All on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_proxy as bp

CAPACITY_PER_S = 32 / 0.5


def measure(tree: str, seconds: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        lab = bp.Lab(Path(tmp))
        try:
            lab.start_backends()
            px = lab.start("sidecar", "slow", {"sidecar": tree})
            url = f"http://127.0.0.1:{px.port}/"
            rps, _p50, p99, _errors, _n = bp.run_wrk(url, seconds, False, Path(tmp))
            outcomes = bp.mirror_outcomes(px.admin)
        finally:
            lab.close()
    return {
        "rps": rps,
        "p99": p99,
        "completed": outcomes.get("completed", 0),
        "failed": outcomes.get("failed", 0),
        "dropped_full": outcomes.get("dropped_full", 0),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=int, default=40)
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=TREE")
    args = parser.parse_args()
    variants = [v.split("=", 1) for v in args.variant] or [["this tree", "."]]
    bp.ensure_tools()
    print(
        f"| sidecar | req/s | p99 ms | completed mirrors | per s (canary can take "
        f"{CAPACITY_PER_S:.0f}) | failed | dropped_full |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, tree in variants:
        r = measure(str(Path(tree).resolve()), args.seconds)
        print(
            f"| {name} | {r['rps']:.0f} | {r['p99']:.1f} | {r['completed']:.0f} | "
            f"{r['completed'] / args.seconds:.1f} | {r['failed']:.0f} | {r['dropped_full']:.0f} |"
        )


if __name__ == "__main__":
    main()
