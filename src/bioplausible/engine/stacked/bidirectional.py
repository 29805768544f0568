"""Stacked bidirectional FA and DFA (Luo, Fu & Glass 2017, §3.1–3.2): ``bfa`` and ``bdfa``.

``bfa``: the forward phase is FA through the generative weights, ``δ_{k−1} = (δ_k W←ᵀ) ⊙ σ′``
(``F_k = (W←_{N+2−k})ᵀ``); the forward weights are stepped, then the generative network runs on
the one-hot rows of the classes and learns the reconstruction ``½‖x̂ − x‖²`` from the class sums
``D_c = Σ_{n∈c}(x̂_c − x_n)`` with its error carried back by the (updated) forward weights — the
rule's two learning phases in the rule's order (:mod:`bioplausible.rules.bidirectional.bfa`).

``bdfa``: DFA through the learned direct matrices, ``δ_l = (e B_l) ⊙ σ′`` with
``e = ∂loss/∂a_{N+1}``; every ``B_l`` descends the agreement loss of ``y′B_l`` with its partner
layer's activity (``−Σ(1 − s) y′ᵀh`` for ``update="code"``, ``−Σ s(1 − s) y′ᵀh`` for ``"paper"``),
all from the values before the step (:mod:`bioplausible.rules.bidirectional.bdfa`).

Class-index labels only (soft labels take the rule's sample-by-sample path) and no ``max_norm``.
"""

from __future__ import annotations

import torch

from .losses import dense_targets
from .mlp import bmm_as, linear
from .steps import StackedRule, outer, sgd_


class StackedBFA(StackedRule):
    name = "bfa"
    feedback_in_step = True  # both phases are stepped inside the rule's step
    forward_in_step = True

    def setup(self) -> None:
        net = self.net
        rule = self.rules[0]
        self.n = net.depth - 1
        self.gen_bias = bool(rule.config["gen_bias"])
        self.sigmoid_x = rule.config["sigma_x"] == "sigmoid"
        reduction = rule.config["recon_reduction"]
        if reduction == "auto":
            reduction = "sum" if getattr(self.loss_fn, "reduction", "mean") == "sum" else "mean"
        self.recon_mean = reduction == "mean"
        j_range = range(1, self.n + 2)
        self.gen_w_runs = [[r.owned.get(f"W_gen.{j}") for r in self.rules] for j in j_range]
        self.gen_b_runs = [[r.owned.get(f"b_gen.{j}") for r in self.rules] if self.gen_bias else None
                           for j in j_range]
        self.G = [torch.stack([t.detach() for t in runs]).contiguous() for runs in self.gen_w_runs]
        self.Gb = [None if runs is None else torch.stack([t.detach() for t in runs]).contiguous()
                   for runs in self.gen_b_runs]
        self.recon = None

    def feedback_tensors(self) -> dict[str, list]:
        pairs = list(zip(self.G, self.gen_w_runs))
        pairs += [(b, runs) for b, runs in zip(self.Gb, self.gen_b_runs) if b is not None]
        return {"generative": pairs}

    def select_rule(self, keep: list[int]) -> None:
        idx = torch.tensor(keep, device=self.G[0].device)
        self.G = [g.index_select(0, idx) for g in self.G]
        self.Gb = [None if b is None else b.index_select(0, idx) for b in self.Gb]
        self.gen_w_runs = [[runs[r] for r in keep] for runs in self.gen_w_runs]
        self.gen_b_runs = [None if runs is None else [runs[r] for r in keep] for runs in self.gen_b_runs]

    def refresh_rates(self) -> None:
        super().refresh_rates()
        like = self.net.W[0]
        self.rate_g = [self._rates_of(runs, (1, 1), like) for runs in self.gen_w_runs]
        self.rate_gb = [None if runs is None else self._rates_of(runs, (1,), like) for runs in self.gen_b_runs]

    def after_forward(self, hs, y, e, d) -> None:
        self.x, self.y = hs[0], y

    def propagate(self, i: int, delta: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        return bmm_as(delta, self.G[self.n - i].transpose(1, 2), self.outs[i])  # δ_{i+1} W←ᵀ (W← is s_i × s_{i+1})

    def after_update(self) -> None:
        """The generative phase, after the forward weights were stepped."""
        net, n = self.net, self.n
        x, y = self.x, self.y
        R, B = x.shape[0], x.shape[1]
        k = net.W[-1].shape[1]
        rows = torch.eye(k, dtype=x.dtype, device=x.device).expand(R, k, k)
        gs = [rows]
        g = rows
        for j in range(1, n + 1):
            fwd = net.acts[n - j][1]
            a = linear(g, self.G[j - 1], self.Gb[j - 1])
            g = a if fwd is None else fwd(a)
            gs.append(g)
        a_x = linear(g, self.G[n], self.Gb[n])
        x_hat = torch.sigmoid(a_x) if self.sigmoid_x else a_x
        onehot = dense_targets(torch.empty(R, B, k, dtype=x.dtype, device=x.device), y)
        counts = onehot.sum(1)
        sums = torch.bmm(onehot.transpose(1, 2), x)
        delta = x_hat * counts.unsqueeze(2) - sums
        self.recon = (x_hat, counts, sums, x)
        if self.sigmoid_x:
            delta = delta * (x_hat * (1.0 - x_hat))
        if self.recon_mean:
            delta = delta / B
        for j in range(n + 1, 0, -1):
            w_next = net.W[n + 1 - j] if j > 1 else None  # the forward weight carrying δ← down
            # W←_j − η δᵀg in one product: the gradient (a rank-k update of a large matrix, k the
            # number of classes) is never written out, which halves this step's memory traffic
            outer(self.G[j - 1], *self.rate_g[j - 1], delta, gs[j - 1])
            if self.Gb[j - 1] is not None:
                sgd_(self.Gb[j - 1], delta.sum(1), self.rate_gb[j - 1])
            if j > 1:
                delta = net.act_backward(n + 1 - j, torch.bmm(delta, w_next.transpose(1, 2)), gs[j - 1])

    def unstack_rule(self) -> None:
        if self.recon is not None:
            for r, rule in enumerate(self.rules):
                rule._recon_inputs = tuple(t[r] for t in self.recon)


class StackedBDFA(StackedRule):
    name = "bdfa"

    def setup(self) -> None:
        rule = self.rules[0]
        self.n = self.net.depth - 1
        self.update = rule.config["update"]
        self.target = rule.config["target"]
        self.alpha = float(rule.config["alpha"])
        self.partner = list(rule.partner)
        self.b_runs = [[r.owned.get(f"B.{l}") for r in self.rules] for l in range(1, self.n + 1)]
        self.Bd = [torch.stack([t.detach() for t in runs]).contiguous() for runs in self.b_runs]
        self.sizes = [b.shape[2] for b in self.Bd]

    def feedback_tensors(self) -> dict[str, list]:
        return {"direct": list(zip(self.Bd, self.b_runs))}

    def select_rule(self, keep: list[int]) -> None:
        idx = torch.tensor(keep, device=self.Bd[0].device)
        self.Bd = [b.index_select(0, idx) for b in self.Bd]
        self.b_runs = [[runs[r] for r in keep] for runs in self.b_runs]

    def refresh_rates(self) -> None:
        super().refresh_rates()
        self.rate_d = [self._rates_of(runs, (1, 1), self.net.W[0]) for runs in self.b_runs]

    def after_forward(self, hs, y, e, d) -> None:
        self.hs, self.y = hs, y

    def output_delta(self, e: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        delta = super().output_delta(e, out)
        self.signals = None
        self.e_pre = delta  # ∂loss/∂a_{N+1}
        return delta

    def propagate(self, i: int, delta: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        if self.signals is None:
            cat = self.Bd[0] if self.n == 1 else torch.cat(self.Bd, 2)
            self.signals = [None, *torch.bmm(self.e_pre, cat).split(self.sizes, dim=2)]
        return self.signals[i]

    def after_update(self) -> None:
        """Every B_l's agreement step, from the values before the step (B, h, ŷ)."""
        if not self.n:
            return
        net, hs = self.net, self.hs
        out = hs[-1]
        y1 = dense_targets(out, self.y)
        if net.acts[-1][0] == "identity":
            # ŷ = sigmoid(a_{N+1}); the output is a_{N+1} itself
            y_hat = torch.sigmoid(out)
        else:
            y_hat = out
        if self.target == "none":
            y_mix = y1
        elif self.target == "paper":
            y_mix = y1 + self.alpha * y_hat
        else:
            y_mix = torch.where(y1 > 0.5, torch.ones_like(y1), self.alpha * y_hat)
        for l, b in enumerate(self.Bd, start=1):
            h = hs[self.partner[l - 1]]
            s = torch.sigmoid((torch.bmm(y_mix, b) * h).sum(2, keepdim=True))
            weight = (1.0 - s) if self.update == "code" else s * (1.0 - s)
            grad = torch.bmm(y_mix.transpose(1, 2), weight * h).neg_()
            sgd_(b, grad, self.rate_d[l - 1])


__all__ = ["StackedBDFA", "StackedBFA"]
