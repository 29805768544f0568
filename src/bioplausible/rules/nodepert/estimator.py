"""The mathematics of node-perturbation-learned feedback, as functions on tensors.

Lansdell, Prakash & Kording 2020, "Learning to solve the credit assignment problem" (ICLR;
arXiv 1906.00889). Notation: ``h`` is the input of a layer (a hidden activity), ``ẽ`` the
error that reaches the layer's output in the synthetic backward pass (shape ``(N, n_out)``),
``B`` the feedback matrix in the layer's **W layout** ``(n_out, n_in)``, so that the
synthetic gradient with respect to ``h`` is ``g = ẽ B`` (``(B^{i+1})ᵀ ẽ^{i+1}`` in column form).

* Estimator (eq 1-2): with the clean per-example loss ``ℓ_n`` and the noisy one ``ℓ̃_n`` of a
  pass in which every hidden layer got ``c_h ξ``, ``ξ ~ N(0, I)``, at once,
  ``λ̂_n = (ℓ̃_n − ℓ_n) ξ_n / c_h``. To first order ``E[λ̂] = ∂ℓ/∂h``; the bias is O(c_h).
* Feedback regression (eq 3), one SGD step per batch on ``½ Σ_n ‖ẽ_n B − λ̂_n‖²``:
  ``G = Σ_n ẽ_nᵀ (ẽ_n B − λ̂_n)``, ``B ← B − η_B G``.
* Online ridge regression (App. C.3): ``V ← V + Σ ẽᵀẽ`` (``V_0 = γ I``), ``S ← S + Σ ẽᵀλ̂``,
  ``B = V⁻¹ S``: the exact ridge solution over every sample seen.

Per-example losses: :func:`per_example_losses` returns ``ℓ_n`` and the factor ``s`` with
``loss = s Σ_n ℓ_n`` (``s = 1`` for batch-summed losses, ``1/N`` for batch means), so that the
batch backward's errors are ``s · ∂ℓ_n/∂a_n`` and the rule divides them by ``s``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ...errors import ConfigError


def per_example_losses(loss_fn: Callable, output: torch.Tensor,
                       target: torch.Tensor) -> tuple[torch.Tensor, float]:
    """``(ℓ, s)``: the per-example losses ``ℓ`` (shape ``(N,)``) and ``s`` with ``loss = s Σ ℓ``.

    A :class:`~bioplausible.core.losses.Loss` gives ``ℓ`` by ``per_sample`` (``s = 1`` for a
    batch-summed loss, ``1/N`` for a batch mean); any other callable is evaluated one example
    at a time and taken as a batch mean unless it has ``reduction == "sum"``.
    """
    n = output.shape[0]
    summed = getattr(loss_fn, "reduction", "mean") == "sum"
    if callable(getattr(loss_fn, "per_sample", None)) and getattr(loss_fn, "sample_fn", True) is not None:
        values = loss_fn.per_sample(output, target)
    else:
        values = torch.stack([loss_fn(output[i:i + 1], target[i:i + 1]).reshape(()) for i in range(n)])
    return values, (1.0 if summed else 1.0 / n)


# ℓ = w Σ_k (o_k − t_k)² per example for the library's MSE losses: w by name
_MSE_WEIGHT = {"mse_half_sum": 0.5, "mse_sum": 1.0, "mse_batchmean": 1.0}


def loss_difference(loss_fn: Callable, noisy: torch.Tensor, clean: torch.Tensor,
                    target: torch.Tensor) -> torch.Tensor:
    """``ℓ̃_n − ℓ_n`` per example, shape ``(N,)``, in float64 or better.

    For the MSE losses it is ``w Σ_k (õ − o)(õ + o − 2t)``: exact algebra with no cancellation of
    two large losses, so float32 (or the outputs' wider dtype) keeps full relative precision.
    Otherwise both per-example losses are computed in float64 (:func:`per_example_losses`) and
    subtracted.
    """
    name = getattr(loss_fn, "name", None)
    n = clean.shape[0]
    if (name in _MSE_WEIGHT or name == "mse") and target.shape == clean.shape:
        dtype = torch.promote_types(clean.dtype, torch.float32)  # no cancellation: float32 suffices
        o, t, no = clean.to(dtype), target.to(dtype), noisy.to(dtype)
        w = _MSE_WEIGHT.get(name, 1.0 / max(clean[0].numel(), 1))
        return ((no - o) * (no + o).sub_(t, alpha=2.0)).reshape(n, -1).sum(1).double().mul_(w)
    both, _ = per_example_losses(loss_fn, torch.cat([noisy, clean]).double(), torch.cat([target, target]))
    return both[:n] - both[n:]


def np_estimate(noisy_loss: torch.Tensor, clean_loss: torch.Tensor, xi: torch.Tensor,
                c_h: float) -> torch.Tensor:
    """``λ̂_n = (ℓ̃_n − ℓ_n) ξ_n / c_h`` for every example (eq 2), in ``xi``'s shape and dtype."""
    diff = (noisy_loss.double() - clean_loss.double()).to(xi.dtype)
    return xi * (diff / c_h).reshape((-1,) + (1,) * (xi.dim() - 1))


def regression_grad(err: torch.Tensor, feedback: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``G = Σ_n ẽ_nᵀ(ẽ_n B − λ̂_n)``: gradient of ``½ Σ_n ‖ẽ_n B − λ̂_n‖²`` in B (W layout)."""
    err = err.reshape(err.shape[0], -1)
    residual = err @ feedback - target.reshape(target.shape[0], -1)
    return err.t() @ residual


def ridge_update(V: torch.Tensor, S: torch.Tensor, err: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """One online ridge step in place: ``V += ẽᵀẽ``, ``S += ẽᵀλ̂``; returns ``B = V⁻¹S`` (W layout)."""
    e = err.reshape(err.shape[0], -1).to(V.dtype)
    V.addmm_(e.t(), e)
    S.addmm_(e.t(), target.reshape(target.shape[0], -1).to(S.dtype))
    return torch.linalg.solve(V, S)


class RidgeState:
    """Online ridge regression of ``λ̂`` on ``ẽ`` (App. C.3): ``B = (γI + Σẽᵀẽ)⁻¹ Σẽᵀλ̂``.

    ``V`` is ``(n_e, n_e)`` and ``S`` is ``(n_e, n_h)``; :meth:`update` adds one batch and
    returns the new ``B`` in W layout ``(n_e, n_h)``. The sums never forget (as in the paper).
    """

    def __init__(self, n_err: int, n_target: int, gamma: float = 0.1, *,
                 device: torch.device | str | None = None, dtype: torch.dtype = torch.float64) -> None:
        if not (isinstance(gamma, (int, float)) and not isinstance(gamma, bool) and gamma > 0
                and math.isfinite(gamma)):
            raise ConfigError(f"ridge gamma must be a positive number; got {gamma!r}")
        self.gamma = float(gamma)
        self.V = torch.eye(n_err, device=device, dtype=dtype) * self.gamma
        self.S = torch.zeros(n_err, n_target, device=device, dtype=dtype)

    def update(self, err: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return ridge_update(self.V, self.S, err, target)

    def solve(self) -> torch.Tensor:
        return torch.linalg.solve(self.V, self.S)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"V": self.V.clone(), "S": self.S.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.V.copy_(state["V"])
        self.S.copy_(state["S"])


def signal_angle(synthetic: torch.Tensor, true: torch.Tensor) -> float:
    """Fig. 2B: mean over examples of the angle (degrees) between ``λ̃_n`` and ``λ_n``, folded
    into [0°, 90°] as the authors' ``tf_align`` does (θ ← 180° − θ above 90°)."""
    a = synthetic.reshape(synthetic.shape[0], -1).double()
    b = true.reshape(true.shape[0], -1).double()
    cos = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-300)
    theta = torch.rad2deg(torch.arccos(cos.clamp(-1.0, 1.0)))
    theta = torch.where(theta > 90.0, 180.0 - theta, theta)
    return float(theta.mean())


__all__ = ["RidgeState", "loss_difference", "np_estimate", "per_example_losses", "regression_grad", "ridge_update", "signal_angle"]
