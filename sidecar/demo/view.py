"""What `sidecar demo` shows: the numbers (from the pools, the metrics and the traffic
generator) as plain data, and the two ways to show them (a rich live table on a terminal,
plain lines elsewhere). See sidecar/demo/command.py for how the demo runs.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TextIO

from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from sidecar.demo.traffic import Traffic
from sidecar.shadow import metrics as shadow_metrics

if TYPE_CHECKING:
    from sidecar.serve.runtime import Runtime

LIVE_REFRESH_PER_S = 4
PLAIN_INTERVAL_S = 2.0
DROPS = ("dropped_full", "dropped_oversize", "dropped_rate", "dropped_aborted", "dropped_paused")


# --- numbers ----------------------------------------------------------------------------------


def summarize(
    runtime: Runtime, traffic: Traffic, apps: Mapping[str, Any], *, elapsed: float
) -> dict[str, Any]:
    """Everything the view and the JSON summary show, as plain data."""
    lat = sorted(traffic.latencies_s)
    primary = {
        "requests": traffic.sent,
        "responses": dict(sorted(traffic.codes.items())),
        "errors": traffic.errors,
        "skipped": traffic.skipped,
        "served": apps["primary"].requests,
        "p50_ms": _ms(_percentile(lat, 0.50)),
        "p99_ms": _ms(_percentile(lat, 0.99)),
    }
    canaries: dict[str, Any] = {}
    for name, pool in runtime.current.canary_pools.items():
        stats = pool.stats()._asdict()
        stats["in_flight"] = (
            stats["dispatched"] - stats["completed"] - stats["failed"] - stats["panicked"]
        )
        stats["dropped"] = sum(stats[d] for d in DROPS)
        stats["p50_ms"] = _ms(canary_quantile(name, 0.5))
        stats["responses"] = canary_responses(name)
        stats["served"] = apps[name].requests if name in apps else None
        stats.update(canary_compared(name))
        canaries[name] = stats
    return {"elapsed_s": round(elapsed, 2), "primary": primary, "canaries": canaries}


def canary_compared(canary: str) -> dict[str, int]:
    """The comparison of a canary's responses: `sidecar_compare_total{canary=...}` by result
    (match, diff, skipped) and `noise`, the compared responses with noise the baseline shares
    (`sidecar_compare_noise_total`, every kind)."""
    m = shadow_metrics.metrics()
    counts = {"match": 0, "diff": 0, "skipped": 0, "noise": 0}
    for family, key in ((m.compare_results, None), (m.compare_noise, "noise")):
        for metric in family.collect():
            for s in metric.samples:
                if s.name.endswith("_total") and s.labels.get("canary") == canary:
                    label = key or s.labels["result"]
                    counts[label] += int(s.value)
    return counts


def canary_quantile(canary: str, q: float) -> float | None:
    """`histogram_quantile(q, sidecar_mirror_duration_seconds{canary=...})` in seconds."""

    buckets: list[tuple[float, float]] = []
    for metric in shadow_metrics.metrics().mirror_duration.collect():
        for s in metric.samples:
            if s.name.endswith("_bucket") and s.labels.get("canary") == canary:
                buckets.append((float(s.labels["le"]), s.value))
    return histogram_quantile(q, buckets)


def canary_responses(canary: str) -> dict[str, int]:
    """`sidecar_mirror_responses_total{canary=...}` by status class (completed round trips)."""

    codes: dict[str, int] = {}
    for metric in shadow_metrics.metrics().mirror_responses.collect():
        for s in metric.samples:
            if s.name.endswith("_total") and s.labels.get("canary") == canary:
                codes[s.labels["code"]] = int(s.value)
    return dict(sorted(codes.items()))


def histogram_quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float | None:
    """Prometheus's estimate from cumulative (upper bound, count) buckets; None when empty."""
    ordered = sorted(buckets)
    if not ordered or ordered[-1][1] <= 0:
        return None
    rank = q * ordered[-1][1]
    lower, below = 0.0, 0.0
    for upper, count in ordered:
        if count >= rank:
            if upper == float("inf"):
                return lower
            if count == below:
                return upper
            return lower + (upper - lower) * (rank - below) / (count - below)
        lower, below = upper, count
    return lower


def _percentile(ordered: Sequence[float], q: float) -> float | None:
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


# --- the view ---------------------------------------------------------------------------------


class View:
    """A rich live table on a terminal, plain periodic lines elsewhere."""

    def __init__(self, out: TextIO, *, duration: float) -> None:

        self.out = out
        self.console = Console(file=out, highlight=False)
        self.tty = self.console.is_terminal
        self.duration = duration
        self.phase = "traffic"

    def header(self, addresses: Mapping[str, str], rate: float) -> None:
        a = addresses
        self._line(
            f"sidecar demo: proxy http://{a['listen']} -> primary http://{a['primary']}; "
            f"canaries v2 http://{a['v2']} (healthy, compared), v3 http://{a['v3']} (slow, "
            f"failing), v1 http://{a['v1']} (the primary's app: v2's noise baseline); "
            f"admin http://{a['admin']}/metrics; {rate:g} req/s for {self.duration:g} s"
            + (" (Ctrl-C stops early)" if self.tty else "")
        )

    @contextlib.asynccontextmanager
    async def live(self, sample: Callable[[], dict[str, Any]]) -> Any:
        """Refresh the view from `sample()` while the body runs."""
        if self.tty:
            with Live(
                self._tables(sample()),
                console=self.console,
                refresh_per_second=LIVE_REFRESH_PER_S,
                transient=True,
            ) as live:
                task = asyncio.create_task(
                    self._tick(1 / LIVE_REFRESH_PER_S, lambda: live.update(self._tables(sample())))
                )
                try:
                    yield
                finally:
                    task.cancel()
            return
        task = asyncio.create_task(
            self._tick(PLAIN_INTERVAL_S, lambda: self._line(plain_progress(sample(), self.phase)))
        )
        try:
            yield
        finally:
            task.cancel()

    async def _tick(self, interval_s: float, show: Callable[[], None]) -> None:
        while True:
            await asyncio.sleep(interval_s)
            show()

    def summary(self, doc: dict[str, Any]) -> None:
        if self.tty:
            self.console.print(self._tables(doc, final=True))
        else:
            for line in plain_summary(doc):
                self._line(line)

    def _line(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def _tables(self, doc: dict[str, Any], *, final: bool = False) -> Any:

        title = (
            f"summary after {doc['elapsed_s']:.1f} s"
            + (" (interrupted)" if doc.get("interrupted") else "")
            if final
            else f"{self.phase}: {doc['elapsed_s']:.1f} s of {self.duration:g} s"
        )
        p = doc["primary"]
        prim = Table(
            title=f"sidecar demo - {title}",
            title_justify="left",
            box=box.SIMPLE_HEAD,
            pad_edge=False,
        )
        for col in ("primary", "requests", "responses", "errors", "p50", "p99"):
            left = col in ("primary", "responses")
            prim.add_column(col, justify="left" if left else "right", no_wrap=True)
        codes = " ".join(f"{k} {v}" for k, v in p["responses"].items()) or "-"
        prim.add_row(
            "via proxy",
            str(p["requests"]),
            codes,
            str(p["errors"]),
            _fmt_ms(p["p50_ms"]),
            _fmt_ms(p["p99_ms"]),
        )
        notes = []
        for name, c in doc["canaries"].items():
            why = ", ".join(f"{d.removeprefix('dropped_')} {c[d]}" for d in DROPS if c[d])
            codes = " ".join(f"{k} {v}" for k, v in c["responses"].items())
            notes.append(f"{name}: responses {codes or '-'}; dropped {why or '-'}")
            if c["match"] + c["diff"] + c["skipped"]:
                notes.append(_compared_line(name, c))
        can = Table(box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
        cols = ("canary", "dispatched", "completed", "failed", "panicked", "in flight")
        for col in (*cols, "dropped", "p50"):
            can.add_column(col, justify="left" if col == "canary" else "right", no_wrap=True)
        for name, c in doc["canaries"].items():
            can.add_row(
                name,
                *(str(c[k.replace(" ", "_")]) for k in cols[1:]),
                str(c["dropped"]),
                _fmt_ms(c["p50_ms"]),
            )
        parts: list[Any] = [prim, can, *notes]
        if final:
            parts.append(_verdict(doc))
        return Group(*parts)


def plain_progress(doc: dict[str, Any], phase: str) -> str:
    p = doc["primary"]
    parts = [
        f"[{doc['elapsed_s']:6.1f}s {phase}] primary {p['requests']} req p50 {_fmt_ms(p['p50_ms'])}"
    ]
    for name, c in doc["canaries"].items():
        parts.append(
            f"{name} dispatched {c['dispatched']} completed {c['completed']} failed {c['failed']} "
            f"dropped {c['dropped']} p50 {_fmt_ms(c['p50_ms'])}"
        )
    return " | ".join(parts)


def plain_summary(doc: dict[str, Any]) -> list[str]:
    """The final lines: one for the primary and one `canary NAME: key=value ...` per canary
    (its counts, p50 and its answers by status class, `2xx=N ... 5xx=N`)."""
    p = doc["primary"]
    codes = " ".join(f"{k}={v}" for k, v in p["responses"].items())
    lines = [
        f"summary: elapsed_s={doc['elapsed_s']} interrupted={'yes' if doc.get('interrupted') else 'no'}",
        f"primary: requests={p['requests']} {codes} errors={p['errors']} "
        f"p50_ms={p['p50_ms']} p99_ms={p['p99_ms']}".replace("  ", " "),
    ]
    keys = ("dispatched", "completed", "failed", "panicked", *DROPS)
    for name, c in doc["canaries"].items():
        fields = " ".join(f"{k}={c[k]}" for k in keys)
        codes = "".join(f" {k}={v}" for k, v in c["responses"].items())  # v3's 5xx among them
        lines.append(f"canary {name}: {fields} p50_ms={c['p50_ms']}{codes}")
    for name, c in doc["canaries"].items():
        if c["match"] + c["diff"] + c["skipped"]:
            lines.append(_compared_line(name, c))
    lines.append(_verdict(doc))
    return lines


def _compared_line(name: str, c: dict[str, Any]) -> str:
    return (
        f"compared {name} with the primary: match {c['match']}, diff {c['diff']}, "
        f"skipped {c['skipped']}; noise (the baseline differs too) removed from "
        f"{c['noise']} responses"
    )


def _verdict(doc: dict[str, Any]) -> str:
    settled = all(c["in_flight"] == 0 for c in doc["canaries"].values())
    check = "add up" if settled else "DO NOT add up (a bug: please report it)"
    verdict = f"per canary, dispatched = completed + failed + panicked: the counts {check}"
    p50 = doc["primary"]["p50_ms"]
    if p50 is None:
        return verdict + "."
    return f"{verdict}; the primary's p50 stayed {_fmt_ms(p50)} whatever the canaries did."


def _fmt_ms(ms: float | None) -> str:
    return "-" if ms is None else f"{ms:.1f} ms"
