"""Reading report.json back: `model.read_report` gives the typed Report (any readable schema, /1 upgraded); this
module adds what a reader needs from the rest of edgepress about it."""

from __future__ import annotations

from edgepress.measure.metrics import Metric
from edgepress.measure.task import metric_of_report
from edgepress.report.model import Report, read_report

__all__ = ["metric_of", "read_report"]


def metric_of(report: Report) -> Metric:
    """The metric the report was judged by: the metric table's entry, or a user metric as the report describes it."""
    described = {"metric": report.metric}
    if report.metric_higher_is_better is not None:
        described["metric_higher_is_better"] = report.metric_higher_is_better
    return metric_of_report(described)
