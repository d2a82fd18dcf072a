"""Side-by-side benchmark: sidecar against nginx's mirror module, in one run.

Run by hand (needs root for apt-get the first time):

    .venv/bin/python bench/bench_proxy.py            # full run, ~3 minutes
    .venv/bin/python bench/bench_proxy.py --quick    # 3 s per scenario

Everything listens on 127.0.0.1. One nginx instance (1 worker) plays the
upstream and the canaries: `fast` answers at once, `slow` after 500 ms
(echo_sleep); a Python blackhole accepts and never answers; `dead` is a port
nobody listens on. Each proxy (sidecar with one worker process, nginx with one
worker and `mirror` + `mirror_request_body on`) is measured with wrk
(`-t1 -c32 --latency`) per scenario; the canaries count what they receive.
The hypercorn hello-world app is the ceiling of our server stack.

Prints one table of ratios and writes bench/out/proxy.json and
bench/out/proxy.png (when matplotlib is installed: pip install '.[bench]').
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
PY = sys.executable
SIDECAR = [str(Path(PY).parent / "sidecar")]
WRK_THREADS = 1
WRK_CONNECTIONS = 32
POST_BYTES = 4096
READY_TIMEOUT_S = 15.0

POST_LUA = f"""
wrk.method = "POST"
wrk.body = string.rep("x", {POST_BYTES})
wrk.headers["Content-Type"] = "application/octet-stream"
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout_s: float = READY_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout_s}s")


def ensure_tools() -> None:
    missing = [t for t in ("nginx", "wrk") if not shutil.which(t)]
    echo = Path("/usr/lib/nginx/modules/ngx_http_echo_module.so")
    if missing or not echo.exists():
        print("installing nginx, libnginx-mod-http-echo, wrk with apt-get ...", file=sys.stderr)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-q"], check=True, env=env)
        subprocess.run(
            ["apt-get", "install", "-y", "-q", "nginx", "libnginx-mod-http-echo", "wrk"],
            check=True,
            env=env,
        )


# --- processes -----------------------------------------------------------------


@dataclass
class Ports:
    upstream: int
    fast: int
    slow: int
    blackhole: int
    dead: int
    nginx_proxy: int
    sidecar: int
    sidecar_admin: int
    hello: int


NGINX_BACKENDS = """
load_module /usr/lib/nginx/modules/ngx_http_echo_module.so;
worker_processes 1;
pid {dir}/backends.pid;
error_log {dir}/backends.err warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    log_format n "$request_method";
    server {{ listen 127.0.0.1:{upstream}; location / {{ return 200 "ok\\n"; }} }}
    server {{ listen 127.0.0.1:{fast}; access_log {dir}/fast.log n;
             location / {{ return 200 "canary\\n"; }} }}
    server {{ listen 127.0.0.1:{slow}; access_log {dir}/slow.log n;
             location / {{ echo_sleep 0.5; echo "slow"; }} }}
}}
"""

NGINX_PROXY = """
worker_processes 1;
pid {dir}/proxy.pid;
error_log {dir}/proxy.err warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    upstream primary {{ server 127.0.0.1:{upstream}; keepalive 64; }}
    upstream canary {{ server 127.0.0.1:{canary}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{port};
        client_body_buffer_size 64k;
        location / {{
            {mirror}
            mirror_request_body on;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_pass http://primary;
        }}
        location = /_mirror {{
            internal;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_connect_timeout 10s;
            proxy_read_timeout 10s;
            proxy_pass http://canary$request_uri;
        }}
    }}
}}
"""

SIDECAR_RULES = """
listen 127.0.0.1:{port}
admin 127.0.0.1:{admin}
primary http://127.0.0.1:{upstream}
canary target {{
    server http://127.0.0.1:{canary}
    workers 32
    queue 1024
    timeout 10s
}}
{rule}
"""

HELLO_APP = """
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    more = True
    while more:
        more = (await receive()).get("more_body", False)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", b"3")]})
    await send({"type": "http.response.body", "body": b"ok\\n"})
"""

BLACKHOLE = """
import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(4096)
held = []
while True:
    c, _ = s.accept(); held.append(c)   # accept and never answer
"""


class Lab:
    """The processes of one run; torn down in `close()` whatever happened."""

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir
        self.procs: list[subprocess.Popen[bytes]] = []
        self.ports = Ports(*(free_port() for _ in range(9)))

    def spawn(self, argv: list[str], **kw: object) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kw)  # type: ignore[call-overload]
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc in self.procs:
            self.procs.remove(proc)

    def close(self) -> None:
        for proc in list(self.procs):
            self.stop(proc)

    def start_backends(self) -> None:
        p = self.ports
        conf = self.dir / "backends.conf"
        conf.write_text(
            NGINX_BACKENDS.format(dir=self.dir, upstream=p.upstream, fast=p.fast, slow=p.slow)
        )
        self.spawn(["nginx", "-c", str(conf), "-g", "daemon off;"])
        self.spawn([PY, "-c", BLACKHOLE, str(p.blackhole)])
        for port in (p.upstream, p.fast, p.slow, p.blackhole):
            wait_port(port)

    def canary_port(self, canary: str) -> int:
        return int(getattr(self.ports, canary))

    def start_nginx_proxy(self, canary: str | None) -> subprocess.Popen[bytes]:
        p = self.ports
        mirror = "mirror /_mirror;" if canary else ""
        conf = self.dir / "proxy.conf"
        conf.write_text(
            NGINX_PROXY.format(
                dir=self.dir,
                upstream=p.upstream,
                canary=self.canary_port(canary) if canary else p.dead,
                port=p.nginx_proxy,
                mirror=mirror,
            )
        )
        proc = self.spawn(["nginx", "-c", str(conf), "-g", "daemon off;"])
        wait_port(p.nginx_proxy)
        return proc

    def start_sidecar(self, canary: str | None) -> subprocess.Popen[bytes]:
        p = self.ports
        rule = "mirror all { to target }" if canary else ""
        rules = self.dir / "sidecar.mirror"
        rules.write_text(
            SIDECAR_RULES.format(
                port=p.sidecar,
                admin=p.sidecar_admin,
                upstream=p.upstream,
                canary=self.canary_port(canary) if canary else p.dead,
                rule=rule,
            )
        )
        proc = self.spawn([*SIDECAR, "serve", str(rules)], cwd=self.dir)
        wait_http(f"http://127.0.0.1:{p.sidecar_admin}/readyz", proc)
        return proc

    def start_hello(self) -> subprocess.Popen[bytes]:
        app = self.dir / "hello_app.py"
        app.write_text(HELLO_APP)
        argv = [PY, "-m", "hypercorn", "--bind", f"127.0.0.1:{self.ports.hello}"]
        argv += ["--worker-class", "uvloop", "--workers", "1", "hello_app:app"]
        proc = self.spawn(argv, cwd=self.dir)
        wait_port(self.ports.hello)
        return proc

    def canary_hits(self, canary: str | None) -> int | None:
        if canary not in ("fast", "slow"):
            return None
        log = self.dir / f"{canary}.log"
        return log.read_text().count("\n") if log.exists() else 0

    def reset_canary_logs(self) -> None:
        for name in ("fast", "slow"):
            (self.dir / f"{name}.log").write_text("")
        pid = int((self.dir / "backends.pid").read_text())
        os.kill(pid, signal.SIGUSR1)  # reopen logs
        time.sleep(0.3)


def wait_http(url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            raise RuntimeError(f"process exited with {proc.returncode}: {err}")
        try:
            with urllib.request.urlopen(url, timeout=0.5) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} not ready after {READY_TIMEOUT_S}s")


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of the processes and their children, from /proc."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        for p in [pid, *children(pid)]:
            try:
                fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def children(pid: int) -> list[int]:
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []
    out = [int(k) for k in kids]
    for k in list(out):
        out += children(k)
    return out


# --- measurement ----------------------------------------------------------------


@dataclass
class Result:
    proxy: str
    scenario: str
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    requests: int
    canary_received: int | None
    cpu_us_per_req: float | None


def parse_latency(text: str, pct: str) -> float:
    m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
    if not m:
        return float("nan")
    value, unit = float(m.group(1)), m.group(2)
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value


def run_wrk(
    url: str, seconds: float, post: bool, workdir: Path
) -> tuple[float, float, float, int, int]:
    argv = ["wrk", f"-t{WRK_THREADS}", f"-c{WRK_CONNECTIONS}", f"-d{seconds}s", "--latency"]
    if post:
        script = workdir / "post.lua"
        script.write_text(POST_LUA)
        argv += ["-s", str(script)]
    out = subprocess.run([*argv, url], capture_output=True, text=True, timeout=seconds + 30).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    errors = 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        errors += sum(int(x) for x in m.groups())
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        errors += int(m.group(1))
    return rps, parse_latency(out, "50"), parse_latency(out, "99"), errors, total


SCENARIOS: list[tuple[str, str | None, bool]] = [
    ("GET, no mirror", None, False),
    ("POST 4KiB, no mirror", None, True),
    ("GET, mirror fast", "fast", False),
    ("POST 4KiB, mirror fast", "fast", True),
    ("GET, mirror slow (500ms)", "slow", False),
    ("GET, mirror blackhole", "blackhole", False),
    ("GET, mirror dead port", "dead", False),
]


def measure(lab: Lab, seconds: float) -> list[Result]:
    results: list[Result] = []
    p = lab.ports

    def one(
        proxy: str, scenario: str, url: str, pids: list[int], canary: str | None, post: bool
    ) -> None:
        lab.reset_canary_logs()
        run_wrk(url, 1, post, lab.dir)  # warm-up: connections, JIT-free but caches warm
        lab.reset_canary_logs()
        cpu0 = cpu_seconds(pids)
        rps, p50, p99, errors, total = run_wrk(url, seconds, post, lab.dir)
        cpu = cpu_seconds(pids) - cpu0
        time.sleep(1.0 if canary in ("fast", None) else 0.2)  # let mirrors land in the log
        res = Result(
            proxy,
            scenario,
            rps,
            p50,
            p99,
            errors,
            total,
            lab.canary_hits(canary),
            (cpu / total * 1e6) if pids and total else None,
        )
        results.append(res)
        print(
            f"  {proxy:8} {scenario:28} {rps:10.0f} req/s  p50 {p50:7.2f} ms  p99 {p99:7.2f} ms"
            f"  errors {errors}  canary {res.canary_received}",
            file=sys.stderr,
        )

    one("direct", "GET", f"http://127.0.0.1:{p.upstream}/", [], None, False)
    hello = lab.start_hello()
    one(
        "hello", "GET (hypercorn ceiling)", f"http://127.0.0.1:{p.hello}/", [hello.pid], None, False
    )
    lab.stop(hello)
    for scenario, canary, post in SCENARIOS:
        for proxy in ("sidecar", "nginx"):
            proc = (
                lab.start_sidecar(canary) if proxy == "sidecar" else lab.start_nginx_proxy(canary)
            )
            port = p.sidecar if proxy == "sidecar" else p.nginx_proxy
            try:
                one(proxy, scenario, f"http://127.0.0.1:{port}/api/items", [proc.pid], canary, post)
            finally:
                lab.stop(proc)
    return results


def table(results: list[Result]) -> str:
    by = {(r.proxy, r.scenario): r for r in results}
    hello = by[("hello", "GET (hypercorn ceiling)")]
    base = {px: by[(px, "GET, no mirror")] for px in ("sidecar", "nginx")}
    lines = [
        "| scenario | proxy | req/s | x own no-mirror | p50 ms | p99 ms | errors | canary got | CPU µs/req |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        own = base.get(r.proxy)
        ratio = f"{r.rps / own.rps:.2f}" if own else "-"
        got = "-" if r.canary_received is None else f"{r.canary_received}/{r.requests}"
        cpu = "-" if r.cpu_us_per_req is None else f"{r.cpu_us_per_req:.0f}"
        lines.append(
            f"| {r.scenario} | {r.proxy} | {r.rps:.0f} | {ratio} | {r.p50_ms:.2f} | {r.p99_ms:.2f} "
            f"| {r.errors} | {got} | {cpu} |"
        )
    s = base["sidecar"]
    lines.append("")
    lines.append("| target | measured | goal |")
    lines.append("|---|---:|---:|")
    lines.append(f"| sidecar no-mirror / hypercorn hello | {s.rps / hello.rps:.2f} | >= 0.45 |")
    fast = by[("sidecar", "GET, mirror fast")]
    lines.append(f"| sidecar mirror fast / own no-mirror | {fast.rps / s.rps:.2f} | >= 0.70 |")
    nfast = by[("nginx", "GET, mirror fast")]
    lines.append(
        f"| nginx mirror fast / own no-mirror | {nfast.rps / base['nginx'].rps:.2f} | (ref) |"
    )
    for sc in ("GET, mirror slow (500ms)", "GET, mirror blackhole", "GET, mirror dead port"):
        r = by[("sidecar", sc)]
        lines.append(f"| sidecar {sc}: throughput / no-mirror | {r.rps / s.rps:.2f} | >= 0.95 |")
        lines.append(f"| sidecar {sc}: p99 / no-mirror p99 | {r.p99_ms / s.p99_ms:.2f} | <= 1.10 |")
    post = by[("sidecar", "POST 4KiB, no mirror")]
    lines.append(f"| sidecar POST 4KiB cost / GET cost | {s.rps / post.rps:.2f} | <= 1.30 |")
    return "\n".join(lines)


def chart(results: list[Result], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    scen = [sc for sc, _, _ in SCENARIOS]
    side = {r.scenario: r.rps for r in results if r.proxy == "sidecar"}
    ngx = {r.scenario: r.rps for r in results if r.proxy == "nginx"}
    fig, ax = plt.subplots(figsize=(10, 4.5))
    xs = range(len(scen))
    ax.bar([x - 0.2 for x in xs], [side[s] for s in scen], 0.4, label="sidecar (1 worker)")
    ax.bar([x + 0.2 for x in xs], [ngx[s] for s in scen], 0.4, label="nginx mirror (1 worker)")
    ax.set_xticks(list(xs), [textwrap.fill(s, 14) for s in scen], fontsize=8)
    ax.set_ylabel("requests/s (wrk -t1 -c32)")
    ax.set_yscale("log")
    ax.legend()
    ax.set_title("Throughput by canary behaviour (log scale)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=8.0, help="wrk duration per scenario")
    ap.add_argument("--quick", action="store_true", help="3 s per scenario")
    args = ap.parse_args()
    seconds = 3.0 if args.quick else args.seconds
    ensure_tools()
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="sidecar-bench-") as tmp:
        lab = Lab(Path(tmp))
        try:
            lab.start_backends()
            results = measure(lab, seconds)
        finally:
            lab.close()
    text = table(results)
    print(text)
    (OUT / "proxy.json").write_text(json.dumps([asdict(r) for r in results], indent=2))
    (OUT / "proxy.md").write_text(text + "\n")
    if chart(results, OUT / "proxy.png"):
        print(f"\nchart: {OUT / 'proxy.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
