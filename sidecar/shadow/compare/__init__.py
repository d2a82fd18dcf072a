"""Response comparison, the pure core: capture a response, judge two, build the diff record.

No asyncio, no network: the proxy, the mirror workers and the library wire this in.

How a caller uses it::

    spec = CompareSpec(status=True, headers=("Content-Type",), body="json",
                       ignore=("$.generated_at",))        # at load time: validates, compiles
    cap = Capture(spec)                                   # one per response (primary or canary)
    cap.start(status, headers)                            # ASGI/h11 (name, value) pairs
    for chunk in body: cap.feed(chunk)                    # as the body streams; never blocks
    primary = cap.finish()      # or cap.incomplete() when the client left / the body was cut
    verdict = judge(spec, primary, canary, baseline)      # baseline: the noise canary, or None
    if verdict.result == "diff":
        record = diff_record(verdict, rule="api", request=RequestInfo(...),
                             primary=primary, canary_name="v2", canary=canary, now=time.time())

`Captured` is immutable, so one primary capture is judged against every canary of
the request, from whichever task finishes last. When the proxy itself answered
the client 502/504, the caller does not judge: it records `Verdict.skipped(PRIMARY_FAILED)`.

Costs. Every capture keeps the length and sha256 of the body, whatever the spec
asks, because the diff record names both for the primary and the canary; sha256
costs about 0.6 us per KiB here (SHA-NI; see docs/compare.md), far below the
proxy's own cost per chunk, so a status-only spec is not worth a hashless path.
Only `body json` keeps bytes, and only up to `max_body_bytes`. Identical bodies
(same length and sha256) are never parsed: that is the common case of a canary
that matches.

Modules: `sidecar.model.compare` (the spec), `capture`, `judge`, `record`.
"""
