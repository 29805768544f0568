"""The ghost family's losses: ``nudged_sum:β`` and ``nudged_batchmean:β``, SGD's view of a ghost-unit
W update at a finite nudge β (Σ_n Σ_k (o − t)², its gradient at the nudged output; see
:func:`nudged_loss`), for the SGD baselines the paper compares with.
"""

from __future__ import annotations

import math

import torch

from ...core.losses import Loss, dense_targets, register_loss_family
from ...errors import ConfigError


def nudged_output(pre: torch.Tensor, target: torch.Tensor, beta: float, iters: int = 60) -> torch.Tensor:
    """The output pre-activation ``s*`` that a weakly-clamped ghost-unit circuit settles to.

    With the output nudge ``e = −β ∂C/∂ρ(s) = −2β (ρ(s) − t)`` (Mesnard et al. 2019, the weakly-clamped phase) and the
    feedforward drive ``s̃`` held fixed, each unit's steady state solves ``s − s̃ + 2β (ρ(s) − t) = 0``; the
    left side increases in ``s``, so bisection on ``[s̃ − 2β(ρ(s̃) − t), s̃]`` (either order) is exact
    to ``iters`` halvings. Computed in float64.
    """
    s0, t = pre.double(), target.double()
    end = s0 - 2.0 * beta * (torch.sigmoid(s0) - t)
    lo, hi = torch.minimum(s0, end), torch.maximum(s0, end)
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        up = (mid - s0 + 2.0 * beta * (torch.sigmoid(mid) - t)) > 0
        hi = torch.where(up, mid, hi)
        lo = torch.where(up, lo, mid)
    return 0.5 * (lo + hi)


def nudged_loss(beta: float, reduction: str = "sum") -> Loss:
    """SGD's view of a ghost-unit W update at finite β (Mesnard et al. 2019, Corollary 1).

    For small β the weakly-clamped W update of MA is ``−η_W·dt·β·n·∂C/∂W`` with
    ``C = Σ_k (ρ(s_k) − t_k)²`` (Corollary 1). At the paper's β = 10 the nudge is not weak: the
    output settles at ``s*`` (:func:`nudged_output`), far towards the target, and the error the
    update sees is ``2 ρ′(s*) (ρ(s*) − t)`` instead of ``2 ρ′(s̃) (ρ(s̃) − t)``. This loss's value is
    ``C`` at the sigmoid outputs ``o = ρ(s̃)``; its gradient with respect to ``s̃`` is that nudged
    error (the output displacement's effect on the hidden layers' presynaptic rates is left
    out: first order in the hidden errors). As β → 0 it is ``C``'s gradient. Outputs must be
    sigmoid rates in (0, 1); where ``o`` rounds to 0 or 1 the gradient through the sigmoid is zero.
    """
    if not (isinstance(beta, (int, float)) and beta > 0 and math.isfinite(beta)):
        raise ValueError(f"nudged loss: beta must be a positive number, got {beta!r}")

    def samples(o: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = dense_targets(o, t)
        value = (o - t).pow(2).reshape(o.shape[0], -1).sum(1)
        with torch.no_grad():
            od = o.double().clamp(1e-300, 1.0)
            pre = torch.log(od) - torch.log1p(-od.clamp(max=1.0 - 1e-16))
            star = nudged_output(pre, t, float(beta))
            rs = torch.sigmoid(star)
            delta = 2.0 * rs * (1.0 - rs) * (rs - t.double())   # wanted ∂/∂s̃
            slope = (o * (1.0 - o)).double()                      # what autograd multiplies by
            g = torch.where(slope > 0, delta / slope.clamp_min(1e-300), torch.zeros_like(delta))
            g = g.clamp(-1e30, 1e30).to(o.dtype)
        surrogate = (g * o).reshape(o.shape[0], -1).sum(1)
        return value.detach() + surrogate - surrogate.detach()

    if reduction == "sum":
        return Loss(f"nudged_sum:{beta:g}", lambda o, t: samples(o, t).sum(),
                    "ghost units' finite-β SGD equivalent, summed over the batch", "sum", samples)
    return Loss(f"nudged_batchmean:{beta:g}", lambda o, t: samples(o, t).mean(),
                "ghost units' finite-β SGD equivalent, batch mean", "mean", samples)


def _family(reduction: str):
    def build(arg: str) -> Loss:
        try:
            beta = float(arg)
        except ValueError:
            beta = float("nan")
        if not (beta > 0 and math.isfinite(beta)):
            name = f"{'nudged_sum' if reduction == 'sum' else 'nudged_batchmean'}:{arg}"
            raise ConfigError(f"loss {name!r}: the number after ':' is the nudge beta and must be positive, "
                              f"e.g. nudged_sum:10")
        return nudged_loss(beta, reduction)

    return build


register_loss_family("nudged_sum", _family("sum"))
register_loss_family("nudged_batchmean", _family("mean"))
