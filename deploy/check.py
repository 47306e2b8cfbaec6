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
within CONNECTION_BUDGET; a PodMonitor, if any, selects the services' metrics ports.

Usage: python3 deploy/check.py RENDERED.yaml ...
"""

import re
import sys

import jsonschema
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

    for p in problems:
        print(f"{path}: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(max(main(p) for p in sys.argv[1:]))
