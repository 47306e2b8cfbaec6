"""Offline checks of the rendered manifests, beyond their schemas: every service has its
Deployment with native gRPC probes and resources, a Service, a PodDisruptionBudget, a
HorizontalPodAutoscaler and a NetworkPolicy, and reads its configuration and keys."""

import sys

import yaml

SERVICES = ["contacts", "marketing-status", "billing", "notification"]


def main(path: str) -> int:
    with open(path) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    by = {(d["kind"], d["metadata"]["name"]) for d in docs}
    problems = []
    for s in SERVICES:
        for kind in ["Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler", "NetworkPolicy"]:
            if (kind, s) not in by:
                problems.append(f"{s}: no {kind}")
    for d in docs:
        if d["kind"] != "Deployment":
            continue
        name = d["metadata"]["name"]
        c = d["spec"]["template"]["spec"]["containers"][0]
        for probe in ["readinessProbe", "livenessProbe"]:
            if "grpc" not in c.get(probe, {}):
                problems.append(f"{name}: {probe} is not a native gRPC probe")
        if "requests" not in c.get("resources", {}) or "limits" not in c.get("resources", {}):
            problems.append(f"{name}: no resource requests and limits")
        refs = {next(iter(r.values()))["name"] for r in c.get("envFrom", [])}
        if not {"contactier-config", "contactier-secrets"} <= refs:
            problems.append(f"{name}: does not read contactier-config and contactier-secrets")
    for p in problems:
        print(f"{path}: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(max(main(p) for p in sys.argv[1:]))
