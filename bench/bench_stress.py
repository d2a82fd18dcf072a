"""Stress: the forward path under a mix of real clients for minutes (issue 13's nightly run).

Run by hand from the repository root (matplotlib for the PNG: pip install '.[bench]'):

    .venv/bin/python bench/bench_stress.py --seconds 60 --nofile 1024 \\
        --json bench/out/stress.json --plot bench/out/stress.png
    .venv/bin/python bench/bench_stress.py --baseline bench/out/before.json --plot after.png

One nginx (1 worker) is the primary and the canary. The primary keeps nginx's default
`client_max_body_size 1m`, so a 2 MB upload gets an early 413 (nginx answers before reading
the body); `/big` is an 8 MiB file, `/slow` answers after 0.3 s (echo module), everything
else `return 200`. `sidecar serve` (one process, `--nofile N` sets its RLIMIT_NOFILE in
preexec_fn) proxies to it and mirrors a share of requests to the canary. For `--seconds`
these clients run at once, each kind a bounded loop (bench/_stress_clients.py; rates per
second and caps are flags):

    one-shot      connect, one GET, close; `--noread-share` of them close without reading
    keep-alive    `--keepalive-conns` connections, each `--keepalive-rate` GETs/s (every
                  10th to /slow), reconnecting after 200 requests or an error
    early 413     POST 2 MB over keep-alive (expect 413), then a GET on the same connection
    aborted up    head with Content-Length 1 MiB, 64 KiB of the body, close
    aborted down  GET /big, read 64 KiB of it, close (the rest unread: an RST)
    reloads       SIGHUP every `--reload-every` s; every 4th one after a rules edit
    wrk           `wrk -t1 -c32` for `--wrk-seconds` every `--wrk-every` s (0: off)

Every `--interval` s it samples the serve process: open descriptors (/proc/PID/fd), RSS
(VmRSS), CPU, the kernel's sockets on the listen port in CLOSE-WAIT and ESTABLISHED
(/proc/net/tcp{,6}; `backlog` are the established ones not yet accepted), the admin
port's CLOSE-WAIT (`adm CW`: left by this script's own /healthz checks), the primary pool's
sockets, /healthz, and what the clients saw (ok, errors, 5xx); it prints a table as it
goes, then `--settle` s more with no clients. The verdict: descriptors (judged without the
primary pool) and RSS at start, middle and end of the load and their slope (least squares
after the warm-up, `warm_up()`; flat is the goal), the CLOSE-WAIT maximum, errors by
client kind, a /healthz check, and how long SIGTERM took against `--grace`. `--json`
writes the samples, `--plot` draws descriptors, CLOSE-WAIT, the primary pool and RSS over
time (`--baseline JSON` overlays an earlier run, dashed). `--only KIND` (repeatable) runs
only some kinds, to tell which one leaks what; `--tree DIR` runs the sidecar of another
source tree (before/after). Exit 1 when a check fails: descriptors or RSS not flat,
descriptors at 90% of RLIMIT_NOFILE, CLOSE-WAIT left after the idle time, any 5xx or
client error, /healthz not 200, or the exit taking the whole grace. Everything on 127.0.0.1; every process started here is
stopped on exit (Ctrl-C included; they also get SIGTERM if this script is killed) and the
temporary directory removed.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import itertools
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import _stress_clients as clients  # noqa: E402
import _stress_sampling as sampling  # noqa: E402
from bench_proxy import run_wrk, wait_port  # noqa: E402

from tests.support.serve import ServeProcess, free_port, metric, sidecar_command  # noqa: E402

HOST = sampling.HOST
BIG_BYTES = 8 << 20  # /big: large enough that an aborted download leaves most of it unsent
SLOW_S = 0.3  # /slow's delay
EDIT_EVERY = 4  # every 4th reload follows a rules edit (the mirrored share alternates)
SHARES = (25, 10)  # the mirrored share, in %, alternating with the edits
FD_SLACK = 32  # descriptors a flat run may still gain (wrk's 32 connections in flight)
WARMUP_FRACTION = 0.2  # of the load, left out of the slopes (see warm_up())
LIMIT_SHARE = 0.9  # descriptors pinned near RLIMIT_NOFILE look flat: that is a failure too
RSS_TOLERANCE = 0.05  # RSS growth over the load a flat run may show, relative to its median
KILL_AFTER_S = 10.0  # beyond --grace, then SIGKILL
STOP_TIMEOUT_S = 10.0  # nginx's own stop
LOG_TAIL_LINES = 30  # of the serve log, printed when the process died during the run
PR_SET_PDEATHSIG = 1  # prctl: the child gets SIGTERM when this process dies (even SIGKILL)

NGINX_CONF = """
{echo_module}
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/nginx.err warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 100000;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    default_type application/octet-stream;
    server {{
        # client_max_body_size: nginx's default 1m, so a 2 MB upload gets an early 413
        listen {host}:{primary};
        location / {{ return 200 "ok\\n"; }}
        location = /big {{ root {dir}; }}
        location = /slow {{ {slow} }}
    }}
    server {{
        listen {host}:{canary};
        client_max_body_size 0;
        location / {{ return 200 "canary\\n"; }}
    }}
}}
"""
ECHO_MODULE = Path("/usr/lib/nginx/modules/ngx_http_echo_module.so")

RULES = """\
primary http://{host}:{primary} {{ timeout 10s }}
canary shadow {{
    server http://{host}:{canary}
    workers 8
    queue 64
    timeout 2s
}}
mirror share {{
    sample {share}%
    to shadow
}}
"""


# --- processes -------------------------------------------------------------------------------


def child_setup(nofile: int | None) -> Callable[[], None]:
    """preexec_fn: die with this process; optionally lower the descriptor limit."""

    def setup() -> None:
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    return setup


class Lab:
    """The processes of one run, each in its own session (Ctrl-C reaches only this script,
    which stops them in order); `close()` stops whatever is still running."""

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir
        self.procs: list[subprocess.Popen[bytes]] = []
        self.primary, self.canary = free_port(), free_port()

    def spawn(
        self,
        argv: list[str],
        log: Path,
        nofile: int | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                cwd=self.dir,
                start_new_session=True,
                preexec_fn=child_setup(nofile),
                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            )
        self.procs.append(proc)
        return proc

    def start_nginx(self) -> None:
        with (self.dir / "big").open("wb") as f:
            f.truncate(BIG_BYTES)
        echo = ECHO_MODULE.exists()
        conf = self.dir / "nginx.conf"
        conf.write_text(
            NGINX_CONF.format(
                echo_module=f"load_module {ECHO_MODULE};" if echo else "",
                dir=self.dir,
                host=HOST,
                primary=self.primary,
                canary=self.canary,
                slow=f'echo_sleep {SLOW_S}; echo "slow";' if echo else 'return 200 "slow\\n";',
            )
        )
        proc = self.spawn(["nginx", "-c", str(conf), "-g", "daemon off;"], self.dir / "nginx.log")
        for port in (self.primary, self.canary):
            wait_port(port, proc)

    def write_rules(self, path: Path, share: int) -> None:
        path.write_text(
            RULES.format(host=HOST, primary=self.primary, canary=self.canary, share=share)
        )

    async def start_sidecar(
        self, rules: Path, grace: float, nofile: int | None, tree: Path
    ) -> ServeProcess:
        """`sidecar serve` from `tree` (run in the temporary directory, so that `-m` finds
        the tree's package and not the current directory's)."""
        listen, admin = f"{HOST}:{free_port()}", f"{HOST}:{free_port()}"
        argv = sidecar_command("serve", str(rules), "--listen", listen, "--admin", admin)
        log = self.dir / "serve.log"
        env = {"PYTHONPATH": str(tree)}
        proc = self.spawn([*argv, "--grace", f"{grace:g}"], log, nofile, env)
        served = ServeProcess(proc, listen, admin, log)
        await served.wait_ready()
        return served

    def close(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in reversed(self.procs):
            try:
                proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# --- the background jobs ---------------------------------------------------------------------


async def reloads(
    lab: Lab, served: ServeProcess, rules: Path, load: sampling.Load, every: float, until: float
) -> None:
    """SIGHUP every `every` seconds; before every EDIT_EVERY-th, the rules are edited."""
    if every <= 0:
        return
    loop = asyncio.get_running_loop()
    while loop.time() + every < until:  # bounded by the deadline
        await asyncio.sleep(every)
        if (load.reloads + 1) % EDIT_EVERY == 0:
            load.reloads_edited += 1
            lab.write_rules(rules, SHARES[load.reloads_edited % len(SHARES)])
        if served.proc.poll() is None:
            served.proc.send_signal(signal.SIGHUP)
            load.reloads += 1


async def wrk_bursts(
    lab: Lab, url: str, load: sampling.Load, every: float, seconds: int, until: float
) -> None:
    """`wrk -t1 -c32 -d{seconds}s` every `every` seconds, the first after half of that."""
    if every <= 0 or not shutil.which("wrk"):
        return
    loop = asyncio.get_running_loop()
    next_at = loop.time() + every / 2
    while next_at + seconds < until:  # bounded by the deadline
        await asyncio.sleep(max(0.0, next_at - loop.time()))
        next_at += every
        load.wrk_running = True
        try:
            _, _, _, errors, total = await asyncio.to_thread(run_wrk, url, seconds, False, lab.dir)
        except RuntimeError:  # wrk printed no summary (e.g. nothing answered at all)
            errors, total = 1, 0
        finally:
            load.wrk_running = False
        load.wrk_runs += 1
        load.wrk_requests += total
        load.wrk_errors += errors


async def run_load(
    args: argparse.Namespace, lab: Lab, served: ServeProcess, rules: Path, sampler: sampling.Sampler
) -> sampling.Load:
    load = sampler.load
    t = load.tallies
    port = sampler.listen_port
    body = b"u" * clients.UPLOAD_BYTES
    noread_every = round(1 / args.noread_share) if args.noread_share > 0 else 0
    shots = itertools.count(1)

    async def one_shot() -> None:
        read = not noread_every or next(shots) % noread_every != 0
        await clients.one_shot(HOST, port, t["one-shot"], read=read)

    loop = asyncio.get_running_loop()
    sampler.start_clock()
    await sampler.take("load")
    until = loop.time() + args.seconds
    cap = args.cap
    coros = [
        clients.paced(t["one-shot"], args.oneshot_rate, cap, until, one_shot),
        clients.paced(
            t["early 413"],
            args.upload_rate,
            cap,
            until,
            lambda: clients.early_413(HOST, port, t["early 413"], body),
        ),
        clients.paced(
            t["aborted upload"],
            args.abort_rate,
            cap,
            until,
            lambda: clients.aborted_upload(HOST, port, t["aborted upload"]),
        ),
        clients.paced(
            t["aborted download"],
            args.abort_rate,
            cap,
            until,
            lambda: clients.aborted_download(HOST, port, t["aborted download"]),
        ),
        *(
            clients.keep_alive(HOST, port, t["keep-alive"], args.keepalive_rate, until)
            for _ in range(args.keepalive_conns)
        ),
        reloads(lab, served, rules, load, args.reload_every, until),
        wrk_bursts(lab, served.url + "/", load, args.wrk_every, args.wrk_seconds, until),
        sampler.every(args.interval, until, "load"),
    ]
    async with asyncio.TaskGroup() as group:  # the serve process gone: all are cancelled
        for coro in coros:
            group.create_task(coro)
    if args.settle > 0:
        await sampler.every(args.interval, loop.time() + args.settle, "settle")
    return load


# --- the verdict -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class End:
    """After the load: the serve process's own counters, a /healthz check, its exit."""

    mirror: dict[str, float]  # sidecar_mirror_requests_total by outcome
    reloads_ok: float
    requests_5xx: float  # sidecar_requests_total{code="5xx"}
    metrics_error: str | None  # why /metrics could not be read, if it could not
    healthz: int | str
    exit_s: float  # SIGTERM to exit
    exit_code: int
    killed: bool  # still running KILL_AFTER_S after the grace
    log_lines: dict[str, int]  # lines of interest in its log


LOG_PATTERNS = ("Too many open files", "timed out", "Traceback")
OUTCOMES = ("dispatched", "completed", "failed", "dropped_full", "dropped_oversize")


async def finish(served: ServeProcess, grace: float) -> End:
    admin_port = int(served.admin_url.rsplit(":", 1)[1])
    error = None
    try:
        text = await asyncio.wait_for(served.metrics(), timeout=5.0)
    except Exception as exc:  # failing to read them is a finding, not a crash
        error, text = clients.classify(exc), ""
    healthz = await clients.get_status(HOST, admin_port, "/healthz", sampling.HEALTHZ_TIMEOUT_S)
    t0 = time.monotonic()
    served.proc.send_signal(signal.SIGTERM)
    killed = False
    try:
        code = await asyncio.to_thread(served.proc.wait, grace + KILL_AFTER_S)
    except subprocess.TimeoutExpired:
        served.proc.kill()
        code = await asyncio.to_thread(served.proc.wait)
        killed = True
    exit_s = time.monotonic() - t0
    log = served.log()
    return End(
        mirror={o: metric(text, "sidecar_mirror_requests_total", outcome=o) for o in OUTCOMES},
        reloads_ok=metric(text, "sidecar_rules_reloads_total", result="ok"),
        requests_5xx=metric(text, "sidecar_requests_total", code="5xx"),
        metrics_error=error,
        healthz=healthz,
        exit_s=exit_s,
        exit_code=code,
        killed=killed,
        log_lines={p: log.count(p) for p in LOG_PATTERNS},
    )


def warm_up(args: argparse.Namespace) -> float:
    """Seconds of the load left out of the slopes: WARMUP_FRACTION of it, and at least until
    every kind has run once (the first wrk burst, which brings the peak concurrency and
    the primary pool's 32 connections, and one sample after it)."""
    first_burst_end = args.wrk_every / 2 + args.wrk_seconds + args.interval
    return max(args.seconds * WARMUP_FRACTION, first_burst_end if args.wrk_every > 0 else 0.0)


def report(
    args: argparse.Namespace,
    samples: list[sampling.Sample],
    load: sampling.Load,
    end: End,
    limit: int | None,
) -> tuple[bool, dict[str, object]]:
    mib = 1 << 20
    warmup_s = warm_up(args)
    fds = sampling.trend(samples, lambda s: s.fds, args.seconds, warmup_s)
    # Judged without the primary pool's sockets, which follow the load's concurrency (wrk's
    # 32 connections leave 32 idle ones until nginx's keep-alive timeout), as bench_soak.py.
    own = sampling.trend(samples, lambda s: s.fds - s.primary_pool, args.seconds, warmup_s)
    mem = sampling.trend(samples, lambda s: s.rss_bytes / mib, args.seconds, warmup_s)
    load_samples = [s for s in samples if s.phase == "load"]
    fd_max = max(s.fds for s in samples)
    cw_max = max(s.close_wait for s in load_samples)
    settle = samples[-1]
    print()
    print(
        f"{'client kind':18} {'attempts':>8} {'ok':>7} {'5xx':>5} {'other':>5} "
        f"{'skipped':>7}  errors"
    )
    for name, t in load.tallies.items():
        errors = ", ".join(f"{k} {v}" for k, v in t.errors.most_common()) or "-"
        notes = "; ".join(f"{k}: {v}" for k, v in t.notes.items())
        print(
            f"{name:18} {t.attempts:8d} {t.ok:7d} {t.status_5xx:5d} {t.unexpected:5d} "
            f"{t.skipped:7d}  {errors}" + (f"  ({notes})" if notes else "")
        )
    print(
        f"{'wrk':18} {load.wrk_runs:8d} {load.wrk_requests:7d}    (runs; requests; "
        f"{load.wrk_errors} socket errors or non-2xx)"
    )
    print(
        f"reloads: {load.reloads} SIGHUP ({load.reloads_edited} after an edit), ok per the "
        f"metrics: {end.reloads_ok:.0f}; mirror: "
        + ", ".join(f"{k} {v:.0f}" for k, v in end.mirror.items())
        + (f"; /metrics unreadable: {end.metrics_error}" if end.metrics_error else "")
    )
    fd_flat = own.growth <= max(FD_SLACK, 0.1 * own.median)
    rss_flat = mem.growth <= RSS_TOLERANCE * mem.median
    s5xx = sum(t.status_5xx for t in load.tallies.values())
    # No client is connected any more when SIGTERM is sent: waiting out the grace means a
    # connection (or a task) the server still counted as in flight.
    exit_ok = end.exit_s < args.grace and not end.killed
    healthz_ok = end.healthz == 200
    cpu = statistics.mean(s.cpu_pct for s in load_samples[1:] or load_samples)
    print()
    print(
        f"fds   start {fds.start:.0f}  middle {fds.middle:.0f}  end {fds.end:.0f}  slope "
        f"{fds.slope_per_min:+.1f}/min  (after {args.settle:g} s idle: {settle.fds}); max "
        f"{fd_max} of the limit {limit or 'unlimited'}"
    )
    print(
        f"  without the primary pool: start {own.start:.0f}  middle {own.middle:.0f}  end "
        f"{own.end:.0f}  slope {own.slope_per_min:+.1f}/min  (after {args.settle:g} s idle: "
        f"{settle.fds - settle.primary_pool})  -> {'flat' if fd_flat else 'GROWING'}"
    )
    print(
        f"RSS   start {mem.start:.1f}  middle {mem.middle:.1f}  end {mem.end:.1f} MiB  slope "
        f"{mem.slope_per_min:+.2f} MiB/min  -> {'flat' if rss_flat else 'GROWING'}  (slopes "
        f"after the first {warmup_s:.0f} s)"
    )
    print(
        f"CLOSE-WAIT on the listen port: max {cw_max} during the load, {settle.close_wait} "
        f"after {args.settle:g} s idle; sidecar CPU {cpu:.0f}% of a core on average; load "
        f"average {min(s.load1 for s in samples):.2f}-{max(s.load1 for s in samples):.2f}"
    )
    print(
        f"5xx seen by clients: {s5xx} (sidecar counted {end.requests_5xx:.0f}); /healthz at "
        f"the end: {end.healthz}; SIGTERM -> exit in {end.exit_s:.2f} s (grace "
        f"{args.grace:g} s, code {end.exit_code})"
        + (" KILLED" if end.killed else "")
        + f"; serve log: {end.log_lines}"
    )
    errors = sum(t.error_total() + t.unexpected for t in load.tallies.values()) + load.wrk_errors
    checks = {
        "descriptors flat": fd_flat,
        "descriptors below 90% of the limit": limit is None or fd_max < LIMIT_SHARE * limit,
        "RSS flat": rss_flat,
        "no CLOSE-WAIT left after the idle time": settle.close_wait == 0,
        "no 5xx": s5xx == 0,
        "no client errors": errors == 0,
        "/healthz 200 at the end": healthz_ok,
        "exit before the grace ran out": exit_ok,
    }
    ok = all(checks.values())
    failed = [name for name, passed in checks.items() if not passed]
    print(f"verdict: {'PASS' if ok else 'FAIL, not met: ' + '; '.join(failed)}")
    verdict = {
        "fds": asdict(fds),
        "fds_without_primary_pool": asdict(own),
        "fds_max": fd_max,
        "nofile_limit": limit,
        "rss_mib": asdict(mem),
        "warmup_s": warmup_s,
        "fds_flat": fd_flat,
        "rss_flat": rss_flat,
        "close_wait_max": cw_max,
        "cpu_pct_mean": cpu,
        "5xx": s5xx,
        "client_errors": errors,
        "checks": checks,
        "pass": ok,
        "end": asdict(end),
    }
    return ok, verdict


def keep_log(served: ServeProcess, json_path: Path | None) -> None:
    """The serve process's log next to the JSON (the temporary directory goes away)."""
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(served.log_path, json_path.with_suffix(".serve.log"))


async def main(args: argparse.Namespace) -> int:
    tmp = Path(tempfile.mkdtemp(prefix="bench-stress-"))
    tmp.chmod(0o755)  # nginx's workers (another user when run as root) serve /big from it
    lab = Lab(tmp)
    try:
        lab.start_nginx()
        rules = tmp / "stress.mirror"
        lab.write_rules(rules, SHARES[0])
        served = await lab.start_sidecar(rules, args.grace, args.nofile, args.tree.resolve())
        print(
            f"sidecar serve pid {served.pid} on {served.url} (RLIMIT_NOFILE "
            f"{args.nofile or 'inherited'}), primary and canary nginx on :{lab.primary} and "
            f":{lab.canary}; {args.seconds:g} s of load, then {args.settle:g} s idle",
            flush=True,
        )
        limit = sampling.nofile_limit(served.pid)
        print(sampling.HEADER, flush=True)
        sampler = sampling.Sampler(
            served, lab.primary, sampling.Load(tallies={k: clients.Tally() for k in sampling.KINDS})
        )
        load: sampling.Load | None = None
        try:
            load = await run_load(args, lab, served, rules, sampler)
        except* sampling.ServeExited:
            pass  # reported below; any other failure in the group propagates
        if load is None:
            t = sampler.samples[-1].t if sampler.samples else 0.0
            print(
                f"sidecar serve exited with {served.proc.returncode} during the load (after "
                f"{t:.0f} s); its log ends:"
            )
            print("\n".join(served.log().splitlines()[-LOG_TAIL_LINES:]))
            keep_log(served, args.json)
            return 1
        end = await finish(served, args.grace)
        keep_log(served, args.json)
        ok, verdict = report(args, sampler.samples, load, end, limit)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            doc = {
                "label": args.label,
                "argv": sys.argv[1:],
                "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                "samples": [asdict(s) for s in sampler.samples],
                "clients": {k: t.as_dict() for k, t in load.tallies.items()},
                "wrk": {"runs": load.wrk_runs, "requests": load.wrk_requests},
                "verdict": verdict,
            }
            args.json.write_text(json.dumps(doc, indent=1, default=str) + "\n")
            print(f"wrote {args.json}")
        if args.plot:
            baseline = json.loads(args.baseline.read_text()) if args.baseline else None
            args.plot.parent.mkdir(parents=True, exist_ok=True)
            drawn = sampling.plot(sampler.samples, baseline, args.label, args.plot)
            print(
                f"wrote {args.plot}" if drawn else "no matplotlib: no plot (pip install '.[bench]')"
            )
        return 0 if ok else 1
    finally:
        lab.close()
        shutil.rmtree(tmp, ignore_errors=True)


# --only KIND: the flag that turns each kind off.
ONLY = {
    "one-shot": "oneshot_rate",
    "keep-alive": "keepalive_conns",
    "early-413": "upload_rate",
    "aborts": "abort_rate",
    "reloads": "reload_every",
    "wrk": "wrk_every",
}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=120.0, help="the load's duration")
    p.add_argument("--interval", type=float, default=5.0, help="seconds between samples")
    p.add_argument("--settle", type=float, default=10.0, help="idle seconds sampled after")
    p.add_argument("--nofile", type=int, default=None, help="the serve process's RLIMIT_NOFILE")
    p.add_argument("--grace", type=float, default=5.0, help="serve --grace (seconds)")
    p.add_argument("--oneshot-rate", type=float, default=10.0, help="one-shot clients per s")
    p.add_argument("--noread-share", type=float, default=0.25, help="of one-shots: no read")
    p.add_argument("--keepalive-conns", type=int, default=4)
    p.add_argument("--keepalive-rate", type=float, default=10.0, help="per connection, per s")
    p.add_argument("--upload-rate", type=float, default=1.0, help="early-413 uploads per s")
    p.add_argument("--abort-rate", type=float, default=1.0, help="each abort kind, per s")
    p.add_argument("--cap", type=int, default=32, help="concurrent clients per paced kind")
    p.add_argument("--reload-every", type=float, default=5.0, help="SIGHUP period (0: none)")
    p.add_argument("--wrk-every", type=float, default=30.0, help="wrk burst period (0: none)")
    p.add_argument("--wrk-seconds", type=int, default=3)
    p.add_argument(
        "--tree",
        type=Path,
        default=ROOT,
        help="the source tree whose sidecar runs (holding sidecar/ and grammar/, e.g. "
        "`git archive HEAD sidecar grammar | tar -x -C TREE`; default: this repository)",
    )
    p.add_argument("--json", type=Path, help="write the samples and the verdict here")
    p.add_argument("--plot", type=Path, help="draw fds, CLOSE-WAIT and RSS over time (PNG)")
    p.add_argument("--baseline", type=Path, help="an earlier --json to overlay on --plot")
    p.add_argument("--label", default="this run", help="this run's name in the plot and JSON")
    p.add_argument(
        "--only",
        action="append",
        choices=sorted(ONLY),
        help="run only these kinds (repeatable): the others' rates are set to 0",
    )
    args = p.parse_args()
    for kind, dest in ONLY.items():
        if args.only and kind not in args.only:
            setattr(args, dest, 0)
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if args.nofile is not None and (
        args.nofile < 64 or (hard != resource.RLIM_INFINITY and args.nofile > hard)
    ):
        p.error(f"--nofile must be between 64 and the hard limit ({hard})")
    if not 0 < args.seconds <= 3600 or args.interval <= 0:
        p.error("--seconds must be in (0, 3600] and --interval positive")
    return args


if __name__ == "__main__":
    try:
        sys.exit(asyncio.run(main(parse_args())))
    except KeyboardInterrupt:
        sys.exit(130)
