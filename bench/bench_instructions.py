"""Instructions per proxied request of `sidecar serve`, counted by callgrind.

    apt-get install valgrind nghttp2-client nginx libnginx-mod-http-echo   # once
    .venv/bin/python bench/bench_instructions.py                     # no mirror
    .venv/bin/python bench/bench_instructions.py --canary dead       # a dead canary
    .venv/bin/python bench/bench_instructions.py --tree /tmp/before  # another source tree
    .venv/bin/python bench/bench_instructions.py --keep /tmp/cg.out  # then callgrind_annotate

bench_proxy.py's lab (one nginx as the upstream and canaries) with sidecar (the same rules,
canary `workers 32 queue 1024`) run under `valgrind --tool=callgrind`. After a warm-up of
`WARMUP_REQUESTS`, the counters are zeroed, `h2load --h1 -c32` sends `-n` requests, and the
dump's total is divided by them. Instruction counts are user space only (the kernel's part
of a write is not in them) and do not depend on the machine's load, so they compare code
where req/s and CPU time cannot on a busy machine. Work that depends on wall time (a dead
canary's connect attempt once per back-off, a slow canary's completions) is inflated
~50x by running under valgrind: compare such scenarios with care. About a minute per run.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import bench_proxy as bp

WARMUP_REQUESTS = 600
READY_TIMEOUT_S = 900  # start-up under valgrind (the grammar, the imports) is slow
CONNECTIONS = 32


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--canary", choices=["fast", "slow", "blackhole", "dead"], default=None)
    ap.add_argument("-n", type=int, default=1000, help="requests counted")
    ap.add_argument("--tree", help="a source tree holding sidecar/ and grammar/ (PYTHONPATH)")
    ap.add_argument("--keep", help="copy the counted dump here (for callgrind_annotate)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="sidecar-callgrind-") as tmp:
        lab = bp.Lab(Path(tmp))
        out = Path(tmp) / "callgrind.out"
        try:
            lab.start_backends()
            port, admin = bp.free_port(), bp.free_port()
            rules = Path(tmp) / "sidecar.mirror"
            rules.write_text(
                bp.SIDECAR_RULES.format(
                    port=port,
                    admin=admin,
                    upstream=lab.ports.upstream,
                    canary=lab.canary_port(args.canary),
                    rule="mirror all { to target }" if args.canary else "",
                    pause="",
                )
            )
            env = dict(os.environ)
            if args.tree:
                env["PYTHONPATH"] = str(Path(args.tree).resolve())
            argv = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"]
            argv += [bp.PY, "-c", bp.SIDECAR_MAIN, "serve", str(rules)]
            proc = lab.spawn(argv, cwd=tmp, env=env)
            bp.wait_http(f"http://127.0.0.1:{admin}/readyz", proc, timeout_s=READY_TIMEOUT_S)
            url = f"http://127.0.0.1:{port}/api/items"
            h2load = ["h2load", "--h1", "-t1", f"-c{CONNECTIONS}"]
            run = subprocess.run
            run([*h2load, "-n", str(WARMUP_REQUESTS), url], check=True, capture_output=True)
            run(["callgrind_control", "-z", str(proc.pid)], check=True, capture_output=True)
            done = run([*h2load, "-n", str(args.n), url], check=True, capture_output=True)
            run(["callgrind_control", "-d", str(proc.pid)], check=True, capture_output=True)
            time.sleep(2)  # the dump is written by the process
            m = re.search(
                rb"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded", done.stdout
            )
            if m is None or int(m[2]) != args.n:
                raise SystemExit(f"h2load did not complete {args.n} requests:\n{done.stdout!r}")
        finally:
            lab.close()
        total = 0
        for dump in Path(tmp).glob("callgrind.out*"):
            for line in dump.read_text(errors="replace").splitlines():
                if line.startswith("summary:") and dump.name != "callgrind.out":
                    if int(line.split()[1]) > total and args.keep:
                        shutil.copyfile(dump, args.keep)
                    total = max(total, int(line.split()[1]))
    if not total:
        raise SystemExit("no callgrind dump with a summary was found")
    what = f"canary {args.canary}" if args.canary else "no mirror"
    print(f"{total / args.n:,.0f} instructions per request ({what}, tree {args.tree or '.'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
