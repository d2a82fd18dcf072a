"""The garbage collector's passes and pauses inside `sidecar serve` under load.

    .venv/bin/python bench/bench_gc.py [--canary none|fast|slow|blackhole|dead]
                                       [--seconds 20] [--variant NAME=TREE ...]

The lab of bench_proxy.py; sidecar is started with a `gc.callbacks` hook that times every
collection. After a 2 s warm-up the counts are reset, `wrk -t1 -c32` runs for
`--seconds`, and the passes, total and longest pause per generation are printed with the
primary's req/s and p99. `--variant NAME=TREE` measures another source tree (e.g. a
`git worktree` of an older commit); default: this tree. All on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_proxy as bp

# sidecar's entry point with a timing hook; SIGUSR2 writes the figures so far to $GC_OUT
# and starts counting afresh.
HOOKED_MAIN = r"""
import gc, os, signal, sys, time
stats = [[0, 0.0, 0.0] for _ in range(3)]
began = [0.0]
def hook(phase, info):
    if phase == "start":
        began[0] = time.perf_counter()
        return
    took = time.perf_counter() - began[0]
    s = stats[info["generation"]]
    s[0] += 1; s[1] += took; s[2] = max(s[2], took)
gc.callbacks.append(hook)
def dump(*_):
    with open(os.environ["GC_OUT"], "w") as f:
        for n, total, longest in stats:
            f.write(f"{n} {total} {longest}\n")
    for s in stats:
        s[:] = [0, 0.0, 0.0]
signal.signal(signal.SIGUSR2, dump)
from sidecar.cli import main
sys.exit(main())
"""


def measure(tree: str, canary: str | None, seconds: int) -> tuple[float, float, list[list[float]]]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "gc.txt"
        os.environ["GC_OUT"] = str(out)
        bp.SIDECAR_MAIN = HOOKED_MAIN
        lab = bp.Lab(Path(tmp))
        try:
            lab.start_backends()
            px = lab.start("sidecar", canary, {"sidecar": tree})
            url = f"http://127.0.0.1:{px.port}/"
            bp.run_wrk(url, 2, False, Path(tmp))
            os.kill(px.proc.pid, signal.SIGUSR2)  # forget start-up and warm-up
            rps, _p50, p99, _errors, _n = bp.run_wrk(url, seconds, False, Path(tmp))
            out.unlink(missing_ok=True)
            os.kill(px.proc.pid, signal.SIGUSR2)
            deadline = time.monotonic() + 5
            while not out.exists() or not out.read_text().endswith("\n"):
                if time.monotonic() > deadline:
                    raise RuntimeError("the sidecar wrote no GC figures")
                time.sleep(0.05)
            gens = [[float(x) for x in line.split()] for line in out.read_text().splitlines()]
        finally:
            lab.close()
    return rps, p99, gens


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--canary", default="slow", choices=["none", "fast", "slow", "blackhole", "dead"]
    )
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=TREE")
    args = parser.parse_args()
    variants = [v.split("=", 1) for v in args.variant] or [["this tree", "."]]
    canary = None if args.canary == "none" else args.canary
    bp.ensure_tools()
    print(f"canary: {args.canary}, wrk -t1 -c32 for {args.seconds} s")
    print(
        "| sidecar | req/s | p99 ms | gen0 passes / ms | gen1 passes / ms | gen2 passes / ms "
        "| longest pause ms | GC share of the run |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, tree in variants:
        rps, p99, gens = measure(str(Path(tree).resolve()), canary, args.seconds)
        cells = " | ".join(f"{int(n)} / {total * 1000:.0f}" for n, total, _ in gens)
        longest = max(g[2] for g in gens) * 1000
        share = sum(g[1] for g in gens) / args.seconds
        print(f"| {name} | {rps:.0f} | {p99:.1f} | {cells} | {longest:.1f} | {share:.1%} |")


if __name__ == "__main__":
    main()
