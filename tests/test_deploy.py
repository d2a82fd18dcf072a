"""deploy/: the Kubernetes manifests, the Prometheus alerts and the Grafana dashboard, as data.

- every manifest validates against the Kubernetes API schemas of a pinned version
  (kubernetes-validate ships them: offline), and the objects agree with each other
  (Service -> sidecar port, probes -> admin port, ConfigMap -> mounted rules directory);
- the ConfigMap's rules pass `sidecar check`, point at the app's loopback port, and the
  sidecar's memory limit covers bench/README.md's bound for those rules;
- `promtool test rules` passes on the alerts (.ci/run installs promtool and sets
  SIDECAR_REQUIRE_PROMTOOL, so there a missing promtool fails; elsewhere it is a visible skip);
- every metric the dashboard and the alerts query is one the README's Metrics table lists.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from sidecar.cli import main as cli_main
from sidecar.dsl import load

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "kubernetes"
PROMETHEUS = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "deploy" / "grafana" / "sidecar.json"
# The Kubernetes version the manifests are checked against (preStop `sleep` needs 1.30+).
KUBERNETES_VERSION = "1.33"
RULES_MOUNT = "/etc/sidecar"
# bench/README.md, bench_memory.py: RSS bound = base + (workers + queue) x max_body + 50 MB.
BENCH_BASE_RSS_BYTES = int(42.4 * 2**20)
BENCH_MARGIN_BYTES = 50 * 10**6
PROMTOOL_TIMEOUT_S = 60.0
# Set by .ci/run: there a missing promtool fails the alert tests instead of skipping them.
REQUIRE_PROMTOOL_ENV = "SIDECAR_REQUIRE_PROMTOOL"
KUBECTL_TIMEOUT_S = 60.0


def manifests() -> list[tuple[str, dict[str, Any]]]:
    docs: list[tuple[str, dict[str, Any]]] = []
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if doc:
                docs.append((path.name, doc))
    return docs


def find(kind: str, name: str) -> dict[str, Any]:
    for _, doc in manifests():
        if doc["kind"] == kind and doc["metadata"]["name"] == name:
            return doc
    raise AssertionError(f"no {kind} {name} in {K8S}")


def container(deployment: dict[str, Any], name: str) -> dict[str, Any]:
    for c in deployment["spec"]["template"]["spec"]["containers"]:
        if c["name"] == name:
            assert isinstance(c, dict)
            return c
    raise AssertionError(f"no container {name}")


def flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def quantity_bytes(q: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "K": 10**3, "M": 10**6, "G": 10**9}
    for suffix, factor in units.items():
        if q.endswith(suffix):
            return int(q[: -len(suffix)]) * factor
    return int(q)


@pytest.fixture
def rules_dir(tmp_path: Path) -> Path:
    """The ConfigMap's keys written out as files, as the kubelet mounts them."""
    data = find("ConfigMap", "shop-sidecar-rules")["data"]
    for key, text in data.items():
        (tmp_path / key).write_text(text, encoding="utf-8")
    return tmp_path


# --- Kubernetes ------------------------------------------------------------------------------


def test_manifests_validate_against_the_kubernetes_schemas() -> None:
    kv = pytest.importorskip(
        "kubernetes_validate",
        reason="kubernetes-validate is not installed (pip install -e '.[dev]')",
    )
    checked = 0
    for name, doc in manifests():
        if doc["kind"] in ("Kustomization", "ServiceMonitor"):  # not core API: below
            continue
        try:
            kv.validate(doc, KUBERNETES_VERSION, strict=True)
        except (kv.utils.VersionNotSupportedError, kv.utils.InvalidSchemaError, OSError) as exc:
            pytest.skip(
                f"kubernetes-validate cannot load its {KUBERNETES_VERSION} schemas: {exc!r}"
            )
        except kv.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            raise AssertionError(f"{name}: {doc['kind']}: {path}: {exc.message}") from None
        checked += 1
    assert checked >= 5
    # The validation is strict: a typo'd field is an error, not silently ignored.
    broken = json.loads(json.dumps(find("Deployment", "shop")))
    broken["spec"]["replica"] = broken["spec"].pop("replicas")
    with pytest.raises(kv.ValidationError):
        kv.validate(broken, KUBERNETES_VERSION, strict=True)


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))
    listed = set(kustomization["resources"])
    assert listed == {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}


def test_kustomize_builds_when_kubectl_is_there() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not on PATH (the kustomize build is checked where it is)")
    built = subprocess.run(
        [kubectl, "kustomize", str(K8S)],
        capture_output=True,
        text=True,
        timeout=KUBECTL_TIMEOUT_S,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    kinds = sorted(d["kind"] for d in yaml.safe_load_all(built.stdout) if d)
    assert kinds == sorted(d["kind"] for _, d in manifests() if d["kind"] != "Kustomization")


def test_the_pod_runs_the_app_on_loopback_and_the_sidecar_in_front(rules_dir: Path) -> None:
    deployment = find("Deployment", "shop")
    pod = deployment["spec"]["template"]
    sidecar = container(deployment, "sidecar")
    args = sidecar["args"]
    assert args[:2] == ["serve", RULES_MOUNT] and "--watch" in args
    ports = {p["name"]: p["containerPort"] for p in sidecar["ports"]}
    assert flag(args, "--listen") == f"0.0.0.0:{ports['http']}"
    assert flag(args, "--admin") == f"0.0.0.0:{ports['admin']}"

    # The rules: valid, and their primary is the app container's loopback address.
    assert cli_main(["check", str(rules_dir)]) == 0
    config = load([str(rules_dir)]).config
    assert config is not None and config.primary is not None
    app_listen = flag(container(deployment, "app")["args"], "--listen")
    assert app_listen.startswith("127.0.0.1:")
    assert config.primary.endpoint.url.rstrip("/") == f"http://{app_listen}"
    assert config.listen == flag(args, "--listen") and config.admin == flag(args, "--admin")

    # The ConfigMap is mounted whole (a subPath mount is never updated: --watch sees nothing).
    mount = next(m for m in sidecar["volumeMounts"] if m["mountPath"] == RULES_MOUNT)
    assert "subPath" not in mount and mount["readOnly"] is True
    volume = next(v for v in pod["spec"]["volumes"] if v["name"] == mount["name"])
    assert volume["configMap"]["name"] == "shop-sidecar-rules"

    # Probes and scrape annotations on the admin port.
    assert sidecar["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert sidecar["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    notes = pod["metadata"]["annotations"]
    assert notes["prometheus.io/scrape"] == "true"
    assert notes["prometheus.io/port"] == str(ports["admin"])
    assert notes["prometheus.io/path"] == "/metrics"

    # SIGTERM's drain fits in the termination grace period.
    grace = int(flag(args, "--grace"))
    pre_stop = sidecar["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["spec"]["terminationGracePeriodSeconds"] > grace + pre_stop


def test_the_services_target_the_sidecar_and_the_servicemonitor_its_admin_port() -> None:
    deployment = find("Deployment", "shop")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    sidecar_ports = {p["name"] for p in container(deployment, "sidecar")["ports"]}
    app = find("Service", "shop")
    assert app["spec"]["selector"].items() <= labels.items()
    assert [p["targetPort"] for p in app["spec"]["ports"]] == ["http"]
    assert "http" in sidecar_ports

    admin = find("Service", "shop-sidecar-admin")
    assert admin["spec"]["selector"].items() <= labels.items()
    assert [p["targetPort"] for p in admin["spec"]["ports"]] == ["admin"]

    monitor = find("ServiceMonitor", "shop-sidecar")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= admin["metadata"]["labels"].items()
    admin_port_names = {p["name"] for p in admin["spec"]["ports"]}
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["port"] in admin_port_names and endpoint["path"] == "/metrics"


def test_every_container_runs_non_root_read_only_without_privileges() -> None:
    for _, doc in manifests():
        if doc["kind"] != "Deployment":
            continue
        pod = doc["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] > 0
        assert pod["automountServiceAccountToken"] is False
        for c in pod["containers"]:
            sc = c["securityContext"]
            assert sc["runAsNonRoot"] is True and sc["runAsUser"] > 0, c["name"]
            assert sc["readOnlyRootFilesystem"] is True, c["name"]
            assert sc["allowPrivilegeEscalation"] is False, c["name"]
            assert sc["capabilities"]["drop"] == ["ALL"], c["name"]
            assert {"cpu", "memory"} <= c["resources"]["requests"].keys(), c["name"]
            assert "memory" in c["resources"]["limits"], c["name"]


def test_the_sidecar_memory_limit_covers_the_bench_bound_for_these_rules(rules_dir: Path) -> None:
    config = load([str(rules_dir)]).config
    assert config is not None
    held = sum((c.workers + c.queue) * c.max_body_bytes for c in config.canaries)
    bound = BENCH_BASE_RSS_BYTES + held + BENCH_MARGIN_BYTES
    resources = container(find("Deployment", "shop"), "sidecar")["resources"]
    limit = quantity_bytes(resources["limits"]["memory"])
    assert bound <= limit <= 1.5 * bound, (bound, limit)
    assert quantity_bytes(resources["requests"]["memory"]) >= 48 * 2**20  # soak RSS ~40 MiB
    assert resources["limits"]["cpu"] == "1"  # one process, one event loop


# --- Prometheus ------------------------------------------------------------------------------


def test_promtool_checks_and_unit_tests_the_alerts() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        message = "promtool is not on PATH: apt-get install prometheus (Debian's package has it)"
        if os.environ.get(REQUIRE_PROMTOOL_ENV):
            pytest.fail(f"{message}; {REQUIRE_PROMTOOL_ENV} is set (CI must run the alert tests)")
        pytest.skip(message)
    for args in (["check", "rules", "alerts.yml"], ["test", "rules", "tests.yml"]):
        run = subprocess.run(
            [promtool, *args],
            cwd=PROMETHEUS,
            capture_output=True,
            text=True,
            timeout=PROMTOOL_TIMEOUT_S,
            check=False,
        )
        assert run.returncode == 0, run.stdout + run.stderr


def test_every_alert_has_for_severity_summary_description_and_a_unit_test() -> None:
    rules = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text(encoding="utf-8"))
    tests = yaml.safe_load((PROMETHEUS / "tests.yml").read_text(encoding="utf-8"))
    firing: set[str] = set()
    quiet: set[str] = set()
    for group in tests["tests"]:
        for case in group["alert_rule_test"]:
            (firing if case["exp_alerts"] else quiet).add(case["alertname"])
    alerts = [r for g in rules["groups"] for r in g["rules"] if "alert" in r]
    assert {"SidecarCanaryFailing", "SidecarCanaryQueueDropping", "SidecarCanaryDiffRate"} <= {
        a["alert"] for a in alerts
    }
    for alert in alerts:
        name = alert["alert"]
        assert alert["for"], name
        assert alert["labels"]["severity"] in ("warning", "critical"), name
        assert alert["annotations"]["summary"] and alert["annotations"]["description"], name
        assert name in firing and name in quiet, f"{name}: tested firing and not firing"


# --- metric names ----------------------------------------------------------------------------

_PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool"}
_PROMQL_WORDS |= {"and", "or", "unless", "offset", "inf", "nan"}
_HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
PROMETHEUS_OWN = {"up"}


def documented_metrics() -> set[str]:
    """The names in README.md's Metrics table (and its subsection tables)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Metrics\n", 1)[1].split("\n## ", 1)[0]
    names = set(re.findall(r"^\| `(sidecar_[a-z0-9_]+)` \|", section, re.M))
    assert len(names) >= 10, names
    return names


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (a small tokenizer, enough for ours)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges and subqueries
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    text = re.sub(r"\$\{?\w+\}?", "", text)  # Grafana variables
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        word, rest = m.group(0), text[m.end() :].lstrip()
        if rest.startswith("(") or word.lower() in _PROMQL_WORDS:
            continue  # a function, an aggregation or a keyword
        if re.fullmatch(r"\d+[smhdwy]?", word) or text[m.start() - 1 : m.start()].isdigit():
            continue
        names.add(word)
    return names


def base_name(name: str, known: set[str]) -> str:
    for suffix in _HISTOGRAM_SUFFIXES:
        if name.endswith(suffix) and name.removesuffix(suffix) in known:
            return name.removesuffix(suffix)
    return name


def dashboard_exprs(dash: dict[str, Any]) -> list[str]:
    exprs: list[str] = []
    panels = list(dash["panels"])
    while panels:
        panel = panels.pop()
        panels.extend(panel.get("panels", []))
        exprs.extend(t["expr"] for t in panel.get("targets", []))
    return exprs


def test_metric_names_parser() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le) (rate(sidecar_request_duration_seconds_bucket{job=~"$job"}'
        '[$__rate_interval]))) / on (job) group_left up{job="x"} > 0.5 and time() - foo offset 5m'
    )
    assert metric_names(expr) == {"sidecar_request_duration_seconds_bucket", "up", "foo"}


def test_the_dashboard_is_a_dashboard_of_documented_metrics() -> None:
    dash = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert dash["title"] and dash["uid"] and isinstance(dash["schemaVersion"], int)
    variables = {v["name"] for v in dash["templating"]["list"]}
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dash["panels"]:
        assert panel["type"] and panel["title"], panel
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24 and pos["h"] > 0, panel["title"]
        refs = [t["refId"] for t in panel.get("targets", [])]
        assert len(refs) == len(set(refs)), panel["title"]
        for t in panel.get("targets", []):
            for var in re.findall(r"\$(\w+)", t["expr"]):
                assert var in variables or var.startswith("__"), (panel["title"], var)

    known = documented_metrics()
    exprs = dashboard_exprs(dash)
    used = {base_name(n, known) for e in exprs for n in metric_names(e)}
    assert used - known == set(), f"not in README.md's Metrics table: {sorted(used - known)}"
    wanted = {
        "sidecar_requests_total",
        "sidecar_request_duration_seconds",
        "sidecar_mirror_requests_total",
        "sidecar_mirror_errors_total",
        "sidecar_mirror_queue_depth",
        "sidecar_mirror_busy_workers",
        "sidecar_compare_total",
        "sidecar_rules_reloads_total",
    }
    assert wanted <= used, sorted(wanted - used)


def test_the_alerts_query_documented_metrics() -> None:
    rules = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text(encoding="utf-8"))
    known = documented_metrics()
    for group in rules["groups"]:
        for rule in group["rules"]:
            used = {base_name(n, known) for n in metric_names(rule["expr"])}
            assert used - known - PROMETHEUS_OWN == set(), (rule["alert"], used - known)
