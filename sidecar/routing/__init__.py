"""The routing table: which canaries get a copy of a request.

`table.compile_table(config)` compiles the model once into an immutable table;
`decide(view)` is pure and runs only precompiled closures (`predicates`,
`sampling`, the `rule_index` for large tables); `trace(view)` is the same
decision, recorded, for `explain` and `check --expect`. `request.RequestView`
is the request as routing sees it, built once per request from the ASGI scope.

This layer imports `sidecar.model`, `sidecar.diagnostics` and `sidecar.asgi`
(the scope type), never the rule language, the engine or the server.
"""
