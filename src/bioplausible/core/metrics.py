"""The one table of metrics: each name with its direction, printed digits and cadence.

Presets' checks, sweep and reproduce reports, ``aggregate`` and ``tune`` all read a metric's
direction and value here. A rule family adds its own with :func:`register_metric`.

Cadence says where a run's value comes from: ``epoch`` — the last epoch record
(``summary["final"][name]``); ``run`` — a number of the whole run in ``summary.json``
(``summary_key``: the best test accuracy, the mean probe angle).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .._registry import Registry
from ..errors import UnknownNameError


@dataclass(frozen=True)
class Metric:
    name: str
    direction: str  # "max" | "min"
    description: str = ""
    digits: int = 2
    cadence: str = "epoch"  # "epoch" | "run"
    summary_key: str | None = None  # cadence "run": its key in summary.json

    def __post_init__(self) -> None:
        if self.direction not in ("max", "min"):
            raise ValueError(f"metric {self.name!r}: direction must be 'max' or 'min', got {self.direction!r}")
        if self.cadence not in ("epoch", "run"):
            raise ValueError(f"metric {self.name!r}: cadence must be 'epoch' or 'run', got {self.cadence!r}")

    @property
    def lower_is_better(self) -> bool:
        return self.direction == "min"

    def value(self, summary: dict[str, Any]) -> float | None:
        """This metric of a run, from its ``summary.json`` mapping (None when not measured)."""
        if self.cadence == "run":
            return summary.get(self.summary_key or self.name)
        return (summary.get("final") or {}).get(self.name)


METRICS: Registry[Metric] = Registry("metric", discover=True)


def register_metric(metric: Metric) -> Metric:
    return METRICS.add(metric.name, metric)


for _m in (
    Metric("test_accuracy", "max", "accuracy on the test split after the last epoch (%)"),
    Metric("train_accuracy", "max", "accuracy on the training batches of the last epoch (%)"),
    Metric("val_accuracy", "max", "accuracy on the validation split after the last epoch (%)"),
    Metric("test_auc", "max", "mean ROC AUC over labels on the test split (multi-label data)"),
    Metric("val_auc", "max", "mean ROC AUC over labels on the validation split"),
    Metric("best_test_accuracy", "max", "the best test accuracy over the epochs (%)", cadence="run"),
    Metric("test_loss", "min", "loss per example on the test split after the last epoch"),
    Metric("train_loss", "min", "mean training loss per example over the last epoch"),
    Metric("val_loss", "min", "loss per example on the validation split after the last epoch"),
    Metric("grad_angle", "min", "mean angle between the rule's update and BP's gradient over the probes (deg)",
           cadence="run", summary_key="grad_angle_mean"),
    Metric("relative_error_top", "min", "||W - B||_F / ||W||_F of the top feedback pair after the last epoch",
           digits=4),
    Metric("relative_error_mean", "min", "||W - B||_F / ||W||_F averaged over the feedback pairs", digits=4),
):
    register_metric(_m)


def get_metric(name: str) -> Metric:
    """The metric registered as ``name`` (UnknownNameError naming the known ones otherwise)."""
    return METRICS.get(name)


def is_metric(name: str) -> bool:
    """Whether ``name`` is in the table (the families are looked up only for a name not yet in it)."""
    if name in METRICS:
        return True
    try:
        METRICS.get(name)
    except UnknownNameError:
        return False
    return True


def lower_is_better(name: str) -> bool:
    """Whether a smaller value is better; a name outside the table is read as a loss unless it is
    an accuracy or an AUC (``tune --metric`` may name any number of the epoch records)."""
    if is_metric(name):
        return METRICS.get(name).lower_is_better
    return not str(name).endswith(("accuracy", "auc"))


def metric_digits(name: str) -> int:
    """Decimals to print ``name`` with."""
    return METRICS.get(name).digits if is_metric(name) else 2


def metric_value(summary: dict[str, Any], name: str) -> float | None:
    """``name`` of one run from its summary mapping (the last epoch's value for names outside the table)."""
    if is_metric(name):
        return METRICS.get(name).value(summary)
    return (summary.get("final") or {}).get(name)


__all__ = ["METRICS", "Metric", "get_metric", "is_metric", "lower_is_better", "metric_digits", "metric_value",
           "register_metric"]
