"""Per-run loss values and output errors ``e_r = ∂loss_r/∂o_r`` of a stacked output ``o`` ``(R, B, K)``.

Every run's loss is the library loss of its own batch (:mod:`bioplausible.losses`): with the
per-example losses ``ℓ`` of the loss's ``per_sample`` form, ``loss_r = s Σ_n ℓ_rn`` with
``s = 1/B`` for batch means and ``s = 1`` for batch sums. Cross-entropy with class indices and
the MSE and sigmoid-BCE families have closed-form errors (softmax minus one-hot over ``B``;
``k (o − t)``; ``(σ(o) − t)/(B K)`` or ``σ(o) − t``); any
other loss gets ``e`` from autograd on ``Σ_r loss_r`` alone (one graph over the stack).
"""

from __future__ import annotations

import math

import torch

# name -> (weight of Σ_k (o − t)² per example, divide by the batch size, divide by the units)
_MSE = {"mse": (1.0, True, True), "mse_batchmean": (1.0, True, False), "mse_sum": (1.0, False, False),
        "mse_half_sum": (0.5, False, False)}


def dense_targets(o: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Class indices ``(R, B)`` -> one-hot ``(R, B, K)`` in ``o``'s dtype; float targets as they are."""
    if y.dim() == o.dim() - 1 and not y.is_floating_point():
        idx = y.unsqueeze(-1)
        return torch.zeros_like(o).scatter_(-1, idx if idx.dtype == torch.long else idx.long(), 1.0)
    return y.to(o.dtype)


def loss_and_error(loss_fn, o: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(loss, e, d)``: the per-run losses ``(R,)``, ``e = ∂loss_r/∂o_r`` ``(R, B, K)`` and, for the
    MSE losses, the residual ``d = o − t`` (``None`` otherwise)."""
    name = getattr(loss_fn, "name", None)
    R, B = o.shape[0], o.shape[1]
    if name == "cross_entropy" and y.dim() == 2 and not y.is_floating_point():
        logp = torch.log_softmax(o, dim=-1)
        picked = logp.gather(-1, y.unsqueeze(-1).long()).squeeze(-1)
        loss = picked.sum(1).div_(-B)
        e = logp.exp_()
        e.scatter_add_(-1, y.unsqueeze(-1).long(), torch.full_like(picked, -1.0).unsqueeze(-1))
        return loss, e.div_(B), None
    if name in _MSE:
        w, per_batch, per_unit = _MSE[name]
        d = o - dense_targets(o, y)
        denom = (B if per_batch else 1) * (math.prod(o.shape[2:]) if per_unit else 1)
        loss = d.square().sum((1, 2)).mul_(w / denom)
        return loss, d.mul(2.0 * w / denom), d
    if name in ("bce", "bce_sum"):
        t = dense_targets(o, y)
        per = torch.nn.functional.binary_cross_entropy_with_logits(o, t, reduction="none")
        scale = 1.0 if name == "bce_sum" else 1.0 / math.prod(o.shape[1:])
        return per.sum((1, 2)).mul_(scale), torch.sigmoid(o).sub_(t).mul_(scale), None
    with torch.inference_mode(False), torch.enable_grad():  # the stacked step runs in inference mode
        leaf = o.clone().requires_grad_(True)
        per = loss_fn.per_sample(leaf.reshape(R * B, *o.shape[2:]), y.reshape(R * B, *y.shape[2:]))
        scale = 1.0 if getattr(loss_fn, "reduction", "mean") == "sum" else 1.0 / B
        loss = per.view(R, B).sum(1) * scale
        (e,) = torch.autograd.grad(loss.sum(), leaf)
    return loss.detach(), e, None


def per_example(loss_fn, o: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Each example's loss ``ℓ`` ``(R, B)`` in float64 (node perturbation's ``ℓ̃ − ℓ``)."""
    R, B = o.shape[0], o.shape[1]
    o64 = o.double().reshape(R * B, *o.shape[2:])
    t = y.reshape(R * B, *y.shape[2:])
    return loss_fn.per_sample(o64, t.double() if t.is_floating_point() else t).view(R, B)


def correct_counts(o: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Correct predictions per run ``(R,)`` for class-index or one-hot targets."""
    if y.dim() == o.dim():
        y = y.argmax(-1)
    return torch.eq(o.argmax(-1), y).sum(1)


__all__ = ["correct_counts", "dense_targets", "loss_and_error", "per_example"]
