"""`sidecar demo`: runs from any directory, exits 0 within its duration, and its counts add up.

The demo runs as a subprocess (`python -m sidecar.cli demo`) from a temporary directory, so
nothing of the repository's working tree (rules/, grammar/) is in reach by relative path.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from sidecar.demo.apps import PROFILES, DemoApp, Profile
from sidecar.demo.command import render_rules, rules_template
from sidecar.demo.view import histogram_quantile, plain_summary
from sidecar.dsl import loads

# Start-up (a cold interpreter, imports) plus settling (v2's 2 s timeout + slack) plus room
# for a loaded CI machine.
MARGIN_S = 30.0
SETTLE_KEYS = ("completed", "failed", "panicked")
DROP_KEYS = (
    "dropped_full",
    "dropped_oversize",
    "dropped_rate",
    "dropped_aborted",
    "dropped_paused",
)


def demo(*args: str, cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sidecar.cli", "demo", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def assert_adds_up(canaries: dict[str, dict[str, Any]]) -> None:
    assert set(canaries) == {"v1", "v2", "v3"}
    for name, c in canaries.items():
        assert c["dispatched"] == sum(c[k] for k in SETTLE_KEYS), (name, c)
        assert c["dispatched"] > 0, name


def test_demo_json_summary_adds_up(tmp_path: Path) -> None:
    duration = 3.0
    started = time.monotonic()
    proc = demo(
        "--duration", str(duration), "--seed", "7", "--format", "json", cwd=tmp_path,
        timeout=duration + MARGIN_S,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - started < duration + MARGIN_S
    doc = json.loads(proc.stdout)  # exactly one JSON document on stdout
    assert doc["interrupted"] is False
    assert_adds_up(doc["canaries"])
    for c in doc["canaries"].values():
        assert c["in_flight"] == 0
        assert c["dropped"] == sum(c[k] for k in DROP_KEYS)
    # The 200 KiB imports are over both canaries' 64 KiB max_body.
    assert doc["canaries"]["v2"]["dropped_oversize"] > 0
    assert doc["canaries"]["v2"]["p50_ms"] is not None
    # v2 is compared with v1 as its baseline: the `generated_at` timestamp differs on every
    # answer, yet it is noise, not a diff, without an `ignore`.
    v2 = doc["canaries"]["v2"]
    assert v2["noise"] > 0
    assert v2["match"] > v2["diff"]
    assert doc["canaries"]["v3"]["match"] + doc["canaries"]["v3"]["diff"] == 0
    primary = doc["primary"]
    assert primary["requests"] > 0
    assert primary["errors"] == 0
    assert sum(primary["responses"].values()) == primary["requests"]
    assert "sidecar demo: proxy http://127.0.0.1:" in proc.stderr  # progress went to stderr


SUMMARY_LINE = re.compile(r"^canary (?P<name>\S+): (?P<fields>.*)$", re.MULTILINE)


def parse_summary(text: str) -> dict[str, dict[str, Any]]:
    canaries: dict[str, dict[str, Any]] = {}
    for m in SUMMARY_LINE.finditer(text):
        fields = dict(kv.split("=", 1) for kv in m["fields"].split())
        canaries[m["name"]] = {k: int(v) for k, v in fields.items() if v.isdigit()}
    return canaries


def test_demo_plain_text_when_not_a_tty(tmp_path: Path) -> None:
    proc = demo("--duration", "2", cwd=tmp_path, timeout=2 + MARGIN_S)
    assert proc.returncode == 0, proc.stderr
    assert "\x1b[" not in proc.stdout  # no terminal control sequences in a pipe
    assert "summary: elapsed_s=" in proc.stdout
    assert "interrupted=no" in proc.stdout
    assert_adds_up(parse_summary(proc.stdout))
    assert "Traceback" not in proc.stderr


async def test_ctrl_c_prints_the_summary_and_exits_130(tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sidecar.cli", "demo", "--duration", "120",
        cwd=tmp_path, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        header = await asyncio.wait_for(proc.stdout.readline(), MARGIN_S)
        assert header.startswith(b"sidecar demo: proxy"), header
        # Wait for the first progress line: traffic has flowed.
        progress = await asyncio.wait_for(proc.stdout.readline(), MARGIN_S)
        assert b"primary" in progress
        proc.send_signal(signal.SIGINT)
        out, err = await asyncio.wait_for(proc.communicate(), MARGIN_S)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 130, err.decode()
    text = out.decode()
    assert "interrupted=yes" in text
    assert_adds_up(parse_summary(text))


def test_print_rules_passes_check_without_diagnostics(tmp_path: Path) -> None:
    proc = demo("--print-rules", cwd=tmp_path, timeout=MARGIN_S)
    assert proc.returncode == 0, proc.stderr
    result = loads(proc.stdout, "demo.mirror")
    assert result.config is not None
    assert result.diagnostics == []
    assert {c.name for c in result.config.canaries} == {"v1", "v2", "v3"}
    (v2,) = [c for c in result.config.canaries if c.name == "v2"]
    assert v2.compare is not None and v2.compare.baseline == "v1"
    assert v2.compare.ignore == ()  # the timestamp is noise thanks to the baseline alone
    assert all("127.0.0.1:" in line for line in proc.stdout.splitlines() if "http://" in line)
    # One header comment, and trailing comments where the template has them.
    assert sum(line.startswith("#") for line in proc.stdout.splitlines()) == 1
    template = rules_template().splitlines()
    printed = proc.stdout.splitlines()
    assert len(printed) == len(template)
    for want, got in zip(template, printed, strict=True):
        if "#" in want and not want.startswith("#"):
            assert got.index("#") == want.index("#"), (want, got)


def test_plain_summary_shows_each_canarys_answers_by_status_class() -> None:
    canary = {k: 0 for k in ("dispatched", *SETTLE_KEYS, *DROP_KEYS, "in_flight")}
    canary.update(match=0, diff=0, skipped=0, noise=0, p50_ms=1.0)
    doc = {
        "elapsed_s": 1.0,
        "primary": {"requests": 3, "responses": {"2xx": 3}, "errors": 0, "p50_ms": 1.0, "p99_ms": 2.0},
        "canaries": {"v3": {**canary, "responses": {"2xx": 5, "5xx": 2}}},
    }  # fmt: skip
    (line,) = [line for line in plain_summary(doc) if line.startswith("canary v3:")]
    assert line.endswith(" 2xx=5 5xx=2")


def test_rules_template_has_every_placeholder() -> None:
    text = rules_template()
    for name in ("listen", "admin", "primary", "v1", "v2", "v3"):
        assert f"${name}" in text
    addresses = {n: f"127.0.0.1:{port}" for n, port in zip(["listen", "admin", "primary", "v1", "v2", "v3"], range(18080, 18086), strict=True)}  # fmt: skip
    assert "$" not in render_rules(addresses)


@pytest.mark.parametrize(
    ("q", "buckets", "expected"),
    [
        (0.5, [], None),
        (0.5, [(0.1, 0.0), (float("inf"), 0.0)], None),
        # 10 observations, all in (0.1, 0.2]: the median interpolates to the bucket's middle.
        (0.5, [(0.1, 0.0), (0.2, 10.0), (float("inf"), 10.0)], 0.15),
        # Half at or below 0.01, half in (0.01, 0.1].
        (0.5, [(0.01, 5.0), (0.1, 10.0), (float("inf"), 10.0)], 0.01),
        # Everything above the last finite bound: that bound (as Prometheus does).
        (0.5, [(0.1, 0.0), (float("inf"), 4.0)], 0.1),
    ],
)
def test_histogram_quantile(
    q: float, buckets: list[tuple[float, float]], expected: float | None
) -> None:
    got = histogram_quantile(q, buckets)
    if expected is None:
        assert got is None
    else:
        assert got == pytest.approx(expected)


def test_demo_app_routes() -> None:
    app = DemoApp(PROFILES["primary"], seed=1)
    assert app.route("GET", "/api/items", b"page=2", b"")[1]["items"][0]["id"] == 11
    assert app.route("GET", "/api/items/5", b"", b"")[0] == 200
    assert app.route("GET", "/api/items/500", b"", b"")[0] == 404
    assert app.route("POST", "/api/orders", b"", b'{"item": 3, "qty": 2}')[0] == 201
    assert app.route("POST", "/api/orders", b"", b"not json")[0] == 400
    assert app.route("POST", "/api/orders/import", b"", b"x" * 10) == (202, {"accepted_bytes": 10})
    assert app.route("GET", "/admin/stats", b"", b"")[0] == 200
    assert app.route("GET", "/nope", b"", b"")[0] == 404


def test_profile_rejects_impossible_shares() -> None:
    with pytest.raises(ValueError, match="share"):
        Profile(name="x", latency_s=(0.0, 0.0), error_share=0.7, stall_share=0.5)
    with pytest.raises(ValueError, match="latency_s"):
        Profile(name="x", latency_s=(0.2, 0.1))
