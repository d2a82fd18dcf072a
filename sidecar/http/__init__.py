"""HTTP/1.1 on the wire, without configuration: syntax facts, codec, connections, client.

`syntax` (the token grammar, control characters, hop-by-hop headers: one home
each), `http1` (the sans-IO response parser and request encoder), `framing`
(what the proxy accepts from clients), `headers` (forwarding: hop-by-hop
stripping, X-Forwarded-*), `connection` (one keep-alive connection) and
`client` (the lean pool the canaries are sent with).

This is the lowest layer but `diagnostics`/`asgi`: it imports nothing else of
sidecar, so the model, the rule language and everything above may use it.
"""
