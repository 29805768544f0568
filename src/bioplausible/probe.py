"""Diagnostics that show *how* a rule differs from backprop (spec §2).

On a batch, after a rule has filled ``.grad`` and before the optimizer step, the probe compares
the rule's update of each forward weight with the true BP gradient at the same parameters and
batch (:meth:`Rule.bp_gradients`), and, for rules with feedback tensors, measures how the
feedback aligns with the forward weights:

* ``grad_angle/<param>``: angle in degrees between vec(ΔW_rule) and vec(ΔW_BP) (0 for BP);
* ``weight_angle/<layer>``: angle between W and B (B in W's layout, i.e. W vs Bᵀ of the spec);
* ``sign_congruence/<layer>``: fraction of entries with sign(W) = sign(B);
* ``relative_error/<layer>``: ‖W − B‖_F / ‖W‖_F.

Means over layers are reported as ``grad_angle``, ``weight_angle`` etc.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from .rules.base import LossFn, Rule


def tensor_angle(a: torch.Tensor, b: torch.Tensor) -> float:
    """Angle in degrees between two tensors seen as vectors (90 if either is zero)."""
    a64, b64 = a.detach().reshape(-1).double(), b.detach().reshape(-1).double()
    na, nb = a64.norm(), b64.norm()
    if na == 0 or nb == 0:
        return 90.0
    cos = torch.clamp(torch.dot(a64, b64) / (na * nb), -1.0, 1.0)
    return math.degrees(math.acos(float(cos)))


def sign_congruence(w: torch.Tensor, b: torch.Tensor) -> float:
    """Fraction of entries where sign(W) equals sign(B): mean((sign W · sign B + 1) / 2)."""
    return float(((torch.sign(w.detach()) * torch.sign(b.detach()) + 1) / 2).double().mean())


def relative_error(w: torch.Tensor, b: torch.Tensor) -> float:
    """‖W − B‖_F / ‖W‖_F with B in W's layout."""
    w64, b64 = w.detach().double(), b.detach().double()
    return float((w64 - b64).norm() / w64.norm().clamp_min(1e-300))


def gradient_angles(rule: Rule, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                    loss_fn: LossFn) -> dict[str, float]:
    """Per-parameter angle between the rule's current ``.grad`` and BP's gradient."""
    reference = rule.bp_gradients(model, x, y, loss_fn)
    params = rule.forward_weights(model)
    out: dict[str, float] = {}
    for name, ref in reference.items():
        g = params[name].grad
        if g is None or ref.norm() == 0:
            continue
        out[name] = tensor_angle(g, ref)
    return out


class Probe:
    """Measure alignment with BP every ``every`` training steps (0 disables it)."""

    def __init__(self, every: int = 100) -> None:
        self.every = int(every)

    def due(self, step: int) -> bool:
        return self.every > 0 and step % self.every == 0

    def measure(self, rule: Rule, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                loss_fn: LossFn) -> dict[str, Any]:
        was_training = model.training
        model.eval()  # the BP reference is taken without dropout or noise (spec §2)
        try:
            angles = gradient_angles(rule, model, x, y, loss_fn)
        finally:
            model.train(was_training)
        out: dict[str, Any] = {f"grad_angle/{k}": v for k, v in angles.items()}
        weight_angles = [v for k, v in angles.items() if params_is_weight(k)]
        if weight_angles:
            out["grad_angle"] = sum(weight_angles) / len(weight_angles)
        per: dict[str, list[float]] = {"weight_angle": [], "sign_congruence": [], "relative_error": []}
        for pair in rule.feedback_pairs(model):
            if pair.feedback is None or pair.feedback.shape != pair.weight.shape:
                continue
            values = {"weight_angle": tensor_angle(pair.weight, pair.feedback),
                      "sign_congruence": sign_congruence(pair.weight, pair.feedback),
                      "relative_error": relative_error(pair.weight, pair.feedback)}
            for key, value in values.items():
                out[f"{key}/{pair.name}"] = value
                per[key].append(value)
        for key, values in per.items():
            if values:
                out[key] = sum(values) / len(values)
        out.update(rule.metrics(model))
        return out


def params_is_weight(name: str) -> bool:
    return not name.endswith("bias")
