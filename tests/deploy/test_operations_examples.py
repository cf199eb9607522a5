"""The monitoring examples operators copy (configs/prometheus/, configs/grafana/) must name only
metrics the services really export: a renamed metric would otherwise silently break an alert."""
from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from backend_decryptor.metrics import Metrics as BackendMetrics
from edge_agent.metrics import Metrics as EdgeMetrics

REPO = Path(__file__).resolve().parents[2]
METRIC = re.compile(r"\b((?:edge_agent|backend)_[a-z_]+)\b")
SUFFIXES = ("_total", "_bucket", "_sum", "_count", "_created")


def exported_samples() -> set[str]:
    """Every sample name the two registries expose (counter foo -> foo_total, histograms ...)."""
    names: set[str] = set()
    for metrics in (EdgeMetrics(), BackendMetrics()):
        for family in metrics.registry.collect():
            names.add(family.name)
            names.update(family.name + s for s in SUFFIXES)
    return names


def expressions() -> list[tuple[str, str]]:
    rules = yaml.safe_load((REPO / "configs/prometheus/fhe-edge-alerts.yml").read_text())
    out = [(r["alert"], r["expr"]) for g in rules["groups"] for r in g["rules"]]
    dash = json.loads((REPO / "configs/grafana/fhe-edge-dashboard.json").read_text())
    out += [(p["title"], t["expr"]) for p in dash["panels"] for t in p["targets"]]
    return out


def test_every_metric_in_the_examples_is_exported():
    exported = exported_samples()
    checked = 0
    for where, expr in expressions():
        for name in METRIC.findall(expr):
            assert name in exported, f"{where}: {name} is not exported by either service"
            checked += 1
    assert checked >= 15


def test_alert_rules_are_complete_and_scrape_config_loads_them():
    rules = yaml.safe_load((REPO / "configs/prometheus/fhe-edge-alerts.yml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            assert {"alert", "expr", "labels", "annotations"} <= rule.keys(), rule
            assert rule["labels"]["severity"] in {"warning", "critical"}
            assert rule["annotations"]["summary"]
    scrape = yaml.safe_load((REPO / "configs/prometheus/prometheus.yml").read_text())
    assert "fhe-edge-alerts.yml" in scrape["rule_files"]
    assert {j["job_name"] for j in scrape["scrape_configs"]} == {"edge-agent", "backend-decryptor"}
