"""Side-by-side benchmark: sidecar against nginx's mirror module, in one run.

Run by hand (needs root for apt-get the first time):

    .venv/bin/python bench/bench_proxy.py                 # 2 rounds x 2 pairs x 5 s, ~25 min
    .venv/bin/python bench/bench_proxy.py --quick         # 1 round x 1 pair x 3 s
    .venv/bin/python bench/bench_proxy.py --server hypercorn --server uvicorn   # both hosts
    .venv/bin/python bench/bench_proxy.py --only sidecar --scenarios mirror --rounds 5
    .venv/bin/python bench/bench_proxy.py --variant before=/tmp/old-tree   # A/B in one run

Everything listens on 127.0.0.1. One nginx instance (1 worker) plays the
upstream and the canaries: `fast` answers at once, `slow` after 500 ms
(echo_sleep); a Python blackhole accepts and never answers; `dead` is a port
nobody listens on. Each proxy (sidecar with one worker process, nginx with one
worker and `mirror` + `mirror_request_body on`) is measured with wrk
(`-t1 -c32 --latency`) per scenario; the canaries count what they receive.
Hello-world apps on hypercorn and on uvicorn (uvloop, one worker each) are the
ceilings of the two server stacks. `--server NAME` (repeatable) runs sidecar as
`sidecar serve --server NAME` for each host named, side by side in one run
(without it: sidecar's default host, no flag passed).

The machine may be shared (other test suites running), so the ratios (the targets)
are paired: per round and proxy, a reference process (no mirroring, one worker) runs
the whole round, and every run of a scenario comes right next to a run of the
reference (before it, then after it, alternately), under the same load. A ratio is the
median, over all pairs (`--rounds` x `--pairs`), of the scenario's run divided by the
reference run next to it; the table shows the medians of those same reference runs
beside each scenario, and the per-pair ratios. The hello-world ceilings and the
`--workers 2` run are paired with sidecar's reference the same way, and an A/A control
(a second process with the reference's own configuration) shows what the pairing reads
when nothing differs. The CPU-implied ratio (the reference's CPU per request over the
scenario's, from /proc) is the proxy's own cost, which the load of other programs moves
far less than req/s. The machine's cores and load average are printed with the table.

A low-load latency table comes first: 1 connection, 1,000 requests (wrk with a Lua
script that stops at 1,000 responses), p50/p99 straight to the upstream, through nginx
and through each sidecar, in the same run (median of `LOW_LOAD_ROUNDS` rounds).

`--variant NAME=TREE` measures the sidecar of another source tree (a directory holding
`sidecar/` and `grammar/`, e.g. `git archive HEAD~3 sidecar grammar | tar -x -C TREE`),
for before/after figures from one run. Sidecar's own outcome counters (from its admin
`/metrics`) are reported next to what the canary logged.

Prints the tables and writes bench/out/proxy.json, bench/out/proxy.md and
bench/out/proxy.png (when matplotlib is installed: pip install '.[bench]').
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
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
WRK_THREADS = 1
WRK_CONNECTIONS = 32
POST_BYTES = 4096
READY_TIMEOUT_S = 15.0
WARMUP_S = 2  # each process's warm-up before its first measured run
LOW_LOAD_REQUESTS = 1000  # the low-load latency runs: this many requests on 1 connection
LOW_LOAD_ROUNDS = 3  # rounds of the low-load runs (each target once per round); medians
# wrk's -d for them. wrk stops sending at LOW_LOAD_REQUESTS (the Lua script) but exits only
# at -d; 1,000 requests at 1 ms each fit in 1 s, so a slower target shows fewer requests.
LOW_LOAD_LIMIT_S = 4
START_ATTEMPTS = 3  # a fresh port is picked per start; others may grab it meanwhile

STOP_LUA = f"""
local done = 0
function response(status, headers, body)
    done = done + 1
    if done >= {LOW_LOAD_REQUESTS} then wrk.thread:stop() end
end
"""

POST_LUA = f"""
wrk.method = "POST"
wrk.body = string.rep("x", {POST_BYTES})
wrk.headers["Content-Type"] = "application/octet-stream"
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
{pause}}}
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
HELLO_HOSTS = ("hypercorn", "uvicorn")

BLACKHOLE = """
import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(4096)
held = []
while True:
    c, _ = s.accept(); held.append(c)   # accept and never answer
"""

SIDECAR_MAIN = "import sys; from sidecar.cli import main; sys.exit(main())"


@dataclass
class Backends:
    upstream: int
    fast: int
    slow: int
    blackhole: int
    dead: int


class Lab:
    """The processes of one run; torn down in `close()` whatever happened."""

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir
        self.procs: list[subprocess.Popen[bytes]] = []
        self.ports = Backends(*(free_port() for _ in range(5)))
        self.pause = ""  # `--pause`: a `pause` statement for sidecar's canary

    def spawn(self, argv: list[str], **kw: object) -> subprocess.Popen[bytes]:
        proc: subprocess.Popen[bytes] = subprocess.Popen(  # type: ignore[call-overload]
            argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kw
        )
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

    def canary_port(self, canary: str | None) -> int:
        return int(getattr(self.ports, canary or "dead"))

    def start(
        self, proxy: str, canary: str | None, trees: dict[str, str], workers: int = 1
    ) -> Proxy:
        """Start one proxy on fresh ports; retried when a port was taken meanwhile. `proxy`
        is `nginx`, `hello[@HOST]` or a sidecar name (`sidecar` or a variant) with an
        optional `@HOST` (`sidecar serve --server HOST`)."""
        name, _, host = proxy.partition("@")
        for attempt in range(START_ATTEMPTS):
            try:
                if name == "nginx":
                    return self._start_nginx(canary)
                if name == "hello":
                    return self._start_hello(host or "hypercorn")
                return self._start_sidecar(canary, trees.get(name), host, workers)
            except RuntimeError as exc:
                if attempt == START_ATTEMPTS - 1:
                    raise
                print(f"  (retrying {proxy} start: {str(exc).strip()[-120:]})", file=sys.stderr)
        raise AssertionError("unreachable")

    def _start_nginx(self, canary: str | None) -> Proxy:
        port = free_port()
        mirror = "mirror /_mirror;" if canary else ""
        conf = self.dir / "proxy.conf"
        conf.write_text(
            NGINX_PROXY.format(
                dir=self.dir,
                upstream=self.ports.upstream,
                canary=self.canary_port(canary),
                port=port,
                mirror=mirror,
            )
        )
        proc = self.spawn(["nginx", "-c", str(conf), "-g", "daemon off;"])
        wait_port(port, proc)
        return Proxy(proc, port, None)

    def _start_sidecar(
        self, canary: str | None, tree: str | None, host: str, workers: int
    ) -> Proxy:
        port, admin = free_port(), free_port()
        rule = "mirror all { to target }" if canary else ""
        rules = self.dir / f"sidecar-{port}.mirror"
        rules.write_text(
            SIDECAR_RULES.format(
                port=port,
                admin=admin,
                upstream=self.ports.upstream,
                canary=self.canary_port(canary),
                rule=rule,
                pause=f"    {self.pause}\n" if self.pause else "",
            )
        )
        env = dict(os.environ)
        if tree is not None:
            env["PYTHONPATH"] = tree
        argv = [PY, "-c", SIDECAR_MAIN, "serve", str(rules)]
        if host:
            argv += ["--server", host]
        if workers > 1:
            argv += ["--workers", str(workers)]
        proc = self.spawn(argv, cwd=self.dir, env=env)
        try:
            wait_http(f"http://127.0.0.1:{admin}/readyz", proc)
        except RuntimeError:
            self.stop(proc)
            raise
        return Proxy(proc, port, admin)

    def _start_hello(self, host: str) -> Proxy:
        port = free_port()
        app = self.dir / "hello_app.py"
        app.write_text(HELLO_APP)
        if host == "uvicorn":
            argv = [PY, "-m", "uvicorn", "--host", "127.0.0.1", "--port", str(port)]
            argv += ["--loop", "uvloop", "--workers", "1", "--no-access-log"]
            argv += ["--log-level", "warning", "--lifespan", "off", "hello_app:app"]
        else:
            argv = [PY, "-m", "hypercorn", "--bind", f"127.0.0.1:{port}"]
            argv += ["--worker-class", "uvloop", "--workers", "1", "hello_app:app"]
        proc = self.spawn(argv, cwd=self.dir)
        wait_port(port, proc)
        return Proxy(proc, port, None)

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


@dataclass
class Proxy:
    proc: subprocess.Popen[bytes]
    port: int
    admin: int | None  # sidecar's admin port (its /metrics)


def wait_port(port: int, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            raise RuntimeError(f"process exited with {proc.returncode}: {err}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {READY_TIMEOUT_S}s")


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout_s: float = READY_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
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
    raise RuntimeError(f"{url} not ready after {timeout_s}s")


def mirror_outcomes(admin: int | None) -> dict[str, int]:
    """sidecar_mirror_requests_total summed by outcome, from the admin /metrics."""
    if admin is None:
        return {}
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5) as resp:
            text = resp.read().decode()
    except OSError:
        return {}
    out: dict[str, int] = {}
    for m in re.finditer(
        r'^sidecar_mirror_requests_total\{[^}]*outcome="(\w+)"[^}]*\}\s+([\d.e+]+)$', text, re.M
    ):
        out[m.group(1)] = out.get(m.group(1), 0) + int(float(m.group(2)))
    return out


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
    outcomes: dict[str, int] | None = None
    rounds: int = 1
    rps_rounds: list[float] | None = None


def parse_latency(text: str, pct: str) -> float:
    m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
    if not m:
        return float("nan")
    value, unit = float(m.group(1)), m.group(2)
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value


def run_wrk(
    url: str, seconds: int, post: bool, workdir: Path
) -> tuple[float, float, float, int, int]:
    argv = ["wrk", f"-t{WRK_THREADS}", f"-c{WRK_CONNECTIONS}", f"-d{seconds}s", "--latency"]
    if post:
        script = workdir / "post.lua"
        script.write_text(POST_LUA)
        argv += ["-s", str(script)]
    done = subprocess.run([*argv, url], capture_output=True, text=True, timeout=seconds + 30)
    out = done.stdout
    rps_m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total_m = re.search(r"(\d+) requests in", out)
    if rps_m is None or total_m is None:
        raise RuntimeError(f"wrk failed: {' '.join(argv)}\n{out}{done.stderr}")
    errors = 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        errors += sum(int(x) for x in m.groups())
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        errors += int(m.group(1))
    return (
        float(rps_m.group(1)),
        parse_latency(out, "50"),
        parse_latency(out, "99"),
        errors,
        int(total_m.group(1)),
    )


NO_MIRROR = "GET, no mirror"
POST_NO_MIRROR = "POST 4KiB, no mirror"
MIRROR_FAST = "GET, mirror fast"
# The hello-world ceilings, one per host, each paired with sidecar's reference.
HELLO = {
    "hypercorn": "GET (hypercorn hello world: the ceiling)",
    "uvicorn": "GET (uvicorn hello world)",
}
CONTROL = "GET, no mirror (A/A control)"
WORKERS_2 = "GET, no mirror, --workers 2"
SCENARIOS: list[tuple[str, str | None, bool]] = [
    (NO_MIRROR, None, False),
    (POST_NO_MIRROR, None, True),
    (MIRROR_FAST, "fast", False),
    ("POST 4KiB, mirror fast", "fast", True),
    ("GET, mirror slow (500ms)", "slow", False),
    ("GET, mirror blackhole", "blackhole", False),
    ("GET, mirror dead port", "dead", False),
    # sidecar only: two processes on the same listen address, against the 1-process reference.
    (WORKERS_2, None, False),
    # A/A control: a second process with the reference's own configuration. Its ratio
    # shows what the pairing itself reads (process placement, order) when nothing differs.
    (CONTROL, None, False),
]
MISBEHAVING = ("GET, mirror slow (500ms)", "GET, mirror blackhole", "GET, mirror dead port")
WORKERS = {WORKERS_2: 2}  # scenarios run with `sidecar serve --workers N`


def load(
    lab: Lab,
    px: Proxy | None,
    proxy: str,
    scenario: str,
    canary: str | None,
    post: bool,
    seconds: int,
) -> Result:
    """One wrk run against a running proxy (None: straight to the upstream)."""
    if px is None:
        url, pids = f"http://127.0.0.1:{lab.ports.upstream}/", []
    else:
        url, pids = f"http://127.0.0.1:{px.port}/api/items", [px.proc.pid]
    if canary in ("fast", "slow"):
        lab.reset_canary_logs()
    before = mirror_outcomes(px.admin if px else None)
    cpu0 = cpu_seconds(pids)
    rps, p50, p99, errors, total = run_wrk(url, seconds, post, lab.dir)
    cpu = cpu_seconds(pids) - cpu0
    if canary in ("fast", "slow"):
        time.sleep(1.0 if canary == "fast" else 0.6)  # let the last mirrors land in the log
    after = mirror_outcomes(px.admin if px else None)
    outcomes = {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}
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
        outcomes or None,
    )
    print(
        f"  {proxy:10} {scenario:26} {rps:8.0f} req/s  p50 {p50:7.2f} ms  p99 {p99:7.2f} ms"
        f"  err {errors}  canary {res.canary_received}"
        + (f"  cpu {res.cpu_us_per_req:.0f} us/req" if res.cpu_us_per_req else "")
        + (f"  {outcomes}" if outcomes else ""),
        file=sys.stderr,
    )
    return res


@dataclass
class Pair:
    """One scenario run next to a run of its reference (that proxy's no-mirror GET, or for
    the ceilings and --workers 2 sidecar's no-mirror GET), back to back, so both see the
    same load."""

    proxy: str
    scenario: str
    rps: float
    ref_rps: float
    p99_ms: float
    ref_p99_ms: float
    cpu_us: float | None
    ref_cpu_us: float | None

    @classmethod
    def of(cls, proxy: str, scenario: str, r: Result, base: Result) -> Pair:
        """A scenario's run `r` next to its reference's run `base`."""
        return cls(
            proxy,
            scenario,
            r.rps,
            base.rps,
            r.p99_ms,
            base.p99_ms,
            r.cpu_us_per_req,
            base.cpu_us_per_req,
        )

    @property
    def rps_ratio(self) -> float:
        return self.rps / self.ref_rps

    @property
    def p99_ratio(self) -> float:
        return self.p99_ms / self.ref_p99_ms

    @property
    def cpu_ratio(self) -> float | None:
        """The reference's CPU per request over the scenario's: the proxy's own cost."""
        if self.cpu_us and self.ref_cpu_us:
            return self.ref_cpu_us / self.cpu_us
        return None


def measure(
    lab: Lab,
    proxies: list[str],
    scenarios: list[tuple[str, str | None, bool]],
    seconds: int,
    rounds: int,
    pairs: int,
    trees: dict[str, str],
    hellos: list[str],
    machine: Machine,
) -> tuple[list[Result], list[Pair]]:
    """`rounds` x: per proxy, one reference process (no mirror) runs all round; each
    scenario's process is started, warmed up, and measured `pairs` times, each right next
    to a run of the reference (before it, then after it, alternately)."""
    runs: dict[tuple[str, str], list[Result]] = {}
    paired: list[Pair] = []

    def keep(r: Result) -> Result:
        runs.setdefault((r.proxy, r.scenario), []).append(r)
        machine.sample()
        return r

    for n in range(rounds):
        print(f"round {n + 1}/{rounds}", file=sys.stderr)
        if "nginx" in proxies:
            load(lab, None, "direct", "GET", None, False, 1)  # warm-up
            keep(load(lab, None, "direct", "GET", None, False, seconds))
        for proxy in proxies:
            ref = lab.start(proxy, None, trees)
            try:
                load(lab, ref, proxy, NO_MIRROR, None, False, WARMUP_S)  # warm-up
                steps: list[tuple[str, str, str | None, bool]] = [
                    (proxy, sc, canary, post)
                    for sc, canary, post in scenarios
                    if sc != NO_MIRROR and (proxy != "nginx" or sc not in WORKERS)
                ]
                if proxy != "nginx":
                    steps[:0] = [(f"hello@{h}", HELLO[h], None, False) for h in hellos]
                for who, sc, canary, post in steps:
                    px = lab.start(who, canary, trees, WORKERS.get(sc, 1))
                    try:
                        load(lab, px, who, sc, canary, post, WARMUP_S)  # warm-up
                        if canary == "slow":
                            time.sleep(0.6)  # the warm-up's mirrors land before counting
                        for i in range(pairs):
                            # Alternate which of the two goes first: no order bias.
                            if i % 2 == 0:
                                base = keep(load(lab, ref, proxy, NO_MIRROR, None, False, seconds))
                                r = keep(load(lab, px, who, sc, canary, post, seconds))
                            else:
                                r = keep(load(lab, px, who, sc, canary, post, seconds))
                                base = keep(load(lab, ref, proxy, NO_MIRROR, None, False, seconds))
                            paired.append(Pair.of(proxy, sc, r, base))
                    finally:
                        lab.stop(px.proc)
            finally:
                lab.stop(ref.proc)
    return [median_result(rs) for rs in runs.values()], paired


def median_result(rs: list[Result]) -> Result:
    """Medians per field (requests, canary hits and outcomes from the median-rps run)."""
    by_rps = sorted(rs, key=lambda r: r.rps)
    mid = by_rps[(len(by_rps) - 1) // 2]
    cpus = [r.cpu_us_per_req for r in rs if r.cpu_us_per_req is not None]
    return Result(
        mid.proxy,
        mid.scenario,
        statistics.median(r.rps for r in rs),
        statistics.median(r.p50_ms for r in rs),
        statistics.median(r.p99_ms for r in rs),
        max(r.errors for r in rs),
        mid.requests,
        mid.canary_received,
        statistics.median(cpus) if cpus else None,
        mid.outcomes,
        len(rs),
        [round(r.rps) for r in rs],
    )


@dataclass
class PairSummary:
    """The pairs of one (proxy, scenario): medians of the scenario's and of the reference's
    runs in them, and the median of the per-pair ratios (what the targets use)."""

    rps: float
    ref_rps: float
    rps_ratio: float
    rps_ratios: list[float]
    p99_ms: float
    ref_p99_ms: float
    p99_ratio: float
    cpu_us: float
    ref_cpu_us: float
    cpu_ratio: float  # nan: not measured; for a ceiling, sidecar's CPU over the app's


def summarize(paired: list[Pair]) -> dict[tuple[str, str], PairSummary]:
    groups: dict[tuple[str, str], list[Pair]] = {}
    for p in paired:
        groups.setdefault((p.proxy, p.scenario), []).append(p)
    nan = float("nan")

    def med(values: list[float | None]) -> float:
        vs = [v for v in values if v is not None]
        return statistics.median(vs) if vs else nan

    out: dict[tuple[str, str], PairSummary] = {}
    for k, ps in groups.items():
        out[k] = PairSummary(
            med([p.rps for p in ps]),
            med([p.ref_rps for p in ps]),
            med([p.rps_ratio for p in ps]),
            [p.rps_ratio for p in ps],
            med([p.p99_ms for p in ps]),
            med([p.ref_p99_ms for p in ps]),
            med([p.p99_ratio for p in ps]),
            med([p.cpu_us for p in ps]),
            med([p.ref_cpu_us for p in ps]),
            med([p.cpu_ratio for p in ps]),
        )
    return out


def pair_medians(paired: list[Pair]) -> dict[tuple[str, str], tuple[float, float, float]]:
    """(proxy, scenario) -> (req/s ratio, p99 ratio, CPU-implied ratio): the medians of
    `summarize` as bench_compare.py reads them."""
    return {k: (v.rps_ratio, v.p99_ratio, v.cpu_ratio) for k, v in summarize(paired).items()}


RATIO_SENTENCE = (
    "A ratio is the median, over the pairs, of (the scenario's run / the reference run "
    "right next to it); the reference columns are the medians of those same reference "
    "runs, so the ratio of the two medians shown may differ slightly from it. CPU-implied "
    "is the reference's CPU per request over the scenario's (higher is cheaper; for a "
    "hello world, that is sidecar's CPU per request over the hello world's)."
)


def _f(value: float, fmt: str = ".2f") -> str:
    return "-" if value != value else format(value, fmt)


def table(results: list[Result], paired: list[Pair], hellos: list[str]) -> str:
    sums = summarize(paired)
    proxies = list(dict.fromkeys(r.proxy for r in results if r.proxy not in ("direct",)))
    proxies = [p for p in proxies if not p.startswith("hello")]
    by = {(r.proxy, r.scenario): r for r in results}
    lines = [
        "| scenario | proxy | req/s | its reference's req/s | x reference (per pair) "
        "| CPU µs/req | reference's CPU µs/req | CPU-implied x | p99 ms | reference's p99 ms "
        "| p99 x | p50 ms | errors | canary got |",
        "|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def row(r: Result, shown_as: str, ps: PairSummary | None) -> None:
        got = "-" if r.canary_received is None else f"{r.canary_received}/{r.requests}"
        cpu = "-" if r.cpu_us_per_req is None else f"{r.cpu_us_per_req:.0f}"
        if ps is None:
            cells = [f"{r.rps:.0f}", "-", "-", cpu, "-", "-", f"{r.p99_ms:.2f}", "-", "-"]
        else:
            each = ", ".join(f"{x:.2f}" for x in ps.rps_ratios)
            cells = [
                f"{ps.rps:.0f}",
                f"{ps.ref_rps:.0f}",
                f"**{ps.rps_ratio:.2f}** ({each})",
                _f(ps.cpu_us, ".0f"),
                _f(ps.ref_cpu_us, ".0f"),
                _f(ps.cpu_ratio),
                f"{ps.p99_ms:.2f}",
                f"{ps.ref_p99_ms:.2f}",
                f"{ps.p99_ratio:.2f}",
            ]
        lines.append(
            f"| {r.scenario} | {shown_as} | "
            + " | ".join(cells)
            + f" | {r.p50_ms:.2f} | {r.errors} | {got} |"
        )

    direct = by.get(("direct", "GET"))
    if direct is not None:
        row(direct, "direct (the upstream)", None)
    for px in proxies:
        ref = by.get((px, NO_MIRROR))
        if ref is not None:
            row(ref, f"{px} (reference, all its runs)", None)
        for h in hellos:
            r = by.get((f"hello@{h}", HELLO[h]))
            if r is not None and (px, HELLO[h]) in sums:
                row(r, f"hello@{h} vs {px}", sums[(px, HELLO[h])])
        for sc, _canary, _post in SCENARIOS:
            r = by.get((px, sc))
            if sc != NO_MIRROR and r is not None:
                row(r, px, sums.get((px, sc)))
    lines += ["", RATIO_SENTENCE, ""]
    lines += [
        "| target (issue 20) | proxy | measured: median of per-pair ratios | CPU-implied "
        "| goal | met |",
        "|---|---|---:|---:|---:|:---:|",
    ]

    def target(name: str, px: str, value: float, goal: str, ok: bool, cpu: float) -> None:
        met = "-" if goal == "-" else "yes" if ok else "NO"
        lines.append(f"| {name} | {px} | {value:.2f} | {_f(cpu)} | {goal} | {met} |")

    nan = float("nan")
    for px in proxies:
        for h in hellos:
            ps = sums.get((px, HELLO[h]))
            if ps is not None and px != "nginx":
                v = 1 / ps.rps_ratio
                goal = ">= 0.78" if h == "hypercorn" else "-"
                ok = v >= 0.78 if h == "hypercorn" else True
                # CPU-implied here: the hello world's CPU per request over sidecar's.
                cpu = 1 / ps.cpu_ratio if ps.cpu_ratio == ps.cpu_ratio else nan
                target(f"no mirror req/s / {h} hello world", px, v, goal, ok, cpu)
        ps = sums.get((px, MIRROR_FAST))
        if ps is not None:
            goal = ">= 0.85" if px != "nginx" else "-"
            ok = ps.rps_ratio >= 0.85 or px == "nginx"
            target("mirror fast req/s / no mirror", px, ps.rps_ratio, goal, ok, ps.cpu_ratio)
            fast = by.get((px, MIRROR_FAST))
            if fast is not None and fast.canary_received is not None:
                v = fast.canary_received / fast.requests
                target("mirror fast: canary got / requests", px, v, ">= 1.00", v >= 1.0, nan)
        for sc in MISBEHAVING:
            ps = sums.get((px, sc))
            if ps is None:
                continue
            goal_r, goal_p = (">= 0.97", "<= 1.05") if px != "nginx" else ("-", "-")
            ok_r = ps.rps_ratio >= 0.97 or px == "nginx"
            ok_p = ps.p99_ratio <= 1.05 or px == "nginx"
            target(f"{sc}: req/s / no mirror", px, ps.rps_ratio, goal_r, ok_r, ps.cpu_ratio)
            target(f"{sc}: p99 / no mirror p99", px, ps.p99_ratio, goal_p, ok_p, nan)
        ps = sums.get((px, WORKERS_2))
        if ps is not None:
            ok = ps.rps_ratio >= 1.7
            target("--workers 2 req/s / --workers 1", px, ps.rps_ratio, ">= 1.70", ok, nan)
        ps = sums.get((px, POST_NO_MIRROR))
        if ps is not None:
            target("POST 4KiB req/s / GET req/s (no mirror)", px, ps.rps_ratio, "-", True, nan)
        ps = sums.get((px, CONTROL))
        if ps is not None:
            lines.append(
                f"| A/A control (same config, 2nd process): req/s, p99 ratios | {px} "
                f"| {ps.rps_ratio:.2f}, {ps.p99_ratio:.2f} | {_f(ps.cpu_ratio)} | 1.00 | - |"
            )
    return "\n".join(lines)


# --- low load: 1 connection, LOW_LOAD_REQUESTS requests ----------------------------


@dataclass
class LowLoad:
    target: str
    p50_ms: float
    p99_ms: float
    requests: int
    p50_rounds: list[float]
    p99_rounds: list[float]


def low_load(lab: Lab, proxies: list[str], trees: dict[str, str]) -> list[LowLoad]:
    """p50/p99 of LOW_LOAD_REQUESTS requests on one connection, straight to the upstream
    and through every proxy (no mirror), each target once per round, medians."""
    script = lab.dir / "stop.lua"
    script.write_text(STOP_LUA)
    started: list[tuple[str, str, Proxy | None]] = [
        ("direct (the upstream)", f"http://127.0.0.1:{lab.ports.upstream}/", None)
    ]
    try:
        for proxy in proxies:
            px = lab.start(proxy, None, trees)
            started.append((proxy, f"http://127.0.0.1:{px.port}/api/items", px))
        samples: dict[str, list[tuple[float, float, int]]] = {}
        for n in range(LOW_LOAD_ROUNDS + 1):  # round 0: warm-up
            for name, url, _px in started:
                argv = ["wrk", "-t1", "-c1", f"-d{LOW_LOAD_LIMIT_S}s", "--latency"]
                argv += ["-s", str(script), url]
                out = subprocess.run(argv, capture_output=True, text=True).stdout
                total = re.search(r"(\d+) requests in", out)
                if total is None:
                    raise RuntimeError(f"wrk failed: {' '.join(argv)}\n{out}")
                if n:
                    got = (parse_latency(out, "50"), parse_latency(out, "99"), int(total[1]))
                    samples.setdefault(name, []).append(got)
    finally:
        for _name, _url, started_px in started:
            if started_px is not None:
                lab.stop(started_px.proc)
    rows = []
    for name, ss in samples.items():
        rows.append(
            LowLoad(
                name,
                statistics.median(x[0] for x in ss),
                statistics.median(x[1] for x in ss),
                min(x[2] for x in ss),
                [x[0] for x in ss],
                [x[1] for x in ss],
            )
        )
    print(f"  low load done: {[(r.target, r.p50_ms, r.p99_ms) for r in rows]}", file=sys.stderr)
    return rows


def low_load_table(rows: list[LowLoad]) -> str:
    direct = next((r for r in rows if r.target.startswith("direct")), None)
    lines = [
        f"| 1 connection, {LOW_LOAD_REQUESTS} requests | p50 ms | p99 ms | p50 - direct ms "
        "| p99 - direct ms | p50 per round | p99 per round | requests (fewest of a round) |",
        "|---|---:|---:|---:|---:|---|---|---:|",
    ]
    for r in rows:
        d50 = f"{r.p50_ms - direct.p50_ms:+.3f}" if direct and r is not direct else "-"
        d99 = f"{r.p99_ms - direct.p99_ms:+.3f}" if direct and r is not direct else "-"
        lines.append(
            f"| {r.target} | {r.p50_ms:.3f} | {r.p99_ms:.3f} | {d50} | {d99} "
            f"| {', '.join(f'{x:.3f}' for x in r.p50_rounds)} "
            f"| {', '.join(f'{x:.3f}' for x in r.p99_rounds)} | {r.requests} |"
        )
    return "\n".join(lines)


# --- the machine --------------------------------------------------------------------


class Machine:
    """Cores and CPU model, and the load average sampled after every run."""

    def __init__(self) -> None:
        self.cores = os.cpu_count() or 0
        self.model = "?"
        with contextlib.suppress(OSError):
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    self.model = line.split(":", 1)[1].strip()
                    break
        self.loads: list[float] = []
        self.sample()

    def sample(self) -> None:
        self.loads.append(os.getloadavg()[0])

    def describe(self) -> str:
        lo, hi = min(self.loads), max(self.loads)
        med = statistics.median(self.loads)
        return (
            f"machine: {self.cores} cores ({self.model}); load average (1 min) over the runs "
            f"{lo:.2f}-{hi:.2f}, median {med:.2f}, at the start {self.loads[0]:.2f}"
        )

    def as_dict(self) -> dict[str, object]:
        return {"cores": self.cores, "model": self.model, "load_average_1m": self.loads}


def chart(results: list[Result], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    proxies = [
        p for p in dict.fromkeys(r.proxy for r in results) if p != "direct" and "hello" not in p
    ]
    scen = list(dict.fromkeys(r.scenario for r in results if r.proxy in proxies))
    rps = {(r.proxy, r.scenario): r.rps for r in results}
    fig, ax = plt.subplots(figsize=(11, 4.8))
    width = 0.8 / max(1, len(proxies))
    xs = range(len(scen))
    for i, px in enumerate(proxies):
        offset = (i - (len(proxies) - 1) / 2) * width
        label = "nginx mirror (1 worker)" if px == "nginx" else f"{px} (1 worker)"
        ax.bar([x + offset for x in xs], [rps.get((px, s), 0) for s in scen], width, label=label)
    ceiling = rps.get(("hello@hypercorn", HELLO["hypercorn"]))
    if ceiling:
        ax.axhline(ceiling, color="grey", linestyle="--", linewidth=1)
        ax.text(len(scen) - 0.5, ceiling, " hypercorn hello-world", va="bottom", ha="right",
                fontsize=8, color="grey")  # fmt: skip
    ax.set_xticks(list(xs), [textwrap.fill(s, 14) for s in scen], fontsize=8)
    ax.set_ylabel("requests/s (wrk -t1 -c32)")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.set_title("Throughput by canary behaviour (median of rounds, log scale)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--seconds", type=int, default=5, help="wrk duration per run")
    ap.add_argument("--rounds", type=int, default=2, help="rounds; figures are medians")
    ap.add_argument("--pairs", type=int, default=2, help="runs per scenario and round, each paired")
    ap.add_argument("--quick", action="store_true", help="1 round, 1 pair of 3 s per scenario")
    ap.add_argument(
        "--only", choices=["sidecar", "nginx"], help="measure one proxy (with the ceilings)"
    )
    ap.add_argument(
        "--scenarios",
        metavar="TEXT[|TEXT]",
        help="only scenarios whose name contains one of the TEXTs (and the reference)",
    )
    ap.add_argument(
        "--server",
        action="append",
        choices=list(HELLO_HOSTS),
        default=[],
        help="run sidecar as `sidecar serve --server NAME` (repeatable: each host side by "
        "side in one run); default: sidecar's default host, no flag passed",
    )
    ap.add_argument(
        "--hello",
        default=",".join(HELLO_HOSTS),
        metavar="HOST[,HOST]",
        help="hello-world ceilings to pair with sidecar's reference (default: %(default)s; "
        "'none' for none)",
    )
    ap.add_argument(
        "--no-low-load", action="store_true", help="skip the 1-connection latency table"
    )
    ap.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=TREE",
        help="measure the sidecar of source tree TREE as NAME (repeatable; replaces the "
        "working tree's, which is NAME=. then)",
    )
    ap.add_argument(
        "--pause",
        metavar="STATEMENT",
        default="",
        help='a pause for sidecar\'s canary, e.g. "pause after 5 failures for 30s"',
    )
    ap.add_argument("--out", type=Path, default=OUT, help="output directory")
    args = ap.parse_args()
    seconds, rounds = (3, 1) if args.quick else (args.seconds, args.rounds)
    pairs = 1 if args.quick else args.pairs
    trees = {k: str(Path(v).resolve()) for k, v in (x.split("=", 1) for x in args.variant)}
    hellos = [h for h in args.hello.split(",") if h in HELLO_HOSTS]
    # With variants, only they are measured (name one `sidecar=.` to include this tree).
    names = list(trees or ["sidecar"])
    proxies = [f"{n}@{h}" for n in names for h in args.server] if args.server else names
    proxies.append("nginx")
    if args.only == "sidecar":
        proxies.remove("nginx")
    elif args.only == "nginx":
        proxies = ["nginx"]
    wanted = args.scenarios.split("|") if args.scenarios else None
    scenarios = [
        s for s in SCENARIOS if not wanted or any(w in s[0] for w in wanted) or s[0] == NO_MIRROR
    ]
    ensure_tools()
    args.out.mkdir(parents=True, exist_ok=True)
    machine = Machine()
    print(machine.describe(), file=sys.stderr)
    lows: list[LowLoad] = []
    with tempfile.TemporaryDirectory(prefix="sidecar-bench-") as tmp:
        lab = Lab(Path(tmp))
        lab.pause = args.pause
        try:
            lab.start_backends()
            if not args.no_low_load:
                lows = low_load(lab, proxies, trees)
                machine.sample()
            results, paired = measure(
                lab, proxies, scenarios, seconds, rounds, pairs, trees, hellos, machine
            )
        finally:
            lab.close()
    text = table(results, paired, hellos)
    if lows:
        text = low_load_table(lows) + "\n\n" + text
    cmd = " ".join(["bench/bench_proxy.py", *sys.argv[1:]])
    head = (
        f"{cmd}: {rounds} round(s) x {pairs} pair(s) x {seconds} s, "
        f"wrk -t{WRK_THREADS} -c{WRK_CONNECTIONS}\n{machine.describe()}"
    )
    print(f"\n{head}\n")
    print(text)
    doc = {
        "command": cmd,
        "machine": machine.as_dict(),
        "low_load": [asdict(r) for r in lows],
        "results": [asdict(r) for r in results],
        "pairs": [asdict(p) for p in paired],
    }
    (args.out / "proxy.json").write_text(json.dumps(doc, indent=2))
    (args.out / "proxy.md").write_text(head + "\n\n" + text + "\n")
    if chart(results, args.out / "proxy.png"):
        print(f"\nchart: {args.out / 'proxy.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
