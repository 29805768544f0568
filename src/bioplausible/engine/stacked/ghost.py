"""Stacked ghost-unit rules (Mesnard et al. 2019): ``ghost-ma``, ``ghost-ma-prime``, ``ghost-mb``.

The rule's own Euler loop (:func:`bioplausible.rules.ghost.fast.euler_runs`, which the unstacked
:class:`~bioplausible.rules.ghost.fast.FastCircuit` runs with one run) over a leading run
dimension on every weight, ghost-unit weight, feedback matrix and circuit state. One explicit
Euler step of R runs is a handful of batched products (every quantity from the pre-step state,
as in Algorithms 1-2)::

    r_l = ρ(s_l)                                   ρ(g_h)
    [b_{h+1} | Vf_h r_h] = r_h [W_h; Vf_h]ᵀ         (one bmm per hidden layer)
    e_h = [r_{h+1} | ρ(g_h)] [Wb_h, −Vb_h]ᵀ         e_L = −2β (r_L − t)
    s ← s + dt/τ (−s + b + e)                      g ← g + dt/τ (−g + Vf r)
    [ΔW_h; ΔVf_h] = [c_W D_{h+1} | c_V (s_{h+1} − g_h)]ᵀ r_h          (eqs 4, 6)
    ΔVb_hᵀ = c_V ρ(g_h)ᵀ e_h   (MA′: clipped)                           (eq 5 / 15)

with ``D_l = e_l ⊙ ρ′(s_l)`` and the per-run rates ``c_W = η_W dt ⟨·⟩``, ``c_V = η_V dt ⟨·⟩``
(``(R, 1, 1)`` tensors: the runs of a stack may differ by ``eta_w`` and ``eta_v``, the rule's own
rates). While ``W_0`` learns its updates reach the batch through the Gram matrix
``G = r_0 r_0ᵀ`` as in the unstacked path; TF re-sets ``Wb = Wᵀ`` after every W update. The runs
step in groups (``chunk_bytes``), each group one call of the loop.
MB's W update (eq 16) follows the weakly-clamped phase; its circuit state ``s``, ``g`` is kept per
run and carried from one example to the next.

MB on CPU in float32/float64 with numba installed (what the unstacked rule uses there) runs
the rule's compiled per-example kernel (:mod:`bioplausible.rules.ghost.mb_kernel`) run by run on
views of the stacked tensors: at batch 1 the torch loop is bound by dispatch, and the
kernel computes exactly what the unstacked rule computes.

A step on which a run records its diagnostics (``diagnostics_every``) is taken run by run by the
rules themselves (the Fig. 4-5 traces need the literal solver): the stack is written back, every
run steps, the stack is read again.
"""

from __future__ import annotations

from typing import Any

import torch

from ...errors import DivergenceError
from .relaxation import RunsDiverged
from .steps import StackedRule

#: options whose values may differ between the runs of one stack (the rule's own learning rates)
RATE_OPTIONS = ("eta_w", "eta_v")


class StackedGhost(StackedRule):
    name = "ghost-ma"
    feedback_in_step = True   # W^b (TF), V^f, V^b and MB's state change inside the step
    forward_in_step = True    # the rule applies the W updates itself
    per_run_options = RATE_OPTIONS
    inference_step = False  # a diagnostics step runs the rules' own (autograd) steps run by run

    # ----------------------------------------------------------------- state
    def setup(self) -> None:
        from ...rules.ghost.circuit import SCHEDULES

        lead = self.rules[0]
        cfg = lead.config
        if cfg["solver"] != "fast" or (cfg["weight_clip"] is not None and lead.model == "MB"):
            raise ValueError(f"{lead.name} with solver={cfg['solver']!r}, weight_clip={cfg['weight_clip']!r} "
                             "has no stacked step")
        self.name = lead.name
        self.model = lead.model
        self.free_steps, self.clamped_steps = int(cfg["free_steps"]), int(cfg["clamped_steps"])
        self.schedule = SCHEDULES[self.model]
        self.state_init = cfg["state_init"]
        self.names = list(lead._owned_meta) + [n for n in lead.owned.state_dict() if n not in lead._owned_meta]
        self._collect()
        self.steps = [rule._steps for rule in self.rules]
        self._bufs: dict[int, dict[str, list]] = {}
        self._kernel: tuple | None = None

    def _collect(self) -> None:
        L = self.net.depth
        self.runs = {n: [rule._get(n) for rule in self.rules] for n in self.names}
        with torch.no_grad():
            self.T = {n: torch.stack([t.detach() for t in runs]).contiguous() for n, runs in self.runs.items()}
        self._views(L)

    def _views(self, L: int) -> None:
        T = self.T
        self.Wb = [None] + [T[f"Wb.{h}"] for h in range(1, L)]
        self.Vf = [None] + [T[f"Vf.{h}"] for h in range(1, L)]
        self.Vb = [None] + [T[f"Vb.{h}"] for h in range(1, L)]
        if self.model == "MB":
            self.S = [None] + [T[f"state.s.{l}"] for l in range(1, L + 1)]
            self.G = [None] + [T[f"state.g.{h}"] for h in range(1, L)]
            self.started = T["state.started"]
        self._kernel = None

    def feedback_tensors(self) -> dict[str, list]:
        return {"ghost": [(self.T[n], self.runs[n]) for n in self.names]}

    def select_rule(self, keep: list[int]) -> None:
        idx = torch.tensor(keep, device=self.net.W[0].device)
        self.T = {n: t.index_select(0, idx) for n, t in self.T.items()}
        self.runs = {n: [runs[r] for r in keep] for n, runs in self.runs.items()}
        self.steps = [self.steps[r] for r in keep]
        self._bufs = {}
        self._views(self.net.depth)

    def unstack_rule(self) -> None:
        for rule, steps in zip(self.rules, self.steps):
            rule._steps = steps

    def restack_rule(self) -> None:
        self.steps = [rule._steps for rule in self.rules]

    def refresh_rates(self) -> None:
        """Every run's η_W per forward matrix and η_V per hidden layer (the rule's options)."""
        L = self.net.depth
        like = self.net.W[0]
        self.hps = [rule.hparams(L) for rule in self.rules]
        self.hp = self.hps[0]

        def col(values: list[float]) -> torch.Tensor:
            return torch.tensor(values, dtype=like.dtype, device=like.device).view(-1, 1, 1)

        self.eta_w = [col([hp.eta_w[l] for hp in self.hps]) for l in range(L)]
        self.eta_v = [None] + [col([hp.eta_v[h] for hp in self.hps]) for h in range(1, L)]
        self._kernel = None

    # ------------------------------------------------------------------ step
    def _uses_kernel(self) -> bool:
        return self.model == "MB" and self.rules[0]._use_numba(self._probe_circuit())

    def _probe_circuit(self):
        from ...rules.ghost.circuit import Circuit

        return Circuit(W=[w[0] for w in self.net.W], bias=[], Wb=[], Vf=[], Vb=[])

    def _targets(self, y: torch.Tensor, K: int, like: torch.Tensor) -> torch.Tensor:
        R, B = y.shape[0], y.shape[1]
        if y.shape == (R, B, K) and y.is_floating_point():
            return y.to(like.dtype)
        return torch.zeros(R, B, K, dtype=like.dtype, device=like.device).scatter_(
            -1, y.reshape(R, B, 1).long(), 1.0)

    def _losses(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        R, B = out.shape[0], out.shape[1]
        per = self.loss_fn.per_sample(out.reshape(R * B, *out.shape[2:]), y.reshape(R * B, *y.shape[2:]))
        loss = per.reshape(R, B).sum(1)
        return loss if getattr(self.loss_fn, "reduction", "mean") == "sum" else loss / B

    def _diag_due(self) -> bool:
        every = self.rules[0].config["diagnostics_every"]
        return every > 0 and any(s % every == 0 for s in self.steps)

    def step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            if self._diag_due():
                return self._run_by_run(x, y)
            net = self.net
            R, B = x.shape[0], x.shape[1]
            xin = x.reshape(R, B, -1)
            target = self._targets(y, net.W[-1].shape[1], net.W[0])
            if self.model == "MB":
                out = self._mb_step(xin, target)
            else:
                out = net.forward(x)[-1]  # the plain feedforward output before the update
                s, g = self._initial_state(xin)
                self._euler(xin, target, s, g)
            loss = self._losses(out, y)
            self.steps = [n + 1 for n in self.steps]
            self._check(s if self.model != "MB" else self.S, loss, out)
        return loss, out

    def _run_by_run(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Every run steps itself (a diagnostics step); the stack is written back and read again."""
        self.unstack()
        losses, outs, messages = [], [], {}
        for k, (rule, model) in enumerate(zip(self.rules, self.net.models)):
            try:
                res = rule.train_step(model, x[k], y[k], self.loss_fn)
                losses.append(res.loss.reshape(()))
                outs.append(res.output)
            except DivergenceError as exc:
                messages[k] = str(exc)
                losses.append(torch.tensor(float("nan"), dtype=x.dtype, device=x.device))
                outs.append(None)
        self.restack()
        shape = next((o.shape for o in outs if o is not None), (x.shape[1], self.net.W[-1].shape[1]))
        out = torch.stack([o if o is not None else torch.full(shape, float("nan"), dtype=x.dtype, device=x.device)
                           for o in outs])
        loss = torch.stack([v.to(out.dtype) for v in losses])
        if messages:
            raise RunsDiverged(messages, loss, out)
        return loss, out

    def _check(self, s: list, loss: torch.Tensor, out: torch.Tensor) -> None:
        """The rule's check, run by run: a non-finite or too large |s|, or a non-finite loss."""
        thr = self.rules[0].config["divergence_threshold"]
        peak = torch.stack([t.abs().amax(dim=tuple(range(1, t.dim()))) for t in s[1:]]).amax(0)
        bad = ~torch.isfinite(peak) | ~torch.isfinite(loss)
        if thr is not None:
            bad |= peak > thr
        if not bool(bad.any()):
            return
        messages = {}
        for k in torch.nonzero(bad).flatten().tolist():
            messages[k] = str(DivergenceError(
                f"{self.name} diverged at training step {self.steps[k]}: the largest |s| is {float(peak[k]):.3g}. "
                "Try smaller eta_w / eta_v, a smaller beta, or weight_clip"))
        raise RunsDiverged(messages, loss, out)

    # ------------------------------------------------------------ the circuit
    def _rate0(self, x: torch.Tensor) -> torch.Tensor:
        from ...rules.ghost.circuit import input_rate

        return input_rate(x, self.hp)

    def _initial_state(self, xin: torch.Tensor) -> tuple[list, list]:
        """MA: ``s = s̃``, ``g = Vf ρ(s̃)`` (or zeros) at the start of every batch."""
        net, L = self.net, self.net.depth
        R, B = xin.shape[0], xin.shape[1]
        if self.state_init == "zero":
            return ([None] + [xin.new_zeros(R, B, w.shape[1]) for w in net.W],
                    [None] + [xin.new_zeros(R, B, self.Vf[h].shape[1]) for h in range(1, L)])
        r = self._rate0(xin)
        s, g = [None], [None]
        for l in range(L):
            a = torch.bmm(r, net.W[l].transpose(1, 2))
            if net.b[l] is not None:
                a.add_(net.b[l].unsqueeze(1))
            s.append(a)
            r = torch.sigmoid(a)
            if l + 1 < L:
                g.append(torch.bmm(r, self.Vf[l + 1].transpose(1, 2)))
        return s, g

    def _buffers(self, R: int, B: int, like: torch.Tensor) -> dict[str, list]:
        from ...rules.ghost.fast import run_buffers

        if (R, B) not in self._bufs:
            net, L = self.net, self.net.depth
            n = [net.W[0].shape[2]] + [w.shape[1] for w in net.W]
            k = [0] + [self.Vf[h].shape[1] for h in range(1, L)]
            if len(self._bufs) > 2:
                self._bufs = {}
            self._bufs[(R, B)] = run_buffers(R, B, n, k, like)
        return self._bufs[(R, B)]

    #: the runs step in groups whose (B, n) tensors together stay about this size: a group's
    #: element-wise passes then run from the cache (784-500-10 at batch 100, float32, one CPU
    #: thread: groups of 4 runs step ~15 % faster per run than all 8 at once)
    chunk_bytes: int = 1 << 20

    def _groups(self, B: int) -> list[slice]:
        R = self.net.R
        w = self.net.W[0]
        per_run = B * max(w.shape[1] for w in self.net.W) * w.element_size()  # the (B, n_l) state
        size = max(1, min(R, self.chunk_bytes // max(per_run, 1)))
        count = -(-R // size)
        size = -(-R // count)
        return [slice(lo, min(lo + size, R)) for lo in range(0, R, size)]

    def _euler(self, xin: torch.Tensor, target: torch.Tensor, s: list, g: list) -> None:
        """Both phases on one batch of every run, in place, a group of runs at a time."""
        for sl in self._groups(xin.shape[1]):
            self._euler_group(sl, xin[sl], target[sl], [None] + [t[sl] for t in s[1:]],
                              [None] + [t[sl] for t in g[1:]])

    def _euler_group(self, sl: slice, xin: torch.Tensor, target: torch.Tensor, s: list, g: list) -> None:
        """Both phases on one batch of the runs ``sl``: the rule's own loop (:func:`euler_runs`, what
        FastCircuit runs with one run) in place on views of the stacked tensors."""
        from ...rules.ghost.fast import euler_runs

        net = self.net
        W = [w[sl] for w in net.W]
        bias = [None if b is None else b[sl] for b in net.b]
        Wb, Vf, Vb = ([None] + [t[sl] for t in ts[1:]] for ts in (self.Wb, self.Vf, self.Vb))
        euler_runs(W, bias, Wb, Vf, Vb, s, g, xin, target, self.hp, self.model, self.free_steps,
                   self.clamped_steps, [e[sl] for e in self.eta_w], [None] + [e[sl] for e in self.eta_v[1:]],
                   self._buffers(xin.shape[0], xin.shape[1], W[0]))

    # -------------------------------------------------------------------- MB
    def _mb_step(self, xin: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """One example per run with the carried state (Algorithm 2); returns ρ(s̃_L) before it."""
        R, B = xin.shape[0], xin.shape[1]
        if B != 1:  # config_reason refuses these stacks; a direct caller gets the rule's message
            from ...errors import ConfigError

            raise ConfigError(f"{self.name} is faithful to the paper: one example per step with V^b and the "
                              f"circuit state carried over, so batch_size must be 1 (got {B})")
        carry = self.state_init == "carry"
        if not carry or not bool((self.started > 0).all()):
            s, g = self._initial_state(xin)
            fresh = (torch.ones(R, dtype=torch.bool, device=xin.device) if not carry
                     else self.started.view(R) <= 0)
            for mine, new in zip(self.S[1:] + self.G[1:], s[1:] + g[1:]):
                mine.copy_(torch.where(fresh.view(R, 1, 1), new, mine))
        if self._uses_kernel():
            out = self._mb_kernel_step(xin, target)
        else:
            out = self.net.forward(xin)[-1]
            self._euler(xin, target, self.S, self.G)
            self._mb_weights(self._rate0(xin), target, self.S, self.G)
        self.started.fill_(1.0)
        return out

    def _mb_weights(self, r0: torch.Tensor, target: torch.Tensor, s: list, g: list) -> None:
        """Eq 16 from the final state, no dt; TF re-sets ``Wb = Wᵀ``."""
        from ...rules.ghost.circuit import _red

        net, hp, L = self.net, self.hp, self.net.depth
        red = _red(hp, r0.shape[1])
        r = [r0] + [torch.sigmoid(s[l]) for l in range(1, L + 1)]
        e = [None] + [torch.bmm(r[h + 1], self.Wb[h].transpose(1, 2))
                      - torch.bmm(torch.sigmoid(g[h]), self.Vb[h].transpose(1, 2)) for h in range(1, L)]
        e.append((r[L] - target).mul_(-2.0 * hp.beta))
        for l in range(1, L + 1):
            delta = e[l] * r[l] * (1.0 - r[l])
            c = self.eta_w[l - 1] * red
            net.W[l - 1].baddbmm_(torch.mul(delta, c).transpose(1, 2), r[l - 1])
            if net.b[l - 1] is not None:
                net.b[l - 1].addcmul_(delta.sum(1), c.view(-1, 1))
        if hp.transpose:
            for h in range(1, L):
                self.Wb[h].copy_(net.W[h].transpose(1, 2))

    def _mb_kernel_step(self, xin: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The rule's compiled example loop, run by run on views of the stacked tensors."""
        from ...rules.ghost import mb_kernel

        net, L = self.net, self.net.depth
        if self._kernel is None:
            w2, w1 = net.W[0][0], net.W[0][0][0]
            TL = mb_kernel._TypedList
            import numpy as np

            per_run = []
            for k in range(net.R):
                per_run.append((
                    TL([w[k].numpy() for w in net.W]),
                    TL([mb_kernel._np(None if b is None else b[k], w1) for b in net.b]),
                    TL([mb_kernel._np(self.Wb[h][k] if h else None, w2) for h in range(L)]),
                    TL([mb_kernel._np(self.Vf[h][k] if h else None, w2) for h in range(L)]),
                    TL([mb_kernel._np(self.Vb[h][k] if h else None, w2) for h in range(L)]),
                    TL([mb_kernel._np(self.S[l][k][0] if l else None, w1) for l in range(L + 1)]),
                    TL([mb_kernel._np(self.G[h][k][0] if h else None, w1) for h in range(L)]),
                    np.asarray(self.hps[k].eta_w, dtype=np.float64),
                    np.asarray(self.hps[k].eta_v, dtype=np.float64)))
            self._kernel = (np.array([b is not None for b in net.b]), per_run)
        has_bias, per_run = self._kernel
        hp = self.hp
        out = net.W[-1].new_empty(net.R, 1, net.W[-1].shape[1])
        xs, ts, os_ = xin.numpy(), target.numpy(), out.numpy()
        args = (float(hp.dt), float(hp.tau), float(hp.beta))
        transpose, rho = bool(hp.transpose), hp.input_rate == "rho"
        for k, (Ws, bs, Wbs, Vfs, Vbs, s, g, eta_w, eta_v) in enumerate(per_run):
            mb_kernel._example(xs[k, 0], ts[k, 0], Ws, bs, has_bias, Wbs, Vfs, Vbs, s, g, *args, eta_w, eta_v,
                               transpose, self.free_steps, self.clamped_steps, -1.0, rho, os_[k, 0])
        return out


def ghost_reason(rule: str, options: dict[str, Any], config) -> str | None:
    """Why runs of a ghost rule with ``options`` cannot stack (one line), or ``None``."""
    if options.get("solver", "fast") != "fast":
        return f"{rule}'s solver={options['solver']!r} (the step-by-step oracle) has no stacked step (solver fast has)"
    if rule == "ghost-mb" and options.get("weight_clip") is not None:
        return "ghost-mb's weight_clip has no stacked step (ghost-ma's and ghost-ma-prime's have)"
    if rule == "ghost-mb" and int(config["batch_size"]) != 1:
        return "ghost-mb runs one example per step (batch_size 1); other batch sizes are not stacked"
    return None


__all__ = ["RATE_OPTIONS", "StackedGhost", "ghost_reason"]
