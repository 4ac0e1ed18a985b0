#!/usr/bin/env python3
"""Checks the Helm chart without a cluster.

The default values are refused at render time (no service credentials), as
are production values without NetworkPolicies. For helm/values-trial.yaml
(development mode) and helm/values-production.yaml:
  1. `helm lint --strict` (through helm-python-sdk, Helm's own Go code);
  2. values.schema.json accepts the values, and refuses a set of wrong ones;
  3. the chart renders, and every manifest validates with kubernetes-validate
     --strict (ServiceMonitor and PrometheusRule, CRDs it has no schema
     for, against helm/schemas/);
  4. with --binaries DIR: every Deployment and migration Job matches what its
     binary reads: each PARLEY_* variable is one `parley-<service> --help`
     lists, the listen port is the containerPort, the probes' port and the
     Service's target, the metrics port is the one exposed, service URLs
     point at rendered Services on their ports, and the Job's subcommand
     exists.

Prints one line per check; exits 1 on the first failing values file, with
every problem found in it.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import subprocess
import sys
from pathlib import Path

import helm_python as helm
import jsonschema
import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "parley"
VALUES_FILES = [ROOT / "helm" / "values-trial.yaml", ROOT / "helm" / "values-production.yaml"]
# Values the chart must refuse to render: (what is missing, values or None for
# the defaults, what the refusal says).
REFUSED = [
    ("the default values", None, "service credentials are required"),
    (
        "production values without NetworkPolicies",
        {"secrets": {"existingSecret": "parley-credentials"}, "networkPolicy": {"enabled": False}},
        "networkPolicy.enabled is false",
    ),
]
KUBE_VERSION = "1.30.0"
CRD_SCHEMAS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): ROOT
    / "helm"
    / "schemas"
    / "servicemonitor-monitoring.coreos.com-v1.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): ROOT
    / "helm"
    / "schemas"
    / "prometheusrule-monitoring.coreos.com-v1.json",
}
RELEASE, NAMESPACE = "parley", "chat"
# The rules promtool checks and tests; the PrometheusRule must ship them as they are.
SLO_RULES = CHART / "rules" / "slo.rules.yaml"
# The dashboard the ConfigMap must ship as it is.
DASHBOARD = CHART / "dashboards" / "parley.json"

# A created Secret's URLs, without which nothing else in it is checked.
CREATED_URLS = {
    "message-database-url": "mysql://u@db/m",
    "receipt-database-url": "mysql://u@db/r",
    "notification-database-url": "mysql://u@db/n",
    "redis-url": "redis://redis:6379/0",
}

# Values the schema must refuse: (what is wrong, change to the defaults).
WRONG_VALUES = [
    ("misspelt top-level key", {"servics": {}}),
    ("misspelt service key", {"services": {"gateway": {"replica": 3}}}),
    ("port as text", {"services": {"message": {"port": "fifty"}}}),
    ("port below 1024", {"services": {"receipt": {"port": 80}}}),
    ("unknown log format", {"config": {"logFormat": "xml"}}),
    ("created secret without URLs", {"secrets": {"create": True}}),
    ("created secret without a JWT key", {"secrets": {"create": True, "values": CREATED_URLS}}),
    ("a shared internal token (gone: per-service keys)", {"secrets": {"values": {"internal-token": "0123456789abcdef"}}}),
    (
        "created secret without service keys",
        {"secrets": {"create": True, "values": {**CREATED_URLS, "jwt-hs256-secret": "0123456789abcdef0123"}}},
    ),
    ("service key that is not base64", {"secrets": {"values": {"gateway-service-key": "not a key"}}}),
    ("database URL that is not mysql://", {"secrets": {"values": {"message-database-url": "postgres://x"}}}),
    ("env that is not PARLEY_*", {"services": {"presence": {"env": {"PATH": "/bin"}}}}),
    ("APNs key without ids", {"push": {"apns": {"existingSecret": "apns"}}}),
    ("wrong pull policy", {"image": {"pullPolicy": "Sometimes"}}),
    ("negative connections per gateway pod", {"services": {"gateway": {"autoscaling": {"connectionsPerPod": -1}}}}),
    ("ingress host with a space", {"services": {"gateway": {"ingress": {"host": "chat example.com"}}}}),
    ("dashboard folder that is not text", {"grafanaDashboard": {"folder": 3}}),
]
# What the production values must render beyond the services themselves:
# the objectives, the dashboard, the apps' route and autoscaling on connections.
PRODUCTION_EXTRAS = {
    "PrometheusRule": lambda doc: bool(doc["spec"]["groups"]),
    "ConfigMap": lambda doc: "parley.json" in doc.get("data", {}),
    "Ingress": lambda doc: doc["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["port"]["name"] == "grpc",
    "HorizontalPodAutoscaler": lambda doc: any(
        m.get("pods", {}).get("metric", {}).get("name") == "parley_gateway_connections" for m in doc["spec"]["metrics"]
    ),
}


def merge(base: dict, change: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in change.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def render(chart: helm.Chart, values: dict | None) -> list[dict]:
    rendered = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    docs = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            if not text.strip():
                raise ValueError("NOTES.txt rendered empty")
            continue
        docs.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return docs


def validate_manifest(doc: dict) -> str | None:
    key = (doc.get("apiVersion"), doc.get("kind"))
    if key in CRD_SCHEMAS:
        schema = json.loads(CRD_SCHEMAS[key].read_text())
        errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(doc), key=str)
        return "; ".join(e.message for e in errors) or None
    try:
        kubernetes_validate.validate(doc, KUBE_VERSION, True)
    except kubernetes_validate.ValidationError as e:
        return str(e.message)
    except Exception as e:  # SchemaNotFoundError and friends: a kind we cannot check
        return f"{type(e).__name__}: {e}"
    return None


def binary_env(binaries: Path, service: str, cache: dict) -> tuple[set[str], str]:
    if service not in cache:
        exe = binaries / f"parley-{service}"
        helptext = subprocess.run(
            [str(exe), "--help"], check=True, capture_output=True, text=True
        ).stdout
        cache[service] = (set(re.findall(r"\[env: ([A-Z0-9_]+)", helptext)), helptext)
    return cache[service]


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def check_against_binaries(docs: list[dict], binaries: Path) -> list[str]:
    problems = []
    cache: dict = {}
    by_kind: dict[str, dict[str, dict]] = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], {})[doc["metadata"]["name"]] = doc
    configmaps = by_kind.get("ConfigMap", {})
    services = by_kind.get("Service", {})
    service_ports = {
        name: {p["name"]: p for p in svc["spec"]["ports"]} for name, svc in services.items()
    }
    for name, deployment in by_kind.get("Deployment", {}).items():
        component = deployment["metadata"]["labels"]["app.kubernetes.io/component"]
        known, _ = binary_env(binaries, component, cache)
        pod = deployment["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        names = [e["name"] for e in container.get("env", [])]
        data = {}
        for source in container.get("envFrom", []):
            data.update(configmaps[source["configMapRef"]["name"]]["data"])
        names += list(data)
        for env in names:
            if env.startswith("PARLEY_") and env not in known:
                problems.append(f"{name}: parley-{component} does not read {env}")
        listen = data.get(f"PARLEY_{component.upper()}_LISTEN")
        if listen is None:
            problems.append(f"{name}: no PARLEY_{component.upper()}_LISTEN")
            continue
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        if ports.get("grpc") != port_of(listen):
            problems.append(f"{name}: containerPort grpc {ports.get('grpc')} but listens on {listen}")
        if ports.get("metrics") != port_of(data.get("PARLEY_METRICS_LISTEN", ":0")):
            problems.append(f"{name}: metrics port {ports.get('metrics')} is not PARLEY_METRICS_LISTEN")
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            grpc = container.get(probe, {}).get("grpc")
            if not grpc or grpc.get("port") != port_of(listen):
                problems.append(f"{name}: {probe} is not a gRPC probe on {port_of(listen)}")
        svc = service_ports.get(name, {})
        if svc.get("grpc", {}).get("targetPort") != "grpc":
            problems.append(f"{name}: its Service does not target the grpc port")
        ws_listen = data.get(f"PARLEY_{component.upper()}_WS_LISTEN")
        if ws_listen is not None:
            if ports.get("ws") != port_of(ws_listen):
                problems.append(f"{name}: containerPort ws {ports.get('ws')} but WebSocket listens on {ws_listen}")
            if svc.get("ws", {}).get("targetPort") != "ws":
                problems.append(f"{name}: its Service does not target the ws port")
        for env, value in data.items():
            match = re.fullmatch(r"PARLEY_([A-Z]+)_URL", env)
            if not match:
                continue
            target = re.fullmatch(r"http://([a-z0-9-]+):(\d+)", value)
            if not target or target.group(1) not in services:
                problems.append(f"{name}: {env}={value} names no rendered Service")
            elif service_ports[target.group(1)]["grpc"]["port"] != int(target.group(2)):
                problems.append(f"{name}: {env}={value} is not that Service's port")
        if container.get("args") != ["serve"]:
            problems.append(f"{name}: args {container.get('args')} (expected serve)")
    for name, job in by_kind.get("Job", {}).items():
        component = job["metadata"]["labels"]["app.kubernetes.io/component"].removesuffix("-migrate")
        known, helptext = binary_env(binaries, component, cache)
        (container,) = job["spec"]["template"]["spec"]["containers"]
        if container.get("args") != ["migrate"] or not re.search(r"^\s+migrate\s", helptext, re.M):
            problems.append(f"{name}: parley-{component} has no `migrate` command for args {container.get('args')}")
        for env in container.get("env", []):
            if env["name"].startswith("PARLEY_") and env["name"] not in known:
                problems.append(f"{name}: parley-{component} does not read {env['name']}")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--binaries", type=Path, help="directory with the parley-* binaries")
    args = parser.parse_args()
    chart = helm.Chart.load(str(CHART))
    defaults = chart.values
    failed = False
    for values_file in VALUES_FILES:
        label = values_file.relative_to(ROOT) if values_file else "default values"
        values = yaml.safe_load(values_file.read_text()) if values_file else None
        problems = []
        report = helm.lint(str(CHART), values, strict=True)
        problems += report.get("errors", [])
        problems += [
            f"lint: {m['path']}: {m['error']}" for m in report.get("messages", []) if m["severity"] >= 2
        ]
        try:
            chart.validate_schema(values)
        except helm.HelmError as e:
            problems.append(f"schema refuses the values: {e}")
        try:
            docs = render(chart, values)
        except (helm.HelmError, ValueError, yaml.YAMLError) as e:
            problems.append(f"render: {e}")
            docs = []
        for doc in docs:
            error = validate_manifest(doc)
            if error:
                problems.append(f"{doc.get('kind')} {doc['metadata'].get('name')}: {error}")
            if doc.get("kind") == "PrometheusRule" and doc["spec"] != yaml.safe_load(SLO_RULES.read_text()):
                problems.append("PrometheusRule: its groups are not those of helm/parley/rules/slo.rules.yaml")
            if doc.get("kind") == "ConfigMap" and "parley.json" in doc.get("data", {}):
                if json.loads(doc["data"]["parley.json"]) != json.loads(DASHBOARD.read_text()):
                    problems.append("dashboard ConfigMap: not helm/parley/dashboards/parley.json")
                if not doc["metadata"].get("labels", {}).get("grafana_dashboard"):
                    problems.append("dashboard ConfigMap: no grafana_dashboard label for the sidecar")
        if args.binaries and docs:
            problems += check_against_binaries(docs, args.binaries)
        if values_file.name == "values-production.yaml":
            for kind, wanted in PRODUCTION_EXTRAS.items():
                if not any(d["kind"] == kind and wanted(d) for d in docs):
                    problems.append(f"the production values render no {kind} of the kind expected")
        kinds = sorted({d["kind"] for d in docs})
        if problems:
            failed = True
            print(f"chart-check: {label}: FAILED")
            for problem in problems:
                print(f"  - {problem}")
        else:
            against = ", matching the binaries in " + str(args.binaries) if args.binaries else ""
            print(
                f"chart-check: {label}: lint clean, {len(docs)} manifests valid "
                f"for Kubernetes {KUBE_VERSION} ({', '.join(kinds)}){against}"
            )
    for what, values, says in REFUSED:
        try:
            render(chart, values)
        except helm.HelmError as e:
            if says in str(e):
                print(f"chart-check: {what} are refused: {says}")
                continue
            failed = True
            print(f"chart-check: {what} are refused, but not for the reason expected ({says}): {e}")
            continue
        failed = True
        print(f"chart-check: {what} render; they must be refused ({says})")
    for what, change in WRONG_VALUES:
        try:
            chart.validate_schema(merge(defaults, change))
        except helm.HelmError:
            continue
        failed = True
        print(f"chart-check: the schema accepts values with a {what}: {change}")
    if not failed:
        print(f"chart-check: the schema refuses all {len(WRONG_VALUES)} kinds of wrong values")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
