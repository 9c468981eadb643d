"""deploy/grafana/broker-dashboard.json and deploy/prometheus/broker-alerts.yml reference only
metrics the broker defines (by their OTel -> Prometheus names) and the labels they carry, and
docs/telemetry.md lists every instrument."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from broker.telemetry import instruments
from broker.telemetry.instruments import InstrumentSpec, prometheus_name, prometheus_series

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "broker-dashboard.json"
ALERTS = ROOT / "deploy" / "prometheus" / "broker-alerts.yml"
DOC = ROOT / "docs" / "telemetry.md"

# Our instruments live under these prefixes; any name with one must be a series we export.
_METRIC = re.compile(r"\b(?:broker|rpc|http)_[a-z0-9_]+\b")
_MATCHER_LABEL = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)\s*\"")
_BY_LABELS = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
_SCRAPE_LABELS = {"le", "instance", "job"}


def _series() -> dict[str, InstrumentSpec]:
    return {s: spec for spec in instruments.ALL for s in prometheus_series(spec)}


def dashboard_exprs() -> list[str]:
    doc = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in doc["panels"] for t in p.get("targets", [])]


def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text())
    assert isinstance(doc, dict) and isinstance(doc.get("groups"), list) and doc["groups"]
    rules: list[dict[str, Any]] = []
    for group in doc["groups"]:
        assert isinstance(group.get("name"), str) and isinstance(group.get("rules"), list)
        rules.extend(group["rules"])
    return rules


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (instruments.AS_CLOCK_SKEW, "broker_as_clock_skew_seconds"),
        (instruments.UNPERSISTED_GRANTS, "broker_tokens_unpersisted_grants"),
        (instruments.TOKEN_REQUESTS, "broker_token_requests_total"),
        (instruments.SIGN_DURATION, "broker_hsm_sign_duration_seconds"),
        (instruments.RPC_SERVER_DURATION, "rpc_server_duration_milliseconds"),
        (instruments.HTTP_CLIENT_DURATION, "http_client_request_duration_seconds"),
        (instruments.HSM_UP, "broker_hsm_up"),
        (
            InstrumentSpec("x.ratio.used", "gauge", "1", (), ""),
            "x_ratio_used_ratio",
        ),
        (InstrumentSpec("io.read", "counter", "By", (), ""), "io_read_bytes_total"),
        (InstrumentSpec("net.rate", "gauge", "By/s", (), ""), "net_rate_bytes_per_second"),
        (InstrumentSpec("a.requests_total", "counter", "{r}", (), ""), "a_requests_total"),
    ],
)
def test_prometheus_names_follow_the_otel_compatibility_rules(
    spec: InstrumentSpec, expected: str
) -> None:
    assert prometheus_name(spec) == expected


def test_instrument_names_are_dotted_with_the_unit_in_the_unit_field() -> None:
    names = [spec.name for spec in instruments.ALL]
    assert len(names) == len(set(names))
    for spec in instruments.ALL:
        assert re.fullmatch(r"[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+", spec.name), spec.name
        assert not re.search(r"_(seconds|ms|millis|bytes|total|count)$", spec.name), spec.name
        assert spec.unit, spec.name


@pytest.mark.parametrize("source", ["dashboard", "alerts"])
def test_every_metric_and_label_referenced_is_one_the_broker_exports(source: str) -> None:
    exprs = dashboard_exprs() if source == "dashboard" else [r["expr"] for r in alert_rules()]
    assert exprs
    series = _series()
    used: set[str] = set()
    for expr in exprs:
        bare = _BY_LABELS.sub(" ", re.sub(r"\{[^}]*\}", " ", expr))  # labels are not metrics
        names = set(_METRIC.findall(bare))
        assert names, f"no broker metric in {expr!r}"
        unknown = names - series.keys()
        assert not unknown, f"{source}: {sorted(unknown)} are not broker metrics ({expr!r})"
        labels = set(_MATCHER_LABEL.findall(expr))
        for group in _BY_LABELS.findall(expr):
            labels |= {label.strip() for label in group.split(",") if label.strip()}
        allowed = _SCRAPE_LABELS | {
            instruments.prometheus_label(a) for n in names for a in series[n].attributes
        }
        assert labels <= allowed, f"{source}: labels {sorted(labels - allowed)} in {expr!r}"
        used |= names
    assert len(used) >= 5


def test_alert_rules_are_well_formed() -> None:
    rules = alert_rules()
    names = [r.get("alert") for r in rules]
    assert len(names) == len(set(names))
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
        assert isinstance(rule["alert"], str) and re.fullmatch(r"[A-Z][A-Za-z0-9]+", rule["alert"])
        assert isinstance(rule["expr"], str) and rule["expr"].strip()
        assert rule["expr"].count("(") == rule["expr"].count(")")
        if "for" in rule:
            assert re.fullmatch(r"\d+[smh]", rule["for"])
        assert rule["labels"]["severity"] in {"page", "ticket"}
        assert rule["annotations"]["summary"]


def test_dashboard_is_a_grafana_dashboard_on_a_prometheus_datasource() -> None:
    doc = json.loads(DASHBOARD.read_text())
    assert doc["uid"] and doc["title"] and doc["panels"]
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids))
    for panel in doc["panels"]:
        assert panel["datasource"]["type"] == "prometheus"
        assert panel["targets"] and all(t["expr"] and t["refId"] for t in panel["targets"])


def test_docs_table_lists_every_instrument_with_its_unit_and_prometheus_name() -> None:
    rows = {
        cells[0].strip("` "): [c.strip("` ") for c in cells]
        for line in DOC.read_text().split("## Metrics", 1)[1].split("\n## ", 1)[0].splitlines()
        if line.startswith("| `")
        for cells in [line.strip("|").split("|")]
    }
    for spec in instruments.ALL:
        assert spec.name in rows, f"{spec.name} missing from docs/telemetry.md"
        row = rows[spec.name]
        assert row[1] == spec.kind and row[2] == spec.unit, row
        assert row[3] == prometheus_name(spec), row
    assert set(rows) == {spec.name for spec in instruments.ALL}
