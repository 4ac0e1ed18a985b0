#!/usr/bin/env python3
"""Writes Parley's service-level objectives as Prometheus rules.

One table (SLOS below) is the source: each objective's good and total events,
its target over 28 days, and what an operator does when its alert fires. From
it this writes helm/parley/rules/slo.rules.yaml: recording rules for each
objective's error ratio over the windows the alerts read, and multi-window
burn-rate alerts (the SRE workbook's: page when the budget burns 14.4 times
too fast over 1 h and 5 m, or 6 times over 6 h and 30 m; ticket when it burns
3 times over 1 d and 2 h, or once over 3 d and 6 h). Thresholds on gauges
(outbox lag, push queue age) are plain alerts. The Helm chart ships the file
as a PrometheusRule; `promtool check rules` and `promtool test rules` check it.

  scripts/slo.py           write the rules
  scripts/slo.py --check   exit 1 when the file is not what the table gives
  scripts/slo.py --list    print the objectives as README's table rows
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "helm" / "parley" / "rules" / "slo.rules.yaml"

# Windows an alert reads, shortest first.
WINDOWS = ["5m", "30m", "1h", "2h", "6h", "1d", "3d"]
# (severity, long window, short window, burn rate): the budget of 28 days
# spent in 2 days (14.4), 5 days (6), 10 days (3) and 28 days (1).
BURNS = [
    ("page", "1h", "5m", 14.4),
    ("page", "6h", "30m", 6),
    ("ticket", "1d", "2h", 3),
    ("ticket", "3d", "6h", 1),
]

# Ratio objectives: name, what it promises, good events, all events (both
# PromQL over a range [W], written with {W}), target, runbook.
SLOS = [
    {
        "name": "delivery",
        "title": "Send to delivery",
        "promise": "99% of messages reach the recipients' gateways within 250 ms of their commit",
        "good": 'sum(rate(parley_bus_delivery_lag_seconds_bucket{{le="0.25"}}[{W}]))',
        "total": "sum(rate(parley_bus_delivery_lag_seconds_count[{W}]))",
        "target": 0.99,
        "runbook": "Look at the bus (Redis latency, `parley_bus_publish_total` failures) and the "
        "message service's fan-out (`parley_fanout_repair_groups`): a slow or failing presence "
        "lookup or publish delays every delivery. Scale the message service if its CPU is saturated.",
    },
    {
        "name": "receipt",
        "title": "Read to sender's receipt",
        "promise": "99% of read receipts reach the sender's gateway within 1 s of the first read in their window",
        "good": 'sum(rate(parley_receipt_digest_delay_seconds_bucket{{le="1"}}[{W}]))',
        "total": "sum(rate(parley_receipt_digest_delay_seconds_count[{W}]))",
        "target": 0.99,
        "runbook": "Check the receipt service's database (`parley_rpc_duration_seconds` of AckBatch, "
        "deadlocks in `parley_db_deadlocks_retried_total`), presence lookups, and the bus. "
        "`PARLEY_RECEIPT_DIGEST_WINDOW_MS` above 1000 makes this objective unreachable.",
    },
    {
        "name": "backlog",
        "title": "Login to backlog complete",
        "promise": "99% of logins have their whole backlog (every group's missed messages) within 2.5 s",
        "good": 'sum(rate(parley_gateway_backlog_seconds_bucket{{le="2.5"}}[{W}]))',
        "total": "sum(rate(parley_gateway_backlog_seconds_count[{W}]))",
        "target": 0.99,
        "runbook": "A slow backlog is the message service's SyncMessages or the receipt service's "
        "UnreadCounts: see their `parley_rpc_duration_seconds`. After an outage every device logs in "
        "again at once; the burn should fall as they settle.",
    },
    {
        "name": "push",
        "title": "Push success",
        "promise": "99% of pushes are accepted by APNs or FCM",
        "good": "sum(rate(parley_push_sent_total[{W}]))",
        "total": "sum(rate(parley_push_sent_total[{W}])) + sum(rate(parley_push_failed_total[{W}]))",
        "target": 0.99,
        "runbook": "`parley_push_failed_total` by platform and reason says which: `unauthorized` is "
        "an expired or revoked credential (rotate the APNs key or FCM service account), "
        "`unavailable` the provider's outage (the queue retries and keeps every push).",
    },
    {
        "name": "availability",
        "title": "RPC availability",
        "promise": "99.9% of RPCs end without a server-side failure (UNAVAILABLE, INTERNAL, UNKNOWN, DEADLINE_EXCEEDED)",
        "good": 'sum(rate(parley_rpc_requests_total{{grpc_code!~"UNAVAILABLE|INTERNAL|UNKNOWN|DEADLINE_EXCEEDED"}}[{W}]))',
        "total": "sum(rate(parley_rpc_requests_total[{W}]))",
        "target": 0.999,
        "runbook": "`parley:refusals:rate5m` by reason says which failure: STORAGE_UNAVAILABLE (a "
        "database or Redis), DEPENDENCY_UNAVAILABLE (another service), OVERLOADED (scale out or "
        "raise PARLEY_MAX_CONCURRENT_REQUESTS), INTERNAL (read the service's log).",
    },
]

# Threshold objectives on gauges: name, title, promise, expression, for, runbook.
THRESHOLDS = [
    {
        "name": "ParleyOutboxLagging",
        "title": "Outbox lag",
        "promise": "the oldest undelivered outbox entry is under 10 s old",
        "expr": "max(parley_outbox_oldest_age_seconds) > 10",
        "for": "5m",
        "severity": "page",
        "runbook": "The message service cannot hand messages to the receipt or notification "
        "service: see `parley_outbox_dead` and the message service's log for the callee it "
        "retries. Receipts and pushes of the stuck messages wait; deliveries do not.",
    },
    {
        "name": "ParleyPushQueueStale",
        "title": "Push queue age",
        "promise": "the oldest due push is under 2 minutes old",
        "expr": "max(parley_push_queue_oldest_age_seconds) > 120",
        "for": "10m",
        "severity": "ticket",
        "runbook": "The push workers are not keeping up or a provider is down: see "
        "`parley_push_failed_total` and `parley_push_retried_total`; scale the notification "
        "service or raise PARLEY_NOTIFICATION_MAX_IN_FLIGHT.",
    },
]


def ratio_rule(slo: dict, window: str) -> dict:
    good = slo["good"].format(W=window)
    total = slo["total"].format(W=window)
    return {
        "record": f"parley:slo_{slo['name']}:error_ratio_rate{window}",
        "expr": f"1 - ({good}) / ({total})",
    }


def burn_alerts(slo: dict) -> list[dict]:
    budget = round(1 - slo["target"], 6)
    alerts = []
    for severity, long, short, burn in BURNS:
        threshold = round(burn * budget, 6)
        name = f"ParleySLO{slo['name'].capitalize()}Burn{severity.capitalize()}{long}"
        alerts.append(
            {
                "alert": name,
                "expr": (
                    f"parley:slo_{slo['name']}:error_ratio_rate{long} > {threshold}\n"
                    f"and parley:slo_{slo['name']}:error_ratio_rate{short} > {threshold}"
                ),
                "labels": {"severity": severity, "slo": slo["name"]},
                "annotations": {
                    "summary": f"{slo['title']}: the error budget burns {burn}x too fast "
                    f"over {long} and {short}",
                    "description": f"Objective: {slo['promise']} (over 28 days).",
                    "runbook": f"README.md, Operate: {slo['title']}",
                },
            }
        )
    return alerts


def rules() -> dict:
    groups = []
    for slo in SLOS:
        groups.append(
            {
                "name": f"parley-slo-{slo['name']}",
                "rules": [ratio_rule(slo, w) for w in WINDOWS] + burn_alerts(slo),
            }
        )
    groups.append(
        {
            "name": "parley-refusals",
            "rules": [
                {
                    "record": "parley:refusals:rate5m",
                    "expr": "sum by (job, reason) (rate(parley_refusals_total[5m]))",
                }
            ],
        }
    )
    groups.append(
        {
            "name": "parley-thresholds",
            "rules": [
                {
                    "alert": t["name"],
                    "expr": t["expr"],
                    "for": t["for"],
                    "labels": {"severity": t["severity"]},
                    "annotations": {
                        "summary": f"{t['title']}: {t['promise']} no longer holds",
                        "runbook": f"README.md, Operate: {t['title']}",
                    },
                }
                for t in THRESHOLDS
            ],
        }
    )
    return {"groups": groups}


def dump(value, indent: int = 0) -> list[str]:
    """YAML by hand, so the output is stable without a YAML library."""
    pad = " " * indent
    lines: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, (dict, list)):
                lines.append(f"{pad}{key}:")
                lines.extend(dump(item, indent + 2))
            else:
                lines.extend(scalar(f"{pad}{key}:", item, indent + 2))
    else:
        for item in value:
            inner = dump(item, indent + 2)
            lines.append(f"{pad}- {inner[0].lstrip()}")
            lines.extend(inner[1:])
    return lines


def scalar(prefix: str, item, indent: int) -> list[str]:
    text = str(item)
    if "\n" in text:
        return [f"{prefix} |-"] + [" " * indent + line for line in text.split("\n")]
    if isinstance(item, (int, float)) and not isinstance(item, bool):
        return [f"{prefix} {text}"]
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return [f'{prefix} "{escaped}"']


def readme_rows() -> list[str]:
    """README's Operate table: each objective, its promise and what to do."""
    rows = [
        f"| {slo['title']} | {slo['promise']} (28 days) | `parley:slo_{slo['name']}:error_ratio_rate*` | {slo['runbook']} |"
        for slo in SLOS
    ]
    rows += [
        f"| {t['title']} | {t['promise']} (for {t['for']}) | `{t['name']}` | {t['runbook']} |"
        for t in THRESHOLDS
    ]
    return rows


def text() -> str:
    header = "# Written by scripts/slo.py from its table; edit the table, then run it.\n"
    return header + "\n".join(dump(rules())) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail when the file is stale")
    parser.add_argument("--list", action="store_true", help="print README's table rows")
    args = parser.parse_args()
    if args.list:
        print("\n".join(readme_rows()))
        return 0
    if args.check:
        readme = (ROOT / "README.md").read_text()
        missing = [row.split(" | ")[0] for row in readme_rows() if row not in readme]
        if missing:
            print(f"slo: README's Operate table lacks or misstates {missing}: paste `scripts/slo.py --list`", file=sys.stderr)
            return 1
    summary = f"the table ({len(SLOS)} objectives, {len(THRESHOLDS)} thresholds)"
    return generated("slo", RULES, text(), args.check, summary)


def generated(script: str, path: Path, wanted: str, check: bool, summary: str) -> int:
    """Writes `wanted` to `path`, or with `check` fails when the file is not
    what `scripts/<script>.py` writes: the one way the generated files are kept."""
    where = path.relative_to(ROOT)
    if check:
        if not path.exists() or path.read_text() != wanted:
            print(f"{script}: {where} is stale: run scripts/{script}.py", file=sys.stderr)
            return 1
        print(f"{script}: {where} matches {summary}")
        return 0
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(wanted)
    print(f"{script}: wrote {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
