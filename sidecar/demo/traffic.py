"""The demo's client: an open-loop request generator and what it saw (codes, latencies)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections import deque
from typing import Any

import httpx

# Concurrent generator requests; past it a tick is skipped (counted) instead of piling up.
MAX_IN_FLIGHT = 32
# The generator's own deadline per request: above the demo primary's 5 s timeout.
CLIENT_TIMEOUT_S = 10.0
# Latency samples kept for the primary's percentiles (~40 minutes at the default rate).
MAX_LATENCY_SAMPLES = 100_000


class Traffic:
    """An open-loop generator: one request every 1/rate s, at most MAX_IN_FLIGHT at once."""

    def __init__(self, base_url: str, *, rate: float, seed: int | None) -> None:
        self.base_url = base_url
        self.interval_s = 1.0 / rate
        self._random = random.Random(seed)
        self.sent = 0
        self.skipped = 0  # ticks with MAX_IN_FLIGHT requests still out
        self.errors = 0  # no response at all (connection trouble, client timeout)
        self.codes: dict[str, int] = {}
        self.latencies_s: deque[float] = deque(maxlen=MAX_LATENCY_SAMPLES)

    async def run(self, stop: asyncio.Event, duration_s: float) -> None:
        limits = httpx.Limits(
            max_connections=MAX_IN_FLIGHT, max_keepalive_connections=MAX_IN_FLIGHT
        )
        loop = asyncio.get_running_loop()
        end = loop.time() + duration_s
        in_flight: set[asyncio.Task[None]] = set()
        async with httpx.AsyncClient(
            base_url=self.base_url, timeout=CLIENT_TIMEOUT_S, limits=limits
        ) as client:
            next_at = loop.time()
            while not stop.is_set() and next_at < end:
                if len(in_flight) < MAX_IN_FLIGHT:
                    task = asyncio.create_task(self._one(client))
                    in_flight.add(task)
                    task.add_done_callback(in_flight.discard)
                else:
                    self.skipped += 1
                next_at += self.interval_s
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(0.0, next_at - loop.time())):
                        await stop.wait()
            if stop.is_set():  # interrupted: what is still out is abandoned
                for task in in_flight:
                    task.cancel()
            await asyncio.gather(*in_flight, return_exceptions=True)

    def next_request(self) -> tuple[str, str, dict[str, str], bytes | None]:
        """(method, path, headers, body): the demo's traffic mix."""
        r = self._random
        user = {"X-User-Id": f"user-{r.randint(1, 40)}"}
        draw = r.random()
        if draw < 0.45:
            return "GET", f"/api/items?page={r.randint(1, 10)}", user, None
        if draw < 0.65:
            return "GET", f"/api/items/{r.randint(1, 120)}", user, None
        if draw < 0.87:
            order = json.dumps({"item": r.randint(1, 100), "qty": r.randint(1, 5)}).encode()
            return "POST", "/api/orders", {**user, "Content-Type": "application/json"}, order
        if draw < 0.92:  # a bulk import, larger than the canaries' max_body: dropped_oversize
            return "POST", "/api/orders/import", user, b"x" * (200 * 1024)
        return "GET", "/admin/stats", {"Authorization": "Bearer demo"}, None

    async def _one(self, client: Any) -> None:
        method, path, headers, body = self.next_request()
        self.sent += 1
        started = time.perf_counter()
        try:
            resp = await client.request(method, path, headers=headers, content=body)
        except httpx.HTTPError:
            self.errors += 1
            return
        self.latencies_s.append(time.perf_counter() - started)
        code = f"{resp.status_code // 100}xx"
        self.codes[code] = self.codes.get(code, 0) + 1
