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
========================  ==========================================  =======================

Class-index targets are turned into one-hot vectors for the MSE and BCE losses.
Float targets with the output's shape are used as they are (multi-label data, autoencoders).

Rule families register their own losses from their folders (:func:`register_loss`; e.g.
``bce_sum`` in :mod:`bioplausible.rules.bidirectional.losses`) and parametrised ones,
``name:ARG`` (:func:`register_loss_family`; e.g. ``nudged_sum:10`` in
:mod:`bioplausible.rules.ghost.losses`).
"""

from __future__ import annotations

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
    convention, so that ``loss = batch_factor(N) · per_sample.sum()``: ``per_sample.mean()`` for
    ``reduction="mean"`` and ``per_sample.sum()`` for ``reduction="sum"`` (node perturbation needs
    it per example). Rules read the convention here, never from a bare callable
    (:func:`as_loss`).
    """

    name: str
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    description: str
    reduction: str = "mean"  # "sum" losses grow with the batch; reports divide them by N
    sample_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None

    def __post_init__(self) -> None:
        if self.reduction not in ("mean", "sum"):
            raise ValueError(f"loss {self.name!r}: reduction must be 'mean' or 'sum', got {self.reduction!r}")

    def per_sample(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Each example's loss, shape ``(N,)`` (see the class docstring for the convention);
        without a per-example form the loss is evaluated one example at a time."""
        if self.sample_fn is not None:
            return self.sample_fn(output, target)
        return torch.stack([self.fn(output[i:i + 1], target[i:i + 1]).reshape(())
                            for i in range(output.shape[0])])

    def batch_factor(self, n: int) -> float:
        """``s`` with ``loss = s · Σ_n ℓ_n`` for a batch of ``n``: ``1/n`` (mean) or 1 (sum)."""
        return 1.0 if self.reduction == "sum" else 1.0 / n

    def mean_per_example(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The batch's loss per example, comparable across batch sizes (``per_sample().mean()``)."""
        value = self.fn(output, target)
        return value / output.shape[0] if self.reduction == "sum" else value

    def __call__(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.fn(output, target)


LOSSES: Registry[Loss] = Registry("loss", discover=True)
#: ``name:ARG`` losses: prefix -> ``factory(arg_text) -> Loss`` (ConfigError for a bad argument)
LOSS_FAMILIES: Registry[Callable[[str], Loss]] = Registry("parametrised loss", discover=True)


def register_loss(loss: Loss) -> Loss:
    """Make ``loss`` available by its name (``get_loss``, configs, ``--loss``)."""
    return LOSSES.add(loss.name, loss)


def register_loss_family(prefix: str, factory: Callable[[str], Loss]) -> Callable[[str], Loss]:
    """Make ``prefix:ARG`` build ``factory("ARG")`` (e.g. ``nudged_sum:10``)."""
    return LOSS_FAMILIES.add(prefix, factory)


def dense_targets(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Class indices as one-hot rows in the output's dtype; float targets as they are."""
    return _dense_targets(output, target)


def _add(name: str, description: str, sample_fn, reduction: str = "mean"):
    def wrap(fn):
        register_loss(Loss(name, fn, description, reduction, sample_fn))
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


def as_loss(loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | Loss) -> Loss:
    """A :class:`Loss` passes through; any other callable is typed once, here, as a batch mean
    (torch's convention) unless it carries ``reduction = "sum"``. Rules call this instead of
    guessing a convention from a bare callable."""
    if isinstance(loss_fn, Loss):
        return loss_fn
    reduction = getattr(loss_fn, "reduction", "mean")
    return Loss(f"<{getattr(loss_fn, '__name__', type(loss_fn).__name__)}>", loss_fn, "a user's loss callable",
                "sum" if reduction == "sum" else "mean", getattr(loss_fn, "per_sample", None))


def get_loss(name: str | Loss) -> Loss:
    """Return the :class:`Loss` registered as ``name`` (a Loss passes through).

    ``prefix:ARG`` builds a parametrised loss of a family (:func:`register_loss_family`).
    """
    if isinstance(name, Loss):
        return name
    if isinstance(name, str) and ":" in name:
        prefix, _, arg = name.partition(":")
        return LOSS_FAMILIES.get(prefix)(arg)
    return LOSSES.get(name)


def list_losses() -> list[str]:
    """Names accepted by :func:`get_loss` (and by ``loss:`` in configs)."""
    return LOSSES.names()
