"""MB's per-example loop (Algorithm 2) compiled with numba, for CPU tensors.

Batch size 1 makes each Euler step a handful of matrix-vector products on a few hundred
numbers: in torch that is ~30 dispatches of a few microseconds each, so the loop is
dispatch-bound. This kernel runs the whole example (free phase with eq 15, weakly-clamped
phase, eq 16 at the end) in one compiled call on the tensors' memory (numpy views, updated in
place). It computes exactly what :func:`.circuit.literal_example` does for ``model="MB"``
(same pre-step synchronous semantics; only the summation order differs). TF reads the
feedback as ``W_hᵀ`` directly and re-sets ``Wb_h = W_hᵀ`` after the update.

Without numba, :data:`AVAILABLE` is False and the rule falls back to :mod:`.fast` in torch.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .circuit import Circuit, HParams

try:  # pragma: no cover - exercised when numba is installed
    import numba
    from numba.typed import List as _TypedList

    AVAILABLE = True
except ImportError:  # pragma: no cover
    numba = None
    AVAILABLE = False


def _sig(v: np.ndarray, out: np.ndarray) -> None:
    for i in range(v.shape[0]):
        out[i] = 1.0 / (1.0 + math.exp(-v[i]))


def _matvec(A: np.ndarray, v: np.ndarray, out: np.ndarray) -> None:
    """out = A v (A row-major)."""
    for i in range(A.shape[0]):
        acc = 0.0
        for j in range(A.shape[1]):
            acc += A[i, j] * v[j]
        out[i] = acc


def _matvec_t(A: np.ndarray, v: np.ndarray, out: np.ndarray) -> None:
    """out = Aᵀ v (A row-major)."""
    out[:] = 0.0
    for i in range(A.shape[0]):
        vi = v[i]
        for j in range(A.shape[1]):
            out[j] += A[i, j] * vi


def _example(x, target, Ws, bs, has_bias, Wbs, Vfs, Vbs, s, g, dt, tau, beta, eta_w, eta_v,
             transpose, free_steps, clamped_steps, weight_clip, input_rho, out):
    L = len(Ws)
    kdt = dt / tau
    r0 = np.empty_like(x)
    if input_rho:
        _sig(x, r0)
    else:
        r0[:] = x
    P = np.empty_like(s[1])
    _matvec(Ws[0], r0, P)
    if has_bias[0]:
        P += bs[0]
    # the plain feedforward output before this example's update (what the trainer reports)
    ff = np.empty_like(P)
    _sig(P, ff)
    for l in range(1, L):
        nxt = np.empty_like(s[l + 1])
        _matvec(Ws[l], ff, nxt)
        if has_bias[l]:
            nxt += bs[l]
        ff = np.empty_like(nxt)
        _sig(nxt, ff)
    out[:] = ff
    r = [r0]
    e = [r0[:0]]
    drive = [r0[:0]]
    rg = [r0[:0]]
    gd = [r0[:0]]
    for l in range(1, L + 1):
        r.append(np.empty_like(s[l]))
        e.append(np.zeros_like(s[l]))
        drive.append(np.empty_like(s[l]))
    for h in range(1, L):
        rg.append(np.empty_like(g[h]))
        gd.append(np.empty_like(g[h]))
    tmp = [r0[:0]]
    for h in range(1, L):
        tmp.append(np.empty_like(s[h]))
    for step in range(free_steps + clamped_steps + 1):
        final = step == free_steps + clamped_steps
        free = step < free_steps
        b_now = 0.0 if free else beta
        for l in range(1, L + 1):
            _sig(s[l], r[l])
        for h in range(1, L):
            _sig(g[h], rg[h])
        for h in range(1, L):  # e_h = t_h − c_h
            if transpose:
                _matvec_t(Ws[h], r[h + 1], e[h])
            else:
                _matvec(Wbs[h], r[h + 1], e[h])
            _matvec(Vbs[h], rg[h], tmp[h])
            e[h] -= tmp[h]
        for j in range(r[L].shape[0]):
            e[L][j] = -2.0 * b_now * (r[L][j] - target[j])
        if final:
            break
        drive[1][:] = P
        for l in range(2, L + 1):
            _matvec(Ws[l - 1], r[l - 1], drive[l])
            if has_bias[l - 1]:
                drive[l] += bs[l - 1]
        for h in range(1, L):
            _matvec(Vfs[h], r[h], gd[h])
        for l in range(1, L + 1):
            sl = s[l]
            for i in range(sl.shape[0]):
                sl[i] += kdt * (-sl[i] + drive[l][i] + e[l][i])
        for h in range(1, L):
            gh = g[h]
            for i in range(gh.shape[0]):
                gh[i] += kdt * (-gh[i] + gd[h][i])
        if free:  # eq 15
            for h in range(1, L):
                c = eta_v[h] * dt
                V = Vbs[h]
                for i in range(V.shape[0]):
                    ci = c * e[h][i]
                    for j in range(V.shape[1]):
                        V[i, j] += ci * rg[h][j]
                        if weight_clip >= 0.0:
                            V[i, j] = min(max(V[i, j], -weight_clip), weight_clip)
    # eq 16 from the final state (r, e hold its values)
    for l in range(1, L + 1):
        W = Ws[l - 1]
        rp = r[l - 1]
        for i in range(W.shape[0]):
            d = eta_w[l - 1] * e[l][i] * r[l][i] * (1.0 - r[l][i])
            for j in range(W.shape[1]):
                W[i, j] += d * rp[j]
                if weight_clip >= 0.0:
                    W[i, j] = min(max(W[i, j], -weight_clip), weight_clip)
            if has_bias[l - 1]:
                bs[l - 1][i] += d
        if transpose and l >= 2:  # TF: W^b = Wᵀ after the update
            Wb = Wbs[l - 1]
            for i in range(W.shape[0]):
                for j in range(W.shape[1]):
                    Wb[j, i] = W[i, j]


if AVAILABLE:  # pragma: no branch
    _FM = {"reassoc", "contract", "nsz", "arcp"}  # vectorised sums and FMA; NaN/inf semantics kept
    _sig = numba.njit(cache=True, fastmath=_FM)(_sig)
    _matvec = numba.njit(cache=True, fastmath=_FM)(_matvec)
    _matvec_t = numba.njit(cache=True, fastmath=_FM)(_matvec_t)
    _example = numba.njit(cache=True, fastmath=_FM)(_example)


def _np(t: torch.Tensor | None, like: torch.Tensor) -> np.ndarray:
    if t is None:
        return np.zeros((0,) * like.dim(), dtype=like.detach().numpy().dtype)
    if not t.is_contiguous():
        raise ValueError("the MB kernel works in place on contiguous tensors")
    return t.detach().numpy()


class MBKernel:
    """Numpy views of a CPU circuit, passed to the compiled example loop."""

    def __init__(self, c: Circuit, hp: HParams) -> None:
        if not AVAILABLE:
            raise RuntimeError("numba is not installed")
        self.c, self.hp = c, hp
        L = c.L
        w2, w1 = c.W[0], c.W[0][0]
        self.Ws = _TypedList([_np(w, w2) for w in c.W])
        self.bs = _TypedList([_np(b, w1) for b in c.bias])
        self.has_bias = np.array([b is not None for b in c.bias])
        self.Wbs = _TypedList([_np(c.Wb[h] if h else None, w2) for h in range(L)])
        self.Vfs = _TypedList([_np(c.Vf[h] if h else None, w2) for h in range(L)])
        self.Vbs = _TypedList([_np(c.Vb[h] if h else None, w2) for h in range(L)])
        self.eta_w = np.asarray(hp.eta_w, dtype=np.float64)
        self.eta_v = np.asarray(hp.eta_v, dtype=np.float64)

    def run(self, x: torch.Tensor, target: torch.Tensor, free_steps: int, clamped_steps: int) -> torch.Tensor:
        """Run one example in place; returns the feedforward output ρ(s̃_L) before the update."""
        c, hp = self.c, self.hp
        out = c.W[-1].new_empty(1, c.W[-1].shape[0])
        w1 = c.W[0][0]
        key = tuple(t.data_ptr() for t in c.s[1:] + c.g[1:])
        if getattr(self, "_state_key", None) != key:  # typed lists are slow to build: cache them
            self._s = _TypedList([_np(c.s[l][0] if l else None, w1) for l in range(c.L + 1)])
            self._g = _TypedList([_np(c.g[h][0] if h else None, w1) for h in range(c.L)])
            self._state_key = key
        clip = -1.0 if hp.weight_clip is None else float(hp.weight_clip)
        _example(x[0].detach().numpy(), target[0].detach().numpy(), self.Ws, self.bs, self.has_bias,
                 self.Wbs, self.Vfs, self.Vbs, self._s, self._g, float(hp.dt), float(hp.tau), float(hp.beta),
                 self.eta_w, self.eta_v, bool(hp.transpose), int(free_steps), int(clamped_steps),
                 clip, hp.input_rate == "rho", out[0].numpy())
        return out
