"""decide() per request, for a 10-rule and a generated 1000-rule table.

    .venv/bin/python bench/bench_decide.py [--seconds 1.0]

Every timed call gets a fresh `RequestView` (built before the clock starts), so
the lazy header/query/cookie parsing a request triggers is part of the figure,
as it is in the proxy. View construction is timed on its own. Targets (issue 2):
<= 5 µs per decision at 10 rules, <= 100 µs at 1000 rules.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sidecar.dsl import ast
from sidecar.model.config import Config
from sidecar.routing.request import RequestView
from sidecar.routing.table import RoutingTable, compile_table
from tests.support.routing import and_, config, not_, or_, rule, t

BROWSER_HEADERS = [
    (b"host", b"api.example.com"),
    (b"user-agent", b"Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/128.0"),
    (b"accept", b"application/json, text/plain, */*"),
    (b"accept-language", b"en-US,en;q=0.5"),
    (b"accept-encoding", b"gzip, deflate, br"),
    (b"referer", b"https://app.example.com/dashboard"),
    (b"cookie", b"session=3f9a0c1d; theme=dark; uid=user-1234"),
    (b"x-request-id", b"6f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b"),
    (b"connection", b"keep-alive"),
]


def requests() -> list[tuple[str, str, dict[str, object]]]:
    """(label, kind, RequestView kwargs): a mix of matching and non-matching requests."""
    return [
        ("static asset (no rule)", "miss", {"method": "GET", "path": "/static/app.js"}),
        ("POST form (no rule)", "miss", {"method": "POST", "path": "/login", "query": b""}),
        ("API read (matches)", "hit", {"method": "GET", "path": "/api/v1/users", "query": b"id=7"}),
        ("API write (matches)", "hit", {"method": "POST", "path": "/api/v1/orders"}),
        ("admin (excluded)", "miss", {"method": "GET", "path": "/admin/stats"}),
    ]


def view(kw: dict[str, object]) -> RequestView:
    return RequestView(
        method=str(kw["method"]),
        path=str(kw["path"]),
        query_string=bytes(kw.get("query", b"")),  # type: ignore[call-overload]
        headers=BROWSER_HEADERS,
        client="10.1.2.3",
    )


def ten_rules() -> Config:
    api = t("path", "^=", "/api/")
    rules = [
        rule(
            "api_reads",
            ["v2"],
            and_(t("method", "in", "GET", "HEAD"), api, not_(t("header", "exists", key="X-Debug"))),
            rate=0.1,
            by="header",
            key="x-user-id",
        ),
        rule("api_writes", ["v3"], and_(t("method", "in", "POST", "PUT", "PATCH"), api), rate=0.5),
        rule("search", ["v2"], t("path", "~", r"^/search/[a-z]+$")),
        rule("beta", ["v4"], t("cookie", "==", "on", key="beta")),
        rule("partner", ["v3"], t("header", "in", "acme", "globex", key="X-Partner")),
        rule("mobile", ["v4"], t("header", "*=", "Android", key="User-Agent")),
        rule("trace", ["v2"], t("query", "exists", key="trace")),
        rule("internal", ["v3"], t("client", "in", "192.168.0.0/16", "fd00::/8")),
        rule("graphql", ["v4"], and_(t("method", "==", "POST"), t("path", "==", "/graphql"))),
        rule(
            "legacy", ["v5"], or_(t("host", "$=", ".legacy.example.com"), t("path", "^=", "/v0/"))
        ),
    ]
    return config(rules, excludes=[t("path", "^=", "/admin"), t("path", "$=", ".ico")])


def thousand_rules(n: int = 1000) -> Config:
    rng = random.Random(1)
    rules = []
    for i in range(n):
        kind = i % 5
        when: ast.Expr
        if kind == 0:
            when = and_(t("method", "in", "GET", "HEAD"), t("path", "^=", f"/svc{i}/"))
        elif kind == 1:
            when = t("header", "==", f"tenant-{i}", key="X-Tenant")
        elif kind == 2:
            when = t("path", "~", rf"^/items/{i}/\d+$")
        elif kind == 3:
            when = or_(t("query", "==", str(i), key="shard"), t("cookie", "==", f"c{i}", key="exp"))
        else:
            when = and_(t("host", "==", f"h{i}.example.com"), t("path", "*=", f"/p{i}/"))
        rate = rng.choice([None, 0.05, 0.5])
        rules.append(rule(f"r{i}", [f"c{i % 20}"], when, rate=rate))
    # The last rule is the one the "matches" requests reach, after all 999 misses.
    rules.append(rule("api", ["c0"], t("path", "^=", "/api/")))
    return config(rules, excludes=[t("path", "^=", "/admin")])


def time_decide(table: RoutingTable, kw: dict[str, object], seconds: float) -> float:
    """µs per decide() on a fresh view: the best batch, to see past a shared, noisy machine."""
    batch = 200
    best = float("inf")
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        views = [view(kw) for _ in range(batch)]
        decide = table.decide
        start = time.perf_counter()
        for v in views:
            decide(v)
        best = min(best, (time.perf_counter() - start) / batch)
    return best * 1e6


def time_call(fn: Callable[[], object], n: int = 2000, reps: int = 50) -> float:
    """µs per call, best of `reps` runs."""
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - start) / n)
    return best * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="time per cell")
    args = parser.parse_args()
    tables = [
        ("10 rules", compile_table(ten_rules(), random=random.Random(0).random), 5.0),
        ("1000 rules", compile_table(thousand_rules(), random=random.Random(0).random), 100.0),
    ]
    kw0 = requests()[0][2]
    path = "/api/v1/users"
    # A yardstick for comparing machines: one str.startswith call through a closure.
    probe = lambda: path.startswith("/api/")  # noqa: E731
    print(
        f"Python {sys.version.split()[0]}; yardstick (closure + str.startswith): "
        f"{time_call(probe) * 1000:.0f} ns; RequestView construction: "
        f"{time_call(lambda: view(kw0)):.2f} µs (not included below)\n"
    )
    print(f"| {'request':<24} | " + " | ".join(f"{name:>12}" for name, _, _ in tables) + " |")
    print(f"|{'-' * 26}|" + "|".join("-" * 14 for _ in tables) + "|")
    worst = {name: 0.0 for name, _, _ in tables}
    for label, _, kw in requests():
        cells = []
        for name, table, _ in tables:
            us = time_decide(table, kw, args.seconds)
            worst[name] = max(worst[name], us)
            cells.append(f"{us:9.2f} µs")
        print(f"| {label:<24} | " + " | ".join(f"{c:>12}" for c in cells) + " |")
    print()
    for name, _, target in tables:
        verdict = "ok" if worst[name] <= target else "MISSED"
        print(f"{name}: worst {worst[name]:.2f} µs per decision, target {target:.0f} µs: {verdict}")


if __name__ == "__main__":
    main()
