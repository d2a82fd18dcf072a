"""The rules `sidecar demo` runs with (shipped in the wheel; read via importlib.resources).

`demo.mirror` is a template: `$listen`, `$admin`, `$primary`, `$v1`, `$v2` and `$v3` are replaced by
the loopback addresses the demo binds for this run (string.Template), so the file itself is
not a valid configuration until rendered; `sidecar demo --print-rules` shows the result.
"""
