"""Prometheus metrics for library users: the public face of `sidecar.shadow.metrics`.

    from sidecar import Mirror, prom
    app = Mirror(app, canary="http://v2:8000", observe=prom.observe)

`observe` records each tee's outcome into prometheus-client's default registry (or
the one given); `metrics(registry)` is that registry's `Metrics`; `track_pool(pool)`
feeds the queue-depth and busy-worker gauges for each of `mirror.pools`. The proxy's
own series live in `sidecar.serve.metrics`. Nothing inside sidecar imports this
module: it is only for applications.
"""

from __future__ import annotations

from sidecar.shadow.metrics import MIRROR_DURATION_BUCKETS_S as MIRROR_DURATION_BUCKETS_S
from sidecar.shadow.metrics import Metrics as Metrics
from sidecar.shadow.metrics import code_class as code_class
from sidecar.shadow.metrics import metrics as metrics
from sidecar.shadow.metrics import observe as observe
from sidecar.shadow.metrics import track_pool as track_pool
from sidecar.shadow.metrics import untrack_pool as untrack_pool
