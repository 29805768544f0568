"""SAL at the paper's setting (Liao et al. 2024, §2 and §4): random connectivity, the downstream
width from the paper's connection ratio, and the metrics that show the circuit self-assembling.

* :data:`PAPER_SETTING`: the options ``setting="paper"`` fills in (any option given explicitly
  wins). All four matrices start i.i.d. Gaussian — W_l ~ N(0, 1/(3 n_l)) (the variance of PyTorch's default Linear init; biases 0),
  B_k ~ N(0, 1/m_{k+1}), Q_k, R_k ~ N(0, 1/m_k) independently (so M = RᵀR starts near the
  identity at any downstream width) — with the identity downstream nonlinearity, everything
  plastic, one uniform weight decay γ and a fixed ratio of the four rates (the optimizer's lr is
  the one overall factor that is tuned). B is drawn with the variance W_kᵀ has (1/m_k), not
  its own fan-in: the fan-in draw amplifies the n_L output errors √(m/n_L)-fold at the top and
  diverged at every lr ≥ 1e-3 in the MNIST probes. The choices the paper leaves open: s = −1 (gradient
  descent on the bilinear local losses; s = +1 shrinks Q and R to zero), a fixed top
  (Q_L = R_L = I), decay per unit rate, γ = 0.1 with lr 3e-3 the best of the MNIST probes in
  ``benchmarks/results/sal/``. There the circuit assembles (Lemma 1 exactly) and then collapses
  to chance: with the identity downstream the Q/R data terms reach at most n_L directions, so
  M = RᵀR decays towards rank ≤ n_L (``benchmarks/sal_assembly.py``; README, SAL section).
* :func:`width_from_connections`: the paper's Fig. 2 axis is a ratio of *connections*
  (backprojections vs forward connections). A downstream ``k`` times wider than the upstream at
  every hidden layer gives the hidden-to-hidden B ``k²`` times the connections of the matching W,
  so a connection ratio ``c`` is the width multiple ``k = √c`` (the paper's 5–8× is k ≈ 2.2–2.8).
* :func:`assembly_metrics`: per hidden layer ``k``, the quantities Lemma 1 and Theorem 1 say
  converge during self-assembly.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ...core.rule import Rule
from ...errors import ConfigError

PAPER_SETTING: dict = {
    "setting": "paper",
    "downstream": "identity",
    "qr_init": "random", "qr_init_scale": 1.0, "qr_fan": "downstream",
    "b_init": "normal_out", "w_init": "normal", "w_init_scale": 3 ** -0.5,
    "plastic": ["W", "B", "Q", "R"],
    "rates": {"W": 1.0, "B": 1.0, "Q": 1.0, "R": 1.0},
    "decay": 0.1, "decay_scaling": "rate",
    "sign": -1, "top": "fixed", "qr_term": "activity", "read": "after",
    "timing": "simultaneous", "output_error": "loss",
}


def width_from_connections(ratio) -> float:
    """Width multiple ``k = √ratio`` whose hidden-to-hidden B has ``ratio`` times W's connections."""
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not math.isfinite(ratio) \
            or not ratio > 0:
        raise ConfigError(f"sal option connections must be a number > 0 (the downstream:upstream "
                          f"connection ratio, e.g. 5), got {ratio!r}")
    return math.sqrt(float(ratio))


def _angle(a: torch.Tensor, b: torch.Tensor) -> float:
    na, nb = a.norm(), b.norm()
    if na == 0 or nb == 0:
        return 90.0
    cos = float(torch.clamp((a * b).sum() / (na * nb), -1.0, 1.0))
    return math.degrees(math.acos(cos))


def backward_alignment(q: torch.Tensor, b: torch.Tensor, r_up: torch.Tensor | None,
                       r: torch.Tensor, w: torch.Tensor) -> tuple[float, float]:
    """For hidden layer k: ``(angle(Q_k B_k R_{k+1}, W_kᵀ) in degrees, ‖B_k R_{k+1} − R_k W_kᵀ‖/‖R_k W_kᵀ‖)``.

    ``Q_k B_k R_{k+1}`` is the effective backward matrix from the upstream error at layer k+1 to
    layer k (``R_{k+1} = I`` at a fixed top); once assembled it is ``M_k W_kᵀ`` with ``M_k = R_kᵀR_k``
    PD, so its angle to ``W_kᵀ`` is below 90°. The relative error is the residual of the
    stationarity condition ``B_k R_{k+1} = R_k W_kᵀ`` (spec-free: it is what ΔB, ΔW drive to 0).
    """
    q, b, r, w = (t.detach().double() for t in (q, b, r, w))
    br = b if r_up is None else b @ r_up.detach().double()
    target = r @ w.t()
    eff = q @ br
    rel = float((br - target).norm() / target.norm().clamp_min(1e-300))
    return _angle(eff, w.t()), rel


def m_spectrum(r: torch.Tensor) -> tuple[float, float]:
    """``(λ_min, mean eigenvalue)`` of the matrix learning rate ``M = RᵀR`` (n × n)."""
    r64 = r.detach().double()
    ev = torch.linalg.eigvalsh(r64.t() @ r64)
    return float(ev[0]), float(ev.mean())


def assembly_metrics(rule: Rule, model: nn.Module) -> dict[str, float]:
    """``bwd_angle/k``, ``bwd_relerr/k``, ``m_lambda_min/k``, ``m_lambda_mean/k`` per hidden
    layer, and their worst values over layers (max angle/error, min λ_min)."""
    layers = rule._layout(model).layers
    L = len(layers)
    t = rule.tensors
    out: dict[str, float] = {}
    angles, errs, lams = [], [], []
    for k in range(1, L):
        b, q, r = t.get(f"B.{k}"), t.get(f"Q.{k}"), t.get(f"R.{k}")
        if b is None or q is None or r is None:
            continue
        r_up = t.get(f"R.{k + 1}")  # None at a fixed top (R_L = I)
        ang, rel = backward_alignment(q, b, r_up, r, layers[k][0].weight)
        lam, mean = m_spectrum(r)
        out[f"bwd_angle/{k}"], out[f"bwd_relerr/{k}"] = ang, rel
        out[f"m_lambda_min/{k}"], out[f"m_lambda_mean/{k}"] = lam, mean
        angles.append(ang)
        errs.append(rel)
        lams.append(lam)
    if angles:
        out["bwd_angle"], out["bwd_relerr"], out["m_lambda_min"] = max(angles), max(errs), min(lams)
    return out


@torch.no_grad()
def bilinear_coupling(rule: Rule, model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn) -> dict[str, float]:
    """``σ_max(C_k)`` with ``C_k = Σ_batch h_k g_{k+1}ᵀ`` per hidden layer ``k`` (``coupling/k``, max ``coupling``).

    With the identity downstream the B and R data terms are ``ΔB_k = −η R_k C_k`` and
    ``ΔR_k = s η B_k C_kᵀ``. For ``s = −1`` the pair descends the bilinear local loss
    ``⟨R_k h_k, B_k g_{k+1}⟩ + γ(‖B_k‖² + ‖R_k‖²)/2``, which is bounded below only while
    ``γ ≥ σ_max(C_k)``: above it (B, R) grow exponentially at rate ``η(σ_max − γ)``. For ``s = +1``
    the pair rotates instead (eigenvalues ``±iησ``) and the decay shrinks it.
    """
    cyc, _ = rule.cycle(model, x, y, loss_fn)
    out: dict[str, float] = {}
    L = len(cyc.h) - 1
    for k in range(1, L):
        c = cyc.h[k].double().t() @ cyc.g[k + 1].double()
        out[f"coupling/{k}"] = float(torch.linalg.matrix_norm(c, ord=2))
    if out:
        out["coupling"] = max(out.values())
    return out


__all__ = ["PAPER_SETTING", "assembly_metrics", "backward_alignment", "bilinear_coupling", "m_spectrum",
           "width_from_connections"]
