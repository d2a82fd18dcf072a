"""The loopback demo: a primary and two canaries (`apps`), the proxy with the packaged
rules (`rules/`), a traffic generator (`traffic`) and the live view (`view`), run by
`sidecar demo` (`command`).

This layer sits on top with the tools: it may import the server, the engine and
everything below them; only the CLI imports it.
"""
