"""What response comparison costs: sidecar mirroring with and without `compare`, in one run.

Run by hand from the repository root (nginx and wrk as for bench_proxy.py):

    .venv/bin/python bench/bench_compare.py                   # 2 pairs x 5 s per scenario
    .venv/bin/python bench/bench_compare.py --pairs 3 --seconds 5
    .venv/bin/python bench/bench_compare.py --micro           # only the micro-benchmarks
    .venv/bin/python bench/bench_compare.py --memory          # only the 64 MiB memory check

One nginx (1 worker) serves the primary and a fast canary, each a static 1 KiB JSON
document (`application/json`); the canary's differs from the primary's in `$.ts` and every
`$.items[*].id`, so `body bytes` finds a difference on every response (a diff record each:
the worst case for bytes) and `body json` with those two paths ignored parses, masks and
walks both documents and finds a match. sidecar mirrors 100% of the requests
(`mirror all`, canary `workers 32 queue 1024 timeout 10s`), driven by `wrk -t1 -c32`:

    (a) mirror, no compare           the reference, one process for the whole run
    (b) compare { status  body bytes }
    (b=) the same, on /same, where the canary answers the primary's own document: every
         result a match (the usual case for `body bytes`)
    (c) compare { status  body json  ignore "$.ts", "$.items[*].id" }
    (a') a second process like (a): the A/A control (what the pairing reads when
         nothing differs)

Pairing is bench_proxy.py's: each run of (b), (b=), (c), (a') comes right next to a run of (a),
order alternating, and a ratio is the median over the pairs. CPU µs per request is the
serve process's utime + stime over the run, from /proc. After its runs, each compared
scenario is left to settle and `sum(sidecar_compare_total) == completed tees` is checked.

`--micro`: one `judge()` of two 1 KiB documents with the two ignore paths (timeit, on
Captured documents), and the stdlib `json.loads` against `orjson.loads` of the 1 KiB
body (orjson only when installed: `pip install orjson`; it is not a dependency).

`--memory`: a 64 MiB JSON primary response through `compare { status  body json
max_body 1MiB }` (the canary answers the same 64 MiB): the client reads it whole (length
and sha256 checked) while the serve process's VmRSS is sampled every 10 ms; the
comparison must end `skipped` / `too_large`.

Everything listens on 127.0.0.1; every process started is stopped on exit. Writes
bench/out/compare.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import timeit
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import bench_proxy as bp

OUT = bp.OUT
SETTLE_TIMEOUT_S = 20.0  # for the last mirrors of a run to complete and be judged
ITEMS = 11  # items in the 1 KiB document
DOC_BYTES = 1024
BIG_BYTES = 64 << 20  # the memory check's response
READ_CHUNK_BYTES = 256 << 10
RSS_SAMPLE_S = 0.01
MEMORY_GROWTH_LIMIT_MIB = 8.0  # "a few MiB": far below the 64 MiB a buffering proxy holds

NO_COMPARE = "(a) mirror, no compare"
BYTES = "(b) compare status, body bytes"
BYTES_SAME = "(b=) compare status, body bytes, equal bodies"
JSON_IGNORE = "(c) compare status, body json, 2 ignores"
CONTROL = "(a') mirror, no compare (A/A control)"
COMPARE_BLOCKS = {
    NO_COMPARE: "",
    BYTES: "compare {\n        status\n        body bytes\n    }",
    BYTES_SAME: "compare {\n        status\n        body bytes\n    }",
    JSON_IGNORE: (
        'compare {\n        status\n        body json\n        ignore "$.ts", "$.items[*].id"\n    }'
    ),
    CONTROL: "",
}
PICK = {"b": BYTES, "b=": BYTES_SAME, "c": JSON_IGNORE, "a'": CONTROL}
# The canary answers /same with the primary's own document: bytes equal, every result a match.
PATHS = {BYTES_SAME: "/same"}
JSON_SPEC_ARGS = {"status": True, "body": "json", "ignore": ("$.ts", "$.items[*].id")}

NGINX_BACKENDS = """
worker_processes 1;
pid {dir}/backends.pid;
error_log {dir}/backends.err warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    default_type application/json;
    server {{ listen 127.0.0.1:{upstream}; root {dir};
             location / {{ try_files /primary.json =404; }}
             location = /big {{ try_files /big.json =404; }} }}
    server {{ listen 127.0.0.1:{fast}; root {dir};
             location / {{ try_files /canary.json =404; }}
             location = /same {{ try_files /primary.json =404; }}
             location = /big {{ try_files /big.json =404; }} }}
}}
"""

RULES = """
listen 127.0.0.1:{port}
admin 127.0.0.1:{admin}
primary http://127.0.0.1:{upstream}
canary target {{
    server http://127.0.0.1:{canary}
    workers 32
    queue 1024
    timeout 10s
    {compare}
}}
mirror all {{ to target }}
"""


def document(ts: str, first_id: int) -> bytes:
    """About 1 KiB of JSON; the canary's differs in `ts` and the ids only."""
    items = [
        {
            "id": first_id + i,
            "name": f"item number {i:02d}",
            "price": round(9.5 + i * 1.25, 2),
            "stock": 100 + i,
            "tags": ["a", "b"],
        }
        for i in range(ITEMS)
    ]
    doc: dict[str, object] = {"ts": ts, "page": 1, "total": ITEMS, "items": items, "note": ""}
    size = len(json.dumps(doc, separators=(",", ":")))
    doc["note"] = "n" * (DOC_BYTES - size)
    return json.dumps(doc, separators=(",", ":")).encode()


PRIMARY_DOC = document("2026-12-06T18:00:00.120Z", 1000)
CANARY_DOC = document("2026-12-06T18:00:00.131Z", 5000)


# --- processes -----------------------------------------------------------------------------------


class CompareLab(bp.Lab):
    """bench_proxy's Lab with nginx serving the JSON documents instead of the echo servers.
    Each process's stderr goes to a file (a pipe nobody reads could fill and block it)."""

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.logs: dict[int, Path] = {}

    def spawn(self, argv: list[str], **kw: object) -> subprocess.Popen[bytes]:
        log = (self.dir / f"proc-{len(self.procs)}-{time.monotonic_ns()}.log").open("wb")
        proc: subprocess.Popen[bytes] = subprocess.Popen(  # type: ignore[call-overload]
            argv, stdout=subprocess.DEVNULL, stderr=log, **kw
        )
        log.close()
        self.procs.append(proc)
        self.logs[proc.pid] = Path(log.name)
        return proc

    def log_tail(self, proc: subprocess.Popen[bytes], chars: int = 2000) -> str:
        path = self.logs.get(proc.pid)
        return path.read_text(errors="replace")[-chars:] if path and path.exists() else ""

    def start_backends(self) -> None:
        self.dir.chmod(0o755)  # nginx's worker runs as nobody: it must read the documents
        (self.dir / "primary.json").write_bytes(PRIMARY_DOC)
        (self.dir / "canary.json").write_bytes(CANARY_DOC)
        p = self.ports
        conf = self.dir / "backends.conf"
        conf.write_text(NGINX_BACKENDS.format(dir=self.dir, upstream=p.upstream, fast=p.fast))
        self.spawn(["nginx", "-c", str(conf), "-g", "daemon off;"])
        for port, doc in ((p.upstream, PRIMARY_DOC), (p.fast, CANARY_DOC)):
            bp.wait_port(port)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/items", timeout=5) as r:
                if r.read() != doc or r.headers["Content-Type"] != "application/json":
                    raise RuntimeError(f"nginx on {port} does not serve the JSON document")

    def start_compare(self, scenario: str) -> bp.Proxy:
        for attempt in range(bp.START_ATTEMPTS):
            port, admin = bp.free_port(), bp.free_port()
            rules = self.dir / f"sidecar-{port}.mirror"
            rules.write_text(
                RULES.format(
                    port=port,
                    admin=admin,
                    upstream=self.ports.upstream,
                    canary=self.ports.fast,
                    compare=COMPARE_BLOCKS[scenario],
                )
            )
            proc = self.spawn([bp.PY, "-c", bp.SIDECAR_MAIN, "serve", str(rules)], cwd=self.dir)
            try:
                bp.wait_http(f"http://127.0.0.1:{admin}/readyz", proc)
            except RuntimeError as exc:
                self.stop(proc)
                if attempt == bp.START_ATTEMPTS - 1:
                    raise
                print(f"  (retrying start: {str(exc).strip()[-120:]})", file=sys.stderr)
                continue
            return bp.Proxy(proc, port, admin)
        raise AssertionError("unreachable")


def metrics_text(admin: int | None) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5) as resp:
        return str(resp.read().decode())


def metric_sum(text: str, name: str, **labels: str) -> int:
    total = 0.0
    for m in re.finditer(rf"^{name}\{{([^}}]*)\}}\s+(\S+)$", text, re.M):
        if all(f'{k}="{v}"' in m.group(1) for k, v in labels.items()):
            total += float(m.group(2))
    return int(total)


@dataclass
class Settled:
    dispatched: int
    completed: int
    compared: int  # sum of sidecar_compare_total
    results: dict[str, int]
    skipped: dict[str, int]

    @property
    def identity(self) -> bool:
        return self.compared == self.completed


def settle(px: bp.Proxy, compared: bool) -> Settled:
    """Poll /metrics until every tee settled (and, when compared, was judged)."""
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while True:
        text = metrics_text(px.admin)
        out = bp.mirror_outcomes(px.admin)
        dispatched = out.get("dispatched", 0)
        completed = out.get("completed", 0)
        settled = sum(out.get(k, 0) for k in ("completed", "failed", "panicked"))
        results = {
            r: metric_sum(text, "sidecar_compare_total", result=r)
            for r in ("match", "diff", "skipped")
        }
        skipped = {}
        for m in re.finditer(r'^sidecar_compare_skipped_total\{[^}]*reason="(\w+)"', text, re.M):
            skipped[m.group(1)] = metric_sum(text, "sidecar_compare_skipped_total", reason=m[1])
        s = Settled(dispatched, completed, sum(results.values()), results, skipped)
        done = dispatched == settled
        if (done and (not compared or s.identity)) or time.monotonic() > deadline:
            return s
        time.sleep(0.05)


# --- the paired throughput runs ------------------------------------------------------------------


def load(lab: CompareLab, px: bp.Proxy, scenario: str, seconds: int) -> bp.Result:
    url = f"http://127.0.0.1:{px.port}{PATHS.get(scenario, '/api/items')}"
    cpu0 = bp.cpu_seconds([px.proc.pid])
    rps, p50, p99, errors, total = bp.run_wrk(url, seconds, False, lab.dir)
    cpu = bp.cpu_seconds([px.proc.pid]) - cpu0
    if errors:
        print(f"  errors in {scenario}; serve log:\n{lab.log_tail(px.proc)}", file=sys.stderr)
    res = bp.Result(
        "sidecar",
        scenario,
        rps,
        p50,
        p99,
        errors,
        total,
        None,
        cpu / total * 1e6 if total else None,
    )
    print(
        f"  {scenario:42} {rps:7.0f} req/s  p50 {p50:6.2f} ms  p99 {p99:6.2f} ms  err {errors}"
        f"  cpu {res.cpu_us_per_req or 0:.0f} us/req  load {os.getloadavg()[0]:.2f}",
        file=sys.stderr,
    )
    return res


def measure(
    lab: CompareLab, seconds: int, pairs: int, scenarios: list[str]
) -> tuple[list[bp.Result], list[bp.Pair], dict[str, Settled], list[float]]:
    runs: dict[str, list[bp.Result]] = {}
    paired: list[bp.Pair] = []
    settled: dict[str, Settled] = {}
    loads: list[float] = []

    def keep(r: bp.Result) -> bp.Result:
        runs.setdefault(r.scenario, []).append(r)
        loads.append(os.getloadavg()[0])
        return r

    ref = lab.start_compare(NO_COMPARE)
    try:
        load(lab, ref, NO_COMPARE, bp.WARMUP_S)
        for scenario in scenarios:
            px = lab.start_compare(scenario)
            try:
                load(lab, px, scenario, bp.WARMUP_S)
                for i in range(pairs):
                    if i % 2 == 0:
                        base = keep(load(lab, ref, NO_COMPARE, seconds))
                        r = keep(load(lab, px, scenario, seconds))
                    else:
                        r = keep(load(lab, px, scenario, seconds))
                        base = keep(load(lab, ref, NO_COMPARE, seconds))
                    paired.append(bp.Pair.of("sidecar", scenario, r, base))
                settled[scenario] = settle(px, COMPARE_BLOCKS[scenario] != "")
                print(f"  settled: {settled[scenario]}", file=sys.stderr)
            finally:
                lab.stop(px.proc)
        settled[NO_COMPARE] = settle(ref, False)
    finally:
        lab.stop(ref.proc)
    return [bp.median_result(rs) for rs in runs.values()], paired, settled, loads


def table(results: list[bp.Result], paired: list[bp.Pair], settled: dict[str, Settled]) -> str:
    ratios = bp.pair_medians(paired)
    lines = [
        "| scenario | req/s | x (a) req/s (paired) | x (a) CPU-implied | p50 ms | p99 ms "
        "| x (a) p99 | CPU µs/req | errors | completed tees | compared (match/diff/skipped) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        rr = ratios.get(("sidecar", r.scenario), (1.0, 1.0, 1.0))
        s = settled.get(r.scenario)
        comp = "-"
        if s is not None and COMPARE_BLOCKS[r.scenario]:
            res = s.results
            comp = f"{s.compared} ({res['match']}/{res['diff']}/{res['skipped']})"
        lines.append(
            f"| {r.scenario} | {r.rps:.0f} | {rr[0]:.2f} | {rr[2]:.2f} | {r.p50_ms:.2f} "
            f"| {r.p99_ms:.2f} | {rr[1]:.2f} | {r.cpu_us_per_req or 0:.0f} | {r.errors} "
            f"| {s.completed if s else '-'} | {comp} |"
        )
    lines += ["", "| target | measured | CPU-implied | goal | met |", "|---|---:|---:|---:|:---:|"]
    goals = [(BYTES, "b/a", 0.90), (BYTES_SAME, "b=/a", 0.90), (JSON_IGNORE, "c/a", 0.80)]
    for scenario, name, goal in goals:
        got = ratios.get(("sidecar", scenario))
        if got is None:
            continue
        rr = got
        ok = "yes" if rr[0] >= goal else "NO"
        lines.append(f"| {name} req/s | {rr[0]:.2f} | {rr[2]:.2f} | >= {goal:.2f} | {ok} |")
        ok = "yes" if rr[1] <= 1.10 else "NO"
        lines.append(f"| {name} primary p99 | {rr[1]:.2f} | - | <= 1.10 | {ok} |")
    for scenario in (BYTES, BYTES_SAME, JSON_IGNORE):
        s = settled.get(scenario)
        if s is not None:
            ok = "yes" if s.identity else "NO"
            lines.append(
                f"| {scenario.split()[0]} sum(compare_total) == completed tees "
                f"| {s.compared} / {s.completed} | - | equal | {ok} |"
            )
    control = ratios.get(("sidecar", CONTROL))
    if control is not None:
        c0, c1, c2 = control
        lines.append(f"| A/A control req/s (p99) | {c0:.2f} ({c1:.2f}) | {c2:.2f} | 1.00 | - |")
    return "\n".join(lines)


# --- micro-benchmarks ----------------------------------------------------------------------------


def best_us(fn: object, number: int, repeat: int = 5) -> float:
    """Best of `repeat` runs of `number` calls, µs per call (the least disturbed run)."""
    times = timeit.repeat(fn, number=number, repeat=repeat)  # type: ignore[arg-type]
    return min(times) / number * 1e6


def micro() -> dict[str, float]:
    from sidecar.model.compare import CompareSpec
    from sidecar.shadow.compare import judge as judge_mod
    from sidecar.shadow.compare.capture import Capture, Captured

    spec = CompareSpec(**JSON_SPEC_ARGS)  # type: ignore[arg-type]

    def captured(body: bytes) -> Captured:
        c = Capture(spec)
        c.start(200, [(b"content-type", b"application/json")])
        c.feed(body)
        return c.finish()

    p, c = captured(PRIMARY_DOC), captured(CANARY_DOC)
    verdict = judge_mod.judge(spec, p, c)
    assert verdict.result == "match", verdict
    changed = CANARY_DOC.replace(b'"price":9.5', b'"price":9.05')
    verdict_diff = judge_mod.judge(spec, p, captured(changed))
    assert verdict_diff.result == "diff", verdict_diff
    n = 2000
    out = {
        "document_bytes": float(len(PRIMARY_DOC)),
        "judge_match_us": best_us(lambda: judge_mod.judge(spec, p, c), n),
        "judge_one_diff_us": best_us(lambda: judge_mod.judge(spec, p, captured(changed)), n),
        "capture_1k_us": best_us(lambda: captured(PRIMARY_DOC), n),
        "parse_tagged_us": best_us(lambda: judge_mod._parse(PRIMARY_DOC, tagged=True), n),
        "json_loads_us": best_us(lambda: json.loads(PRIMARY_DOC), n),
    }
    tagged_a = judge_mod._parse(PRIMARY_DOC, tagged=True)[1]
    query = spec._shape_queries[0] if spec._shape_queries else None
    if query is not None:
        out["one_ignore_query_us"] = best_us(lambda: [n.location for n in query.find(tagged_a)], n)
    try:
        import orjson

        out["orjson_loads_us"] = best_us(lambda: orjson.loads(PRIMARY_DOC), n)
    except ImportError:
        print("  (orjson not installed: pip install orjson to compare)", file=sys.stderr)
    return out


# --- memory check --------------------------------------------------------------------------------


def big_document() -> bytes:
    """A 64 MiB JSON document: an array of 1 KiB strings, valid JSON, exactly BIG_BYTES."""
    line = b'"' + b"x" * 1022 + b'"'  # 1 KiB elements
    n = (BIG_BYTES - 2) // (len(line) + 1)
    body = b"[" + b",".join([line] * n) + b"]"
    pad = BIG_BYTES - len(body)
    body = b"[" + b" " * pad + body[1:]  # whitespace keeps it valid JSON
    assert len(body) == BIG_BYTES
    return body


def vm_rss_kib(pid: int, field: str = "VmRSS") -> int:
    """VmRSS (now) or VmHWM (the peak since start: catches what 10 ms sampling misses)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field}")


def fetch_whole(port: int, path: str) -> tuple[int, int, str]:
    """GET over a raw socket, reading as fast as it arrives: (status, body length, sha256)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode())
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = s.recv(65536)
            if not chunk:
                raise RuntimeError("connection closed in the head")
            buf += chunk
        head, _, rest = buf.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        if b"transfer-encoding: chunked" in head.lower():
            raise RuntimeError("expected a Content-Length response")  # nginx static: never
        digest = hashlib.sha256(rest)
        length = len(rest)
        while True:
            chunk = s.recv(READ_CHUNK_BYTES)
            if not chunk:
                break
            digest.update(chunk)
            length += len(chunk)
    return status, length, digest.hexdigest()


def memory(lab: CompareLab) -> dict[str, object]:
    body = big_document()
    (lab.dir / "big.json").write_bytes(body)
    expected = hashlib.sha256(body).hexdigest()
    del body
    block = "compare {\n        status\n        body json\n        max_body 1MiB\n    }"
    COMPARE_BLOCKS["memory"] = block
    px = lab.start_compare("memory")
    pid = px.proc.pid
    try:
        for _ in range(50):  # warm the request path up with small responses
            fetch_whole(px.port, "/api/items")
        settle(px, True)
        base = vm_rss_kib(pid)
        hwm_before = vm_rss_kib(pid, "VmHWM")
        samples: list[int] = []
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                samples.append(vm_rss_kib(pid))
                time.sleep(RSS_SAMPLE_S)

        t = threading.Thread(target=sample)
        t.start()
        t0 = time.monotonic()
        try:
            status, length, digest = fetch_whole(px.port, "/big")
            took = time.monotonic() - t0
            s = settle(px, True)  # the canary's 64 MiB drains too
        finally:
            stop.set()
            t.join()
        after = vm_rss_kib(pid)
        hwm_after = vm_rss_kib(pid, "VmHWM")
    finally:
        lab.stop(px.proc)
    peak = max(samples) if samples else base
    growth = (max(peak, hwm_after if hwm_after > hwm_before else 0) - base) / 1024
    return {
        "status": status,
        "length": length,
        "length_ok": length == BIG_BYTES,
        "sha256_ok": digest == expected,
        "seconds": round(took, 2),
        "rss_base_mib": round(base / 1024, 1),
        "rss_peak_mib": round(peak / 1024, 1),
        "rss_after_mib": round(after / 1024, 1),
        "rss_growth_mib": round(growth, 1),
        "hwm_before_mib": round(hwm_before / 1024, 1),
        "hwm_after_mib": round(hwm_after / 1024, 1),
        "growth_ok": growth <= MEMORY_GROWTH_LIMIT_MIB,
        "samples": len(samples),
        "results": s.results,
        "skipped": s.skipped,
        "too_large_ok": s.skipped.get("too_large", 0) == 1,
    }


# --- main ----------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--pairs", type=int, default=2)
    ap.add_argument(
        "--scenarios",
        default="b,b=,c,a'",
        help="which to pair with (a): b, b= (equal bodies), c, a' (the control)",
    )
    ap.add_argument("--micro", action="store_true", help="only the micro-benchmarks")
    ap.add_argument("--memory", action="store_true", help="only the 64 MiB memory check")
    args = ap.parse_args()
    only = args.micro or args.memory
    report: dict[str, object] = {"load_average_start": os.getloadavg()}
    if args.micro or not only:
        m = micro()
        report["micro"] = m
        print("\n".join(f"{k:22} {v:8.2f}" for k, v in m.items()))
    if args.memory or not only:
        bp.ensure_tools()
    ok = True
    with tempfile.TemporaryDirectory(prefix="bench-compare-") as tmp:
        lab = CompareLab(Path(tmp))
        try:
            if args.memory or not only:
                lab.start_backends()
            if not only:
                results, paired, settled, loads = measure(
                    lab, args.seconds, args.pairs, [PICK[x] for x in args.scenarios.split(",")]
                )
                print(table(results, paired, settled))
                report["results"] = [asdict(r) for r in results]
                report["pairs"] = [asdict(p) for p in paired]
                report["settled"] = {k: asdict(v) for k, v in settled.items()}
                report["load_average_runs"] = [min(loads), statistics.median(loads), max(loads)]
                print(
                    f"load average (1 min) during the runs: min {min(loads):.2f} "
                    f"median {statistics.median(loads):.2f} max {max(loads):.2f}"
                )
                ok = all(s.identity for k, s in settled.items() if COMPARE_BLOCKS[k])
            if args.memory:
                mem = memory(lab)
                report["memory"] = mem
                print(json.dumps(mem, indent=1))
                ok = ok and all(bool(mem[k]) for k in ("length_ok", "sha256_ok", "growth_ok"))
                ok = ok and bool(mem["too_large_ok"])
        finally:
            lab.close()
    report["load_average_end"] = os.getloadavg()
    OUT.mkdir(parents=True, exist_ok=True)
    name = "compare-memory.json" if args.memory and only else "compare.json"
    (OUT / name).write_text(json.dumps(report, indent=1, default=str))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
