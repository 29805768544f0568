"""Fast ghost-unit dynamics in torch: the same numbers as :mod:`.circuit`'s literal steps.

What is saved per Euler step:

* the clamped input projection ``P = r_0 W_0ᵀ + b_0`` is computed once per batch;
* while ``W_0`` learns (MA's weakly-clamped phase, MA′ always) its per-step updates
  ``ΔW_0 = c D_nᵀ r_0`` reach the batch through the Gram matrix: ``r_0 W_0(n)ᵀ = P + c G A_n``
  with ``G = r_0 r_0ᵀ (+1 for a bias)`` and ``A_n = Σ_{m<n} D_m`` (a ``B×B·B×n_1`` product
  instead of ``B×n_0·n_0×n_1``); ``W_0`` itself is updated once, at the end;
* GEMMs that share an operand are fused: ``[W_h; Vf_h] r_h`` gives the next layer's drive and
  the ghost units' drive, ``[Wb_h, −Vb_h] [r_{h+1}; ρ(g_h)]`` gives ``e_h = t_h − c_h``, and in
  MA′ ``[D_{h+1}; s_{h+1} − g_h]ᵀ r_h`` gives the W and V^f updates;
* every buffer is preallocated per batch size and all work is in place under ``no_grad``.

Synchronous (pre-step) semantics as in :func:`.circuit.literal_step`.
"""

from __future__ import annotations

import torch

from .circuit import SCHEDULES, Circuit, HParams, _red, _red_v, input_rate, mb_weight_update

Tensor = torch.Tensor


class FastCircuit:
    """Working copies of one circuit's weights in fused layouts, for one batch at a time."""

    def __init__(self, c: Circuit, hp: HParams) -> None:
        self.c, self.hp = c, hp
        self.L = c.L
        self.n = [c.W[0].shape[1]] + [w.shape[0] for w in c.W]
        self.k = [0] + [c.Vf[h].shape[0] for h in range(1, self.L)]
        self._bufs: dict[int, dict[str, list]] = {}

    def _buffers(self, B: int, like: Tensor) -> dict[str, list]:
        if B in self._bufs:
            return self._bufs[B]
        L, n, k = self.L, self.n, self.k
        z = like.new_zeros
        R = [None] + [z(B, n[h + 1] + k[h]) for h in range(1, L)]       # [r_{h+1} | ρ(g_h)]
        r = [None] + [z(B, n[1])] + [R[l - 1][:, :n[l]] for l in range(2, L + 1)]
        rg = [None] + [R[h][:, n[h + 1]:] for h in range(1, L)]
        bufs = {
            "R": R, "r": r, "rg": rg,
            "Z": [None] + [z(B, n[h + 1] + k[h]) for h in range(1, L)],  # [b_{h+1} | Vf r_h]
            "E": [None] + [z(B, n[h]) for h in range(1, L)] + [z(B, n[L])],
            "D": [None] + [z(B, n[l]) for l in range(1, L + 1)],
            "Q": [None] + [z(B, n[h + 1] + k[h]) for h in range(1, L)],
            "b1": [z(B, n[1])],
            "T": [None] + [z(B, n[l]) for l in range(1, L + 1)],
        }
        self._bufs = {B: bufs}
        return bufs

    @torch.no_grad()
    def run(self, x: Tensor, target: Tensor, model: str, free_steps: int, clamped_steps: int) -> None:
        c, hp, L, n = self.c, self.hp, self.L, self.n
        B = x.shape[0]
        bufs = self._buffers(B, c.W[0])
        R, r, rg, Z, E, D, Q, T = (bufs[key] for key in ("R", "r", "rg", "Z", "E", "D", "Q", "T"))
        b1 = bufs["b1"][0]
        red, red_v, kdt = _red(hp, B), _red_v(hp, B), hp.dt / hp.tau
        r0 = input_rate(x, hp)
        WV = [None] + [torch.cat([c.W[h], c.Vf[h]], 0) for h in range(1, L)]
        # [Wb_h, −Vb_h]ᵀ, (n_{h+1} + k_h, n_h): e_h = [r_{h+1} | ρ(g_h)] M_h, and ΔVb_hᵀ = c ρ(g_h)ᵀ e_h
        # is a (k × B)(B × n_h) product into contiguous rows (the (n_h × B)(B × k) product into a
        # column block of [Wb_h, −Vb_h] ran several times slower on one CPU thread)
        M = [None] + [torch.cat([c.Wb[h].t(), -c.Vb[h].t()], 0) for h in range(1, L)]
        P = r0 @ c.W[0].t()
        if c.bias[0] is not None:
            P += c.bias[0]
        free, clamped = SCHEDULES[model]
        w0_learns = "W" in free + clamped
        gram = w0_learns and hp.weight_clip is None
        cw0 = hp.eta_w[0] * hp.dt * red
        if gram:
            G = r0 @ r0.t()
            if c.bias[0] is not None:
                G += 1.0
            A = torch.zeros_like(b1)
        a_used = False
        s, g = c.s, c.g
        phases = ((free_steps, 0.0, free), (clamped_steps, hp.beta, clamped))
        for steps, beta, plastic in phases:
            do_vf, do_vb, do_w = ("Vf" in plastic), ("Vb" in plastic), ("W" in plastic)
            for _ in range(steps):
                # rates of the pre-step state
                for l in range(1, L + 1):
                    torch.sigmoid(s[l], out=r[l])
                for h in range(1, L):
                    torch.sigmoid(g[h], out=rg[h])
                # drives: b_1 from the cached projection, [b_{h+1} | Vf_h r_h] fused
                if gram and a_used:
                    torch.addmm(P, G, A, alpha=cw0, out=b1)
                    drive1 = b1
                else:
                    drive1 = P
                for h in range(1, L):
                    torch.mm(r[h], WV[h].t(), out=Z[h])
                    if c.bias[h] is not None:
                        Z[h][:, :n[h + 1]] += c.bias[h]
                # errors e_h = [Wb_h, −Vb_h][r_{h+1}; ρ(g_h)], output nudge
                for h in range(1, L):
                    torch.mm(R[h], M[h], out=E[h])
                nudged = beta != 0.0
                if nudged:
                    torch.sub(r[L], target, out=E[L]).mul_(-2.0 * beta)
                # plasticity terms that need the pre-step s, g
                if do_w:
                    for l in range(1, L + 1):
                        if l == L and not nudged:
                            D[l].zero_()
                        else:
                            torch.addcmul(r[l], r[l], r[l], value=-1.0, out=D[l]).mul_(E[l])
                if do_vf:
                    for h in range(1, L):
                        torch.sub(s[h + 1], g[h], out=Q[h][:, n[h + 1]:])
                        if do_w and hp.eta_v[h] != 0.0:
                            Q[h][:, :n[h + 1]].copy_(D[h + 1]).mul_(hp.eta_w[h] * red / (hp.eta_v[h] * red_v))
                # state update (eqs 2-3)
                for l in range(1, L + 1):  # s ← s + k(−s + b + e) = lerp(s, b + e, k)
                    drive = drive1 if l == 1 else Z[l - 1][:, :n[l]]
                    if l < L or nudged:
                        s[l].lerp_(torch.add(drive, E[l], out=T[l]), kdt)
                    else:
                        s[l].lerp_(drive, kdt)
                for h in range(1, L):
                    g[h].lerp_(Z[h][:, n[h + 1]:], kdt)
                # weight updates
                for h in range(1, L):
                    cv = hp.eta_v[h] * hp.dt * red_v
                    if do_vf and do_w and hp.eta_v[h] != 0.0:  # [ΔW_h; ΔVf_h] in one GEMM
                        WV[h].addmm_(Q[h].t(), r[h], alpha=cv)
                    else:
                        if do_vf:
                            WV[h][n[h + 1]:].addmm_(Q[h][:, n[h + 1]:].t(), r[h], alpha=cv)
                        if do_w:
                            WV[h][:n[h + 1]].addmm_(D[h + 1].t(), r[h], alpha=hp.eta_w[h] * hp.dt * red)
                    if do_w and c.bias[h] is not None:
                        c.bias[h].add_(D[h + 1].sum(0), alpha=hp.eta_w[h] * hp.dt * red)
                    if do_vb:
                        mvb = M[h][n[h + 1]:]  # −Vb_hᵀ
                        if hp.clip_dvb is None:
                            mvb.addmm_(rg[h].t(), E[h], alpha=-cv)
                        else:
                            bound = hp.clip_dvb
                            if hp.clip_on == "derivative":
                                dv = (rg[h].t() @ E[h]).mul_(hp.eta_v[h] * red_v).clamp_(-bound, bound)
                                dv.mul_(hp.dt)
                            else:
                                dv = (rg[h].t() @ E[h]).mul_(cv).clamp_(-bound, bound)
                            mvb.sub_(dv)
                    if hp.weight_clip is not None:
                        if do_w:
                            WV[h][:n[h + 1]].clamp_(-hp.weight_clip, hp.weight_clip)
                        if do_vf:
                            WV[h][n[h + 1]:].clamp_(-hp.weight_clip, hp.weight_clip)
                        if do_vb:
                            M[h][n[h + 1]:].clamp_(-hp.weight_clip, hp.weight_clip)
                    if do_w and hp.transpose:
                        M[h][:n[h + 1]].copy_(WV[h][:n[h + 1]])
                if do_w:
                    if gram:
                        A.add_(D[1])
                        a_used = True
                    else:
                        c.W[0].addmm_(D[1].t(), r0, alpha=cw0)
                        _clip(c.W[0], hp.weight_clip)
                        if c.bias[0] is not None:
                            c.bias[0].add_(D[1].sum(0), alpha=cw0)
                        torch.mm(r0, c.W[0].t(), out=P)
                        if c.bias[0] is not None:
                            P += c.bias[0]
        # write the working copies back
        for h in range(1, L):
            c.W[h].copy_(WV[h][:n[h + 1]])
            c.Vf[h].copy_(WV[h][n[h + 1]:])
            c.Vb[h].copy_(M[h][n[h + 1]:].t()).neg_()
            c.Wb[h].copy_(M[h][:n[h + 1]].t())
        if gram and a_used:
            c.W[0].addmm_(A.t(), r0, alpha=cw0)
            if c.bias[0] is not None:
                c.bias[0].add_(A.sum(0), alpha=cw0)
        if model == "MB":
            mb_weight_update(c, x, target, hp)


def _clip(t: Tensor, bound: float | None) -> None:
    if bound is not None:
        t.clamp_(-bound, bound)
