"""The ASGI reverse proxy to the primary, teeing chosen requests to canary pools.

How this works
--------------
One call per request (`ProxyApp.__call__`), all on the request's own task:

1. Take the runtime's current `Snapshot` once; the request uses it to the end (so a reload
   never mixes two tables) and counts itself in `snapshot.active` meanwhile.
2. `framing.inspect()` refuses what must not be forwarded (CL + TE, conflicting lengths,
   an oversized head, CONNECT, a bad target) with a 4xx before anything is forwarded or
   mirrored, and tells the body's framing: a length, none, or chunked.
3. `RequestView` is built once and `table.decide(view)` names the tees (pure). When there
   are any, `RequestTees.begin()` admits what it can at once (`body off`, no body, a known
   length over a cap) and keeps the rest pending on the body.
4. The body: when the first `http.request` message is the whole body (the common case for
   small bodies; hypercorn's empty closing message is taken at once when the first one
   already holds the whole `Content-Length`), it is sent as bytes (one write, retryable on
   a stale connection); otherwise an `Upload` (sidecar/serve/upload.py) streams it chunk by
   chunk, `Content-Length` passed through when known, else chunked, feeding each chunk
   object to the tees as it goes. The body is never buffered: hypercorn's bounded app
   queue and the client's write flow control give backpressure both ways. Body whole ->
   `tees.finish()` (admission, never awaits); client gone mid-upload -> `tees.abort()`.
5. The primary exchange runs on the snapshot's pooled keep-alive `ConnectionPool` inside
   one `ExchangeClock` block, two clocks on one timer (sidecar/serve/stall.py): the primary
   `timeout` until the response head (from the moment the request is sent whole), and
   `idle_timeout` for every pause while a body moves (an upload, the response). No
   response head: 502 (unreachable or broken), 504 (timeout, or the primary stopped
   reading the upload) or 408 (the client stopped sending), short plain text, counted,
   logged. The response's hop-by-hop headers are dropped; status, headers (repeats in
   order) and body bytes pass as they are. The body streams back chunk by chunk; the chunk
   that completes a known length is sent with `more_body=False`, so a small response is
   one write. A response of several chunks watches for the client's disconnect and stops
   reading the primary then; a stalled one is cut (the client sees the connection close).
6. A primary that answers before the upload is whole (a 413): the rest of the body is
   read and discarded before the response's final message so the connection stays
   usable, or, when the rest is too large or of unknown size, the response carries
   `Connection: close` (see sidecar/serve/upload.py for the bounds and why the rest must be
   read either way under hypercorn).

Request id (`request_id "Name"`): before the view is built, a request without that header
gets one (32 random lower-case hex digits; a value with control characters is replaced, and
logged), appended to a copy of the header list, so the primary, every copy and the diff
records see the same value. Without the statement this costs one attribute test.

Comparison: when the tees have a `rendezvous` (some tee is compared), a `PrimaryCapture`
(sidecar/shadow/compare/primary.py) records the response as the client receives it: the head,
each chunk after it was sent, the end; a 502/504 of our own is `failed()`. Requests without
a compared tee allocate none of it.

Nothing here awaits a canary: the tees only ever call synchronous pool admission.
Hot-path rules: no per-request logging, the primary's metrics counted in plain ints
(`serve_metrics.primary()`, folded in at scrape time),
no copies of body chunks.
"""

from __future__ import annotations

import asyncio
import binascii
import logging
import os
import re
import time
from collections.abc import AsyncIterator

from sidecar.asgi import Message, Receive, Scope, Send, serve_lifespan
from sidecar.http import framing
from sidecar.http.client import ClientError, ConnectError, Response
from sidecar.http.headers import forward_request_headers, response_headers
from sidecar.routing.request import RequestView
from sidecar.serve import metrics as serve_metrics
from sidecar.serve.runtime import Runtime, Snapshot
from sidecar.serve.stall import ExchangeClock
from sidecar.serve.upload import Upload, UploadAborted
from sidecar.serve.websocket import Sessions
from sidecar.shadow.compare.primary import PrimaryCapture
from sidecar.shadow.errors import TLS, classify
from sidecar.shadow.tees import RequestTees

log = logging.getLogger("sidecar.proxy")

# Errors to the primary are logged at most this often (a dead primary under load must not
# turn the log into the bottleneck); the count of suppressed lines is reported with the next.
ERROR_LOG_INTERVAL_S = 1.0

_TEXT_PLAIN = (b"content-type", b"text/plain; charset=utf-8")
_CLOSE = (b"connection", b"close")
_CONTENT_LENGTH = b"content-length"
# A request id: 16 random bytes as 32 hex digits (os.urandom + hexlify: ~0.5 us, the
# cheapest of secrets.token_hex, os.urandom().hex() and SystemRandom measured).
_REQUEST_ID_BYTES = 16
# A client's request id is kept unless it is empty or has a control character (HTAB too).
_CONTROL = re.compile(rb"[\x00-\x1f\x7f]")


class ProxyApp:
    """The ASGI application hypercorn serves on the proxy listener."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.metrics = serve_metrics.primary()
        self.websockets = Sessions(self._log_error)
        self._last_error_log = 0.0
        self._suppressed = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            snap = self.runtime.current
            snap.active += 1
            try:
                await self._http(snap, scope, receive, send)
            finally:
                snap.active -= 1
        elif kind == "lifespan":
            await serve_lifespan(receive, send)
        elif kind == "websocket":
            # Passed to the primary as a WebSocket session, never mirrored (serve/websocket.py).
            # Not counted in `snap.active`: a session may last hours, and it uses none of
            # what a reload retires (its connection is its own, not the primary pool's).
            snap = self.runtime.current
            headers: list[tuple[bytes, bytes]] = scope["headers"]
            if snap.request_id is not None:
                headers, _ = self._request_id(headers, snap.request_id)
            await self.websockets.relay(snap, scope, receive, send, headers, self.metrics.record)

    async def _http(self, snap: Snapshot, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        method: str = scope["method"]
        raw_path: bytes = scope["raw_path"]
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        framed = framing.inspect(method, raw_path, scope["http_version"], headers)
        if isinstance(framed, framing.Refusal):
            await _plain(send, framed.status, framed.body(), close=True)
            self.metrics.record(framed.status, started)
            return
        if raw_path[:1] != b"/" and raw_path != b"*":
            raw_path, headers = _absolute_to_origin(raw_path, headers)
        query: bytes = scope["query_string"]
        peer = scope.get("client")
        client = peer[0] if peer else None
        scheme: str = scope["scheme"]
        request_id: bytes | None = None
        if snap.request_id is not None:
            headers, request_id = self._request_id(headers, snap.request_id)

        view = RequestView(
            method=method,
            path=raw_path.decode("latin-1"),
            query_string=query,
            headers=headers,
            client=client or "",
        )
        chosen = snap.table.decide(view)
        tees: RequestTees | None = None
        if chosen:
            pools = snap.canary_pools
            tees = RequestTees.begin(
                [(pools[t.canary], t.rule) for t in chosen],
                method,
                raw_path,
                query,
                headers,
                client,
                scheme,
                None if framed == framing.CHUNKED else framed,
                report=snap.compare_report,
                request_id=request_id,
            )
        capture: PrimaryCapture | None = None
        if tees is not None and tees.rendezvous is not None:
            capture = PrimaryCapture(tees.rendezvous)

        out_headers = forward_request_headers(headers, client=client, scheme=scheme)
        if scope["http_version"] == "1.0" and not view.header_b(b"host"):
            # HTTP/1.0 may omit Host; HTTP/1.1 to the primary needs one: its own authority,
            # as nginx's default `proxy_set_header Host $proxy_host`.
            out_headers.append((b"host", snap.primary.endpoint.authority.encode("ascii")))
        body: bytes | AsyncIterator[bytes] = b""
        upload: Upload | None = None
        if framed != framing.NO_BODY:
            message = await receive()
            if message["type"] == "http.disconnect":
                if tees is not None:
                    tees.abort()
                if capture is not None:
                    capture.end()  # `body off` tees may have gone already: they need an answer
                return
            first: bytes = message.get("body", b"")
            more: bool = message.get("more_body", False)
            if more and framed > 0 and len(first) == framed:
                # hypercorn ends every body with an empty message: when the first one holds
                # the whole declared length, take that end now and send the body as bytes
                # (one write with the head, retryable, no sender task).
                message = await receive()
                if message["type"] == "http.disconnect":
                    if tees is not None:
                        tees.abort()
                    if capture is not None:
                        capture.end()
                    return
                rest: bytes = message.get("body", b"")
                if rest:  # more than declared (h11 never lets that through): stream it
                    first += rest
                more = message.get("more_body", False)
            if not more:
                body = first
                if tees is not None:
                    tees.feed(first)
                    tees.finish()
            else:
                upload = Upload(receive, framed, first, tees)
            tees = None  # finished, or the upload's now
            if framed == framing.CHUNKED:
                # The chunked framing was hop-by-hop: the primary gets a length when the body
                # is already whole, else chunked again (h11 adds nothing by itself).
                if upload is None:  # the body is `first`, whole
                    # (an HTTP/2 request without a length and without a body gets none)
                    if first or scope["http_version"] != "2":
                        out_headers.append((_CONTENT_LENGTH, str(len(first)).encode("ascii")))
                else:
                    out_headers.append((b"transfer-encoding", b"chunked"))
        # The exchange's two clocks (sidecar/serve/stall.py), started by `_exchange`.
        clock = ExchangeClock(snap.primary_timeout_s, snap.primary_idle_timeout_s)
        if upload is not None:
            body = upload.chunks(clock)
        target = raw_path + b"?" + query if query else raw_path
        exchange = _Exchange(clock, upload, scope["http_version"] != "2", method, receive, send)
        exchange.capture = capture
        exchange.request_id = request_id
        try:
            status = await self._exchange(snap, exchange, target, out_headers, body)
        finally:
            if upload is not None:
                upload.end()  # an unread rest is drained to the close; waiting tees aborted
            if capture is not None:
                capture.end()  # after upload.end(): every unread tee has arrived by then
        if status:
            self.metrics.record(status, started)

    async def _exchange(
        self,
        snap: Snapshot,
        ex: _Exchange,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes | AsyncIterator[bytes],
    ) -> int:
        """Forward and relay; returns the status sent to the client (0: none, client gone;
        a response cut off after its head still counts with the status it was sent)."""
        response_started = False
        status = 0
        clock = ex.clock
        upload = ex.upload
        try:
            async with clock:
                if upload is not None:
                    clock.expect_progress()  # an upload is bounded by its pauses only
                resp = await snap.primary.request(ex.method.encode("ascii"), target, headers, body)
                clock.expect_progress()  # the head is in: from now on only pauses count
                status = resp.status
                if ex.capture is not None:
                    ex.capture.start(status, resp.headers)
                try:
                    out = response_headers(resp.headers)
                    if ex.unread_rest(close=False):
                        out.append(_CLOSE)
                    await ex.send({"type": "http.response.start", "status": status, "headers": out})
                    response_started = True
                    await _relay(resp, ex)
                finally:
                    await resp.aclose()
            return status
        except UploadAborted:
            return 0
        except TimeoutError:
            if response_started:
                self._log_error(
                    "primary exchange stalled (no body progress for %gs): response cut off",
                    snap.primary_idle_timeout_s,
                    request_id=ex.request_id,
                )
                return status  # the client got this head (then a cut-off body): count it
            if clock.stalled and upload is not None and upload.waiting:
                # Nothing came from the client for idle_timeout: its stall, not the primary's
                # (nginx's client_body_timeout answers 408 too).
                self._log_error(
                    "client upload stalled for %gs: 408",
                    snap.primary_idle_timeout_s,
                    request_id=ex.request_id,
                )
                await ex.plain(408, b"Request Timeout: the upload stalled\n", close=True)
                return 408
            if clock.stalled:
                self._log_error(
                    "primary stalled reading the upload for %gs: 504",
                    snap.primary_idle_timeout_s,
                    request_id=ex.request_id,
                )
            else:
                self._log_error(
                    "primary timed out after %gs: 504",
                    snap.primary_timeout_s,
                    request_id=ex.request_id,
                )
            if ex.capture is not None:
                ex.capture.failed()
            await ex.plain(504, b"Gateway Timeout: the primary did not answer in time\n")
            return 504
        except ClientError as exc:
            if response_started:
                self._log_error("primary broke off mid-response: %s", exc, request_id=ex.request_id)
                return status  # the client got this head (then a cut-off body): count it
            what = "is unreachable" if isinstance(exc, ConnectError) else "failed"
            if classify(exc) == TLS:  # the handshake: say so (the message names the cause)
                what = "failed the TLS handshake"
            self._log_error("primary %s: %s: 502", what, exc, request_id=ex.request_id)
            if ex.capture is not None:
                ex.capture.failed()
            await ex.plain(502, f"Bad Gateway: the primary {what}\n".encode())
            return 502

    def _request_id(
        self, headers: list[tuple[bytes, bytes]], name: bytes
    ) -> tuple[list[tuple[bytes, bytes]], bytes]:
        """The headers with a request id, and the id: the client's value when it sent a valid
        one, else a fresh one (replacing an invalid value, logged)."""
        for n, value in headers:
            if n == name:
                if value and _CONTROL.search(value) is None:
                    return headers, value
                new = binascii.hexlify(os.urandom(_REQUEST_ID_BYTES))
                self._log_error(
                    "request id %s replaced by %s: the value has control characters or is empty",
                    ascii(value.decode("latin-1")),
                    new.decode("ascii"),
                )
                return [h for h in headers if h[0] != name] + [(name, new)], new
        new = binascii.hexlify(os.urandom(_REQUEST_ID_BYTES))
        return [*headers, (name, new)], new

    def _log_error(self, msg: str, *args: object, request_id: bytes | None = None) -> None:
        now = time.monotonic()
        if now - self._last_error_log < ERROR_LOG_INTERVAL_S:
            self._suppressed += 1
            return
        if request_id is not None:
            msg += f" (request id {request_id.decode('latin-1')})"
        if self._suppressed:
            msg += f" ({self._suppressed} similar errors not logged)"
            self._suppressed = 0
        self._last_error_log = now
        log.warning(msg, *args)


class _Exchange:
    """What one primary exchange carries from the request to the response (one object
    instead of eight parameters down the call chain)."""

    __slots__ = ("capture", "clock", "http1", "method", "receive", "request_id", "send", "upload")

    def __init__(
        self,
        clock: ExchangeClock,
        upload: Upload | None,
        http1: bool,
        method: str,
        receive: Receive,
        send: Send,
    ) -> None:
        self.clock = clock
        self.upload = upload
        self.http1 = http1  # `Connection: close` is an HTTP/1.x header (HTTP/2 forbids it)
        self.method = method
        self.receive = receive
        self.send = send
        self.capture: PrimaryCapture | None = None  # set when some tee is compared
        self.request_id: bytes | None = None  # set with `request_id`: named in error lines

    def unread_rest(self, *, close: bool) -> bool:
        """A response head is going out: when the request body is not whole yet, decide
        between discarding its rest (keep-alive) and closing (see sidecar.serve.upload); True when
        the head must carry `Connection: close`. `close` forces the latter."""
        upload = self.upload
        if upload is None or upload.complete or upload.gone:
            return False
        discard = not close and upload.keep_alive_possible
        upload.after_head(discard=discard)
        return not discard and self.http1

    async def finish(self, last: bytes) -> None:
        """The response's final message, after the rest of the upload was dealt with."""
        upload = self.upload
        if upload is not None and not upload.complete:
            if last:
                await self.send({"type": "http.response.body", "body": last, "more_body": True})
                last = b""
            self.clock.pause()  # the discard has its own bounds
            await upload.settle()
            self.clock.expect_progress()  # the last write is bounded like the others
        await self.send({"type": "http.response.body", "body": last, "more_body": False})

    async def plain(self, status: int, body: bytes, *, close: bool = False) -> None:
        head = [_TEXT_PLAIN, (_CONTENT_LENGTH, str(len(body)).encode("ascii"))]
        if self.unread_rest(close=close) or close:
            head.append(_CLOSE)
        await self.send({"type": "http.response.start", "status": status, "headers": head})
        await self.finish(body)


async def _relay(resp: Response, ex: _Exchange) -> None:
    """Stream the primary's body to the client; see step 5 of the module docstring."""
    remaining = -1
    if ex.method != "HEAD":
        for name, value in resp.headers:
            if name == _CONTENT_LENGTH:
                remaining = int(value) if value.isdigit() else -1
                break
    send = ex.send
    touch = ex.clock.touch
    upload = ex.upload
    capture = ex.capture
    held = b""
    watch: asyncio.Future[Message] | None = None
    sent_chunks = 0
    try:
        async for chunk in resp.aiter_bytes():
            if remaining >= 0:
                remaining -= len(chunk)
                if remaining <= 0:
                    held = chunk  # the last one: sent with more_body=False below
                    continue
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            touch()
            if capture is not None:
                capture.feed(chunk)  # after the send: hashing never delays the client
            sent_chunks += 1
            if upload is not None and upload.gone:
                return  # the client is gone (seen by the upload's discard)
            if watch is None:
                # `receive` is ours unless an upload's rest is being discarded (that task
                # reads it, and tells us the client is gone through `upload.gone`).
                if sent_chunks > 1 and (upload is None or not upload.discarding):
                    watch = asyncio.ensure_future(ex.receive())
            elif watch.done():
                if watch.result()["type"] == "http.disconnect":
                    return  # the client is gone: stop reading the primary (resp.aclose aborts)
                watch = None  # a body message of an upload being closed: nobody wants it
        await ex.finish(held)
        if capture is not None:
            capture.feed(held)
            capture.finish()
    finally:
        if watch is not None and not watch.done():
            watch.cancel()


def _absolute_to_origin(
    raw_path: bytes, headers: list[tuple[bytes, bytes]]
) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """`GET http://a/p` -> `/p` with `Host: a` (RFC 9112 3.2.2); inspect() vetted it."""
    parsed = framing.origin_form(raw_path)
    assert parsed is not None
    path, authority = parsed
    return path, [(b"host", authority), *((n, v) for n, v in headers if n != b"host")]


async def _plain(send: Send, status: int, body: bytes, *, close: bool = False) -> None:
    """A short plain-text response to a request that was not forwarded."""
    head = [_TEXT_PLAIN, (_CONTENT_LENGTH, str(len(body)).encode("ascii"))]
    if close:
        head.append(_CLOSE)
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": body, "more_body": False})
