"""Reading a scrape: samples by name and labels, and every label value in it."""

from __future__ import annotations

from collections.abc import Iterable

import httpx
from prometheus_client.parser import text_string_to_metric_families

Labels = tuple[tuple[str, str], ...]


class Scrape:
    """One scrape's samples, ``{(sample name, sorted labels): value}``."""

    def __init__(self, text: str) -> None:
        self.samples = {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    def get(self, name: str, **labels: str) -> float:
        """The sample's value (0 when the series does not exist)."""
        return self.samples.get((name, tuple(sorted(labels.items()))), 0.0)

    def label_values(self) -> set[str]:
        return {value for _, labels in self.samples for _, value in labels}

    def names(self) -> set[str]:
        return {name for name, _ in self.samples}


def scrape(http: httpx.Client, url: str) -> Scrape:
    response = http.get(f"{url}/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return Scrape(response.text)


def assert_no_id_in_labels(found: Scrape, ids: Iterable[str]) -> None:
    """No label value names (or contains) any of ``ids``: no series per run."""
    values = found.label_values()
    leaked = {(i, v) for i in ids for v in values if i in v}
    assert not leaked, leaked
