"""Metrics.count: the rows of one statement, counted per function, served and in the activity."""

from __future__ import annotations

from perdured.metrics import Metrics


def test_count__counts_each_row_under_its_function() -> None:
    metrics = Metrics(served=True)
    rows: list[dict[str, object]] = [{"namespace": "ns", "name": "a"}] * 3 + [{"namespace": "ns", "name": "b"}] * 2
    metrics.count("enqueued", rows)
    metrics.count("enqueued", namespace="ns", name="a", n=4)
    metrics.count("enqueued", namespace="ns", name="c", n=0)

    def served(name: str) -> float | None:
        return metrics.registry.get_sample_value("perdure_jobs_enqueued_total", {"namespace": "ns", "function": name})

    assert (served("a"), served("b"), served("c")) == (7.0, 2.0, None)
    assert sorted((row["name"], row["enqueued"]) for row in metrics.take_activity()) == [("a", 7), ("b", 2)]
