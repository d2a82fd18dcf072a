"""The validated configuration as frozen data: what the rule files mean.

`config` (canaries, rules, the primary), `endpoint` (origins and the one
`host:port` parser), `expr` (the predicate nodes `when`/`exclude` hold) and
`compare` (what a comparison reads and ignores). Pure values and checks: this
layer imports only `sidecar.http.syntax` (the HTTP token grammar),
`sidecar.diagnostics` and the standard library (plus the JSONPath parser for
`compare`); every layer above may import it.
"""
