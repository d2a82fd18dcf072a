"""The admin listener: `GET /metrics`, `/healthz`, `/readyz`, `/rules`, `/diffs`; `POST /-/reload`.

A plain ASGI app served by its own hypercorn listener (loopback by default; `admin off`
removes it). `/metrics` renders prometheus-client's default registry, or, when
PROMETHEUS_MULTIPROC_DIR is set (`serve --workers N`), a fresh registry with a
MultiProcessCollector over every worker's samples, so any worker answers for the whole.
`/readyz` is 200 only while the runtime says the rules are loaded and the proxy listens
(503 before that and while shutting down); `/healthz` is 200 while the process runs.
`/rules` is the current snapshot's `table.to_json()` plus the source files and hash.
`/diffs` is the runtime's kept diff records, newest first, as a JSON list (sidecar/serve/diffs_query.py
reads `?canary=`, `?rule=`, `?limit=`; a bad limit is a 400).
`POST /-/reload` (the Prometheus convention) reloads the rules (sidecar/serve/reload.py) and
answers when that is done: 200 with a line saying what changed (and any warnings), or 400
with every diagnostic as `check` prints it, the old rules still serving.
"""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, multiprocess
from prometheus_client import generate_latest as generate

from sidecar.asgi import Receive, Scope, Send, serve_lifespan
from sidecar.serve.diffs_query import DiffsQueryError, parse_diffs_query
from sidecar.serve.reload import ReloadResult
from sidecar.serve.runtime import Runtime

RELOAD_PATH = "/-/reload"

_JSON = (b"content-type", b"application/json")
_TEXT = (b"content-type", b"text/plain; charset=utf-8")


class AdminApp:
    def __init__(
        self, runtime: Runtime, reload: Callable[[], Awaitable[ReloadResult]] | None = None
    ) -> None:
        self.runtime = runtime
        self.reload = reload  # None: this sidecar cannot reload (POST /-/reload is 404)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await serve_lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        method: str = scope["method"]
        path: str = scope["path"]
        if path == RELOAD_PATH and self.reload is not None:
            if method != "POST":
                await _respond(send, 405, b"use POST\n", _TEXT, extra=[(b"allow", b"POST")])
                return
            await _drain_body(receive)
            result = await self.reload()
            await _respond(send, 200 if result.ok else 400, result.text().encode(), _TEXT)
            return
        if method not in ("GET", "HEAD"):
            await _respond(send, 405, b"method not allowed\n", _TEXT, extra=[(b"allow", b"GET")])
            return
        if path == "/metrics":
            body, ctype = render_metrics()
            await _respond(send, 200, body, (b"content-type", ctype.encode("latin-1")))
        elif path == "/healthz":
            await _respond(send, 200, b"ok\n", _TEXT)
        elif path == "/readyz":
            if self.runtime.ready:
                await _respond(send, 200, b"ready\n", _TEXT)
            else:
                await _respond(send, 503, b"not ready\n", _TEXT)
        elif path == "/rules":
            doc = rules_json(self.runtime)
            await _respond(send, 200, json.dumps(doc, indent=2).encode() + b"\n", _JSON)
        elif path == "/diffs":
            try:
                query = parse_diffs_query(scope["query_string"])
            except DiffsQueryError as exc:
                await _respond(send, 400, f"{exc}\n".encode(), _TEXT)
                return
            records = self.runtime.diffs.query(**query)
            await _respond(send, 200, json.dumps(records, ensure_ascii=False).encode(), _JSON)
        else:
            await _respond(send, 404, b"not found\n", _TEXT)


def rules_json(runtime: Runtime) -> dict[str, Any]:
    """The loaded routing table, its source files (with their sha256) and the overall hash."""
    config = runtime.current.config
    doc = dict(runtime.current.table.to_json())
    doc.setdefault("sha256", config.sha256)
    doc.setdefault("files", [{"path": s.path, "sha256": s.sha256} for s in config.sources])
    return doc


def render_metrics() -> tuple[bytes, str]:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate(registry), CONTENT_TYPE_LATEST
    return generate(REGISTRY), CONTENT_TYPE_LATEST


async def _drain_body(receive: Receive) -> None:
    """Read (and ignore) the request body, so the connection stays usable."""
    while True:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            return


async def _respond(
    send: Send,
    status: int,
    body: bytes,
    ctype: tuple[bytes, bytes],
    *,
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    headers = [ctype, (b"content-length", str(len(body)).encode("ascii")), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
