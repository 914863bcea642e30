"""The example Grafana dashboard charts every metric mpstate exports."""

from __future__ import annotations

import json
from pathlib import Path

from mpstate.metrics import families

DASHBOARD = Path(__file__).resolve().parents[2] / "grafana" / "mpstate-dashboard.json"


def test_the_example_dashboard_has_a_query_for_every_metric_family() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = " ".join(t["expr"] for panel in dashboard["panels"] for t in panel["targets"])

    for name in families.__all__:
        family = getattr(families, name)
        if isinstance(family, families.Family):
            assert family.name in queries, family.name
