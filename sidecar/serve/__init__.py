"""The proxy: hypercorn or uvicorn, the ASGI proxy app and its WebSocket pass-through, admin
and metrics, reload, listeners, processes.

This layer imports the engine (`sidecar.shadow`), routing, the rule language
(to load and reload rules), the model, `sidecar.http` and the bottom modules;
never the tools, the demo or the CLI.
"""
