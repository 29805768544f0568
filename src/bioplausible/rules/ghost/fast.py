"""Fast ghost-unit dynamics in torch: the same numbers as :mod:`.circuit`'s literal steps.

What is saved per Euler step:

* the clamped input projection ``P = r_0 W_0ᵀ + b_0`` is computed once per batch;
* while ``W_0`` learns (MA's weakly-clamped phase, MA′ always) its per-step updates
  ``ΔW_0 = c D_nᵀ r_0`` reach the batch through the Gram matrix: ``r_0 W_0(n)ᵀ = P + G A_n``
  with ``G = r_0 r_0ᵀ (+1 for a bias)`` and ``A_n = Σ_{m<n} c D_m`` (a ``B×B·B×n_1`` product
  instead of ``B×n_0·n_0×n_1``); ``W_0`` itself is updated once, at the end (with
  ``weight_clip`` it is updated and clamped every step, and ``P`` recomputed);
* GEMMs that share an operand are fused: ``[W_h; Vf_h] r_h`` gives the next layer's drive and
  the ghost units' drive, ``[Wb_h, −Vb_h] [r_{h+1}; ρ(g_h)]`` gives ``e_h = t_h − c_h``, and in
  MA′ ``[D_{h+1}; s_{h+1} − g_h]ᵀ r_h`` gives the W and V^f updates;
* every buffer is preallocated per batch size, the views the loop uses are made once per
  batch, and all work is in place under ``no_grad``.

Synchronous (pre-step) semantics as in :func:`.circuit.literal_step`.

One loop, :func:`euler_runs`, serves one circuit and a stack of R runs alike: every weight, bias,
state and buffer carries a leading run dimension and the learning rates are ``(R, 1, 1)`` tensors
(the runs of a stack may differ by ``eta_w`` and ``eta_v``). :class:`FastCircuit` calls it with
R = 1 on views of the circuit's tensors; the stacked ghost step
(:mod:`bioplausible.engine.stacked.ghost`) calls it on groups of runs.
"""

from __future__ import annotations

import torch

from .circuit import SCHEDULES, Circuit, HParams, _red, _red_v, input_rate, mb_weight_update

Tensor = torch.Tensor


def run_buffers(R: int, B: int, n: list[int], k: list[int], like: Tensor) -> dict[str, list]:
    """The loop's work tensors for R runs of a batch of B (``n``: layer sizes, ``k``: ghost units)."""
    L = len(n) - 1
    z = like.new_zeros
    Rc = [None] + [z(R, B, n[h + 1] + k[h]) for h in range(1, L)]       # [r_{h+1} | ρ(g_h)]
    return {
        "R": Rc,
        "r": [None] + [z(R, B, n[1])] + [Rc[l - 1][..., :n[l]] for l in range(2, L + 1)],
        "rg": [None] + [Rc[h][..., n[h + 1]:] for h in range(1, L)],
        "Z": [None] + [z(R, B, n[h + 1] + k[h]) for h in range(1, L)],  # [b_{h+1} | Vf r_h]
        "E": [None] + [z(R, B, n[l]) for l in range(1, L + 1)],
        "D": [None] + [z(R, B, n[l]) for l in range(1, L + 1)],
        "Q": [None] + [z(R, B, n[h + 1] + k[h]) for h in range(1, L)],
        "T": [None] + [z(R, B, n[l]) for l in range(1, L + 1)],
        "b1": [z(R, B, n[1])],
    }


@torch.no_grad()
def euler_runs(W: list[Tensor], bias: list[Tensor | None], Wb: list, Vf: list, Vb: list, s: list, g: list,
               x: Tensor, target: Tensor, hp: HParams, model: str, free_steps: int, clamped_steps: int,
               eta_w: list[Tensor], eta_v: list, bufs: dict[str, list]) -> None:
    """Both phases (free, then weakly clamped) on one batch of R runs, in place.

    Shapes: ``W[l]`` (R, n_{l+1}, n_l), ``bias[l]`` (R, n_{l+1}) or None, ``Wb[h]`` (R, n_h, n_{h+1}),
    ``Vf[h]`` (R, k_h, n_h), ``Vb[h]`` (R, n_h, k_h), ``s[l]`` (R, B, n_l), ``g[h]`` (R, B, k_h), ``x``
    (R, B, n_0), ``target`` (R, B, n_L); ``eta_w[l]``, ``eta_v[h]``: (R, 1, 1) rates; ``bufs`` from
    :func:`run_buffers`. Every other number (dt, τ, β, the reductions, the clips, TF/FA) is ``hp``'s.
    MB's W update (eq 16) is the caller's.
    """
    L = len(W)
    R, B = x.shape[0], x.shape[1]
    n = [W[0].shape[2]] + [w.shape[1] for w in W]
    Rc, r, rg, Z, E, D, Q, T = (bufs[key] for key in ("R", "r", "rg", "Z", "E", "D", "Q", "T"))
    b1 = bufs["b1"][0]
    red, red_v, kdt = _red(hp, B), _red_v(hp, B), hp.dt / hp.tau
    cw = [e * (hp.dt * red) for e in eta_w]                                # (R, 1, 1) per matrix
    cv = [None] + [e * (hp.dt * red_v) for e in eta_v[1:]]
    clip = hp.weight_clip
    r0 = input_rate(x, hp)
    WV = [None] + [torch.cat([W[h], Vf[h]], 1) for h in range(1, L)]      # (R, n_{h+1} + k_h, n_h)
    # [Wb_h, −Vb_h]ᵀ, (R, n_{h+1} + k_h, n_h): e_h = [r_{h+1} | ρ(g_h)] M_h, and ΔVb_hᵀ = c ρ(g_h)ᵀ e_h
    # is a (k × B)(B × n_h) product into contiguous rows (the (n_h × B)(B × k) product into a
    # column block of [Wb_h, −Vb_h] ran several times slower on one CPU thread)
    M = [None] + [torch.cat([Wb[h].transpose(1, 2), Vb[h].transpose(1, 2).neg()], 1) for h in range(1, L)]
    # views used every step, made once: [b_{h+1} | Vf r_h] = Z_h, Q_h = [Q^W_h | Q^V_h], WV_h = [W_h; Vf_h],
    # M_h = [Wb_hᵀ; −Vb_hᵀ]
    WVt = [None] + [WV[h].transpose(1, 2) for h in range(1, L)]
    WVw = [None] + [WV[h][:, :n[h + 1]] for h in range(1, L)]
    WVv = [None] + [WV[h][:, n[h + 1]:] for h in range(1, L)]
    Mw = [None] + [M[h][:, :n[h + 1]] for h in range(1, L)]
    Mv = [None] + [M[h][:, n[h + 1]:] for h in range(1, L)]
    Zb = [None] + [Z[h][..., :n[h + 1]] for h in range(1, L)]
    Zg = [None] + [Z[h][..., n[h + 1]:] for h in range(1, L)]
    Qw = [None] + [Q[h][..., :n[h + 1]] for h in range(1, L)]
    Qv = [None] + [Q[h][..., n[h + 1]:] for h in range(1, L)]
    Qt = [None] + [Q[h].transpose(1, 2) for h in range(1, L)]
    Qvt = [None] + [q.transpose(1, 2) for q in Qv[1:]]
    rgt = [None] + [q.transpose(1, 2) for q in rg[1:]]
    bias_b = [None if b is None else b.unsqueeze(1) for b in bias]       # (R, 1, n) for the batch
    cw_b = [c.view(R, 1) for c in cw]                                      # (R, 1) for the biases
    P = torch.bmm(r0, W[0].transpose(1, 2))
    if bias[0] is not None:
        P.add_(bias[0].unsqueeze(1))
    free, clamped = SCHEDULES[model]
    w0_learns = "W" in free + clamped
    gram = w0_learns and clip is None   # with weight_clip W_0 is updated and clamped every step
    if gram:
        G = torch.bmm(r0, r0.transpose(1, 2))
        if bias[0] is not None:
            G.add_(1.0)
        A = torch.zeros_like(b1)                                           # Σ c_W D_1 so far
    a_used = False
    for steps, beta, plastic in ((free_steps, 0.0, free), (clamped_steps, hp.beta, clamped)):
        do_vf, do_vb, do_w = ("Vf" in plastic), ("Vb" in plastic), ("W" in plastic)
        nudged = beta != 0.0
        for _ in range(steps):
            # rates of the pre-step state
            for l in range(1, L + 1):
                torch.sigmoid(s[l], out=r[l])
            for h in range(1, L):
                torch.sigmoid(g[h], out=rg[h])
            # drives: b_1 from the cached projection, [b_{h+1} | Vf_h r_h] fused
            if gram and a_used:
                torch.baddbmm(P, G, A, out=b1)
                drive1 = b1
            else:
                drive1 = P
            for h in range(1, L):
                torch.bmm(r[h], WVt[h], out=Z[h])
                if bias[h] is not None:
                    Zb[h].add_(bias_b[h])
            # errors e_h = [Wb_h, −Vb_h][r_{h+1}; ρ(g_h)], output nudge
            for h in range(1, L):
                torch.bmm(Rc[h], M[h], out=E[h])
            if nudged:
                torch.sub(r[L], target, out=E[L]).mul_(-2.0 * beta)
            # plasticity terms that need the pre-step s, g: D_l = e_l ⊙ ρ′(s_l), Q_h = [c_W D_{h+1} | c_V (s_{h+1} − g_h)]
            if do_w:
                for l in range(1, L + 1):
                    if l == L and not nudged:
                        D[l].zero_()
                    else:
                        torch.addcmul(r[l], r[l], r[l], value=-1.0, out=D[l]).mul_(E[l])
            if do_vf:
                for h in range(1, L):
                    torch.sub(s[h + 1], g[h], out=Qv[h]).mul_(cv[h])
                    if do_w:
                        torch.mul(D[h + 1], cw[h], out=Qw[h])
            # state update (eqs 2-3): s ← s + k(−s + b + e) = lerp(s, b + e, k)
            for l in range(1, L + 1):
                drive = drive1 if l == 1 else Zb[l - 1]
                if l < L or nudged:
                    s[l].lerp_(torch.add(drive, E[l], out=T[l]), kdt)
                else:
                    s[l].lerp_(drive, kdt)
            for h in range(1, L):
                g[h].lerp_(Zg[h], kdt)
            # weight updates
            for h in range(1, L):
                if do_vf and do_w:  # [ΔW_h; ΔVf_h] in one product
                    WV[h].baddbmm_(Qt[h], r[h])
                elif do_vf:
                    WVv[h].baddbmm_(Qvt[h], r[h])
                elif do_w:
                    WVw[h].baddbmm_(torch.mul(D[h + 1], cw[h]).transpose(1, 2), r[h])
                if do_w and bias[h] is not None:
                    bias[h].addcmul_(D[h + 1].sum(1), cw_b[h])
                if do_vb:  # Mv = −Vb_hᵀ
                    if hp.clip_dvb is None:
                        Mv[h].baddbmm_(torch.mul(rg[h], cv[h]).transpose(1, 2), E[h], alpha=-1.0)
                    else:
                        dv = torch.bmm(rgt[h], E[h])
                        if hp.clip_on == "derivative":
                            dv.mul_(eta_v[h] * red_v).clamp_(-hp.clip_dvb, hp.clip_dvb).mul_(hp.dt)
                        else:
                            dv.mul_(cv[h]).clamp_(-hp.clip_dvb, hp.clip_dvb)
                        Mv[h].sub_(dv)
                if clip is not None:
                    if do_w:
                        WVw[h].clamp_(-clip, clip)
                    if do_vf:
                        WVv[h].clamp_(-clip, clip)
                    if do_vb:
                        Mv[h].clamp_(-clip, clip)
                if do_w and hp.transpose:
                    Mw[h].copy_(WVw[h])
            if do_w:
                if gram:
                    A.addcmul_(D[1], cw[0])
                    a_used = True
                else:
                    W[0].baddbmm_(torch.mul(D[1], cw[0]).transpose(1, 2), r0).clamp_(-clip, clip)
                    if bias[0] is not None:
                        bias[0].addcmul_(D[1].sum(1), cw_b[0])
                    torch.bmm(r0, W[0].transpose(1, 2), out=P)
                    if bias[0] is not None:
                        P.add_(bias_b[0])
    # write the working copies back
    for h in range(1, L):
        W[h].copy_(WVw[h])
        Vf[h].copy_(WVv[h])
        Vb[h].copy_(Mv[h].transpose(1, 2)).neg_()
        Wb[h].copy_(Mw[h].transpose(1, 2))
    if gram and a_used:
        W[0].baddbmm_(A.transpose(1, 2), r0)
        if bias[0] is not None:
            bias[0].add_(A.sum(1))


class FastCircuit:
    """One circuit through :func:`euler_runs` as a stack of one run (views with a leading 1)."""

    def __init__(self, c: Circuit, hp: HParams) -> None:
        self.c, self.hp = c, hp
        self.L = c.L
        self.n = [c.W[0].shape[1]] + [w.shape[0] for w in c.W]
        self.k = [0] + [c.Vf[h].shape[0] for h in range(1, self.L)]
        self._bufs: dict[int, dict[str, list]] = {}

    def _buffers(self, B: int, like: Tensor) -> dict[str, list]:
        if B not in self._bufs:
            self._bufs = {B: run_buffers(1, B, self.n, self.k, like)}
        return self._bufs[B]

    @torch.no_grad()
    def run(self, x: Tensor, target: Tensor, model: str, free_steps: int, clamped_steps: int) -> None:
        c, hp = self.c, self.hp
        like = c.W[0]

        def one(ts: list) -> list:
            return [None if t is None else t.unsqueeze(0) for t in ts]

        def rate(v: float) -> Tensor:
            return torch.full((1, 1, 1), v, dtype=like.dtype, device=like.device)

        euler_runs(one(c.W), one(c.bias), one(c.Wb), one(c.Vf), one(c.Vb), one(c.s), one(c.g),
                   x.unsqueeze(0), target.unsqueeze(0), hp, model, free_steps, clamped_steps,
                   [rate(e) for e in hp.eta_w], [None] + [rate(e) for e in hp.eta_v[1:self.L]],
                   self._buffers(x.shape[0], like))
        if model == "MB":
            mb_weight_update(c, x, target, hp)
