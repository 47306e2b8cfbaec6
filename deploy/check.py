"""Offline checks of the rendered manifests, beyond their schemas.

Every service has a Deployment, a ServiceAccount, a Service with its gRPC and metrics ports, a
headless <service>-peers Service, a PodDisruptionBudget, a HorizontalPodAutoscaler and a
NetworkPolicy. Each Deployment:
- runs `contactier-<service> migrate` as its first init container, with the server's image,
  env and mounts, and the server with CONTACTIER_MIGRATE_ON_START=false;
- has gRPC startup and readiness probes, a liveness probe that does not depend on the database
  (health is NOT_SERVING while the database is unreachable), a preStop sleep and a termination
  grace period longer than preStop + drain + shutdown grace;
- runs as its own ServiceAccount with no automatic token, mounting only the projected volume
  (service token with audience contactier, API token, cluster CA) the configuration names;
- meets Pod Security "restricted" (as does every other workload): non-root, seccomp
  RuntimeDefault, no privilege escalation, all capabilities dropped, read-only root;
- has CPU and memory requests and limits, Prometheus annotations and a metrics port.
The configuration is a generated (hash-suffixed) ConfigMap whose peer URLs name the headless
Services and whose service identities name the namespace the services run in; no Secret carries
CONTACTIER_JWT_SECRET and none replaces contactier-secrets; a namespace that is used is
created with Pod Security "restricted" enforced; the ServiceAccounts may read the API server's
keys; 4 services x (maxReplicas + maxSurge) x pool, plus billing's listener connection, stays
within CONNECTION_BUDGET; a PodMonitor, if any, selects the services' metrics ports, labels
them job="contactier" and app=<service>, and comes with a PrometheusRule whose groups are those of
deploy/observability/alerts.yaml and the dashboard's ConfigMap for the Grafana sidecar.

With --observability it checks deploy/observability instead: the dashboard is importable JSON
whose queries use the ${datasource} variable, with a row per service and one for the process and
database pool; every query there and in alerts.yaml parses as PromQL and names only metrics the
services export (each recorded in the Rust sources), with their labels and known label values
(worker names as the services register them); every alert has a severity, a summary, a
description and a runbook_url pointing at a section of docs/operations.md, which names every
metric family; the PrometheusRule file holds the same groups as alerts.yaml.

Usage: python3 deploy/check.py RENDERED.yaml ...
       python3 deploy/check.py --observability
       python3 deploy/check.py --write-rules   (writes the PrometheusRule from alerts.yaml)
"""

import json
import pathlib
import re
import sys

import jsonschema
import promql_parser
import yaml

SERVICES = {"contacts": 50051, "marketing-status": 50052, "billing": 50053, "notification": 50054}
PEER_URL_KEYS = {
    "contacts": "CONTACTIER_CONTACTS_URL",
    "marketing-status": "CONTACTIER_MARKETING_STATUS_URL",
    "billing": "CONTACTIER_BILLING_URL",
    "notification": "CONTACTIER_NOTIFICATION_URL",
}
# PostgreSQL connections all replicas may hold at once (README.md "Connection budget").
CONNECTION_BUDGET = 100
# Connections a replica holds besides its pool: billing's LISTEN connection for its read cache.
EXTRA_CONNECTIONS = {"billing": 1}
NONROOT = 65532
METRICS_PORT = 9090
IDENTITY_MOUNT = "/var/run/secrets/contactier"

# The part of the PodMonitor CRD (monitoring.coreos.com/v1) the manifests use, strictly:
# kubernetes-validate has no schema for it.
_SELECTOR = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
        "matchExpressions": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["key", "operator"],
                "properties": {
                    "key": {"type": "string"},
                    "operator": {"enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
                    "values": {"type": "array", "items": {"type": "string"}},
                },
            },
        },
    },
}
PODMONITOR_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PodMonitor"},
        "metadata": {"type": "object"},
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["selector", "podMetricsEndpoints"],
            "properties": {
                "selector": _SELECTOR,
                "namespaceSelector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {"any": {"type": "boolean"}, "matchNames": {"type": "array"}},
                },
                "jobLabel": {"type": "string"},
                "podMetricsEndpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string"},
                            "interval": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                            "scrapeTimeout": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                            "scheme": {"enum": ["http", "https"]},
                            "relabelings": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "additionalProperties": False,
                                    "properties": {
                                        "action": {"enum": ["replace", "keep", "drop", "labelmap", "labeldrop", "labelkeep"]},
                                        "sourceLabels": {"type": "array", "items": {"type": "string"}},
                                        "separator": {"type": "string"},
                                        "targetLabel": {"type": "string"},
                                        "regex": {"type": "string"},
                                        "replacement": {"type": "string"},
                                    },
                                },
                            },
                        },
                    },
                },
            },
        },
    },
}


def selects(selector: dict, labels: dict) -> bool:
    """Whether a label selector (matchLabels, matchExpressions) selects these labels."""
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for e in selector.get("matchExpressions") or []:
        present, value = e["key"] in labels, labels.get(e["key"])
        ok = {
            "In": present and value in e.get("values", []),
            "NotIn": not present or value not in e.get("values", []),
            "Exists": present,
            "DoesNotExist": not present,
        }[e["operator"]]
        if not ok:
            return False
    return True


def env_of(container: dict) -> dict:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def check_restricted(name: str, pod: dict, problems: list) -> None:
    """Pod Security "restricted", plus a read-only root filesystem."""
    psc = pod.get("securityContext", {})
    if psc.get("runAsNonRoot") is not True:
        problems.append(f"{name}: pod securityContext.runAsNonRoot is not true")
    if psc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
        problems.append(f"{name}: pod seccompProfile is not RuntimeDefault")
    if "fsGroup" not in psc:
        problems.append(f"{name}: pod securityContext has no fsGroup")
    if pod.get("automountServiceAccountToken") is not False:
        problems.append(f"{name}: automountServiceAccountToken is not false")
    for c in pod.get("initContainers", []) + pod.get("containers", []):
        where = f"{name}/{c['name']}"
        sc = c.get("securityContext", {})
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{where}: allowPrivilegeEscalation is not false")
        if sc.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{where}: readOnlyRootFilesystem is not true")
        if sc.get("capabilities", {}).get("drop") != ["ALL"]:
            problems.append(f"{where}: capabilities do not drop ALL")
        if sc.get("capabilities", {}).get("add"):
            problems.append(f"{where}: adds capabilities")
        if sc.get("privileged") or sc.get("runAsUser") == 0 or sc.get("runAsNonRoot") is False:
            problems.append(f"{where}: may run privileged or as root")
        res = c.get("resources", {})
        for part in ["requests", "limits"]:
            if not {"cpu", "memory"} <= set(res.get(part, {})):
                problems.append(f"{where}: no cpu and memory {part}")


def check_deployment(d: dict, config: dict, problems: list) -> tuple[int, int]:
    """Checks one service's Deployment; returns (pool size, maxSurge)."""
    name = d["metadata"]["name"]
    port = SERVICES[name]
    pod = d["spec"]["template"]["spec"]
    check_restricted(name, pod, problems)
    psc = pod.get("securityContext", {})
    if psc.get("runAsUser") != NONROOT or psc.get("runAsGroup") != NONROOT:
        problems.append(f"{name}: does not run as {NONROOT}:{NONROOT} (distroless nonroot)")
    if pod.get("serviceAccountName") != f"contactier-{name}":
        problems.append(f"{name}: does not run as ServiceAccount contactier-{name}")
    spread = {t.get("topologyKey") for t in pod.get("topologySpreadConstraints", [])}
    if "kubernetes.io/hostname" not in spread:
        problems.append(f"{name}: replicas are not spread over nodes (topologySpreadConstraints)")
    if "secret.reloader.stakater.com/reload" not in d["metadata"].get("annotations", {}):
        problems.append(f"{name}: no Reloader annotation for contactier-secrets")

    mains = [c for c in pod["containers"] if c["name"] == name]
    if not mains:
        problems.append(f"{name}: no container named {name}")
        return 0, 0
    c = mains[0]
    env = env_of(c)
    if env.get("CONTACTIER_MIGRATE_ON_START") != "false":
        problems.append(f"{name}: server does not set CONTACTIER_MIGRATE_ON_START=false")

    inits = pod.get("initContainers", [])
    if not inits or inits[0]["name"] != "migrate":
        problems.append(f"{name}: first init container is not migrate")
    else:
        m = inits[0]
        if m.get("command") != c.get("command", []) + ["migrate"]:
            problems.append(f"{name}: migrate init container does not run `{c.get('command')} migrate`")
        for field in ["image", "env", "envFrom", "volumeMounts"]:
            if m.get(field) != c.get(field):
                problems.append(f"{name}: migrate init container's {field} differs from the server's")

    refs = {next(iter(r.values()))["name"] for r in c.get("envFrom", [])}
    if not any(r.startswith("contactier-config") for r in refs) or "contactier-secrets" not in refs:
        problems.append(f"{name}: does not read contactier-config and contactier-secrets")

    for probe in ["startupProbe", "readinessProbe"]:
        if c.get(probe, {}).get("grpc", {}).get("port") != port:
            problems.append(f"{name}: {probe} is not a native gRPC probe on {port}")
    live = c.get("livenessProbe")
    if not live:
        problems.append(f"{name}: no livenessProbe")
    elif "grpc" in live:
        problems.append(f"{name}: livenessProbe uses gRPC health, which fails while the database is down")

    pre = c.get("lifecycle", {}).get("preStop", {})
    if "sleep" not in pre:
        problems.append(f"{name}: no preStop sleep")
    pre_stop = pre.get("sleep", {}).get("seconds", 0)
    drain = int(env.get("CONTACTIER_DRAIN_SECS") or config.get("CONTACTIER_DRAIN_SECS") or 5)
    grace = int(env.get("CONTACTIER_SHUTDOWN_GRACE_SECS") or config.get("CONTACTIER_SHUTDOWN_GRACE_SECS") or 20)
    tgps = pod.get("terminationGracePeriodSeconds", 30)
    if tgps <= pre_stop + drain + grace:
        problems.append(
            f"{name}: terminationGracePeriodSeconds {tgps} is not above preStop {pre_stop} + drain {drain} + grace {grace}"
        )

    ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
    if ports.get("grpc") != port or ports.get("metrics") != METRICS_PORT:
        problems.append(f"{name}: container ports are not grpc {port} and metrics {METRICS_PORT}")
    metrics_listen = env.get("CONTACTIER_METRICS_LISTEN") or config.get("CONTACTIER_METRICS_LISTEN")
    if metrics_listen != f"0.0.0.0:{METRICS_PORT}":
        problems.append(f"{name}: CONTACTIER_METRICS_LISTEN is not 0.0.0.0:{METRICS_PORT}")
    ann = d["spec"]["template"]["metadata"].get("annotations", {})
    want = {"prometheus.io/scrape": "true", "prometheus.io/port": str(METRICS_PORT), "prometheus.io/path": "/metrics"}
    if any(ann.get(k) != v for k, v in want.items()):
        problems.append(f"{name}: pod lacks the prometheus.io annotations {want}")

    # The projected identity volume and the files the configuration names in it.
    vols = {v["name"]: v for v in pod.get("volumes", [])}
    sources = vols.get("identity", {}).get("projected", {}).get("sources", [])
    tokens = {s["serviceAccountToken"]["path"]: s["serviceAccountToken"] for s in sources if "serviceAccountToken" in s}
    cas = [s["configMap"] for s in sources if "configMap" in s and s["configMap"]["name"] == "kube-root-ca.crt"]
    mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
    if mounts.get(IDENTITY_MOUNT) != "identity":
        problems.append(f"{name}: identity volume not mounted at {IDENTITY_MOUNT}")
    files = {f"{IDENTITY_MOUNT}/{p}": t for p, t in tokens.items()}
    service_token = files.get(config.get("CONTACTIER_SERVICE_TOKEN_FILE", ""))
    if not service_token or service_token.get("audience") != "contactier":
        problems.append(f"{name}: CONTACTIER_SERVICE_TOKEN_FILE is not a projected token with audience contactier")
    api_token = files.get(config.get("CONTACTIER_JWKS_TOKEN_FILE", ""))
    if not api_token or "audience" in api_token:
        problems.append(f"{name}: CONTACTIER_JWKS_TOKEN_FILE is not a projected token for the API server")
    ca_paths = {f"{IDENTITY_MOUNT}/{i['path']}" for ca in cas for i in ca.get("items", []) if i["key"] == "ca.crt"}
    if config.get("CONTACTIER_JWKS_CA_FILE") not in ca_paths:
        problems.append(f"{name}: CONTACTIER_JWKS_CA_FILE is not the cluster CA from kube-root-ca.crt")
    for v in vols.values():
        if "secret" in v or ("projected" in v and v is not vols.get("identity")):
            problems.append(f"{name}: mounts volume {v['name']} besides the identity volume")

    pool = int(env.get("CONTACTIER_DB_MAX_CONNECTIONS") or config.get("CONTACTIER_DB_MAX_CONNECTIONS") or 10)
    rolling = d["spec"].get("strategy", {}).get("rollingUpdate", {})
    surge = rolling.get("maxSurge")
    if not isinstance(surge, int):
        problems.append(f"{name}: strategy.rollingUpdate.maxSurge is not a number of pods")
        surge = 1
    return pool, surge


# --- Observability: deploy/observability (dashboard, alerts) and the PrometheusRule. ---

ROOT = pathlib.Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy/observability/grafana-dashboard.json"
ALERTS = ROOT / "deploy/observability/alerts.yaml"
RULE_FILE = ROOT / "deploy/components/prometheus-operator/prometheusrule.yaml"
OPERATIONS = ROOT / "docs/operations.md"
# Where runbook_url points: the sections of docs/operations.md, as published.
RUNBOOK_BASE = "https://contactier.example.com/docs/operations.md#"
# kubectl apply keeps the object in an annotation of at most 256 KiB.
DASHBOARD_MAX_BYTES = 200_000
DASHBOARD_ROWS = [*SERVICES, "Process and database pool"]

# Every metric the dashboard and the alerts may name, with its labels as exported. Histograms by
# their base name (their _bucket series add le). All but up and the process_* family (the
# metrics-process crate) must be recorded in the Rust sources: see recorded_metrics().
METRICS = {
    "grpc_server_started_total": {"grpc_service", "grpc_method", "grpc_type"},
    "grpc_server_handled_total": {"grpc_service", "grpc_method", "grpc_type", "grpc_code"},
    "grpc_server_handling_seconds": {"grpc_service", "grpc_method", "grpc_type"},
    "grpc_server_in_flight_requests": {"grpc_service"},
    "grpc_client_handled_total": {"grpc_service", "grpc_method", "grpc_code"},
    "grpc_client_handling_seconds": {"grpc_service", "grpc_method"},
    "contactier_outbox_backlog": {"service", "topic"},
    "contactier_outbox_oldest_age_seconds": {"service", "topic"},
    "contactier_outbox_delivered_total": {"topic"},
    "contactier_outbox_delivery_failures_total": {"topic"},
    "contactier_outbox_receiver_down": {"topic"},
    "contactier_inbox_duplicates_total": set(),
    "contactier_db_pool_connections": {"service", "state"},
    "contactier_db_pool_max_connections": {"service"},
    "contactier_db_begin_seconds": {"db_system"},
    "contactier_failing_work_items": {"service", "worker"},
    "contactier_work_failures_total": {"worker"},
    "contactier_worker_runs_total": {"worker", "result"},
    "contactier_worker_run_seconds": {"worker"},
    "contactier_worker_lag_seconds": {"worker"},
    "contactier_worker_last_success_timestamp_seconds": {"worker"},
    "contactier_rate_limited_total": set(),
    "contactier_handler_panics_total": set(),
    "contactier_connections_closed_total": {"reason"},
    "contactier_invoices_issued_total": {"kind"},
    "contactier_upgrades_total": set(),
    "contactier_alerts_total": {"kind"},
    "contactier_deliveries_total": {"channel", "result"},
    "process_cpu_seconds_total": set(),
    "process_resident_memory_bytes": set(),
    "process_virtual_memory_bytes": set(),
    "process_open_fds": set(),
    "process_max_fds": set(),
    "process_start_time_seconds": set(),
    "process_threads": set(),
    "up": set(),
}
HISTOGRAMS = {
    "grpc_server_handling_seconds",
    "grpc_client_handling_seconds",
    "contactier_worker_run_seconds",
    "contactier_db_begin_seconds",
}
NOT_IN_SOURCES = {"up"} | {m for m in METRICS if m.startswith("process_")}
# Labels of every target: Prometheus' own, the Prometheus Operator's for a PodMonitor, and the
# PodMonitor's relabelings (job="contactier", app=<service>).
TARGET_LABELS = {"job", "instance", "namespace", "pod", "container", "endpoint", "app"}
CODES = {
    "OK", "Canceled", "Unknown", "InvalidArgument", "DeadlineExceeded", "NotFound", "AlreadyExists",
    "PermissionDenied", "ResourceExhausted", "FailedPrecondition", "Aborted", "OutOfRange",
    "Unimplemented", "Internal", "Unavailable", "DataLoss", "Unauthenticated", "Transport",
}
RESULTS = {
    "contactier_worker_runs_total": {"ok", "error"},
    "contactier_deliveries_total": {"delivered", "failed", "dead_letter"},
}
GRAFANA_RANGES = {"$__rate_interval", "$__interval", "$__range"}


def expand(name: str) -> str | None:
    """The METRICS entry a series name belongs to, or None."""
    if name in METRICS:
        return name
    for suffix in ("_bucket", "_sum", "_count"):
        if name.endswith(suffix) and name[: -len(suffix)] in HISTOGRAMS:
            return name[: -len(suffix)]
    return None


def rust_sources() -> str:
    dirs = [ROOT / "libs", ROOT / "services", ROOT / "apps"]
    return "\n".join(f.read_text() for d in dirs for f in sorted(d.rglob("*.rs")) if "target" not in f.parts)


def recorded_metrics(source: str) -> set[str]:
    """Metric names the sources record (counter!, gauge!, histogram! with a literal name)."""
    return set(re.findall(r'\b(?:counter|gauge|histogram)!\(\s*"([a-z_:][a-z0-9_:]*)"', source))


def worker_names() -> set[str]:
    """The background workers' names, as the services register them."""
    names = set()
    for f in sorted((ROOT / "services").glob("*/src/**/*.rs")):
        text = f.read_text()
        names |= set(re.findall(r'register_worker\(\s*"([a-z0-9-]+)"\s*\)', text))
        names |= set(re.findall(r'pub const WORKER: &str = "([a-z0-9-]+)";', text))
    return names


def literal_alternatives(value: str) -> list[str] | None:
    """The values a regex matcher names when it is a plain alternation (a|b), else None."""
    if re.fullmatch(r"[A-Za-z0-9_-]+(\|[A-Za-z0-9_-]+)*", value):
        return value.split("|")
    return None


def known_values(workers: set[str]) -> dict[str, set[str]]:
    return {
        "app": set(SERVICES),
        "service": set(SERVICES),
        "job": {"contactier"},
        "grpc_code": CODES,
        "grpc_type": {"unary", "server_stream", "client_stream", "bidi_stream"},
        "state": {"idle", "in_use"},
        "worker": workers | {f"relay:{t}" for t in ("marketing-status", "billing", "notification")},
    }


def check_promql(where: str, expr: str, workers: set[str], problems: list) -> set[str]:
    """Parses expr and checks the metrics, labels and label values it names; returns the metrics."""
    # Grafana's variables: ranges become a duration, the others a label value.
    text = expr
    for v in GRAFANA_RANGES:
        text = text.replace(v, "5m")
    text = re.sub(r"\$\{?[A-Za-z_][A-Za-z0-9_]*\}?", "x", text)
    try:
        tree = promql_parser.parse(text)
    except Exception as e:  # the parser's errors are plain exceptions
        problems.append(f"{where}: does not parse as PromQL: {e}")
        return set()
    values = known_values(workers)
    seen: set[str] = set()

    def labels_of(metric: str, name: str) -> set[str]:
        extra = {"le"} if name.endswith("_bucket") else set()
        return METRICS[metric] | TARGET_LABELS | extra

    def visit(node) -> set[str]:
        """Checks node; returns the labels its series may carry."""
        if isinstance(node, promql_parser.VectorSelector):
            metric = expand(node.name or "")
            if metric is None:
                problems.append(f"{where}: {node.name!r} is not a metric the services export")
                return set()
            seen.add(metric)
            have = labels_of(metric, node.name)
            for m in node.matchers.matchers:
                if m.name not in have:
                    problems.append(f"{where}: {node.name} has no label {m.name!r}")
                allowed = RESULTS.get(metric, set()) if m.name == "result" else values.get(m.name)
                literal = [m.value] if m.op == promql_parser.MatchOp.Equal else None
                if m.op == promql_parser.MatchOp.Re:
                    literal = literal_alternatives(m.value)
                if allowed and literal and m.value != "x":
                    for v in set(literal) - allowed:
                        problems.append(f"{where}: {node.name}{{{m.name}}} is never {v!r}")
            return have
        if isinstance(node, promql_parser.MatrixSelector):
            return visit(node.vector_selector)
        if isinstance(node, promql_parser.Call):
            have: set[str] = set()
            for a in node.args:
                have |= visit(a)
            return have
        if isinstance(node, promql_parser.AggregateExpr):
            if node.param is not None:
                visit(node.param)
            have = visit(node.expr)
            mod = node.modifier
            if mod is not None:
                for label in set(mod.labels) - have:
                    problems.append(f"{where}: aggregates by {label!r}, which its series do not carry")
                if mod.type == promql_parser.AggModifierType.By:
                    return set(mod.labels)
                return have - set(mod.labels)
            return set()
        if isinstance(node, promql_parser.BinaryExpr):
            have = visit(node.lhs) | visit(node.rhs)
            matching = node.modifier.matching if node.modifier is not None else None
            if matching is not None:
                for label in set(matching.labels) - have:
                    problems.append(f"{where}: matches on {label!r}, which its series do not carry")
            return have
        if isinstance(node, (promql_parser.ParenExpr, promql_parser.UnaryExpr, promql_parser.SubqueryExpr)):
            return visit(node.expr)
        return set()

    visit(tree)
    return seen


def slug(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def operations_anchors() -> set[str]:
    if not OPERATIONS.exists():
        return set()
    return {slug(h) for h in re.findall(r"^#{1,6} (.+)$", OPERATIONS.read_text(), re.M)}


def load_alert_groups() -> list:
    return yaml.safe_load(ALERTS.read_text())["groups"]


def prometheus_rule(groups: list) -> dict:
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "contactier", "labels": {"app.kubernetes.io/part-of": "contactier"}},
        "spec": {"groups": groups},
    }


def write_rules() -> int:
    """Writes the PrometheusRule of the component from alerts.yaml."""

    class Dumper(yaml.SafeDumper):
        pass

    def text(dumper, value):
        style = "|" if "\n" in value else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    Dumper.add_representer(str, text)
    header = (
        "# Written by `python3 deploy/check.py --write-rules` from deploy/observability/alerts.yaml:\n"
        "# edit that file and run it again (make deploy-check fails while the two differ).\n"
        "# Add the label your Prometheus selects rules by (kube-prometheus-stack: release: <name>).\n"
    )
    body = yaml.dump(prometheus_rule(load_alert_groups()), Dumper=Dumper, sort_keys=False, width=120)
    RULE_FILE.write_text(header + body)
    print(f"wrote {RULE_FILE.relative_to(ROOT)}")
    return 0


PROMETHEUSRULE_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PrometheusRule"},
        "metadata": {"type": "object"},
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["groups"],
            "properties": {
                "groups": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["name", "rules"],
                        "properties": {
                            "name": {"type": "string"},
                            "interval": {"type": "string"},
                            "rules": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "additionalProperties": False,
                                    "required": ["expr"],
                                    "properties": {
                                        "alert": {"type": "string"},
                                        "record": {"type": "string"},
                                        "expr": {"type": "string"},
                                        "for": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                                        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                                        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
                                    },
                                },
                            },
                        },
                    },
                },
            },
        },
    },
}


def check_dashboard(workers: set[str], problems: list) -> set[str]:
    """The dashboard: importable JSON, ${datasource} everywhere, the rows, and its queries."""
    where = DASHBOARD.relative_to(ROOT)
    raw = DASHBOARD.read_bytes()
    if len(raw) > DASHBOARD_MAX_BYTES:
        problems.append(f"{where}: {len(raw)} bytes, over {DASHBOARD_MAX_BYTES} (kubectl apply's annotation limit)")
    try:
        dash = json.loads(raw)
    except json.JSONDecodeError as e:
        problems.append(f"{where}: not JSON: {e}")
        return set()
    for key in ["uid", "title", "panels", "templating", "schemaVersion"]:
        if key not in dash:
            problems.append(f"{where}: no {key}")
    variables = {v.get("name"): v for v in dash.get("templating", {}).get("list", [])}
    ds = variables.get("datasource", {})
    if ds.get("type") != "datasource" or ds.get("query") != "prometheus":
        problems.append(f"{where}: no datasource variable of type datasource with query prometheus")
    want_ds = {"type": "prometheus", "uid": "${datasource}"}
    used: set[str] = set()
    for name, v in variables.items():
        if v.get("type") == "query":
            if v.get("datasource") != want_ds:
                problems.append(f"{where}: variable {name} does not query ${{datasource}}")
            q = v.get("query")
            q = q.get("query", "") if isinstance(q, dict) else q or ""
            m = re.fullmatch(r"label_values\((.+),\s*([a-z_]+)\)", q)
            if not m:
                problems.append(f"{where}: variable {name}: query {q!r} is not label_values(SELECTOR, LABEL)")
                continue
            used |= check_promql(f"{where}: variable {name}", m.group(1), workers, problems)
            metric = expand(promql_parser.parse(m.group(1)).name or "")
            if metric and m.group(2) not in METRICS[metric] | TARGET_LABELS:
                problems.append(f"{where}: variable {name}: {metric} has no label {m.group(2)}")

    panels = []
    for p in dash.get("panels", []):
        panels.append(p)
        panels.extend(p.get("panels", []))
    ids = [p.get("id") for p in panels]
    if len(ids) != len(set(ids)) or None in ids:
        problems.append(f"{where}: panel ids are missing or repeated")
    rows = [p.get("title") for p in panels if p.get("type") == "row"]
    for title in DASHBOARD_ROWS:
        if title not in rows:
            problems.append(f"{where}: no row {title!r}")
    for p in panels:
        if p.get("type") == "row":
            continue
        title = p.get("title", "?")
        if "gridPos" not in p:
            problems.append(f"{where}: panel {title!r} has no gridPos")
        if p.get("datasource") != want_ds:
            problems.append(f"{where}: panel {title!r} does not use ${{datasource}}")
        if not p.get("targets"):
            problems.append(f"{where}: panel {title!r} has no query")
        for t in p.get("targets", []):
            if t.get("datasource", want_ds) != want_ds:
                problems.append(f"{where}: panel {title!r} query {t.get('refId')} does not use ${{datasource}}")
            expr = t.get("expr", "")
            for var in set(re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", expr)):
                if var not in variables and f"${var}" not in GRAFANA_RANGES:
                    problems.append(f"{where}: panel {title!r} uses ${var}, which is not a variable")
            used |= check_promql(f"{where}: panel {title!r}", expr, workers, problems)
    return used


def check_alerts(workers: set[str], problems: list) -> set[str]:
    where = ALERTS.relative_to(ROOT)
    try:
        groups = load_alert_groups()
    except (OSError, yaml.YAMLError, KeyError, TypeError) as e:
        problems.append(f"{where}: cannot be read: {e}")
        return set()
    anchors = operations_anchors()
    used: set[str] = set()
    names = []
    for g in groups:
        for r in g.get("rules", []):
            name = r.get("alert") or r.get("record", "?")
            names.append(name)
            used |= check_promql(f"{where}: {name}", r.get("expr", ""), workers, problems)
            if "alert" not in r:
                continue
            if r.get("labels", {}).get("severity") not in {"critical", "warning"}:
                problems.append(f"{where}: {name}: severity is not critical or warning")
            ann = r.get("annotations", {})
            for key in ["summary", "description", "runbook_url"]:
                if not ann.get(key):
                    problems.append(f"{where}: {name}: no {key} annotation")
            url = ann.get("runbook_url", "")
            if not url.startswith(RUNBOOK_BASE) or url[len(RUNBOOK_BASE):] not in anchors:
                problems.append(f"{where}: {name}: runbook_url {url!r} is not a section of {OPERATIONS.relative_to(ROOT)}")
    if len(names) != len(set(names)):
        problems.append(f"{where}: a rule name is repeated")
    try:
        rule = yaml.safe_load(RULE_FILE.read_text())
    except (OSError, yaml.YAMLError) as e:
        problems.append(f"{RULE_FILE.relative_to(ROOT)}: cannot be read: {e}")
        return used
    if rule != prometheus_rule(groups):
        problems.append(f"{RULE_FILE.relative_to(ROOT)}: differs from {where}; run python3 deploy/check.py --write-rules")
    return used


def observability() -> int:
    problems: list[str] = []
    workers = worker_names()
    if not workers:
        problems.append("no register_worker(...) found in services/*/src")
    recorded = recorded_metrics(rust_sources())
    for m in sorted(set(METRICS) - NOT_IN_SOURCES - recorded):
        problems.append(f"check.py METRICS: {m} is not recorded anywhere in libs/, services/ or apps/")
    used = check_dashboard(workers, problems) | check_alerts(workers, problems)
    docs = OPERATIONS.read_text() if OPERATIONS.exists() else ""
    for m in sorted(set(METRICS) - {"up"}):
        if m not in docs:
            problems.append(f"{OPERATIONS.relative_to(ROOT)}: does not explain {m}")
    for p in problems:
        print(p, file=sys.stderr)
    if not problems:
        print(f"deploy/observability: dashboard and alerts name {len(used)} metric families, all exported")
    return 1 if problems else 0


def check_monitoring(docs: list, problems: list) -> None:
    """A PodMonitor comes with the alerts' PrometheusRule and the dashboard's ConfigMap."""
    rules = [d for d in docs if d["kind"] == "PrometheusRule"]
    dashboards = [
        d for d in docs if d["kind"] == "ConfigMap" and (d["metadata"].get("labels") or {}).get("grafana_dashboard") == "1"
    ]
    if any(d["kind"] == "PodMonitor" for d in docs) and not (rules and dashboards):
        problems.append("a PodMonitor without the PrometheusRule and the dashboard's ConfigMap (components/prometheus-operator)")
    for d in rules:
        name = d["metadata"]["name"]
        try:
            jsonschema.validate(d, PROMETHEUSRULE_SCHEMA)
        except jsonschema.ValidationError as e:
            problems.append(f"PrometheusRule {name}: {e.message} at {'/'.join(map(str, e.absolute_path))}")
        if d.get("spec", {}).get("groups") != load_alert_groups():
            problems.append(f"PrometheusRule {name}: its groups are not those of deploy/observability/alerts.yaml")
    text = DASHBOARD.read_text()
    for d in dashboards:
        if list((d.get("data") or {}).values()) != [text]:
            problems.append(f"ConfigMap {d['metadata']['name']}: does not hold deploy/observability/grafana-dashboard.json")


def main(path: str) -> int:
    with open(path) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    by = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    problems: list[str] = []

    # Configuration: one generated ConfigMap.
    configs = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("contactier-config")]
    if len(configs) != 1 or not re.fullmatch(r"contactier-config-[a-z0-9]{10}", configs[0]["metadata"]["name"]):
        problems.append("no single hash-suffixed contactier-config ConfigMap (configMapGenerator)")
    config = configs[0].get("data", {}) if configs else {}

    # No secret values: no Secret with a JWT key, none named contactier-secrets, no literal.
    for d in docs:
        if d["kind"] == "Secret":
            keys = set(d.get("data") or {}) | set(d.get("stringData") or {})
            if "CONTACTIER_JWT_SECRET" in keys:
                problems.append(f"Secret {d['metadata']['name']} holds CONTACTIER_JWT_SECRET")
            if d["metadata"]["name"].startswith("contactier-secrets"):
                problems.append("contactier-secrets is created by the operator, not by the manifests")
    if "CONTACTIER_JWT_SECRET" in config:
        problems.append("the ConfigMap holds CONTACTIER_JWT_SECRET")

    # Namespaces: each one used is created, with Pod Security "restricted" enforced.
    namespaces = {d["metadata"].get("namespace") for d in docs} - {None}
    for ns in namespaces:
        n = by.get(("Namespace", ns))
        labels = (n or {}).get("metadata", {}).get("labels", {})
        if labels.get("pod-security.kubernetes.io/enforce") != "restricted":
            problems.append(f"namespace {ns} is not created with pod-security.kubernetes.io/enforce: restricted")
    if len(namespaces) > 1:
        problems.append(f"objects in several namespaces: {sorted(namespaces)}")
    namespace = next(iter(namespaces), None)
    if namespace is None and any(d["kind"] == "Namespace" for d in docs):
        problems.append("a Namespace is created but the objects are not in it")

    # Identity: peers, service identities, issuer, ClusterRoleBinding for the JWKS.
    for s, port in SERVICES.items():
        url = config.get(PEER_URL_KEYS[s])
        if url != f"http://{s}-peers:{port}":
            problems.append(f"{PEER_URL_KEYS[s]} is {url!r}, not the headless http://{s}-peers:{port}")
    ids = dict(
        reversed(x.split("=", 1)) for x in config.get("CONTACTIER_SERVICE_IDENTITIES", "").split(",") if "=" in x
    )
    for s in SERVICES:
        subject = ids.get(s, "")
        m = re.fullmatch(r"system:serviceaccount:([a-z0-9-]+):(contactier-[a-z-]+)", subject)
        if not m or m.group(2) != f"contactier-{s}":
            problems.append(f"CONTACTIER_SERVICE_IDENTITIES does not map ServiceAccount contactier-{s} to {s}")
        elif namespace and m.group(1) != namespace:
            problems.append(f"CONTACTIER_SERVICE_IDENTITIES names namespace {m.group(1)}, the services run in {namespace}")
    if not config.get("CONTACTIER_OIDC_ISSUERS"):
        problems.append("CONTACTIER_OIDC_ISSUERS is empty: no issuer trusted")
    bindings = [
        d
        for d in docs
        if d["kind"] == "ClusterRoleBinding" and d["roleRef"]["name"] == "system:service-account-issuer-discovery"
    ]
    bound = {(x.get("namespace"), x["name"]) for b in bindings for x in b.get("subjects", []) if x["kind"] == "ServiceAccount"}
    for s in SERVICES:
        if not any(n == f"contactier-{s}" and (namespace is None or ns == namespace) for ns, n in bound):
            problems.append(f"ServiceAccount contactier-{s} is not bound to system:service-account-issuer-discovery")

    # Per service.
    connections = 0
    for s, port in SERVICES.items():
        for kind, name in [
            ("Deployment", s),
            ("Service", s),
            ("Service", f"{s}-peers"),
            ("PodDisruptionBudget", s),
            ("HorizontalPodAutoscaler", s),
            ("NetworkPolicy", s),
            ("ServiceAccount", f"contactier-{s}"),
        ]:
            if (kind, name) not in by:
                problems.append(f"{s}: no {kind} {name}")
        sa = by.get(("ServiceAccount", f"contactier-{s}"), {})
        if sa and sa.get("automountServiceAccountToken") is not False:
            problems.append(f"ServiceAccount contactier-{s}: automountServiceAccountToken is not false")
        svc = by.get(("Service", s), {}).get("spec", {})
        svc_ports = {p.get("name"): p["port"] for p in svc.get("ports", [])}
        if svc_ports.get("grpc") != port or svc_ports.get("metrics") != METRICS_PORT:
            problems.append(f"Service {s}: ports are not grpc {port} and metrics {METRICS_PORT}")
        if svc.get("clusterIP") == "None":
            problems.append(f"Service {s}: is headless; API clients need a ClusterIP")
        peers = by.get(("Service", f"{s}-peers"), {}).get("spec", {})
        if peers and (peers.get("clusterIP") != "None" or peers.get("publishNotReadyAddresses")):
            problems.append(f"Service {s}-peers: not headless, or publishes replicas that are not ready")
        if peers and {p["port"] for p in peers.get("ports", [])} != {port}:
            problems.append(f"Service {s}-peers: port is not {port}")
        dep = by.get(("Deployment", s))
        if not dep:
            continue
        labels = dep["spec"]["template"]["metadata"]["labels"]
        for svc_name in [s, f"{s}-peers"]:
            sel = by.get(("Service", svc_name), {}).get("spec", {}).get("selector")
            if sel is not None and not selects({"matchLabels": sel}, labels):
                problems.append(f"Service {svc_name}: selector does not select the {s} pods")
        pool, surge = check_deployment(dep, config, problems)
        hpa = by.get(("HorizontalPodAutoscaler", s), {}).get("spec", {})
        most = max(hpa.get("maxReplicas", 0), dep["spec"].get("replicas", 1)) + surge
        connections += most * (pool + EXTRA_CONNECTIONS.get(s, 0))
    if connections > CONNECTION_BUDGET:
        problems.append(f"the services may hold {connections} PostgreSQL connections, over the budget of {CONNECTION_BUDGET}")

    # Every other workload meets Pod Security "restricted" too.
    for d in docs:
        if d["kind"] in {"StatefulSet", "DaemonSet", "Job", "Deployment"} and d["metadata"]["name"] not in SERVICES:
            check_restricted(f"{d['kind']} {d['metadata']['name']}", d["spec"]["template"]["spec"], problems)

    # PodMonitors: the CRD subset, and they select the services' metrics ports.
    for d in docs:
        if d["kind"] != "PodMonitor":
            continue
        name = d["metadata"]["name"]
        try:
            jsonschema.validate(d, PODMONITOR_SCHEMA)
        except jsonschema.ValidationError as e:
            problems.append(f"PodMonitor {name}: {e.message} at {'/'.join(map(str, e.absolute_path))}")
            continue
        for s in SERVICES:
            dep = by.get(("Deployment", s))
            if not dep:
                continue
            pod = dep["spec"]["template"]
            ports = {p.get("name") for c in pod["spec"]["containers"] for p in c.get("ports", [])}
            if not selects(d["spec"]["selector"], pod["metadata"]["labels"]):
                problems.append(f"PodMonitor {name}: does not select the {s} pods")
            for ep in d["spec"]["podMetricsEndpoints"]:
                if ep.get("port") not in ports or ep.get("path", "/metrics") != "/metrics":
                    problems.append(f"PodMonitor {name}: endpoint {ep} is not the {s} pods' metrics port")
        # The labels the dashboard and the alerts select by.
        for ep in d["spec"]["podMetricsEndpoints"]:
            sets = {
                (r.get("targetLabel"), tuple(r.get("sourceLabels", [])), r.get("replacement", "$1"))
                for r in ep.get("relabelings", [])
                if r.get("action", "replace") == "replace" and r.get("regex", "(.*)") == "(.*)"
            }
            if ("job", (), "contactier") not in sets:
                problems.append(f"PodMonitor {name}: endpoint {ep.get('port')} does not set job=contactier")
            if ("app", ("__meta_kubernetes_pod_label_app_kubernetes_io_name",), "$1") not in sets:
                problems.append(f"PodMonitor {name}: endpoint {ep.get('port')} does not set app from app.kubernetes.io/name")
    check_monitoring(docs, problems)

    for p in problems:
        print(f"{path}: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    if sys.argv[1:] == ["--observability"]:
        sys.exit(observability())
    if sys.argv[1:] == ["--write-rules"]:
        sys.exit(write_rules())
    if not sys.argv[1:] or any(a.startswith("-") for a in sys.argv[1:]):
        sys.exit(__doc__)
    sys.exit(max(main(p) for p in sys.argv[1:]))
