"""`sidecar diffs`: files, stdin and a real admin-like server on loopback, text and JSON output."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
from pathlib import Path
from typing import Any

import pytest

from sidecar.model.compare import CompareSpec
from sidecar.shadow.compare.capture import Capture
from sidecar.shadow.compare.judge import judge
from sidecar.shadow.compare.record import RequestInfo, diff_record
from sidecar.tools import diffs
from tests.support.servers import serve_asgi

SPEC = CompareSpec(status=True, body="json")
T0 = 1796580000.0  # 2026-12-06T18:00:00Z


def record(
    i: int, *, canary: str = "v2", rule: str = "api_reads", path: str = "/api/items/1"
) -> dict[str, Any]:
    """A real record: ts always noise, price differs on odd i, status on i % 3 == 0."""

    def cap(status: int, doc: dict[str, Any]) -> Any:
        c = Capture(SPEC)
        c.start(status, [])
        c.feed(json.dumps(doc).encode())
        return c.finish()

    primary = cap(200, {"ts": i, "price": 9.5, "v": 1})
    canary_cap = cap(
        500 if i % 3 == 0 else 200, {"ts": i + 1, "price": 9.05 if i % 2 else 9.5, "v": 2}
    )
    baseline = cap(200, {"ts": i + 2, "price": 9.5, "v": 1})
    verdict = judge(SPEC, primary, canary_cap, baseline)
    assert verdict.result == "diff"
    return diff_record(
        verdict,
        rule=rule,
        request=RequestInfo(method="GET", path=path, query="page=2"),
        primary=primary,
        canary_name=canary,
        canary=canary_cap,
        now=T0 + i,
    )


def args(*sources: str, fmt: str = "text") -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    diffs.configure(parser)
    return parser.parse_args([*sources, "--format", fmt])


def run_json(capsys: pytest.CaptureFixture[str], *sources: str) -> tuple[int, dict[str, Any], str]:
    code = diffs.run(args(*sources, fmt="json"))
    out, err = capsys.readouterr()
    return code, json.loads(out), err


@pytest.mark.parametrize(
    ("path", "route"),
    [
        ("/api/items/42", "/api/items/{id}"),
        ("/u/0f3a9c2e1b/orders", "/u/{id}/orders"),
        ("/u/deadbee", "/u/deadbee"),  # 7 hex digits: a word, not an id
        ("/o/123e4567-e89b-12d3-a456-426614174000/x", "/o/{id}/x"),
        ("/o/123E4567-E89B-12D3-A456-426614174000", "/o/{id}"),
        ("/", "/"),
        ("/v2/items", "/v2/items"),
        ("/a//7/", "/a//{id}/"),
    ],
)
def test_route_templating(path: str, route: str) -> None:
    assert diffs.route_of(path) == route


def test_jsonl_with_bad_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "diffs.jsonl"
    lines = [json.dumps(record(i, path=f"/api/items/{100 + i}")) for i in range(6)]
    lines[2:2] = ["{not json", "", json.dumps({"time": 1})]
    log.write_text("\n".join(lines) + "\n")
    code, doc, err = run_json(capsys, str(log))
    assert code == 0
    assert f"{log}:3: warning: skipped: not JSON" in err
    assert f"{log}:5: warning: skipped: 'time' is not a string" in err
    assert doc["records"] == 6 and doc["bad_lines"] == 2
    assert doc["sources"] == [{"source": str(log), "records": 6, "bad_lines": 2, "error": None}]
    (group,) = doc["groups"]
    assert (group["canary"], group["rule"], group["records"]) == ("v2", "api_reads", 6)
    assert group["first"] == "2026-12-06T18:00:00.000Z"
    assert group["last"] == "2026-12-06T18:00:05.000Z"
    by_where = {(d["kind"], d["where"]): d for d in group["differences"]}
    assert list(by_where) == [("body", "$['v']"), ("body", "$['price']"), ("status", "status")]
    price = by_where[("body", "$['price']")]
    assert (price["count"], price["share"]) == (3, 0.5)
    assert price["first"] == "2026-12-06T18:00:01.000Z"
    assert price["last"] == "2026-12-06T18:00:05.000Z"
    assert price["example"] == {
        "method": "GET",
        "path": "/api/items/101",
        "query": "page=2",
        "id": None,
    }
    (route,) = group["routes"]
    assert route["route"] == "/api/items/{id}" and route["count"] == 6 and route["share"] == 1.0
    assert route["top"] == {"kind": "body", "where": "$['v']", "count": 6}
    (noise,) = group["noise"]
    assert noise["where"] == "$['ts']" and noise["count"] == 6
    assert noise["noise_ratio"] == 1.0 and noise["candidate"] is True
    assert noise["suggestion"] == "ignore \"$['ts']\""


def test_noise_ratio_below_one_is_not_a_candidate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    noisy = record(1)
    plain = record(1)
    # the same where, once noise and once a real difference (the baseline missed it)
    plain["differences"].append(plain.pop("noise")[0])
    log = tmp_path / "d.jsonl"
    log.write_text(json.dumps(noisy) + "\n" + json.dumps(plain) + "\n")
    _code, doc, _err = run_json(capsys, str(log))
    (noise,) = doc["groups"][0]["noise"]
    assert (
        noise["noise_ratio"] == 0.5 and noise["candidate"] is False and noise["suggestion"] is None
    )


def test_stdin_and_groups_per_canary_and_rule(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    text = "".join(
        json.dumps(record(i, canary=c, rule=r)) + "\n"
        for i, (c, r) in enumerate([("v2", "a"), ("v3", "a"), ("v2", "b"), ("v2", "a")])
    )
    monkeypatch.setattr("sys.stdin", io.StringIO(text))
    code, doc, _err = run_json(capsys, "-")
    assert code == 0 and doc["records"] == 4
    assert [(g["canary"], g["rule"], g["records"]) for g in doc["groups"]] == [
        ("v2", "a", 2), ("v2", "b", 1), ("v3", "a", 1)
    ]  # fmt: skip


def test_terminal_output_contains_the_groups(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "d.jsonl"
    log.write_text("".join(json.dumps(record(i)) + "\n" for i in range(4)) + "oops\n")
    assert diffs.run(args(str(log))) == 0
    out, err = capsys.readouterr()
    assert "canary v2 · rule api_reads: 4 records" in out
    for text in ("differences by where", "$['price']", "differences by route", "/api/items/{id}",
                 "noise (baseline differs too)", "candidate for ignore", "GET /api/items/1?page=2"):  # fmt: skip
        assert text in out, text
    assert "4 records from 1 source, 1 bad line skipped" in out
    assert f"{log}:5: warning" in err and "Traceback" not in err


async def test_admin_url_sources(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    records = [record(i, path=f"/api/items/{i}") for i in range(3)]
    seen: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        seen.append(scope["path"])
        status, body = {
            "/diffs": (200, json.dumps(records[::-1]).encode()),  # newest first, as /diffs does
            "/broken": (500, b"oops"),
            "/html": (200, b"<html>"),
            "/object": (200, b"{}"),
        }.get(scope["path"], (404, b""))
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": body})

    async with serve_asgi(app) as base:
        log = tmp_path / "d.jsonl"
        log.write_text(json.dumps(record(7, canary="v3")) + "\n")
        code = await asyncio.to_thread(diffs.run, args(base, str(log), fmt="json"))
        out, err = capsys.readouterr()
        assert code == 0 and seen == ["/diffs"] and err == ""
        doc = json.loads(out)
        assert doc["records"] == 4 and [g["canary"] for g in doc["groups"]] == ["v2", "v3"]
        assert doc["groups"][0]["first"] == "2026-12-06T18:00:00.000Z"

        for path, message in (
            ("/broken", "HTTP 500 (expected 200)"),
            ("/html", "the answer is not JSON"),
            ("/object", "the answer is not a JSON list"),
        ):
            code = await asyncio.to_thread(diffs.run, args(base + path, str(log), fmt="json"))
            out, err = capsys.readouterr()
            assert code == 1, path
            assert f"sidecar diffs: error: {base}{path}: {message}" in err
            assert "Traceback" not in err
            doc = json.loads(out)  # still one document, with what could be read
            assert doc["records"] == 1 and message in doc["sources"][0]["error"]


def test_unreachable_admin_is_a_failed_source(capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code, doc, err = run_json(capsys, f"http://127.0.0.1:{port}")
    assert code == 1
    assert f"sidecar diffs: error: http://127.0.0.1:{port}/diffs: cannot connect" in err
    assert doc["records"] == 0 and doc["groups"] == []


@pytest.mark.parametrize(
    ("sources", "message"),
    [
        (["/nonexistent/diffs.jsonl"], "no such file"),
        (["ftp://host/diffs"], "not an http:// or https:// admin URL"),
        (["-", "-"], "standard input can be read only once"),
    ],
)
def test_usage_errors(sources: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert diffs.run(args(*sources)) == 2
    assert message in capsys.readouterr().err


def test_unreadable_source_is_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, doc, err = run_json(capsys, str(tmp_path))  # a directory
    assert code == 1 and f"sidecar diffs: error: {tmp_path}: " in err
    assert doc["sources"][0]["error"]


def test_classify() -> None:
    assert diffs.classify("http://127.0.0.1:9901").target == "http://127.0.0.1:9901/diffs"
    assert diffs.classify("http://h:1/").target == "http://h:1/diffs"
    assert diffs.classify("http://h:1/diffs?canary=v2").target == "http://h:1/diffs?canary=v2"


def test_parse_record_problems() -> None:
    good = record(1)
    assert isinstance(diffs.parse_record(good), diffs.Record)
    assert diffs.parse_record([]) == "not a JSON object"
    assert diffs.parse_record({**good, "canary": {}}) == "no 'canary.name'"
    bad = {**good, "differences": [{"kind": "body"}]}
    assert diffs.parse_record(bad) == "an entry of 'differences' has no kind and where"


def test_overlong_line_is_skipped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "d.jsonl"
    good = json.dumps(record(1))
    monkeypatch.setattr(diffs, "MAX_LINE_CHARS", len(good) + 1)
    log.write_text(good + "\n" + "x" * (5 * len(good)) + "\n" + good + "\n")
    code, doc, err = run_json(capsys, str(log))
    assert code == 0 and doc["records"] == 2 and doc["bad_lines"] == 1
    assert f"{log}:2: warning: skipped: line too long" in err
