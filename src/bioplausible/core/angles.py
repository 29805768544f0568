"""Gradient angles per layer from a run's probe records, and which layers are exact.

Feedback-family rules (FA, DFA, sign symmetry, KP, WM, ...) give the output layer the true
gradient ``δ_out hᵀ`` by construction, so its angle to BP is 0 and averaging it in halves the
angle a reader sees for a one-hidden-layer net. The layers reported as *exact* are decided from
the records, not from the rule's name: a weight whose angle stayed below :data:`EXACT_DEG` at
every probe step. Rounding puts an exact layer's angle near 1e-6° in float32 (measured on FA,
DFA and KP MLPs); a layer a rule approximates is tens of degrees away, so the gap is wide. Biases
are left out, as in the probe's own ``grad_angle`` mean.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

EXACT_DEG = 1e-3



def degrees_from_cosine(cos: float) -> float:
    """The angle in degrees whose cosine is ``cos`` (clamped to [-1, 1] against rounding; a NaN
    cosine, from a non-finite update, stays NaN)."""
    c = float(cos)
    if math.isnan(c):
        return math.nan
    return math.degrees(math.acos(max(-1.0, min(1.0, c))))

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


def hidden_angle_series(probes: Sequence[dict[str, Any]], tol: float = EXACT_DEG) -> list[tuple[int, float]]:
    """(step, mean angle over the non-exact weights) per probe step; 0 when every layer is exact."""
    exact = set(exact_layers(probes, tol))
    names = [n for n in layer_names(probes) if n not in exact]
    series = []
    for rec in probes:
        values = [rec[f"grad_angle/{n}"] for n in names if f"grad_angle/{n}" in rec]
        if values:
            series.append((int(rec.get("step", 0)), sum(values) / len(values)))
        elif names == [] and any(k.startswith("grad_angle/") for k in rec):
            series.append((int(rec.get("step", 0)), 0.0))
    return series


def hidden_angle(probes: Sequence[dict[str, Any]], tol: float = EXACT_DEG) -> float | None:
    """Mean over probe steps of :func:`hidden_angle_series`; None without probe records."""
    series = hidden_angle_series(probes, tol)
    return sum(v for _, v in series) / len(series) if series else None
