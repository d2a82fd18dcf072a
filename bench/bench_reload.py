"""Reloads under load (README "The command line", reloading): nothing lost, nothing counted twice.

Run by hand (needs nginx and wrk; `apt-get install nginx wrk`):

    .venv/bin/python bench/bench_reload.py                  # 100 reloads, POST /-/reload
    .venv/bin/python bench/bench_reload.py --trigger sighup --workers 2

One nginx (1 worker) plays the primary and three canaries (`return 200`), all on loopback.
The sidecar serves a rule file that alternates between two valid configurations:

    A: canaries shared + alpha, `mirror all { to shared, alpha }`
    B: canaries shared + beta,  `mirror all { to shared, beta }`

so every reload keeps one pool (`shared`), retires one (it drains what it holds, then
closes) and starts one. While wrk drives GET traffic (every request mirrored to two
canaries), the script rewrites the file and triggers a reload (`--reloads` times, every
`--interval` seconds). Afterwards it waits for the outcome counters to settle and checks:

- zero failed primary requests (wrk: no socket errors, no non-2xx; sidecar: only 2xx),
- dispatched == completed + failed + panicked, summed over all canaries of both configs,
- every tee is counted exactly once: the sum of all outcomes (dispatched + drops) equals
  2 x the primary requests the sidecar answered,
- every reload succeeded (sidecar_rules_reloads_total{result="ok"} == reloads x workers).

Prints the figures; exit 0 when every check holds.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

PY = sys.executable
SIDECAR = [PY, "-m", "sidecar.cli"]
READY_TIMEOUT_S = 20.0
SETTLE_TIMEOUT_S = 60.0
WRK_THREADS = 1
WRK_CONNECTIONS = 32
OUTCOMES = (
    "dispatched",
    "completed",
    "failed",
    "panicked",
    "dropped_full",
    "dropped_oversize",
    "dropped_rate",
    "dropped_aborted",
    "dropped_paused",
)

NGINX_CONF = """
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 100000;
    server {{ listen 127.0.0.1:{primary}; location / {{ return 200 "ok\\n"; }} }}
    server {{ listen 127.0.0.1:{shared}; location / {{ return 200 "shared\\n"; }} }}
    server {{ listen 127.0.0.1:{alpha}; location / {{ return 200 "alpha\\n"; }} }}
    server {{ listen 127.0.0.1:{beta}; location / {{ return 200 "beta\\n"; }} }}
}}
"""

# `--canary-delay-ms`: alpha and beta become this Python server, answering after a delay, so
# that retired pools hold queued and in-flight jobs when they are swapped out.
SLOW_CANARY = """
import asyncio, sys
DELAY = float(sys.argv[2]) / 1000
async def handle(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\\r\\n\\r\\n")
            length = 0
            for line in head.split(b"\\r\\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            if length:
                await reader.readexactly(length)
            await asyncio.sleep(DELAY)
            writer.write(b"HTTP/1.1 200 OK\\r\\nContent-Length: 5\\r\\n\\r\\nslow\\n")
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()
async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", int(sys.argv[1]), backlog=1024)
    await server.serve_forever()
asyncio.run(main())
"""


def rules(config: str, ports: dict[str, int]) -> str:
    other = "alpha" if config == "A" else "beta"
    return (
        f"listen 127.0.0.1:{ports['listen']}\n"
        f"admin 127.0.0.1:{ports['admin']}\n"
        f"primary http://127.0.0.1:{ports['primary']} {{ timeout 10s }}\n"
        f"canary shared {{ server http://127.0.0.1:{ports['shared']} }}\n"
        f"canary {other} {{ server http://127.0.0.1:{ports[other]} timeout 2s }}\n"
        f"mirror all {{ to shared, {other} }}\n"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


def http(method: str, url: str) -> tuple[int, str]:
    req = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        name, _, rest = key.partition("{")
        labels = dict(re.findall(r'(\w+)="([^"]*)"', rest))
        out.append((name, labels, float(value)))
    return out


def outcome_counts(text: str) -> dict[str, dict[str, int]]:
    """canary -> outcome -> count (summed over rules and processes)."""
    counts: dict[str, dict[str, int]] = {}
    for name, labels, value in samples(text):
        if name == "sidecar_mirror_requests_total":
            per = counts.setdefault(labels["canary"], dict.fromkeys(OUTCOMES, 0))
            per[labels["outcome"]] += int(value)
    return counts


def total(text: str, metric: str, **want: str) -> int:
    return int(
        sum(
            v
            for n, labels, v in samples(text)
            if n == metric and all(labels.get(k) == x for k, x in want.items())
        )
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reloads", type=int, default=100)
    ap.add_argument("--interval", type=float, default=0.1, help="seconds between reloads")
    ap.add_argument("--trigger", choices=("post", "sighup"), default="post")
    ap.add_argument("--workers", type=int, default=1, help="sidecar serve --workers")
    ap.add_argument(
        "--canary-delay-ms",
        type=float,
        default=0.0,
        help="alpha and beta answer after this delay (0: nginx answers at once)",
    )
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-reload-"))
    names = ("primary", "shared", "alpha", "beta", "listen", "admin")
    ports = {n: free_port() for n in names}
    procs: list[subprocess.Popen[bytes]] = []
    try:
        conf = work / "nginx.conf"
        nginx_ports = dict(ports)
        if args.canary_delay_ms > 0:
            for n in ("alpha", "beta"):
                nginx_ports[n] = free_port()  # nginx's copy unused; the slow server takes it
                slow = [PY, "-c", SLOW_CANARY, str(ports[n]), str(args.canary_delay_ms)]
                procs.append(subprocess.Popen(slow))
        conf.write_text(NGINX_CONF.format(dir=work, **nginx_ports))
        procs.append(subprocess.Popen(["nginx", "-c", str(conf), "-g", "daemon off;"]))
        for n in ("primary", "shared", "alpha", "beta"):
            wait_port(ports[n])

        rule_file = work / "rules.mirror"
        rule_file.write_text(rules("A", ports))
        log = (work / "sidecar.log").open("wb")
        sidecar = subprocess.Popen(
            [*SIDECAR, "serve", str(rule_file), "--workers", str(args.workers)],
            stdout=log,
            stderr=log,
        )
        procs.append(sidecar)
        admin = f"http://127.0.0.1:{ports['admin']}"
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            try:
                if http("GET", f"{admin}/readyz")[0] == 200:
                    break
            except OSError:
                pass
            if sidecar.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("sidecar did not start:\n" + (work / "sidecar.log").read_text())
            time.sleep(0.05)
        if args.workers > 1:  # every worker up before the first reload
            while (work / "sidecar.log").read_text().count("serving http") < args.workers:
                time.sleep(0.05)

        wrk_seconds = int(1 + args.reloads * args.interval + 2)
        wrk_out: list[str] = []
        wrk = threading.Thread(
            target=lambda: wrk_out.append(
                subprocess.run(
                    [
                        "wrk",
                        f"-t{WRK_THREADS}",
                        f"-c{WRK_CONNECTIONS}",
                        f"-d{wrk_seconds}s",
                        f"http://127.0.0.1:{ports['listen']}/bench",
                    ],
                    capture_output=True,
                    text=True,
                    timeout=wrk_seconds + 60,
                ).stdout
            )
        )
        wrk.start()
        time.sleep(1.0)  # traffic first, then reloads under it
        reload_s: list[float] = []
        failed_reloads: list[str] = []
        for i in range(args.reloads):
            # Atomically, as config management does: a worker still loading the previous
            # version must never read a half-written file (that reload would fail, rightly).
            tmp = work / "rules.mirror.tmp"
            tmp.write_text(rules("B" if i % 2 == 0 else "A", ports))
            os.replace(tmp, rule_file)
            t0 = time.perf_counter()
            if args.trigger == "post":
                code, body = http("POST", f"{admin}/-/reload")
                if code != 200:
                    failed_reloads.append(body)
            else:
                os.kill(sidecar.pid, signal.SIGHUP)
            reload_s.append(time.perf_counter() - t0)
            time.sleep(args.interval)
        wrk.join()
        out = wrk_out[0] if wrk_out else ""

        # Settle: every dispatched tee has ended, and all reloads are counted.
        deadline = time.monotonic() + SETTLE_TIMEOUT_S
        while True:
            text = http("GET", f"{admin}/metrics")[1]
            counts = outcome_counts(text)
            ended = sum(c["completed"] + c["failed"] + c["panicked"] for c in counts.values())
            dispatched = sum(c["dispatched"] for c in counts.values())
            reloads_ok = total(text, "sidecar_rules_reloads_total", result="ok")
            if ended == dispatched and reloads_ok >= args.reloads * args.workers:
                break
            if time.monotonic() > deadline:
                break
            time.sleep(0.2)

        wrk_requests = int(m.group(1)) if (m := re.search(r"(\d+) requests in", out)) else -1
        rps = float(m.group(1)) if (m := re.search(r"Requests/sec:\s+([\d.]+)", out)) else 0.0
        sock_err = re.search(
            r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
        )
        socket_errors = sum(int(x) for x in sock_err.groups()) if sock_err else 0
        non2xx = int(m.group(1)) if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", out)) else 0
        answered = {
            c: total(text, "sidecar_requests_total", code=c) for c in ("2xx", "3xx", "4xx", "5xx")
        }
        primary_total = sum(answered.values())
        reloads_err = total(text, "sidecar_rules_reloads_total", result="error")
        tee_outcomes = sum(
            c[o]
            for c in counts.values()
            for o in OUTCOMES
            if o not in ("completed", "failed", "panicked")
        )

        delay = f"alpha/beta answer after {args.canary_delay_ms:g} ms; "
        print(
            (delay if args.canary_delay_ms else "")
            + f"sidecar serve --workers {args.workers}; {args.reloads} reloads by {args.trigger}, "
            f"every {args.interval}s; wrk -t{WRK_THREADS} -c{WRK_CONNECTIONS} -d{wrk_seconds}s"
        )
        print(
            f"wrk: {wrk_requests} requests, {rps:.0f} req/s, socket errors {socket_errors}, "
            f"non-2xx {non2xx}"
        )
        print(f"sidecar primary answers: {answered}")
        reload_s.sort()
        if reload_s:
            print(
                f"reloads: ok {reloads_ok}, error {reloads_err}; trigger round trip "
                f"p50 {reload_s[len(reload_s) // 2] * 1000:.1f} ms, max {reload_s[-1] * 1000:.1f} ms"
            )
        print(f"{'canary':<8}" + "".join(f"{o:>17}" for o in OUTCOMES))
        for canary in sorted(counts):
            print(f"{canary:<8}" + "".join(f"{counts[canary][o]:>17}" for o in OUTCOMES))
        print(
            f"dispatched {dispatched} == completed+failed+panicked {ended}: {dispatched == ended}"
        )
        print(
            f"tee outcomes {tee_outcomes} == 2 x primary requests {2 * primary_total}: "
            f"{tee_outcomes == 2 * primary_total}"
        )
        checks = {
            "no failed primary request": socket_errors == 0
            and non2xx == 0
            and primary_total == answered["2xx"]
            and wrk_requests > 0,
            "dispatched == completed + failed + panicked": dispatched == ended,
            "every tee counted once": tee_outcomes == 2 * primary_total,
            "every reload succeeded": not failed_reloads
            and reloads_err == 0
            and reloads_ok == args.reloads * args.workers,
        }
        for what, ok in checks.items():
            print(f"{'PASS' if ok else 'FAIL'}: {what}")
        if failed_reloads:
            print("first failed reload:\n" + failed_reloads[0])
        if "Traceback" in (work / "sidecar.log").read_text():
            print(f"FAIL: a traceback in {work / 'sidecar.log'}")
            return 1
        return 0 if all(checks.values()) else 1
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


if __name__ == "__main__":
    sys.exit(main())
