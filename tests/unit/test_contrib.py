"""contrib/: the Grafana dashboard loads and asks for metrics the agent exports; promtool
accepts the alert rules, whose expressions name exported metrics too."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path

import jsonschema
import pytest
import yaml

from schedagent.core import transitions
from schedagent.core.leaderview import LeaderView
from schedagent.daemon.metrics import AgentMetrics
from schedagent.daemon.metrics_cluster import LeaderCollector

CONTRIB = Path(__file__).resolve().parents[2] / "contrib"
DASHBOARD = CONTRIB / "grafana" / "schedagent.json"
ALERTS = CONTRIB / "prometheus" / "alerts.yml"
METRIC_NAME = re.compile(r"\b(?:schedagent|process)_[a-z_]+\b")
# What Prometheus adds to every series, and the histograms' bucket label.
SCRAPE_LABELS = {"instance", "job", "le"}

TARGET = {
    "type": "object",
    "required": ["refId", "expr"],
    "properties": {"refId": {"type": "string"}, "expr": {"type": "string", "minLength": 1}},
}
# The parts of Grafana's dashboard model that an import needs (schemaVersion 39).
DASHBOARD_SCHEMA = {
    "type": "object",
    "required": ["title", "uid", "schemaVersion", "panels", "templating"],
    "properties": {
        "title": {"type": "string"},
        "uid": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,40}$"},
        "schemaVersion": {"type": "integer", "minimum": 30},
        "panels": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["id", "type", "title", "gridPos", "targets"],
                "properties": {
                    "id": {"type": "integer"},
                    "type": {"enum": ["stat", "timeseries", "gauge", "table", "bargauge"]},
                    "gridPos": {
                        "type": "object",
                        "required": ["h", "w", "x", "y"],
                        "properties": {"w": {"maximum": 24}, "x": {"maximum": 23}},
                    },
                    "targets": {"type": "array", "minItems": 1, "items": TARGET},
                },
            },
        },
    },
}


def exported() -> tuple[set[str], set[str]]:
    """Every sample name a leading agent exports, and every label name on them."""
    metrics = AgentMetrics()
    metrics.watch_agent(lambda: (0.0, 0), lambda: 1.0, 10, lambda: True)
    collector = LeaderCollector()
    collector.view = LeaderView(10.0, transitions.Backoff(1.0, 10.0))
    metrics.registry.register(collector)
    metrics.jobs_finished.labels("FAILED", "signal")
    metrics.nats_errors.labels("core")
    names, labels = set(), set()
    for family in metrics.registry.collect():
        names.add(family.name)
        for sample in family.samples:
            names.add(sample.name)
            labels.update(sample.labels)
    return names, labels


def dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    jsonschema.validate(dashboard, DASHBOARD_SCHEMA)
    return [t["expr"] for p in dashboard["panels"] for t in p["targets"]]


def alert_queries() -> list[str]:
    rules = yaml.safe_load(ALERTS.read_text())
    return [r["expr"] for g in rules["groups"] for r in g["rules"]]


def unknown(queries: Iterable[str]) -> list[str]:
    names, labels = exported()
    wrong = []
    for query in queries:
        wrong += [f"{query}: {name}" for name in METRIC_NAME.findall(query) if name not in names]
        for group in re.findall(r"\bby \(([^)]*)\)", query):
            used = {label.strip() for label in group.split(",")}
            wrong += [f"{query}: label {x}" for x in used - labels - SCRAPE_LABELS]
    return wrong


def test_the_dashboard_loads_and_queries_only_exported_metrics() -> None:
    queries = dashboard_queries()
    assert len(queries) >= 15
    assert not unknown(queries)


def test_the_alerts_query_only_exported_metrics() -> None:
    queries = alert_queries()
    assert len(queries) >= 5
    assert not unknown(queries)


def test_the_check_finds_a_metric_or_label_the_agent_does_not_export() -> None:
    # The two tests above must be able to fail.
    assert unknown(["rate(schedagent_jobs_started_totl[5m])"])
    assert unknown(["process_cpu_secs_total"])
    assert unknown(["sum by (node) (schedagent_running_jobs)"])
    assert not unknown(["sum by (instance) (schedagent_running_jobs)"])


def test_the_dashboard_schema_check_refuses_a_broken_panel() -> None:
    broken = json.loads(DASHBOARD.read_text())
    del broken["panels"][0]["targets"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, DASHBOARD_SCHEMA)


PROMTOOL = shutil.which("promtool")


@pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (Debian's prometheus package; scripts/setup)"
)
def test_promtool_accepts_the_alert_rules() -> None:
    assert PROMTOOL is not None
    result = subprocess.run(
        [PROMTOOL, "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 6 rules found" in result.stdout


@pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (Debian's prometheus package; scripts/setup)"
)
def test_each_alert_fires_on_its_series_and_not_before_its_time() -> None:
    assert PROMTOOL is not None
    tests = ALERTS.with_name("alerts_test.yml")
    result = subprocess.run(
        [PROMTOOL, "test", "rules", tests.name],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tests.parent,
    )
    assert result.returncode == 0, result.stdout + result.stderr
