"""The engine: admit tees without awaiting, send them from bounded canary pools, report.

`types` (the values a tee carries and the outcomes), `tees` (one request's tees
and its shared body copy), `pool` (one canary's queue and workers), `balance`
(weighted round-robin and connect back-off), `rate` (the token bucket),
`template` (the shadow request's recipe), `errors` (why a tee failed, and the
throttled logs), `metrics` (the mirror series), `mirror` (the library's ASGI
middleware) and `compare/` (response comparison).

This layer imports `sidecar.routing`, `sidecar.model`, `sidecar.http` and the
bottom modules; never the server, the tools or the rule language.
"""
