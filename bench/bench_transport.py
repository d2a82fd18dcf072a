"""Transport benchmark: an HTTPS canary against a plain-HTTP one, and h2c against HTTP/1.1.

Run by hand (nginx, wrk and h2load installed; trustme from the dev extras):

    .venv/bin/python bench/bench_transport.py              # 3 rounds x 5 s per run
    .venv/bin/python bench/bench_transport.py --quick      # 1 round x 3 s

Everything listens on 127.0.0.1. One nginx (1 worker) is the primary (plain HTTP) and the
canary twice: on a plain-HTTP port and on an HTTPS port (a trustme certificate), both
answering at once; the HTTPS server logs each request's `$connection` serial, so the
number of distinct serials is the number of TLS handshakes the canary pools made.

1. TLS canary. Two sidecar processes, identical but for the canary's URL (`http://`, or
   `https://` with `tls { ca ... }`), each mirroring 100% of requests to it (workers 32),
   are loaded in turn with wrk (`-t1 -c32`, GET), alternating which goes first in each
   round. Reported: req/s of each, the ratio HTTPS / HTTP (median over rounds; the target
   is >= 0.85), tees completed per dispatched, and handshakes per mirrored request.
2. h2c. The plain-HTTP sidecar is loaded with h2load (`-c32 -m10`, h2c prior knowledge)
   and with wrk (`-t1 -c32`, HTTP/1.1) in turn, alternating; req/s of each.

The machine may be shared: runs are paired within a round and ratios are medians.
Prints one table and writes bench/out/transport.json.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import bench_proxy as bp  # the lab helpers: free ports, readiness, outcome counts

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
WRK_CONNECTIONS = 32
H2LOAD_CLIENTS = 32
H2LOAD_STREAMS = 10
WARMUP_S = 2

NGINX = """
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/nginx.err warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    log_format conn "$connection";
    server {{ listen 127.0.0.1:{primary}; location / {{ return 200 "ok\\n"; }} }}
    server {{ listen 127.0.0.1:{plain}; location / {{ return 200 "canary\\n"; }} }}
    server {{
        listen 127.0.0.1:{tls} ssl;
        ssl_certificate {dir}/canary.pem;
        ssl_certificate_key {dir}/canary.key;
        access_log {dir}/tls.log conn;
        location / {{ return 200 "canary\\n"; }}
    }}
}}
"""

RULES = """
listen 127.0.0.1:{port}
admin 127.0.0.1:{admin}
primary http://127.0.0.1:{primary}
canary target {{
    server {canary}
    workers 32
    queue 1024
    timeout 10s
{tls}}}
mirror all {{
    to target
}}
"""


def wrk(url: str, seconds: int) -> float:
    argv = ["wrk", "-t1", f"-c{WRK_CONNECTIONS}", f"-d{seconds}s", url]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30)
    m = re.search(r"Requests/sec:\s+([\d.]+)", done.stdout)
    if m is None:
        raise RuntimeError(f"wrk failed:\n{done.stdout}{done.stderr}")
    if "Non-2xx" in done.stdout or "Socket errors" in done.stdout:
        print(f"  wrk saw errors: {done.stdout}", file=sys.stderr)
    return float(m.group(1))


def h2load(url: str, seconds: int) -> float:
    argv = [
        "h2load",
        f"-c{H2LOAD_CLIENTS}",
        f"-m{H2LOAD_STREAMS}",
        f"-D{seconds}",
        url,
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30)
    m = re.search(r"finished in [\d.]+\w*, ([\d.]+) req/s", done.stdout)
    failed = re.search(r"(\d+) failed, (\d+) errored", done.stdout)
    if m is None:
        raise RuntimeError(f"h2load failed:\n{done.stdout}{done.stderr}")
    if failed and (int(failed.group(1)) or int(failed.group(2))):
        print(f"  h2load saw failures: {failed.group(0)}", file=sys.stderr)
    return float(m.group(1))


class Sidecar:
    def __init__(self, workdir: Path, name: str, primary: int, canary: str, tls: str) -> None:
        self.port, self.admin = bp.free_port(), bp.free_port()
        rules = workdir / f"{name}.mirror"
        rules.write_text(
            RULES.format(port=self.port, admin=self.admin, primary=primary, canary=canary, tls=tls)
        )
        self.log = (workdir / f"{name}.log").open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sidecar.cli", "serve", str(rules)],
            stdout=self.log,
            stderr=self.log,
        )
        bp.wait_http(f"http://127.0.0.1:{self.admin}/readyz", self.proc)
        self.url = f"http://127.0.0.1:{self.port}/"

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="1 round of 3 s")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.seconds = 1, 3
    for tool in ("nginx", "wrk", "h2load"):
        if shutil.which(tool) is None:
            print(f"{tool} is not installed", file=sys.stderr)
            return 2
    import trustme  # the dev extras

    workdir = Path(tempfile.mkdtemp(prefix="bench-transport-"))
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(workdir / "ca.pem"))
    leaf = ca.issue_cert("127.0.0.1")
    (workdir / "canary.pem").write_bytes(b"".join(p.bytes() for p in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(workdir / "canary.key"))
    ports = {"primary": bp.free_port(), "plain": bp.free_port(), "tls": bp.free_port()}
    (workdir / "nginx.conf").write_text(NGINX.format(dir=workdir, **ports))
    nginx = subprocess.Popen(
        ["nginx", "-p", str(workdir), "-c", str(workdir / "nginx.conf"), "-g", "daemon off;"],
        stderr=subprocess.PIPE,
    )
    sidecars: list[Sidecar] = []
    try:
        bp.wait_http(f"http://127.0.0.1:{ports['primary']}/", nginx)
        plain = Sidecar(
            workdir, "plain", ports["primary"], f"http://127.0.0.1:{ports['plain']}", ""
        )
        sidecars.append(plain)
        https = Sidecar(
            workdir,
            "https",
            ports["primary"],
            f"https://127.0.0.1:{ports['tls']}",
            f'    tls {{ ca "{workdir / "ca.pem"}" }}\n',
        )
        sidecars.append(https)
        for s in sidecars:  # warm-up: connections, imports, the first handshakes
            wrk(s.url, WARMUP_S)
        # Tee outcomes during the canary runs only (not the warm-up or the h2c runs).
        tees: dict[str, dict[str, int]] = {"plain": {}, "https": {}}
        tls_log = workdir / "tls.log"
        tls_lines_before = len(tls_log.read_text().splitlines()) if tls_log.exists() else 0
        rps: dict[str, list[float]] = {"plain": [], "https": [], "h2c": [], "http1": []}
        ratios: list[float] = []
        h2_ratios: list[float] = []
        for r in range(args.rounds):
            order = [("plain", plain), ("https", https)]
            if r % 2:
                order.reverse()
            got = {}
            for name, s in order:
                before = bp.mirror_outcomes(s.admin)
                got[name] = wrk(s.url, args.seconds)
                for k, v in bp.mirror_outcomes(s.admin).items():
                    tees[name][k] = tees[name].get(k, 0) + v - before.get(k, 0)
            rps["plain"].append(got["plain"])
            rps["https"].append(got["https"])
            ratios.append(got["https"] / got["plain"])
            pair = [("h2c", h2load), ("http1", wrk)]
            if r % 2:
                pair.reverse()
            got = {name: run(plain.url, args.seconds) for name, run in pair}
            rps["h2c"].append(got["h2c"])
            rps["http1"].append(got["http1"])
            h2_ratios.append(got["h2c"] / got["http1"])
            print(
                f"round {r + 1}: plain canary {rps['plain'][-1]:.0f} req/s, https canary "
                f"{rps['https'][-1]:.0f} req/s; h2c {rps['h2c'][-1]:.0f}, "
                f"HTTP/1.1 {rps['http1'][-1]:.0f} req/s",
                flush=True,
            )
        lines = tls_log.read_text().splitlines()[tls_lines_before:]
        handshakes = len(set(lines))
        result = {
            "rounds": args.rounds,
            "seconds": args.seconds,
            "rps": rps,
            "https_over_plain": statistics.median(ratios),
            "h2c_over_http1": statistics.median(h2_ratios),
            "tees": tees,
            "tls_requests": len(lines),
            "tls_handshakes": handshakes,
        }
    finally:
        for s in sidecars:
            s.stop()
        nginx.send_signal(signal.SIGQUIT)
        nginx.wait(timeout=20)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "transport.json").write_text(json.dumps(result, indent=2))
    med = {k: statistics.median(v) for k, v in rps.items()}
    print()
    print("| measurement | req/s (median) |")
    print("|---|---|")
    print(f"| plain-HTTP canary, 100% mirrored (wrk -c32) | {med['plain']:.0f} |")
    print(f"| HTTPS canary, 100% mirrored (wrk -c32) | {med['https']:.0f} |")
    print(f"| h2c to the plain-canary process (h2load -c32 -m10) | {med['h2c']:.0f} |")
    print(f"| HTTP/1.1 to the same process (wrk -c32) | {med['http1']:.0f} |")
    print()
    print(f"HTTPS / plain canary: {result['https_over_plain']:.2f} (target >= 0.85)")
    print(f"h2c / HTTP/1.1: {result['h2c_over_http1']:.2f}")
    for name, t in tees.items():
        print(f"{name} canary tees during its runs: {t}")
    print(
        f"TLS canary: {result['tls_requests']} requests over {handshakes} handshakes "
        f"({handshakes / max(1, result['tls_requests']):.5f} per request)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
