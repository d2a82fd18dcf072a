"""Python calls per proxied request of `sidecar serve`, by function, and their difference
between two scenarios.

    .venv/bin/python bench/bench_calls.py                         # no mirror: the top functions
    .venv/bin/python bench/bench_calls.py --canary dead            # a dead canary against no mirror
    .venv/bin/python bench/bench_calls.py --canary fast --tree /tmp/before

bench_proxy.py's lab (one nginx as the upstream and canaries) with sidecar under a
`sys.setprofile` hook that counts every Python function entered (coroutine resumptions
included) and every C function called. After a warm-up the hook is switched on for `-n`
requests sent by `h2load --h1 -c32`, then off, and the counts are divided by the requests.
With `--canary`, the same is done without a mirror and the difference is printed: the calls
that mirroring adds per request, where the time of a scenario goes (issue 20 used it to find
the tee path's Prometheus calls). Counts, not times: the hook slows the process several
times, so work tied to wall time (a dead canary's connect attempt per back-off window) is
inflated; compare such rows with care.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path

import bench_proxy as bp

WARMUP_REQUESTS = 2000
CONNECTIONS = 32
READY_TIMEOUT_S = 60

# Runs inside `sidecar serve`: SIGUSR1 starts counting, the next one writes the counts.
PROFILER = """
import collections, os, signal, sys
counts = collections.Counter()
on = [False]
def hook(frame, event, arg):
    if not on[0]:
        return
    if event == "call":
        code = frame.f_code
        name = code.co_filename.rsplit("site-packages/", 1)[-1]
        counts[f"{name}:{code.co_firstlineno} {code.co_qualname}"] += 1
    elif event == "c_call":
        counts["C " + getattr(arg, "__qualname__", repr(arg))] += 1
def toggle(signum, frame):
    if not on[0]:
        counts.clear()
        on[0] = True
        return
    on[0] = False
    with open(os.environ["SIDECAR_CALLS_OUT"], "w") as f:
        for key, n in counts.most_common():
            f.write(f"{n}\\t{key}\\n")
signal.signal(signal.SIGUSR1, toggle)
sys.setprofile(hook)
from sidecar.cli import main
sys.exit(main())
"""


def count(lab: bp.Lab, tmp: Path, canary: str | None, n: int, tree: str | None) -> Counter[str]:
    """Calls per function over `n` requests of one scenario."""
    port, admin = bp.free_port(), bp.free_port()
    rules = tmp / f"calls-{canary}.mirror"
    rules.write_text(
        bp.SIDECAR_RULES.format(
            port=port,
            admin=admin,
            upstream=lab.ports.upstream,
            canary=lab.canary_port(canary),
            rule="mirror all { to target }" if canary else "",
            pause="",
        )
    )
    out = tmp / f"calls-{canary}.txt"
    env = dict(os.environ, SIDECAR_CALLS_OUT=str(out))
    if tree:
        env["PYTHONPATH"] = str(Path(tree).resolve())
    proc = lab.spawn([bp.PY, "-c", PROFILER, "serve", str(rules)], cwd=tmp, env=env)
    bp.wait_http(f"http://127.0.0.1:{admin}/readyz", proc, timeout_s=READY_TIMEOUT_S)
    url = f"http://127.0.0.1:{port}/api/items"
    h2load = ["h2load", "--h1", "-t1", f"-c{CONNECTIONS}"]
    subprocess.run([*h2load, "-n", str(WARMUP_REQUESTS), url], check=True, capture_output=True)
    os.kill(proc.pid, signal.SIGUSR1)
    subprocess.run([*h2load, "-n", str(n), url], check=True, capture_output=True)
    os.kill(proc.pid, signal.SIGUSR1)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not out.exists() or not out.stat().st_size:
        if time.monotonic() > deadline:
            raise SystemExit("the counts were not written")
        time.sleep(0.1)
    time.sleep(0.5)  # the file is written in one go; let it finish
    proc.terminate()
    proc.wait(10)
    counts: Counter[str] = Counter()
    for line in out.read_text().splitlines():
        calls, key = line.split("\t", 1)
        counts[key] = int(calls)
    return counts


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--canary", choices=["fast", "slow", "blackhole", "dead"], default=None)
    ap.add_argument("-n", type=int, default=10000, help="requests counted")
    ap.add_argument("--tree", help="a source tree holding sidecar/ and grammar/ (PYTHONPATH)")
    ap.add_argument("--top", type=int, default=60, help="rows printed")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="sidecar-calls-") as tmp:
        lab = bp.Lab(Path(tmp))
        try:
            lab.start_backends()
            base = count(lab, Path(tmp), None, args.n, args.tree)
            mirrored = (
                count(lab, Path(tmp), args.canary, args.n, args.tree) if args.canary else None
            )
        finally:
            lab.close()
    n = args.n
    print(f"Python and C calls per request, no mirror: {sum(base.values()) / n:,.1f}")
    if mirrored is None:
        for key, calls in base.most_common(args.top):
            print(f"{calls / n:8.2f}  {key}")
        return 0
    print(f"with a {args.canary} canary: {sum(mirrored.values()) / n:,.1f}")
    print(f"{'added':>8}  {'no mirror':>9}  function")
    keys = sorted(set(base) | set(mirrored), key=lambda k: base[k] - mirrored[k])
    for key in keys[: args.top]:
        added = (mirrored[key] - base[key]) / n
        if abs(added) < 0.01:
            break
        print(f"{added:8.2f}  {base[key] / n:9.2f}  {key}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
