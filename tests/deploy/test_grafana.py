"""The Grafana dashboard (deploy/grafana/ferry.json): importable as it stands, and it charts only metrics a
stack registers, so renaming a metric without the dashboard fails here instead of on an operator's screen."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from ferry.services.metrics import StackMetrics

DASHBOARD = Path(__file__).parents[2] / "deploy" / "grafana" / "ferry.json"
# The names a family's samples take in the exposition, by the family's type (prometheus-client's suffixes).
SAMPLE_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def charts(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [panel for panel in dashboard["panels"] if panel["type"] != "row"]


def expressions(dashboard: dict[str, Any]) -> list[str]:
    return [target["expr"] for panel in charts(dashboard) for target in panel["targets"]]


def registered_sample_names() -> set[str]:
    names = set()
    for family in StackMetrics().registry.collect():
        for suffix in SAMPLE_SUFFIXES.get(family.type, ("",)):
            names.add(family.name + suffix)
    return names


def test_it_is_an_importable_dashboard_whose_panels_query_the_chosen_prometheus(dashboard: dict[str, Any]) -> None:
    assert isinstance(dashboard["schemaVersion"], int) and dashboard["title"] and dashboard["uid"]
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert charts(dashboard), "it has panels"
    for panel in charts(dashboard):
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"] and all(target["expr"].strip() for target in panel["targets"]), panel["title"]
        assert len({target["refId"] for target in panel["targets"]}) == len(panel["targets"]), panel["title"]
    assert len({panel["id"] for panel in dashboard["panels"]}) == len(dashboard["panels"])


def test_every_metric_it_charts_is_one_a_stack_registers(dashboard: dict[str, Any]) -> None:
    charted = {name for expr in expressions(dashboard) for name in re.findall(r"\bferry_\w+", expr)}
    assert charted, "it charts ferry's metrics"
    assert charted - registered_sample_names() == set()


def test_it_charts_what_an_operator_asks_first(dashboard: dict[str, Any]) -> None:
    """Queue depth and wait per app, RPC rate, latency and errors, cache hit rate, encode time by format,
    storage fallbacks, slots busy."""
    queries = "\n".join(expressions(dashboard))
    for needed in (
        "max by (app) (ferry_queue_depth",  # every replica reports the shared queue's depth: max, never sum
        "histogram_quantile(0.99, sum by (app, le) (rate(ferry_queue_wait_seconds_bucket",
        "sum by (service, method) (rate(ferry_rpc_requests_total",
        "histogram_quantile(0.5, sum by (service, method, le) (rate(ferry_rpc_duration_seconds_bucket",
        "histogram_quantile(0.99, sum by (service, method, le) (rate(ferry_rpc_duration_seconds_bucket",
        'ferry_rpc_requests_total{code!="OK"}',
        'ferry_downloads_total{outcome="hit"}',
        "sum by (format, le) (rate(ferry_encode_duration_seconds_bucket",
        "rate(ferry_storage_fallbacks_total",
        "ferry_app_slots_busy",
    ):
        assert needed in queries, needed
