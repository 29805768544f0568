"""Bidirectional feedback alignment, BFA (Luo, Fu & Glass 2017, arXiv 1702.07097, §3.1).

Two networks train each other. The forward (recognition) MLP has weights ``W→_1 … W→_{N+1}``
(``W→_k`` maps layer ``k−1`` to layer ``k``, sizes ``s_0 … s_{N+1}``). The rule owns a generative
network of the mirrored shape that maps a one-hot label back to an input,

    a←_1 = W←_1 y,  h←_j = σ(a←_j),  a←_{j+1} = W←_{j+1} h←_j,  x̂ = σ_x(a←_{N+1})   (eq 23–25)

with ``W←_j`` of shape ``s_{N+1−j} × s_{N+2−j}`` (= the shape of ``(W→_{N+2−j})ᵀ``) and the hidden
activation of the forward layer it mirrors. Each network's matrices are the other's feedback
matrices, used as they are (no transposes in the maths). Per batch:

1. forward learning phase, FA through the generative weights (eq 18–22)::

       δ_{N+1} = e→ = ∂l→/∂a_{N+1}  (= ŷ − y for sigmoid outputs with BCE)
       δ_k = (W←_{N+1−k} δ_{k+1}) ⊙ σ'(a_k),   ∇W→_k = δ_k h_{k−1}ᵀ

2. backward learning phase, reconstruction ``l← = ½‖x̂ − x‖²`` (eq 26) with its error carried
   by the forward weights (eq 27–29)::

       δ←_{N+1} = e← = (x̂ − x) ⊙ σ_x'(a←_{N+1})
       δ←_j = (W→_{N+1−j} δ←_{j+1}) ⊙ σ'(a←_j),   ∇W←_j = δ←_j h←_{j−1}ᵀ  (h←_0 = y)

Depth: any number of hidden layers by this mirroring (``W←_k ↔ W→_{N+2−k}``).
Biases: both networks have them (the paper absorbs them into the weights); they are trained
with their layer's δ and are not part of the feedback.

Phases: ``phases = (("forward",), ("generative",))``. With the contract's phase optimizers the
forward weights are stepped before the generative phase runs (``self.step_phase(0)``), as the
paper states; without them both ``.grad`` are written and one optimizer step applies them, so
the generative phase sees the forward weights of the start of the batch.

Cost: with class-index labels the generative network's activities depend on the label only,
so the backward phase runs it on the ``n_out`` one-hot rows and feeds it the class sums of the
errors ``D_c = Σ_{n: y_n = c} e←_n`` (every gradient is linear in e←, so this is the same batch
sum); a BFA step then costs little more than an FA step. Float (one-hot or soft) targets take
the sample-by-sample path; both are tested against the literal per-sample equations.

Options (documented defaults for what the paper leaves open):

* ``sigma_x``: ``"identity"`` (default; then ``e← = x̂ − x`` is exactly ∂l←/∂a←) or
  ``"sigmoid"`` (pixels in [0, 1]).
* ``recon_reduction``: ``"auto"`` (default: a batch sum when the forward loss is a summed one,
  such as ``bce_sum``, a batch mean otherwise), ``"sum"`` or ``"mean"``.
* ``gen_bias``: generative biases (default True). ``W←`` is drawn U(±1/√fan_in) like a
  PyTorch Linear (fan_in = its input width), biases start at zero; draws use the rule's seed.
* ``max_norm``: ``None`` (default) or e.g. 400 — after every step each row and column of every
  forward and generative matrix is renormalised to L2 norm ≤ max_norm (the authors' code).

The generative network's rendering of each one-hot label is :meth:`generate` (Fig. 6).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import nn

from ...core.losses import as_loss
from ...core.rule import FeedbackPair, Rule, StepResult
from ...errors import ConfigError
from ..registry import register
from .common import (
    Chain,
    apply_max_norm,
    forward_chain,
    grad_mm,
    grad_sum,
    mlp_chain,
    mul_derivative,
    one_hot,
    output_error,
)

SIGMA_X = ("identity", "sigmoid")
REDUCTIONS = ("auto", "sum", "mean")


@register("bfa")
class BidirectionalFA(Rule):
    """Bidirectional feedback alignment (BFA): two networks that are each other's feedback.

    A label→input generative network mirrors the forward MLP. Forward phase: FA through the
    generative weights, ``δ_k = (W←_{N+1−k} δ_{k+1}) ⊙ σ′(a_k)`` (Luo, Fu & Glass 2017, §3.1,
    eqs 18–22); generative phase: reconstruction ``½‖x̂ − x‖²`` with its error carried by the
    forward weights (eqs 26–29). Two learning phases per batch.

    Options: ``sigma_x`` — the generative output, ``"identity"`` or ``"sigmoid"``;
    ``recon_reduction`` — ``"auto"``, ``"sum"`` or ``"mean"`` over the batch; ``gen_bias`` —
    generative biases; ``max_norm`` — renormalise rows and columns to this L2 norm after each step
    (``None``: off).

    Models: MLPs (``nn.Linear`` + elementwise activations); :meth:`generate` draws each label's
    image (Fig. 6).
    """

    family = "feedback"
    paper = "Luo, Fu & Glass 2017"
    summary = "FA through a label→input generative net trained by FA through the forward weights"
    defaults: ClassVar[dict[str, Any]] = {"sigma_x": "identity", "recon_reduction": "auto",
                                          "gen_bias": True, "max_norm": None}
    phases: ClassVar[tuple] = (("forward",), ("generative",))
    #: the generative phase's reconstruction error is summed over the 784 pixels: at the global
    #: rate 0.1 it diverges within the first epoch on MNIST (loss nan at step 100), 0.01 learns
    recommended: ClassVar[dict[str, Any]] = {"optimizer": {"lr": 0.01}}

    def __init__(self, **config: Any) -> None:
        super().__init__(**config)
        self.chain: Chain | None = None
        self._n_gen = 0
        self._recon_inputs: tuple[torch.Tensor, ...] | None = None
        self._eye_cache: tuple | None = None

    def validate(self) -> None:
        self.check_choice("sigma_x", SIGMA_X)
        self.check_choice("recon_reduction", REDUCTIONS)
        self.check_bool("gen_bias")
        if self.config["max_norm"] is not None:
            self.check_number("max_norm", 0.0, positive=True)

    # ------------------------------------------------------------------ setup
    def prepare(self, model: nn.Module, example: torch.Tensor | None = None) -> nn.Module:
        chain = mlp_chain(model, "bfa")
        self.chain = chain
        sizes = chain.sizes
        n = chain.n_hidden
        ref = chain.linears[0].weight
        gen = torch.Generator(device=ref.device)
        gen.manual_seed(self.seed * 7_919 + 104_729)
        self._n_gen = n + 1
        for j in range(1, n + 2):  # W←_j: s_{N+1−j} × s_{N+2−j}
            n_out, n_in = sizes[n + 1 - j], sizes[n + 2 - j]
            bound = 1.0 / math.sqrt(n_in)
            w = torch.empty(n_out, n_in, device=ref.device, dtype=ref.dtype).uniform_(-bound, bound, generator=gen)
            # layer index: the forward layer W→_{N+2−j} it mirrors (0-based N+1−j)
            self.own(f"W_gen.{j}", w, group="generative", layer=n + 1 - j)
            if self.config["gen_bias"]:
                self.own(f"b_gen.{j}", torch.zeros(n_out, device=ref.device, dtype=ref.dtype),
                         group="generative", layer=n + 1 - j)
        return model

    @property
    def gen_w(self) -> list[torch.Tensor]:
        """``[W←_1, …, W←_{N+1}]`` (owned tensors ``W_gen.j``)."""
        return [self.owned.get(f"W_gen.{j}") for j in range(1, self._n_gen + 1)]

    @property
    def gen_b(self) -> list[torch.Tensor | None]:
        if not self.config["gen_bias"]:
            return [None] * self._n_gen
        return [self.owned.get(f"b_gen.{j}") for j in range(1, self._n_gen + 1)]

    def generative_parameters(self) -> list[nn.Parameter]:
        return [p for pair in zip(self.gen_w, self.gen_b) for p in pair if p is not None]

    # ------------------------------------------------------------------ step
    def train_step(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn) -> StepResult:
        chain = self._require_chain()
        n = chain.n_hidden
        gen_w = self.gen_w
        with torch.no_grad():
            # ---- phase 1: forward learning, FA through W← (eq 18–22)
            hs, a_out = forward_chain(chain, x)
            loss, out, delta = output_error(chain, a_out, y, loss_fn)
            for k in range(n + 1, 0, -1):  # W→_k, 1-based
                lin = chain.linears[k - 1]
                grad_mm(lin.weight, delta.t(), hs[k - 1])
                if lin.bias is not None:
                    grad_sum(lin.bias, delta)
                if k > 1:  # δ_{k−1} = (W←_{N+2−k} δ_k) ⊙ σ'(a_{k−1})
                    delta = mul_derivative(delta.mm(gen_w[n + 1 - k].t()), chain.acts[k - 2], hs[k - 1])
        self._end_phase(0)  # W→ is stepped here when the phase optimizers exist
        with torch.no_grad():
            # ---- phase 2: backward learning, FA through W→ (eq 23–29)
            self._generative_grads(chain, x.flatten(1).to(a_out.dtype), y, loss_fn)
        self._end_phase(1)
        return StepResult(loss, out)

    def _end_phase(self, index: int) -> None:
        """Step phase ``index`` now (the contract's phase optimizers from ``build_optimizer``).

        With a plain torch optimizer over :meth:`param_groups` there are none: both ``.grad``
        are written and the caller's single ``opt.step()`` applies them (the generative phase
        then uses the forward weights of the start of the batch).
        """
        if self._phase_optimizers:
            self.step_phase(index)

    def _generative_grads(self, chain: Chain, x: torch.Tensor, y: torch.Tensor, loss_fn) -> None:
        """Backward learning phase (its reconstruction loss is :attr:`last_recon`).

        With class-index labels the generative activities depend on the class only, so the
        network runs on the ``n_out`` one-hot rows and the errors enter as class sums
        ``D_c = Σ_{n: y_n = c} e←_n`` — every gradient below is linear in e←, so this is the same
        sum over samples, at ~n_out/N of the cost. Float (soft) targets run sample by sample.
        """
        n = chain.n_hidden
        n_cls = chain.sizes[-1]
        sigmoid = self.config["sigma_x"] == "sigmoid"
        if y.dim() == 1 and not y.is_floating_point():
            rows = self._eye(n_cls, x)
            gs, a_x = self._generate(chain, rows)
            x_hat = torch.sigmoid(a_x) if sigmoid else a_x
            y = y.long()
            counts = x.new_zeros(n_cls).index_add_(0, y, x.new_ones(x.shape[0]))
            sums = x.new_zeros(n_cls, x.shape[1]).index_add_(0, y, x)
            delta = x_hat * counts[:, None] - sums  # D_c = Σ_{n∈c} (x̂_c − x_n)
            self._recon_inputs = (x_hat, counts, sums, x)
        else:
            gs, a_x = self._generate(chain, one_hot(y, n_cls, x))
            x_hat = torch.sigmoid(a_x) if sigmoid else a_x
            delta = x_hat - x
            self._recon_inputs = (delta,)
        if sigmoid:
            delta = delta * (x_hat * (1.0 - x_hat))
        reduction = self.config["recon_reduction"]
        if reduction == "auto":
            reduction = as_loss(loss_fn).reduction
        if reduction == "mean":
            delta = delta / x.shape[0]
        gen_w, gen_b = self.gen_w, self.gen_b
        for j in range(n + 1, 0, -1):  # W←_j, 1-based
            grad_mm(gen_w[j - 1], delta.t(), gs[j - 1])
            if gen_b[j - 1] is not None:
                grad_sum(gen_b[j - 1], delta)
            if j > 1:  # δ←_{j−1} = (W→_{N+2−j} δ←_j) ⊙ σ'(a←_{j−1})
                w = chain.linears[n + 1 - j].weight
                delta = mul_derivative(delta.mm(w.t()), chain.acts[n + 1 - j], gs[j - 1])

    def _eye(self, n: int, like: torch.Tensor) -> torch.Tensor:
        key = (n, like.device, like.dtype)
        if self._eye_cache is None or self._eye_cache[0] != key:
            self._eye_cache = (key, torch.eye(n, device=like.device, dtype=like.dtype))
        return self._eye_cache[1]

    @property
    def last_recon(self) -> float:
        """½‖x̂ − x‖² per example on the last batch (computed on demand, not every step)."""
        parts = self._recon_inputs
        if parts is None:
            return float("nan")
        with torch.no_grad():
            if len(parts) == 1:
                (diff,) = parts
                return 0.5 * float(diff.pow(2).sum()) / diff.shape[0]
            x_hat, counts, sums, x = parts  # Σ_n ‖x̂_{y_n} − x_n‖² from the class sums
            sq = (counts * x_hat.pow(2).sum(1)).sum() - 2 * (x_hat * sums).sum() + x.pow(2).sum()
            return 0.5 * max(float(sq), 0.0) / x.shape[0]

    def _generate(self, chain: Chain, y1: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Inputs of every generative layer ``[y, h←_1, …, h←_N]`` and ``a←_{N+1}``."""
        n = chain.n_hidden
        g = y1
        gs = [g]
        for j in range(1, n + 1):
            g = chain.acts[n - j](nn.functional.linear(g, self.gen_w[j - 1], self.gen_b[j - 1]))
            gs.append(g)
        return gs, nn.functional.linear(g, self.gen_w[n], self.gen_b[n])

    @torch.no_grad()
    def generate(self, labels: torch.Tensor | None = None) -> torch.Tensor:
        """``x̂`` for each label (class indices; default every class once), shape ``(n, s_0)``."""
        chain = self._require_chain()
        ref = self.gen_w[0]
        n_cls = chain.sizes[-1]
        if labels is None:
            labels = torch.arange(n_cls, device=ref.device)
        _, a_x = self._generate(chain, one_hot(labels.to(ref.device), n_cls, ref))
        return torch.sigmoid(a_x) if self.config["sigma_x"] == "sigmoid" else a_x

    def after_step(self, model: nn.Module) -> None:
        if self.config["max_norm"] is not None:
            chain = self._require_chain()
            apply_max_norm([lin.weight for lin in chain.linears] + list(self.gen_w), self.config["max_norm"])

    # ------------------------------------------------------------------ reporting
    def feedback_pairs(self, model: nn.Module) -> list[FeedbackPair]:
        """``W→_k`` with its feedback in W's layout, ``(W←_{N+2−k})ᵀ`` (k = 1 is never used)."""
        chain = self._require_chain()
        n = chain.n_hidden
        names = {id(m): name for name, m in model.named_modules()}
        return [FeedbackPair(names.get(id(lin), f"linear{k}"), lin.weight, self.gen_w[n - k].detach().t())
                for k, lin in enumerate(chain.linears)]

    def metrics(self, model: nn.Module) -> dict[str, float]:
        return {"recon_loss": self.last_recon}

    def _require_chain(self) -> Chain:
        if self.chain is None:
            raise ConfigError("rule 'bfa' is not prepared: call rule.prepare(model) before training")
        return self.chain


__all__ = ["BidirectionalFA"]
