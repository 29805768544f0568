"""Gradient angles per layer from a run's probe records, and which layers are exact.

Feedback-family rules (FA, DFA, sign symmetry, KP, WM, ...) give the output layer the true
gradient ``δ_out hᵀ`` by construction, so its angle to BP is 0 and averaging it in halves the
angle a reader sees for a one-hidden-layer net.

**The angle to BP** that every table, plot, ``summary.json`` (``grad_angle_mean``),
``aggregate`` (``grad_angle``), probe record and TensorBoard scalar (``grad_angle``) reports is
the *hidden-layer angle*: at each probe step, the mean angle over the weight tensors whose angle
is not below :data:`EXACT_DEG` at that step (:func:`step_hidden_angle`; 0 when every weight is
exact, as for BP), then the mean over probe steps. Rounding puts an exact layer's angle near
1e-6° in float32 (measured on FA, DFA and KP MLPs); a layer a rule approximates is tens of
degrees away, so the gap is wide. Biases are left out. The whole-network mean, exact layers
included, is kept as ``grad_angle_all_layers`` (``grad_angle_all_layers_mean`` in the summary).
The layers listed as *exact by construction* (:func:`exact_layers`) are those below
:data:`EXACT_DEG` at every probe step.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

EXACT_DEG = 1e-3


def layer_names(probes: Sequence[dict[str, Any]]) -> list[str]:
    """Weight tensors with a recorded angle, in the order the probe wrote them."""
    names: dict[str, None] = {}
    for rec in probes:
        for key in rec:
            if key.startswith("grad_angle/") and not key.endswith("bias"):
                names[key.split("/", 1)[1]] = None
    return list(names)


def exact_layers(probes: Sequence[dict[str, Any]], tol: float = EXACT_DEG) -> list[str]:
    """Weights whose angle to BP was below ``tol`` degrees at every probe step."""
    out = []
    for name in layer_names(probes):
        values = [rec[f"grad_angle/{name}"] for rec in probes if f"grad_angle/{name}" in rec]
        if values and max(values) < tol:
            out.append(name)
    return out


def layer_angles(probes: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Mean angle (degrees) over probe steps, per weight tensor."""
    out = {}
    for name in layer_names(probes):
        values = [rec[f"grad_angle/{name}"] for rec in probes if f"grad_angle/{name}" in rec]
        if values:
            out[name] = sum(values) / len(values)
    return out


def step_hidden_angle(record: dict[str, Any], tol: float = EXACT_DEG) -> float | None:
    """The hidden-layer angle of one probe record: the mean over the weights (not biases) whose
    angle is at least ``tol``; 0 when every weight is below it; None without weight angles."""
    values = [v for k, v in record.items()
              if k.startswith("grad_angle/") and not k.endswith("bias") and v is not None]
    if not values:
        return None
    hidden = [v for v in values if v >= tol]
    return sum(hidden) / len(hidden) if hidden else 0.0


def hidden_angle_series(probes: Sequence[dict[str, Any]], tol: float = EXACT_DEG) -> list[tuple[int, float]]:
    """(step, :func:`step_hidden_angle`) per probe step that recorded weight angles."""
    series = []
    for rec in probes:
        value = step_hidden_angle(rec, tol)
        if value is not None:
            series.append((int(rec.get("step", 0)), value))
    return series


def hidden_angle(probes: Sequence[dict[str, Any]], tol: float = EXACT_DEG) -> float | None:
    """Mean over probe steps of :func:`hidden_angle_series`; None without probe records."""
    series = hidden_angle_series(probes, tol)
    return sum(v for _, v in series) / len(series) if series else None
