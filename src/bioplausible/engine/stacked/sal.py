"""Stacked SAL, the self-assembling four-matrix circuit (Liao et al. 2024, reconstructed): ``sal``.

The rule's step (:mod:`bioplausible.rules.sal.sal`, ``timing="simultaneous"``) over a run
dimension: the upstream pass (the user's MLP), the downstream pass ``g_L = e``,
``v_k = g_{k+1} B_kᵀ``, ``g_k = φ(v_k)``, then the four updates from that one cycle
(:func:`bioplausible.rules.sal.sal_ops.fast_updates`)::

    W_l.grad = (d_{l+1} Q_{l+1}ᵀ)ᵀ h_l      b_l.grad = Σ d_{l+1} Q_{l+1}ᵀ      (d = g, or v for read="before")
    B_k.grad = (h_k R_kᵀ)ᵀ g_{k+1}          Q_k.grad = −s p_kᵀ g_k             R_k.grad = −s q_kᵀ h_k

each stepped by SGD with its group's rate and decay per run (frozen matrices have none). The
downstream pass and the updates are the rule's own functions (their ``matmul`` products broadcast
over the run dimension), so the stacked step evaluates every product in the same association as
the unstacked one.
"""

from __future__ import annotations

import torch

from ...rules.sal.sal_ops import Cycle, downstream, fast_updates
from .losses import dense_targets, loss_and_error
from .relaxation import _fprime
from .steps import StackedRule, sgd_


class StackedSAL(StackedRule):
    name = "sal"

    def setup(self) -> None:
        rule = self.rules[0]
        c = rule.config
        self.kind, self.sign = c["downstream"], float(c["sign"])
        self.term, self.read, self.error_kind = c["qr_term"], c["read"], c["output_error"]
        self.plastic = set(c["plastic"])
        L = self.net.depth
        self.names = [n for n in rule._owned_meta]
        self.runs = {n: [r.owned.get(n) for r in self.rules] for n in self.names}
        self.T = {n: torch.stack([t.detach() for t in runs]).contiguous() for n, runs in self.runs.items()}
        self.B = [self.T.get(f"B.{k}") for k in range(L + 1)]
        self.Q = [self.T.get(f"Q.{k}") for k in range(L + 1)]
        self.R = [self.T.get(f"R.{k}") for k in range(L + 1)]

    def feedback_tensors(self) -> dict[str, list]:
        return {"sal": [(self.T[n], self.runs[n]) for n in self.names]}

    def select_rule(self, keep: list[int]) -> None:
        idx = torch.tensor(keep, device=self.net.W[0].device)
        self.T = {n: t.index_select(0, idx) for n, t in self.T.items()}
        self.runs = {n: [runs[r] for r in keep] for n, runs in self.runs.items()}
        L = self.net.depth
        self.B = [self.T.get(f"B.{k}") for k in range(L + 1)]
        self.Q = [self.T.get(f"Q.{k}") for k in range(L + 1)]
        self.R = [self.T.get(f"R.{k}") for k in range(L + 1)]

    def refresh_rates(self) -> None:
        super().refresh_rates()
        like = self.net.W[0]
        self.rate_t = {n: self._rates_of(runs, (1, 1), like) for n, runs in self.runs.items()}

    def _error(self, out: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loss, e, _ = loss_and_error(self.loss_fn, out, y)
        if self.error_kind == "loss":
            return loss, e
        target = dense_targets(out, y)
        pred = out if self.error_kind == "mse" else torch.softmax(out, dim=-1)
        return loss, (pred - target) / out.shape[1]

    def step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        net = self.net
        L = net.depth
        W, b = net.W, net.b
        # upstream pass, keeping u (pre-activations) where the rule reads them
        h = x.reshape(x.shape[0], x.shape[1], -1)
        hs, us = [h], [None]
        for i in range(L):
            u = torch.bmm(h, W[i].transpose(1, 2))
            if b[i] is not None:
                u = u.add_(b[i].unsqueeze(1))
            fwd = net.acts[i][1]
            h = u if fwd is None else fwd(u)
            hs.append(h)
            us.append(u)
        jacobian = self.kind == "relu_jacobian"
        fps = [None] + [(_fprime(net.acts[i][0], hs[i + 1]) if jacobian and i < L - 1 else None)
                        for i in range(L)]
        out = hs[-1]
        loss, e = self._error(out, y)
        # per-example errors in the downstream stream (N·e for a batch-mean error, as the rule
        # does, so a nonlinear φ sees the same input whatever the batch size); the 1/N goes into
        # the updates below
        mean_error = self.error_kind != "loss" or getattr(self.loss_fn, "reduction", "sum") == "mean"
        scale = float(out.shape[1]) if mean_error else 1.0
        # the downstream pass and the four updates from this one cycle: the rule's own functions,
        # whose products broadcast over the run dimension
        cyc = downstream(Cycle(hs, us, fps), e * scale if scale != 1.0 else e, self.B, self.kind)
        grads = fast_updates(cyc, self.Q, self.R, sign=self.sign, term=self.term, read=self.read,
                             want=self.plastic)
        if scale != 1.0:
            grads = {name: grad.div_(scale) for name, grad in grads.items()}
        for l in range(L if "W" in self.plastic else 0):
            gw, gb = grads.pop(f"W.{l}"), grads.pop(f"b.{l}")
            if self.capture:
                self.captured[l] = (gw, gb if b[l] is not None else None)
            sgd_(W[l], gw, self.rate_w[l])
            if b[l] is not None:
                sgd_(b[l], gb, self.rate_b[l])
        for name, grad in grads.items():
            t = self.T.get(name)
            if t is not None:
                sgd_(t, grad, self.rate_t[name])
        return loss, out


__all__ = ["StackedSAL"]
