"""Activation-relaxation dynamics on a chain of layers (Millidge et al. 2022, eq 4-5).

Layers ``l = 0..L``; the input layer 0 is never relaxed (nothing uses it), the top layer ``L``
is clamped to the output error ``e = ∂loss/∂h_L`` and the hidden layers ``l = 1..L−1`` start
from their stored forward values ``x_l(0) = h_l`` (as in the authors' code). One Euler step is

    x_l ← x_l − η_x (x_l − T_l x_{l+1}),   T_l(v) = (v ⊙ f′(a_{l+1}^fwd)) F_l        (eq 5)

in row-vector form, where ``F_l`` is ``W_l`` (exact transpose), a fixed or learned ``ψ_l``
(eq 6-8, stored in W's ``(out, in)`` layout) and the ``f′`` factor is dropped for eq 7.
*Jacobi* sweeps (the paper) update every layer from the previous step's values;
*Gauss-Seidel* sweeps (the authors' code) go top-down and use the already-updated ``x_{l+1}``.

Because the Jacobians are frozen at the forward pass, each ``T_l`` is the same linear map at
every step. By induction over the steps, after K steps

    x_l(K) = Σ_{s ≥ l} a_ls(K) · T_l T_{l+1} ⋯ T_{s−1} x_s(0)

with scalar coefficients that obey (``a(0) = I``, row ``L`` fixed at ``a_LL = 1``)

    Jacobi:        a_ls(k+1) = (1−η) a_ls(k) + η a_{l+1,s}(k)
    Gauss-Seidel:  a_ls(k+1) = (1−η) a_ls(k) + η a_{l+1,s}(k+1)      (l = L−1 down to 1)

an O(K·L²) scalar recursion independent of width and batch. :func:`relax_closed_form` then
needs only about ``Σ_m min(m, L−m)`` applications of the ``T`` maps, against ``K·(L−1)`` for
the literal loop (:func:`relax_loop`). Both give the same numbers up to float rounding.
:func:`relax_fixed_point` jumps to the equilibrium ``x_l* = T_l x_{l+1}*`` (BP, or FA with a
fixed ψ); it differs from the K-step result by ``O((1−η)^K K^{L−l−1})``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import torch

from ...core.losses import as_loss

Tensor = torch.Tensor
#: ``backward(l, v)`` applies ``T_l`` to a value ``v`` of layer ``l+1`` (returns a new tensor).
BackwardFn = Callable[[int, Tensor], Tensor]
#: ``callback(k, hidden)`` sees the hidden layers ``[x_1..x_{L−1}]`` after step ``k``.
StepCallback = Callable[[int, Sequence[Tensor]], None]

SWEEPS = ("gauss_seidel", "jacobi")


@functools.lru_cache(maxsize=128)
def relaxation_coefficients(n_layers: int, steps: int, eta: float,
                            sweep: str = "gauss_seidel") -> tuple[tuple[float, ...], ...]:
    """Scalar coefficients ``a[l][s]`` (l, s = 0..L) of the K-step relaxation, in float64.

    Row 0 (the input, never relaxed) keeps the identity row; row ``L`` is the clamped top.
    """
    if sweep not in SWEEPS:
        raise ValueError(f"sweep must be one of {SWEEPS}, got {sweep!r}")
    L = int(n_layers)
    a = [[1.0 if i == j else 0.0 for j in range(L + 1)] for i in range(L + 1)]
    keep = 1.0 - float(eta)
    eta = float(eta)
    for _ in range(int(steps)):
        if sweep == "jacobi":
            above = [row[:] for row in a]  # previous step's values of every row
        else:
            above = a  # rows above were already updated in this sweep
        for l in range(L - 1, 0, -1):
            row, up = a[l], above[l + 1]
            for s in range(l, L + 1):
                row[s] = keep * row[s] + eta * up[s]
    return tuple(tuple(row) for row in a)


def _lincomb(coeffs: Sequence[float], vecs: Sequence[Tensor]) -> Tensor:
    """Σ_k c_k v_k without touching the inputs (zero coefficients are skipped)."""
    out: Tensor | None = None
    for c, v in zip(coeffs, vecs):
        if c == 0.0:
            continue
        if out is None:
            out = torch.mul(v, c)
        else:
            out.add_(v, alpha=c)
    if out is None:
        return torch.zeros_like(vecs[0])
    return out


def relax_closed_form(hidden0: Sequence[Tensor], top: Tensor, backward: BackwardFn,
                      steps: int, eta: float, sweep: str = "gauss_seidel") -> list[Tensor]:
    """The exact K-step relaxation result ``[x_1(K), …, x_{L−1}(K)]`` without iterating.

    Going down from the top, level ``m`` holds a few vectors ``V`` of layer ``m`` and, for every
    target layer ``l ≤ m``, coefficients ``C[l]`` with ``R_{l,m} = Σ_k C[l][k] V_k``, where
    ``R_{l,m} = Σ_{s ≥ m} a_ls P_{m,s} x_s(0)`` and ``x_l(K) = R_{l,l}``. To descend through
    ``T_{m−1}`` it either maps every vector (``|V|`` products) or first combines them into one
    vector per remaining target (``m−1`` products), whichever is fewer. The inputs are not
    modified.
    """
    L = len(hidden0) + 1
    if L == 1:
        return []
    a = relaxation_coefficients(L, int(steps), float(eta), sweep)
    vecs: list[Tensor] = [top]
    coef: dict[int, list[float]] = {l: [a[l][L]] for l in range(1, L)}
    out: list[Tensor] = [top] * (L - 1)
    for m in range(L - 1, 0, -1):  # descend from level m+1 to level m through T_m
        targets = range(1, m + 1)
        if len(vecs) <= m:
            vecs = [backward(m, v) for v in vecs]
        else:
            vecs = [backward(m, _lincomb(coef[l], vecs)) for l in targets]
            coef = {l: [1.0 if k == l - 1 else 0.0 for k in range(m)] for l in targets}
        vecs.append(hidden0[m - 1])
        for l in targets:
            coef[l].append(a[l][m])
        out[m - 1] = _lincomb(coef.pop(m), vecs)
    return out


def relax_loop(hidden0: Sequence[Tensor], top: Tensor, backward: BackwardFn, steps: int,
               eta: float, sweep: str = "gauss_seidel",
               callback: StepCallback | None = None) -> list[Tensor]:
    """The literal Euler iteration of eq 5 for ``steps`` steps (Jacobi or Gauss-Seidel)."""
    L = len(hidden0) + 1
    x: list[Tensor] = [top] + [h.clone() for h in hidden0] + [top]  # x[0] is never used
    keep = 1.0 - float(eta)
    for k in range(int(steps)):
        if sweep == "jacobi":
            drive = [backward(l, x[l + 1]) for l in range(1, L)]
            for l in range(1, L):
                x[l].mul_(keep).add_(drive[l - 1], alpha=eta)
        else:
            for l in range(L - 1, 0, -1):
                x[l].mul_(keep).add_(backward(l, x[l + 1]), alpha=eta)
        if callback is not None:
            callback(k + 1, x[1:L])
    return x[1:L]


def relax_fixed_point(hidden0: Sequence[Tensor], top: Tensor, backward: BackwardFn) -> list[Tensor]:
    """The equilibrium ``x_l* = T_l x_{l+1}*`` in one backward sweep (changes the K-step result)."""
    L = len(hidden0) + 1
    out: list[Tensor] = [top] * (L - 1)
    v = top
    for l in range(L - 1, 0, -1):
        v = backward(l, v)
        out[l - 1] = v
    return out


def count_backward_products(n_layers: int) -> tuple[int, int]:
    """(closed form, per loop step) numbers of ``T`` applications, for the docs and benchmark."""
    L = int(n_layers)
    n_vecs, total = 1, 0
    for m in range(L - 1, 0, -1):
        total += min(n_vecs, m)
        n_vecs = min(n_vecs, m) + 1
    return total, max(L - 1, 0)


def batch_mean(loss_fn) -> bool:
    """True for losses averaged over the batch (``Loss.reduction == "mean"``).

    Their output error is ``1/N`` times each example's error; AR relaxes the per-example
    errors (so the relaxation starts on the same scale as the stored activities) and applies
    the ``1/N`` to the weight update. A bare callable is typed by
    :func:`~bioplausible.core.losses.as_loss` (a batch mean unless it says ``reduction = "sum"``).
    """
    return as_loss(loss_fn).reduction == "mean"
