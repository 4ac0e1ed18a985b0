#!/usr/bin/env python3
"""Writes Parley's Grafana dashboard, helm/parley/dashboards/parley.json.

The objectives come from scripts/slo.py's table (their error ratios against
the budget), then per-service RPC rate, errors and latency, gateway
connections, bus lag, the outbox and the push queue. The chart ships the JSON
in a ConfigMap with Grafana's sidecar label when grafanaDashboard.enabled;
a test holds every metric it queries to those the services export.

  scripts/dashboard.py           write the dashboard
  scripts/dashboard.py --check   exit 1 when the file is not what this gives
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import slo  # noqa: E402  (the objectives' one table)

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "helm" / "parley" / "dashboards" / "parley.json"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
WIDTH = 24


class Layout:
    """Places panels left to right, a row at a time."""

    def __init__(self) -> None:
        self.x, self.y, self.row_height, self.next_id = 0, 0, 0, 1
        self.panels: list[dict] = []

    def row(self, title: str) -> None:
        self.newline()
        self.panels.append(
            {"type": "row", "title": title, "id": self.take_id(), "collapsed": False,
             "gridPos": {"x": 0, "y": self.y, "w": WIDTH, "h": 1}, "panels": []}
        )
        self.y += 1

    def newline(self) -> None:
        if self.x:
            self.y += self.row_height
            self.x, self.row_height = 0, 0

    def take_id(self) -> int:
        self.next_id += 1
        return self.next_id - 1

    def panel(self, title: str, targets: list[tuple[str, str]], unit: str,
              kind: str = "timeseries", width: int = 8, height: int = 8) -> None:
        if self.x + width > WIDTH:
            self.newline()
        self.panels.append(
            {
                "type": kind,
                "title": title,
                "id": self.take_id(),
                "datasource": DATASOURCE,
                "gridPos": {"x": self.x, "y": self.y, "w": width, "h": height},
                "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
                "options": {},
                "targets": [
                    {"refId": chr(ord("A") + i), "datasource": DATASOURCE, "expr": expr,
                     "legendFormat": legend}
                    for i, (expr, legend) in enumerate(targets)
                ],
            }
        )
        self.x += width
        self.row_height = max(self.row_height, height)


def dashboard() -> dict:
    layout = Layout()
    layout.row("Objectives: error ratio against the budget (1 h and 6 h windows)")
    for objective in slo.SLOS:
        name, budget = objective["name"], round(1 - objective["target"], 6)
        layout.panel(
            f"{objective['title']} (objective {objective['target'] * 100:g}%)",
            [
                (f"parley:slo_{name}:error_ratio_rate1h", "error ratio, 1 h"),
                (f"parley:slo_{name}:error_ratio_rate6h", "error ratio, 6 h"),
                (f"vector({budget})", "budget"),
            ],
            "percentunit",
        )
        layout.panel(
            f"{objective['title']}: budget burn rate (1 = spent in 28 days)",
            [(f"parley:slo_{name}:error_ratio_rate1h / {budget}", "burn, 1 h")],
            "none",
            kind="stat",
            width=4,
        )
    layout.row("Thresholds")
    layout.panel("Outbox: oldest undelivered entry", [("max(parley_outbox_oldest_age_seconds)", "oldest")], "s")
    layout.panel("Outbox: entries pending and set aside",
                 [("sum(parley_outbox_depth)", "pending"), ("sum(parley_outbox_dead)", "set aside")], "short")
    layout.panel("Push queue: oldest due push and depth",
                 [("max(parley_push_queue_oldest_age_seconds)", "oldest (s)"),
                  ("sum(parley_push_queue_depth)", "queued")], "short")
    layout.row("Services")
    layout.panel("RPC rate by service", [
        ("sum by (grpc_service) (rate(parley_rpc_requests_total[5m]))", "{{grpc_service}}")], "reqps")
    layout.panel("RPC errors by service and code", [
        ('sum by (grpc_service, grpc_code) (rate(parley_rpc_requests_total{grpc_code!="OK"}[5m]))',
         "{{grpc_service}} {{grpc_code}}")], "reqps")
    layout.panel("RPC latency p99 by service", [
        ("histogram_quantile(0.99, sum by (grpc_service, le) (rate(parley_rpc_duration_seconds_bucket[5m])))",
         "{{grpc_service}}")], "s")
    layout.panel("Refusals by reason", [("parley:refusals:rate5m", "{{job}} {{reason}}")], "reqps")
    layout.panel("Load shed and internal retries", [
        ("sum by (what) (rate(parley_shed_total[5m]))", "shed: {{what}}"),
        ("sum(rate(parley_internal_retries_total[5m]))", "retries")], "reqps")
    layout.panel("Deadlocks retried", [("sum(rate(parley_db_deadlocks_retried_total[5m]))", "retried")], "reqps")
    layout.row("Real time")
    layout.panel("Gateway connections", [("sum(parley_gateway_connections)", "connections"),
                                         ("sum(parley_gateway_unauthenticated_streams)", "awaiting auth")], "short")
    layout.panel("Commit to gateway (bus lag)", [
        ("histogram_quantile(0.5, sum by (le) (rate(parley_bus_delivery_lag_seconds_bucket[5m])))", "p50"),
        ("histogram_quantile(0.99, sum by (le) (rate(parley_bus_delivery_lag_seconds_bucket[5m])))", "p99")], "s")
    layout.panel("Read to sender's digest", [
        ("histogram_quantile(0.99, sum by (le) (rate(parley_receipt_digest_delay_seconds_bucket[5m])))", "p99")], "s")
    layout.panel("Login to backlog complete", [
        ("histogram_quantile(0.5, sum by (le) (rate(parley_gateway_backlog_seconds_bucket[5m])))", "p50"),
        ("histogram_quantile(0.99, sum by (le) (rate(parley_gateway_backlog_seconds_bucket[5m])))", "p99")], "s")
    layout.panel("Bus publishes", [("sum by (outcome) (rate(parley_bus_publish_total[5m]))", "{{outcome}}")], "ops")
    layout.panel("Pushes", [
        ("sum by (platform) (rate(parley_push_sent_total[5m]))", "sent {{platform}}"),
        ("sum by (platform, reason) (rate(parley_push_failed_total[5m]))", "failed {{platform}} {{reason}}")], "ops")
    layout.newline()
    return {
        "title": "Parley",
        "uid": "parley-overview",
        "description": "Parley's objectives and what moves them; written by scripts/dashboard.py.",
        "tags": ["parley"],
        "timezone": "",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": {
            "list": [
                {"name": "datasource", "label": "Prometheus", "type": "datasource",
                 "query": "prometheus", "current": {}, "hide": 0}
            ]
        },
        "annotations": {"list": []},
        "panels": layout.panels,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail when the file is stale")
    args = parser.parse_args()
    model = dashboard()
    panels = sum(1 for p in model["panels"] if p["type"] != "row")
    wanted = json.dumps(model, indent=2) + "\n"
    return slo.generated("dashboard", DASHBOARD, wanted, args.check, f"({panels} panels)")


if __name__ == "__main__":
    sys.exit(main())
