"""Where the proxy's comparison results go: the metrics and, for a diff, the diff store.

The runtime builds one `CompareSink` per process over its `DiffStore` (sidecar/diff_store.py)
and hands it to the requests whose configuration compares (it is the rendezvous' `report`).
It runs synchronously on the event loop, from whichever task arrived last at a rendezvous
(the proxy or a mirror worker), so it must stay cheap: a few cached counter increments and
a ring append (plus one line written to the diff log, when there is one).
"""

from __future__ import annotations

from sidecar.serve.diff_store import DiffStore
from sidecar.shadow import metrics as shadow_metrics
from sidecar.shadow.compare.rendezvous import CompareResult
from sidecar.shadow.metrics import Metrics


class CompareSink:
    """Counts each `CompareResult` and keeps its diff record (see the module docstring)."""

    __slots__ = ("_metrics", "store")

    def __init__(self, store: DiffStore, metrics: Metrics | None = None) -> None:
        self.store = store
        self._metrics = metrics  # None: the default registry's, resolved on first use

    def __call__(self, result: CompareResult) -> None:
        metrics = self._metrics
        if metrics is None:
            metrics = self._metrics = shadow_metrics.metrics()
        metrics.compare(result)
        if result.record is not None:
            self.store.add(result.record)
