"""Literal per-sample BFA/BDFA: the paper's equations in column-vector form, one sample at a time.

The oracles for the batched rules (tests only; slow). Lists are 0-based: ``W[k]`` is the paper's
``W→_{k+1}``, ``G[j]`` is ``W←_{j+1}``; ``f`` / ``df`` are the hidden activation and its
derivative as a function of ``a``. Every update is a batch *sum* of per-sample terms and is
applied with plain SGD at rate ``lr``; the forward error is ``e→ = sigmoid(a_y) − y`` (BCE with
sigmoid outputs, summed).
"""

from __future__ import annotations

import torch


def _col(v: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, 1)


def bfa_step(W, b, G, c, X, Y, lr: float, f, df, sigma_x: str = "identity", sequential: bool = True):
    """One BFA batch: forward phase (eq 18–22) applied, then backward phase (eq 23–29).

    ``sequential=False`` lets the backward phase use the forward weights of the batch start.
    Returns new lists ``(W, b, G, c)``.
    """
    n = len(W) - 1
    W0 = [w.clone() for w in W]
    dW = [torch.zeros_like(w) for w in W]
    db = [torch.zeros_like(v) for v in b]
    for x, y in zip(X, Y):
        hs, as_ = [_col(x)], [None]
        for k in range(n):
            a = W[k] @ hs[-1] + _col(b[k])
            as_.append(a)
            hs.append(f(a))
        a_y = W[n] @ hs[-1] + _col(b[n])
        delta = torch.sigmoid(a_y) - _col(y)  # e→
        for k in range(n, -1, -1):  # W→_{k+1}
            dW[k] += delta @ hs[k].T
            db[k] += delta[:, 0]
            if k > 0:  # δa_k = (W←_{N+1−k} δ) ⊙ σ'(a_k); W←_{N+1−k} is G[n−k]
                delta = (G[n - k] @ delta) * df(as_[k])
    W = [w - lr * d for w, d in zip(W, dW)]
    b = [v - lr * d for v, d in zip(b, db)]
    Wfb = W if sequential else W0
    dG = [torch.zeros_like(g) for g in G]
    dc = [torch.zeros_like(v) for v in c]
    for x, y in zip(X, Y):
        gs, as_ = [_col(y)], [None]
        for j in range(n):
            a = G[j] @ gs[-1] + _col(c[j])
            as_.append(a)
            gs.append(f(a))
        a_x = G[n] @ gs[-1] + _col(c[n])
        if sigma_x == "sigmoid":
            x_hat = torch.sigmoid(a_x)
            delta = (x_hat - _col(x)) * x_hat * (1 - x_hat)
        else:
            delta = a_x - _col(x)
        for j in range(n, -1, -1):  # W←_{j+1}
            dG[j] += delta @ gs[j].T
            dc[j] += delta[:, 0]
            if j > 0:  # δa←_j = (W→_{N+1−j} δ←) ⊙ σ'(a←_j); W→_{N+1−j} is W[n−j]
                delta = (Wfb[n - j] @ delta) * df(as_[j])
    G = [g - lr * d for g, d in zip(G, dG)]
    c = [v - lr * d for v, d in zip(c, dc)]
    return W, b, G, c


def bdfa_step(W, b, B, X, Y, lr: float, lr_b: float, f, df, update: str = "code",
              target: str = "none", alpha: float = 0.25):
    """One BDFA batch (eq 36–42 as the authors' code reads them). ``B[l]`` (n_out × n_{l+1}) feeds
    hidden layer ``l+1`` and is trained on that layer's activity. Returns ``(W, b, B)``."""
    n = len(W) - 1
    dW = [torch.zeros_like(w) for w in W]
    db = [torch.zeros_like(v) for v in b]
    dB = [torch.zeros_like(m) for m in B]
    for x, y in zip(X, Y):
        hs, as_ = [_col(x)], [None]
        for k in range(n):
            a = W[k] @ hs[-1] + _col(b[k])
            as_.append(a)
            hs.append(f(a))
        a_y = W[n] @ hs[-1] + _col(b[n])
        y_hat = torch.sigmoid(a_y)
        e = y_hat - _col(y)
        dW[n] += e @ hs[n].T
        db[n] += e[:, 0]
        for l in range(1, n + 1):
            delta = (B[l - 1].T @ e) * df(as_[l])  # B stored (n_out × n_l): B_lᵀ e in columns
            dW[l - 1] += delta @ hs[l - 1].T
            db[l - 1] += delta[:, 0]
        if target == "none":
            yp = _col(y)
        elif target == "paper":
            yp = _col(y) + alpha * y_hat
        else:
            yp = alpha * y_hat.clone()
            yp[int(torch.argmax(y))] = 1.0
        for l in range(1, n + 1):
            a_back = B[l - 1].T @ yp  # a←_l = W←_l y′ (eq 39)
            s = torch.sigmoid((a_back * hs[l]).sum())
            coef = (1 - s) if update == "code" else s * (1 - s)
            dB[l - 1] += coef * (yp @ hs[l].T)  # ascent direction
    W = [w - lr * d for w, d in zip(W, dW)]
    b = [v - lr * d for v, d in zip(b, db)]
    B = [m + lr_b * d for m, d in zip(B, dB)]
    return W, b, B
