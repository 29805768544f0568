"""Losses used by the papers behind the rules, with their batch-reduction conventions made explicit.

The papers differ in whether a loss (and so every update) is a batch *sum* or a batch *mean*;
this changes the learning rate a paper's numbers need, so each convention is its own name:

========================  ==========================================  =======================
name                      value for outputs ``o`` and targets ``t``   used by
========================  ==========================================  =======================
``mse``                   mean over batch *and* units of (o − t)²     PyTorch's default
``mse_batchmean``         (1/N) Σ_n Σ_k (o − t)²                       ghost units, BFA
``mse_sum``               Σ_n Σ_k (o − t)²                             activation relaxation
``mse_half_sum``          ½ Σ_n Σ_k (o − t)²                           node perturbation
``cross_entropy``         (1/N) Σ_n −log softmax(o)_y                  classification
``bce``                   mean sigmoid binary cross-entropy            multi-label, NP AE
``bce_sum``               Σ_n Σ_k sigmoid BCE (gradient σ(o) − t)      BFA/BDFA authors' code
``nudged_sum:β``          Σ_n Σ_k (o − t)², gradient at the nudged     ghost units' SGD
                          output (see :func:`nudged_loss`)             baselines at finite β
``nudged_batchmean:β``    the same, (1/N) over the batch
========================  ==========================================  =======================

Class-index targets are turned into one-hot vectors for the MSE and BCE losses.
Float targets with the output's shape are used as they are (multi-label data, autoencoders).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .._registry import Registry


def _dense_targets(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if target.dtype in (torch.int64, torch.int32, torch.uint8) and target.dim() == 1:
        return F.one_hot(target.long(), output.shape[-1]).to(output.dtype)
    return target.to(output.dtype)


@dataclass(frozen=True)
class Loss:
    """A named scalar loss ``loss(output, target)`` with its reduction convention.

    ``per_sample(output, target)`` gives the ``(N,)`` vector of each example's loss in the same
    convention, so that ``loss = per_sample.mean()`` for ``reduction="mean"`` and
    ``loss = per_sample.sum()`` for ``reduction="sum"`` (node perturbation needs it per example).
    """

    name: str
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    description: str
    reduction: str = "mean"  # "sum" losses grow with the batch; reports divide them by N
    sample_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None

    def per_sample(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Each example's loss, shape ``(N,)`` (see the class docstring for the convention)."""
        return self.sample_fn(output, target)

    def mean_per_example(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The batch's loss per example, comparable across batch sizes (``per_sample().mean()``)."""
        value = self.fn(output, target)
        return value / output.shape[0] if self.reduction == "sum" else value

    def __call__(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.fn(output, target)


LOSSES: Registry[Loss] = Registry("loss")


def _add(name: str, description: str, sample_fn, reduction: str = "mean"):
    def wrap(fn):
        LOSSES.add(name, Loss(name, fn, description, reduction, sample_fn))
        return fn

    return wrap


def _sq(o, t):
    """Per-example squared errors, flattened: ``(N, units)``."""
    return (o - _dense_targets(o, t)).pow(2).reshape(o.shape[0], -1)


def _ce_samples(o, t):
    if t.dim() == 1 and not t.is_floating_point():
        return F.cross_entropy(o, t.long(), reduction="none")
    return F.cross_entropy(o, t.to(o.dtype), reduction="none")


def _bce_samples(o, t):
    per = F.binary_cross_entropy_with_logits(o, _dense_targets(o, t), reduction="none")
    return per.reshape(o.shape[0], -1).mean(1)


@_add("mse", "mean over batch and units of (o - t)^2", lambda o, t: _sq(o, t).mean(1))
def _mse(o, t):
    return F.mse_loss(o, _dense_targets(o, t), reduction="mean")


@_add("mse_batchmean", "(1/N) sum_n sum_k (o - t)^2", lambda o, t: _sq(o, t).sum(1))
def _mse_batchmean(o, t):
    return F.mse_loss(o, _dense_targets(o, t), reduction="sum") / o.shape[0]


@_add("mse_sum", "sum_n sum_k (o - t)^2", lambda o, t: _sq(o, t).sum(1), "sum")
def _mse_sum(o, t):
    return F.mse_loss(o, _dense_targets(o, t), reduction="sum")


@_add("mse_half_sum", "1/2 sum_n sum_k (o - t)^2", lambda o, t: 0.5 * _sq(o, t).sum(1), "sum")
def _mse_half_sum(o, t):
    return 0.5 * F.mse_loss(o, _dense_targets(o, t), reduction="sum")


@_add("cross_entropy", "(1/N) sum_n -log softmax(o)_y", _ce_samples)
def _cross_entropy(o, t):
    if t.dim() == 1 and not t.is_floating_point():
        return F.cross_entropy(o, t.long())
    return F.cross_entropy(o, t.to(o.dtype))


@_add("bce", "mean sigmoid binary cross-entropy (logits in, one-hot or multi-label targets)", _bce_samples)
def _bce(o, t):
    return F.binary_cross_entropy_with_logits(o, _dense_targets(o, t))


def _bce_sum_samples(o, t):
    per = F.binary_cross_entropy_with_logits(o, _dense_targets(o, t), reduction="none")
    return per.reshape(o.shape[0], -1).sum(1)


@_add("bce_sum", "sum over batch and units of sigmoid binary cross-entropy", _bce_sum_samples, "sum")
def _bce_sum(o, t):
    return F.binary_cross_entropy_with_logits(o, _dense_targets(o, t), reduction="sum")


def nudged_output(pre: torch.Tensor, target: torch.Tensor, beta: float, iters: int = 60) -> torch.Tensor:
    """The output pre-activation ``s*`` that a weakly-clamped ghost-unit circuit settles to.

    With the output nudge ``e = −β ∂C/∂ρ(s) = −2β (ρ(s) − t)`` (Mesnard et al. 2019, the weakly-clamped phase) and the feedforward
    drive ``s̃`` held fixed, each unit's steady state solves ``s − s̃ + 2β (ρ(s) − t) = 0``; the
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
        t = _dense_targets(o, t)
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


def get_loss(name: str | Loss) -> Loss:
    """Return the :class:`Loss` registered as ``name`` (a Loss passes through).

    ``nudged_sum:BETA`` / ``nudged_batchmean:BETA`` build :func:`nudged_loss` for that β.
    """
    if isinstance(name, Loss):
        return name
    if isinstance(name, str) and name.startswith(("nudged_sum:", "nudged_batchmean:")):
        kind, _, value = name.partition(":")
        try:
            beta = float(value)
        except ValueError:
            beta = float("nan")
        if not (beta > 0 and math.isfinite(beta)):
            from ..errors import ConfigError

            raise ConfigError(f"loss {name!r}: the number after ':' is the nudge beta and must be positive, "
                              f"e.g. nudged_sum:10")
        return nudged_loss(beta, "sum" if kind == "nudged_sum" else "mean")
    return LOSSES.get(name)


def list_losses() -> list[str]:
    """Names accepted by :func:`get_loss` (and by ``loss:`` in configs)."""
    return LOSSES.names()
