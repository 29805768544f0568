"""Diagnostics that show *how* a rule differs from backprop (docs/notation.md, "Diagnostics").

On a batch, after a rule has filled ``.grad`` and before the optimizer step, the probe compares
the rule's update of each forward weight with the true BP gradient at the same parameters and
batch (:meth:`Rule.bp_gradients`), and, for rules with feedback tensors, measures how the
feedback aligns with the forward weights:

* ``grad_angle/<param>``: angle in degrees between vec(ΔW_rule) and vec(ΔW_BP) (0 for BP),
  with ``update_norm/<param>`` and ``bp_norm/<param>`` beside it (the rule's ``.grad``, before
  the learning rate; for a rule that steps the weight itself — ``bfa``, the ghost rules — its
  net change, i.e. after its rate, so compare those norms within a rule, not across);
* ``weight_angle/<layer>``: angle between W and B (B in W's layout, i.e. W vs Bᵀ of the equations);
* ``sign_congruence/<layer>``: fraction of entries with sign(W) = sign(B);
* ``relative_error/<layer>``: ‖W − B‖_F / ‖W‖_F.

``grad_angle`` is the hidden-layer angle of the step (:func:`~.angles.step_hidden_angle`: the
mean over the weights that are not exact, leaving out e.g. the output layer of FA, which gets
the true gradient by construction); ``grad_angle_all_layers`` is the mean over every weight.
``weight_angle`` etc. are means over the feedback pairs.

:func:`feedback_errors` gives a run's summary numbers of the feedback: ``relative_error_top``
(‖W − B‖_F/‖W‖_F of the last pair in model order, the output layer's W whose B carries the
error into the top hidden layer) and ``relative_error_mean`` (the mean over every pair the rule
reports); the trainer records them in every epoch record, measured after the epoch's last step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .angles import degrees_from_cosine, step_hidden_angle
from .rule import FeedbackPair, LossFn, Rule


def tensor_angle(a: torch.Tensor, b: torch.Tensor) -> float:
    """Angle in degrees between two tensors seen as vectors (90 if either is zero)."""
    a64, b64 = a.detach().reshape(-1).double(), b.detach().reshape(-1).double()
    na, nb = a64.norm(), b64.norm()
    if na == 0 or nb == 0:
        return 90.0
    cos = torch.clamp(torch.dot(a64, b64) / (na * nb), -1.0, 1.0)
    return degrees_from_cosine(float(cos))


def sign_congruence(w: torch.Tensor, b: torch.Tensor) -> float:
    """Fraction of entries where sign(W) equals sign(B): mean((sign W · sign B + 1) / 2)."""
    return float(((torch.sign(w.detach()) * torch.sign(b.detach()) + 1) / 2).double().mean())


def relative_error(w: torch.Tensor, b: torch.Tensor) -> float:
    """‖W − B‖_F / ‖W‖_F with B in W's layout."""
    w64, b64 = w.detach().double(), b.detach().double()
    return float((w64 - b64).norm() / w64.norm().clamp_min(1e-300))


def gradient_angles(rule: Rule, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                    loss_fn: LossFn) -> dict[str, float]:
    """Per-parameter angle between the rule's current ``.grad`` and BP's gradient (same batch).

    For a step the rule has already taken use :class:`Probe` (reference before, compare after).
    """
    reference = rule.bp_gradients(model, x, y, loss_fn)
    params = rule.forward_weights(model)
    out: dict[str, float] = {}
    for name, ref in reference.items():
        g = params[name].grad
        if g is None or ref.norm() == 0:
            continue
        out[name] = tensor_angle(g, ref)
    return out


class ProbeError(RuntimeError):
    """A rule's update cannot be compared with BP's (missing, or of another shape)."""


@dataclass
class Reference:
    """BP's gradient of each forward weight, and the weights, before the rule's step."""

    grads: dict[str, torch.Tensor]
    before: dict[str, torch.Tensor]


class Probe:
    """Measure alignment with BP every ``every`` training steps (0 disables it).

    Like for like: :meth:`reference` runs **before** the rule's step on the same batch, in the
    model's current (training) mode, inside a forked RNG so that the rule's own forward pass
    draws the same dropout masks, and with every buffer (BatchNorm running statistics)
    restored afterwards so the step updates them once. :meth:`compare` then takes the rule's
    update of each forward weight — ``.grad``, or the net change ``W_before − W_after`` where
    the rule changed the weight itself — and its angle to BP's gradient.
    """

    def __init__(self, every: int = 100) -> None:
        self.every = int(every)

    def due(self, step: int) -> bool:
        return self.every > 0 and step % self.every == 0

    def reference(self, rule: Rule, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                  loss_fn: LossFn) -> Reference:
        buffers = [(b, b.detach().clone()) for b in model.buffers()]
        devices = [x.device] if x.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            grads = rule.bp_gradients(model, x, y, loss_fn)
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)
        before = {n: p.detach().clone() for n, p in rule.forward_weights(model).items()}
        return Reference(grads, before)

    def compare(self, rule: Rule, model: nn.Module, ref: Reference) -> dict[str, Any]:
        params = rule.forward_weights(model)
        out: dict[str, Any] = {}
        weight_angles = []
        for name, bp_grad in ref.grads.items():
            p = params[name]
            before = ref.before[name]
            if not torch.equal(before, p.detach()):
                update = before - p.detach()  # the rule changed W itself: its net (descent) step
            elif p.grad is not None:
                update = p.grad
            elif float(bp_grad.norm()) == 0.0:
                continue  # the loss does not depend on it, and the rule left it alone
            else:
                raise ProbeError(f"probe: rule {rule.name!r} left no update for {name!r} "
                                 f"(no .grad and the weight did not change)")
            if update.shape != bp_grad.shape:
                raise ProbeError(f"probe: rule {rule.name!r} gives {name!r} an update of shape "
                                 f"{tuple(update.shape)}; BP's gradient has {tuple(bp_grad.shape)}")
            if float(bp_grad.norm()) == 0.0 and float(update.norm()) == 0.0:
                continue  # a tensor the loss does not depend on
            angle = tensor_angle(update, bp_grad)
            out[f"grad_angle/{name}"] = angle
            out[f"update_norm/{name}"] = float(update.detach().double().norm())
            out[f"bp_norm/{name}"] = float(bp_grad.detach().double().norm())
            if params_is_weight(name):
                weight_angles.append(angle)
        if weight_angles:
            out["grad_angle"] = step_hidden_angle(out)
            out["grad_angle_all_layers"] = sum(weight_angles) / len(weight_angles)
        out.update(alignment_metrics(rule.feedback_pairs(model)))
        out.update(rule.probe_metrics(model))
        return out

    def measure(self, rule: Rule, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                loss_fn: LossFn) -> dict[str, Any]:
        """Compare ``.grad`` already filled by ``rule.train_step`` with BP on the same batch.

        Kept for hand-written loops that probe after the step: the BP reference then runs
        with fresh dropout masks, so use :meth:`reference` + :meth:`compare` for models with
        dropout or BatchNorm.
        """
        return self.compare(rule, model, self.reference(rule, model, x, y, loss_fn))


def alignment_metrics(pairs: list[FeedbackPair]) -> dict[str, float]:
    """W-vs-B metrics per pair and their means. A pair whose feedback has the transposed
    shape is compared after a transpose; any other shape mismatch is a :class:`ProbeError`."""
    out: dict[str, float] = {}
    per: dict[str, list[float]] = {"weight_angle": [], "sign_congruence": [], "relative_error": []}
    for pair in pairs:
        fb = pair.feedback
        if fb is None:
            continue
        if fb.shape != pair.weight.shape:
            if fb.dim() == 2 and fb.t().shape == pair.weight.shape:
                fb = fb.t()
            else:
                raise ProbeError(f"probe: feedback pair {pair.name!r} has shapes "
                                 f"{tuple(pair.weight.shape)} and {tuple(fb.shape)}; give the "
                                 f"feedback in the weight's layout or transposed")
        values = {"weight_angle": tensor_angle(pair.weight, fb),
                  "sign_congruence": sign_congruence(pair.weight, fb),
                  "relative_error": relative_error(pair.weight, fb)}
        for key, value in values.items():
            out[f"{key}/{pair.name}"] = value
            per[key].append(value)
    for key, values in per.items():
        if values:
            out[key] = sum(values) / len(values)
    return out


def feedback_errors(rule: Rule, model: nn.Module) -> dict[str, float]:
    """``relative_error_top`` and ``relative_error_mean`` of the rule's feedback now.

    Top: ‖W − B‖_F / ‖W‖_F of the last feedback pair in model order that has a feedback in W's
    layout; mean: the mean of ‖W − B‖_F / ‖W‖_F over every such pair the rule reports (for
    ``fa`` this includes the first layer's B, which carries no error anywhere). Empty for rules
    without such feedback (BP, DFA's direct matrices) or whose feedback cannot be compared.
    """
    try:
        pairs = [p for p in rule.feedback_pairs(model) if p.feedback is not None]
        if not pairs:
            return {}
        values = alignment_metrics(pairs)
    except ProbeError:
        return {}
    return {"relative_error_top": values[f"relative_error/{pairs[-1].name}"],
            "relative_error_mean": values["relative_error"]}


def params_is_weight(name: str) -> bool:
    return not name.endswith("bias")
