"""A primary for proxy tests: an ASGI app (served by hypercorn in the test's loop).

Routes (by path prefix):
    /echo...       200 JSON: method, raw path, query, headers (in order), body sha256/length
    /cookies       201 with three Set-Cookie headers and hop-by-hop headers to strip
    /slow?s=F      answers after F seconds (a slow primary)
    /download?n=N  N bytes (b"x"), streamed in 64 KiB chunks with Content-Length
    /chunked       a chunked response of three chunks
    /sink          reads the body, answers its length (no echo)
Every request is counted in `app.requests` (method, raw path).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from typing import Any
from urllib.parse import parse_qs

CHUNK_BYTES = 64 * 1024


class PrimaryApp:
    def __init__(self) -> None:
        self.requests: list[tuple[str, bytes]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        self.requests.append((scope["method"], scope["raw_path"]))
        path: str = scope["path"]
        query = parse_qs(scope["query_string"].decode())
        digest = hashlib.sha256()
        length = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            digest.update(chunk)
            length += len(chunk)
            if not message.get("more_body"):
                break
        if "/echo" in path:
            doc = {
                "method": scope["method"],
                "raw_path": scope["raw_path"].decode("latin-1"),
                "query": scope["query_string"].decode("latin-1"),
                "headers": [
                    [n.decode("latin-1"), v.decode("latin-1")] for n, v in scope["headers"]
                ],
                "sha256": digest.hexdigest(),
                "length": length,
            }
            await _send(
                send, 200, json.dumps(doc).encode(), [(b"content-type", b"application/json")]
            )
        elif path == "/cookies":
            headers = [
                (b"set-cookie", b"a=1; Path=/"),
                (b"x-kept", b"yes"),
                (b"set-cookie", b"b=2"),
                (b"connection", b"x-hop"),
                (b"x-hop", b"gone"),
                (b"keep-alive", b"timeout=5"),
                (b"proxy-authenticate", b"Basic"),
                (b"set-cookie", b"c=3; HttpOnly"),
            ]
            await _send(send, 201, b"cookies!", headers)
        elif path == "/slow":
            await asyncio.sleep(float(query.get("s", ["1"])[0]))
            await _send(send, 200, b"slow done", [])
        elif path == "/download":
            n = int(query["n"][0])
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-length", str(n).encode())],
                }
            )
            block = b"x" * CHUNK_BYTES
            sent = 0
            while sent < n:
                part = block if n - sent >= CHUNK_BYTES else block[: n - sent]
                sent += len(part)
                await send({"type": "http.response.body", "body": part, "more_body": sent < n})
        elif path == "/chunked":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            for part in (b"one,", b"two,", b"three"):
                await send({"type": "http.response.body", "body": part, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        elif path == "/sink":
            await _send(send, 200, str(length).encode(), [])
        else:
            await _send(send, 200, b"ok", [])


async def _send(send: Any, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*headers, (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})
