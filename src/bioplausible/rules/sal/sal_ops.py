"""The SAL circuit's passes and its four plasticity rules as plain tensor functions.

Row-vector batch form (one sample per row). Layer indices follow docs/notation.md: ``h_0 = x``,
``u_{l+1} = h_l W_lᵀ + b_l``, ``h_{l+1} = f(u_{l+1})`` for the ``L`` Linear layers ``l = 0..L−1``.
The downstream stream has activity ``g_k`` of width ``m_k`` at the hidden layers ``k = 1..L−1``
and ``g_L = e`` (the output error, width ``n_L``). Per hidden layer ``k``:

* ``B[k]`` (``m_k × m_{k+1}``) carries ``g_{k+1}`` down: ``v_k = g_{k+1} B_kᵀ``, ``g_k = φ(v_k)``;
* ``Q[k]`` (``n_k × m_k``, downstream → upstream) and ``R[k]`` (``m_k × n_k``, upstream → downstream).

``Q[L]``/``R[L]`` are ``None`` for top option (a) (identity, fixed) and ``n_L × n_L`` tensors for
option (b). The updates, as descent directions ``.grad`` (the optimizer applies ``−η·grad`` and
the decay ``γX``)::

    W_l.grad = (g_{l+1} Q_{l+1}ᵀ)ᵀ h_l          b_l.grad = Σ_batch g_{l+1} Q_{l+1}ᵀ
    B_k.grad = (h_k R_kᵀ)ᵀ g_{k+1}
    Q_k.grad = −s · p_kᵀ g_k                    (p_k = h_k, or u_k for qr_term="potential")
    R_k.grad = −s · q_kᵀ h_k                    (q_k = g_k, or v_k for qr_term="potential")

(``potential``: each matrix is gated by the membrane potential of its *own* postsynaptic
neuron — Q by the upstream ``u_k``, R by the downstream ``v_k``; ``v_L = g_L``.)

With ``read="before"`` the W rule reads ``v_{l+1}`` (before φ) instead of ``g_{l+1}``.
:func:`literal_updates` is the same algorithm written per sample with column vectors, loops and
no batching: the oracle the fast path is tested against.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ...nn.mlp import MLPLayout, _apply, activation_derivative

Tensor = torch.Tensor
NONLINEARITIES = ("identity", "relu_jacobian", "relu", "tanh")


@dataclass
class Cycle:
    """One batch's upstream pass and downstream pass. Lists are indexed by layer (0..L)."""

    h: list[Tensor]                      # h_0..h_L
    u: list[Tensor | None]               # u_1..u_L (u[0] is None)
    fprime: list[Tensor | None]          # f′(u_k) at hidden k (only for the Jacobian nonlinearity)
    g: list[Tensor | None] = field(default_factory=list)  # g_1..g_L (g[0] is None)
    v: list[Tensor | None] = field(default_factory=list)  # v_1..v_{L−1}
    scale: float = 1.0                   # g_L is scale·(the loss's error); updates divide by it

    @property
    def output(self) -> Tensor:
        return self.h[-1]


def upstream(layout: MLPLayout, x: Tensor, need_fprime: bool) -> Cycle:
    """The user's model, layer by layer, keeping ``h_l``, ``u_l`` and (if asked) ``f′(u_l)``."""
    h = x
    for m in layout.prefix:
        h = m(h)
    hs: list[Tensor] = [h]
    us: list[Tensor | None] = [None]
    fps: list[Tensor | None] = [None]
    last = len(layout.layers) - 1
    for i, (lin, acts) in enumerate(layout.layers):
        u = F.linear(h, lin.weight, lin.bias)
        h = _apply(acts, u) if acts else u
        hs.append(h)
        us.append(u)
        fps.append(activation_derivative(acts, u, h) if need_fprime and i < last else None)
    return Cycle(hs, us, fps)


def _tile(mask: Tensor, width: int) -> Tensor:
    """The upstream gate of width ``n`` spread over ``m = r·n`` downstream units (unit j ↔ j mod n)."""
    n = mask.shape[-1]
    return mask if width == n else mask.repeat(*([1] * (mask.dim() - 1)), width // n)


def phi(v: Tensor, kind: str, fprime: Tensor | None) -> Tensor:
    """The downstream nonlinearity φ applied to the membrane potential ``v``."""
    if kind == "identity":
        return v
    if kind == "relu_jacobian":
        return v if fprime is None else v * _tile(fprime, v.shape[-1])
    if kind == "relu":
        return torch.relu(v)
    if kind == "tanh":
        return torch.tanh(v)
    raise ValueError(f"unknown downstream nonlinearity {kind!r}")


def downstream(cycle: Cycle, error: Tensor, B: list[Tensor | None], kind: str) -> Cycle:
    """``g_L = e``; ``v_k = g_{k+1} B_kᵀ``, ``g_k = φ(v_k)`` for ``k = L−1..1`` (no Q, R here)."""
    L = len(cycle.h) - 1
    g: list[Tensor | None] = [None] * (L + 1)
    v: list[Tensor | None] = [None] * (L + 1)
    g[L] = error
    for k in range(L - 1, 0, -1):
        v[k] = torch.matmul(g[k + 1], B[k].mT)
        g[k] = phi(v[k], kind, cycle.fprime[k])
    cycle.g, cycle.v = g, v
    return cycle


def upstream_signal(cycle: Cycle, Q: list[Tensor | None], k: int, read: str) -> Tensor:
    """The signal that gates the feedforward synapses into upstream layer ``k``: ``Q_k g_k``."""
    L = len(cycle.h) - 1
    d = cycle.v[k] if (read == "before" and k < L) else cycle.g[k]
    return d if Q[k] is None else torch.matmul(d, Q[k].mT)


def qr_factors(cycle: Cycle, k: int, term: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(p_k, g_k, q_k, h_k)``: Q's data term is ``p_kᵀ g_k``, R's is ``q_kᵀ h_k`` (see above)."""
    L = len(cycle.h) - 1
    if term == "potential":
        return cycle.u[k], cycle.g[k], (cycle.g[k] if k == L else cycle.v[k]), cycle.h[k]
    return cycle.h[k], cycle.g[k], cycle.g[k], cycle.h[k]


def _costs(N: int, n_in: int, m_out: int, n_out: int, q: bool, m_in: int | None) -> dict[str, int]:
    """Multiply-adds of layer ``l``'s W and B updates in the two equal associations.

    ``n_in = n_l``, ``m_out = m_{l+1}`` (the width of the signal ``d``), ``n_out = n_{l+1}``,
    ``q``: a ``Q_{l+1}`` gates the signal, ``m_in = m_l`` (``None``: no B update here)::

        W   chain  (d Q_{l+1}ᵀ)ᵀ h_l       N·m_out·n_out [q] + n_out·N·n_in
            via M  Q_{l+1} (dᵀ h_l)         m_out·N·n_in + n_out·m_out·n_in [q]
        B   chain  (h_l R_lᵀ)ᵀ g_{l+1}     N·n_in·m_in + m_in·N·m_out
            via M  R_l (g_{l+1}ᵀ h_l)ᵀ      m_out·N·n_in + m_in·n_in·m_out
    """
    M = m_out * N * n_in
    c = {"W_chain": (N * m_out * n_out if q else 0) + n_out * N * n_in,
         "W_M": M + (n_out * m_out * n_in if q else 0), "M": M}
    if m_in is not None:
        c["B_chain"] = N * n_in * m_in + m_in * N * m_out
        c["B_M"] = M + m_in * n_in * m_out
    return c


def fast_updates(cycle: Cycle, Q: list[Tensor | None], R: list[Tensor | None], *, sign: float,
                 term: str, read: str, want: set[str]) -> dict[str, Tensor]:
    """Batched descent directions ``{"W.l", "b.l", "B.k", "Q.k", "R.k"}`` for the parts in ``want``.

    The cycle's tensors are ``(N, width)`` or, for stacked runs, ``(runs, N, width)`` with every
    matrix ``(runs, rows, cols)``: the products are ``matmul`` over the trailing two dimensions.
    Each update is evaluated in the cheaper of two equal associations (:func:`_costs`): the W
    update of layer ``l`` and the B update of the same layer both contain ``g_{l+1}ᵀ h_l``
    (``W_l.grad = Q_{l+1} g_{l+1}ᵀ h_l``, ``B_l.grad = R_l h_lᵀ g_{l+1}``), computed once when
    that costs fewer multiply-adds than the chains; with ``qr_term="activity"``
    ``R_k.grad = Q_k.gradᵀ`` (both are ``−s h_kᵀ g_k``), one product.
    """
    L = len(cycle.h) - 1
    out: dict[str, Tensor] = {}
    N = cycle.h[0].shape[-2]
    for l in range(L):
        k = l + 1
        want_w, want_b = "W" in want, "B" in want and 1 <= l < L
        if not (want_w or want_b):
            continue
        h, g = cycle.h[l], cycle.g[k]
        d = cycle.v[k] if (read == "before" and k < L) else g
        q = Q[k]
        c = _costs(N, h.shape[-1], d.shape[-1], q.shape[-2] if q is not None else d.shape[-1],
                   q is not None, R[l].shape[-2] if want_b else None)
        w_m = want_w and c["W_M"] < c["W_chain"]
        b_m = want_b and c["B_M"] < c["B_chain"]
        if want_w and want_b and d is g:  # one M for both when that beats the best of each alone
            both = c["W_M"] + c["B_M"] - c["M"]
            w_m = b_m = both < min(c["W_M"], c["W_chain"]) + min(c["B_M"], c["B_chain"])
        M = torch.matmul(d.mT, h) if w_m else None                   # d_{l+1}ᵀ h_l
        if want_w and w_m:
            out[f"W.{l}"] = M if q is None else torch.matmul(q, M)
            dsum = d.sum(-2, keepdim=True)
            out[f"b.{l}"] = (dsum if q is None else torch.matmul(dsum, q.mT)).squeeze(-2)
        elif want_w:
            s = upstream_signal(cycle, Q, k, read)
            out[f"W.{l}"] = torch.matmul(s.mT, h)
            out[f"b.{l}"] = s.sum(-2)
        if want_b and b_m:
            Mg = M if (M is not None and d is g) else torch.matmul(g.mT, h)
            out[f"B.{l}"] = torch.matmul(R[l], Mg.mT)
        elif want_b:
            out[f"B.{l}"] = torch.matmul(torch.matmul(h, R[l].mT).mT, g)
    for k in range(1, L + 1):
        if Q[k] is None:
            continue
        p, g, q, h = qr_factors(cycle, k, term)
        if term != "potential" and "Q" in want and "R" in want:
            grad_q = torch.matmul(p.mT, g).mul_(-sign)
            out[f"Q.{k}"], out[f"R.{k}"] = grad_q, grad_q.mT.contiguous()
            continue
        if "Q" in want:
            out[f"Q.{k}"] = torch.matmul(p.mT, g).mul_(-sign)
        if "R" in want:
            out[f"R.{k}"] = torch.matmul(q.mT, h).mul_(-sign)
    return out


# --------------------------------------------------------------------------- the literal oracle
def literal_updates(weights: list[Tensor], biases: list[Tensor | None], acts: list[str],
                    B: list[Tensor | None], Q: list[Tensor | None], R: list[Tensor | None],
                    x: Tensor, error_fn, *, kind: str, sign: float, term: str,
                    read: str, mean: bool = False) -> dict[str, Tensor]:
    """Spec §7.2 written literally: per sample, column vectors, explicit loops, then a batch sum.

    ``acts[l]`` is ``"relu"`` or ``"linear"`` (the activation after Linear ``l``); ``error_fn(h_L, n)``
    returns sample ``n``'s own output error ``e = ∂ℓ_n/∂h_L`` (a column vector). ``mean``: the
    loss is the batch mean of the ``ℓ_n``, so the summed updates are divided by ``N``.
    """
    L = len(weights)
    total: dict[str, Tensor] = {}

    def add(key: str, value: Tensor) -> None:
        total[key] = total[key] + value if key in total else value.clone()

    for n in range(x.shape[0]):
        h = [x[n].reshape(-1, 1)]
        u: list[Tensor | None] = [None]
        for l in range(L):
            a = weights[l] @ h[l]
            if biases[l] is not None:
                a = a + biases[l].reshape(-1, 1)
            u.append(a)
            h.append(torch.clamp(a, min=0) if acts[l] == "relu" else a)
        g: list[Tensor | None] = [None] * (L + 1)
        v: list[Tensor | None] = [None] * (L + 1)
        g[L] = error_fn(h[L], n)
        for k in range(L - 1, 0, -1):
            v[k] = B[k] @ g[k + 1]
            m, nk = v[k].shape[0], h[k].shape[0]
            if kind == "identity":
                g[k] = v[k]
            elif kind == "relu_jacobian":
                gate = (u[k] > 0).to(x.dtype) if acts[k - 1] == "relu" else torch.ones_like(u[k])
                g[k] = torch.stack([v[k][j] * gate[j % nk] for j in range(m)])
            elif kind == "relu":
                g[k] = torch.clamp(v[k], min=0)
            else:
                g[k] = torch.tanh(v[k])
        for l in range(L):
            k = l + 1
            d = v[k] if (read == "before" and k < L) else g[k]
            signal = d if Q[k] is None else Q[k] @ d
            add(f"W.{l}", signal @ h[l].T)          # ΔW_l = −η (Q_{l+1} g_{l+1}) h_lᵀ
            add(f"b.{l}", signal.reshape(-1))
        for k in range(1, L + 1):
            if k < L:
                add(f"B.{k}", (R[k] @ h[k]) @ g[k + 1].T)   # ΔB_k = −η (R_k h_k) g_{k+1}ᵀ
            if Q[k] is None:
                continue
            if term == "potential":    # each synapse gated by its own neuron's membrane potential
                add(f"Q.{k}", -sign * (u[k] @ g[k].T))                    # ΔQ_k = s η u_k g_kᵀ
                add(f"R.{k}", -sign * ((g[k] if k == L else v[k]) @ h[k].T))  # ΔR_k = s η v_k h_kᵀ
            else:
                add(f"Q.{k}", -sign * (h[k] @ g[k].T))                    # ΔQ_k = s η h_k g_kᵀ
                add(f"R.{k}", -sign * (g[k] @ h[k].T))                    # ΔR_k = s η g_k h_kᵀ
    if mean:
        total = {key: value / x.shape[0] for key, value in total.items()}
    return total


__all__ = ["NONLINEARITIES", "Cycle", "downstream", "fast_updates", "literal_updates", "phi",
           "qr_factors", "upstream", "upstream_signal"]
