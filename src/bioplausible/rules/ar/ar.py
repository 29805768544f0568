"""Activation Relaxation (AR): Millidge, Tschantz, Buckley & Seth 2022 (arXiv 2009.05359).

One training step on a batch (row-vector form, as the authors' code):

1. stored forward pass ``a_{l+1} = h_l W_lᵀ + b_l``, ``h_{l+1} = f(a_{l+1})``;
2. the top layer is clamped to ``x_L = e = ∂loss/∂h_L`` (autograd on the loss only, so any
   registered loss works; ``mse_sum`` gives the code's ``2(out − T)``);
3. relaxation of the hidden layers from their forward values (eq 4-5)::

       x_l ← x_l − η_x (x_l − (x_{l+1} ⊙ f′(a_{l+1}^fwd)) F_l),   l = L−1 … 1

   with ``F_l = W_l`` (``backward_weights="transpose"``), a fixed random ψ_l (``"random"``,
   feedback alignment) or a learned ψ_l (``"learned"``, eq 6); ``derivative=False`` drops the
   ``f′`` factor (eq 7); learned ψ without it is the paper's combined rule (eq 8). The input
   layer is never relaxed. ``sweep`` is ``"gauss_seidel"`` (top-down, the code) or
   ``"jacobi"`` (parallel, the paper);
   For a batch-mean loss (``cross_entropy``, ``mse_batchmean``, ``mse``) the clamped error is
   each example's own error (N times the batch gradient) and the ``1/N`` is applied to the
   update below, so finite-K results are as close to BP as with summed losses;
4. the weight update from the relaxed ``x_{l+1}`` and the stored ``h_l`` (eq 1)::

       W_l.grad = (x_{l+1} ⊙ f′(a_{l+1}^fwd))ᵀ h_l,   b_l.grad = Σ_batch x_{l+1} ⊙ f′

   (``weight_derivative=False`` drops ``f′`` here too). For learned ψ, ``ψ_l.grad = W_l.grad``
   (eq 6 in W's layout: the same update, same learning rate, no decay), so ``W_l − ψ_l`` stays
   constant under SGD — Kolen-Pollack with λ = 0.

``.grad`` is a descent direction with the loss's own reduction: as K → ∞ with the transpose
it equals autograd's ∂loss/∂W exactly. ``solver="closed_form"`` (default) computes the exact
K-step result with a scalar-coefficient recursion (see :mod:`.ar_relax`); ``"loop"`` runs the
literal Euler steps (same numbers up to rounding); ``"fixed_point"`` jumps to the equilibrium
in one backward sweep — BP (or FA for random ψ) — which *changes results* by O((1−η_x)^K).

``graph=True`` relaxes the units of any fx-traceable model with local vector-Jacobian
products (App. A, :mod:`.ar_graph`); it supports the transpose with derivatives only. The
units are set by ``graph_units``: ``"layer"`` (default: layer outputs — each op with the
activations, pooling, flatten, add join and BatchNorm that alone read it; on an MLP the same
units and numbers as this MLP path at every K), ``"activation"`` (activations merged only) or
``"op"`` (every fx node), :mod:`.ar_graph_units`. There the closed form
(:mod:`.ar_graph_closed`, default) evaluates the K steps as a polynomial in the graph's
transposed Jacobian; batch-mean losses relax per-example errors (``N·∂loss/∂out``) and divide
the weight update by ``N``.

ψ lives on the model as a parameter ``feedback`` of each ``nn.Linear`` except the first (the
input is never relaxed, so ψ_0 would never be used), in W's ``(out, in)`` layout, drawn from
N(0, feedback_std²) with the rule's generator; it is saved in the model's ``state_dict``.
Deviation from the code: ordinary per-unit biases instead of its per-row bias tensor.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import nn

from ...errors import ConfigError, DivergenceError
from ..._registry import register
from ...nn.mlp import Chain, MLPLayout, forward_chain, mlp_layout
from .ar_relax import SWEEPS, relax_closed_form, relax_fixed_point, relax_loop
from ...core.rule import FeedbackPair, Rule, StepResult

SOLVERS = ("closed_form", "loop", "fixed_point")
GRAPH_UNITS = ("layer", "activation", "op")
BACKWARD_WEIGHTS = ("transpose", "random", "learned")
#: The paper's Fig. 3 variants (code flags) -> (backward_weights, derivative).
VARIANTS: dict[str, tuple[str, bool]] = {
    "default": ("transpose", True),
    "learned": ("learned", True),
    "fa": ("random", True),
    "fa_noderiv": ("random", False),
    "noderiv": ("transpose", False),
    "full_construct": ("learned", False),
}


@register("ar")
class ActivationRelaxation(Rule):
    """Activation relaxation (AR): hidden units relax to BP's gradients by local dynamics.

    After a stored forward pass the output is clamped to the error and every hidden layer relaxes
    for K steps, ``x_l ← x_l − η_x(x_l − (x_{l+1} ⊙ f′(a_{l+1})) F_l)`` (Millidge, Tschantz,
    Buckley & Seth 2022, eqs 4–5); the update is ``W_l.grad = (x_{l+1} ⊙ f′)ᵀ h_l`` (eq 1). Its
    fixed point is BP's gradient.

    Options: ``relax_steps`` — K (100); ``eta_x`` — η_x (0.1); ``solver`` — ``"closed_form"``
    (the exact K-step result), ``"loop"`` (the literal steps), ``"fixed_point"`` (K = ∞, i.e. BP
    or FA); ``sweep`` — ``"gauss_seidel"`` (top-down, the authors' code) or ``"jacobi"`` (the
    paper); ``backward_weights`` — F_l = ``"transpose"`` (W), ``"random"`` (fixed ψ) or
    ``"learned"`` (ψ trained by eq 6); ``derivative`` / ``weight_derivative`` — keep f′ in the
    relaxation / the update (False: eq 7); ``variant`` — shorthand for the Fig. 3 variants
    (``default``, ``learned``, ``fa``, ``fa_noderiv``, ``noderiv``, ``full_construct``);
    ``feedback_std`` — ψ ~ N(0, std²) (0.05); ``graph`` — relax the units of any
    ``torch.fx``-traceable model (App. A); ``graph_units`` — ``"layer"``, ``"activation"`` or
    ``"op"``; ``divergence_threshold`` — a relaxed value above it stops the run.

    Models: MLPs of ``nn.Linear`` and elementwise activations (default); with ``graph=True`` any
    model ``torch.fx`` can trace — CNNs, ResNets, skip connections, BatchNorm.
    """

    family = "circuit"
    paper = "Millidge, Tschantz, Buckley & Seth 2022, Activation Relaxation (arXiv 2009.05359)"
    summary = "hidden units relax to the BP gradients: x_l ← x_l − η_x(x_l − (x_{l+1}⊙f′)W_l)"
    defaults: ClassVar[dict[str, Any]] = {
        "relax_steps": 100,           # K, Euler steps of the relaxation phase
        "eta_x": 0.1,                 # η_x in (0, 1]
        "solver": "closed_form",      # closed_form | loop | fixed_point (graph mode too)
        "sweep": "gauss_seidel",      # gauss_seidel (code) | jacobi (paper)
        "backward_weights": "transpose",  # transpose | random (fixed ψ) | learned (eq 6)
        "derivative": True,           # keep f′ in the relaxation (False: eq 7)
        "weight_derivative": True,    # keep f′ in the weight update (the code always does)
        "variant": None,              # shorthand for the Fig. 3 variants, see VARIANTS
        "feedback_std": 0.05,         # ψ ~ N(0, std²), as the authors' code
        "graph": False,               # relax every node of any fx-traceable model (App. A)
        "graph_units": "layer",       # graph mode's units: layer | activation | op (ar_graph_units)
        "divergence_threshold": 1e6,  # |relaxed value| above this (or non-finite) stops the run
    }

    def __init__(self, **config: Any) -> None:
        self._explicit = set(config)
        self._steps_done = 0
        self._last_max = float("nan")
        super().__init__(**config)

    # ----------------------------------------------------------------- config
    def validate(self) -> None:
        c = self.config
        k = c["relax_steps"]
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ConfigError(f"ar option relax_steps must be an integer >= 1, got {k!r}")
        eta = c["eta_x"]
        if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not 0.0 < float(eta) <= 1.0:
            raise ConfigError(
                f"ar option eta_x must be in (0, 1], got {eta!r} (each Euler step keeps "
                "(1 − eta_x) of a unit's value; the paper uses 0.1)")
        c["eta_x"] = float(eta)
        self.check_choice("solver", SOLVERS)
        self.check_choice("sweep", SWEEPS)
        self.check_choice("graph_units", GRAPH_UNITS)
        if c["variant"] is not None:
            if c["variant"] not in VARIANTS:
                raise ConfigError(f"ar option variant={c['variant']!r} is not valid; accepted: "
                                  f"{', '.join(VARIANTS)}")
            bw, deriv = VARIANTS[c["variant"]]
            for key, value in (("backward_weights", bw), ("derivative", deriv)):
                if key in self._explicit and c[key] != value:
                    raise ConfigError(f"ar variant {c['variant']!r} means {key}={value!r}, "
                                      f"which contradicts {key}={c[key]!r}; give only one")
                c[key] = value
        self.check_choice("backward_weights", BACKWARD_WEIGHTS)
        for key in ("derivative", "weight_derivative", "graph"):
            self.check_bool(key)
        std = c["feedback_std"]
        if isinstance(std, bool) or not isinstance(std, (int, float)) or not std > 0:
            raise ConfigError(f"ar option feedback_std must be > 0, got {std!r}")
        thr = c["divergence_threshold"]
        if thr is not None and (isinstance(thr, bool) or not isinstance(thr, (int, float))
                                or not thr > 0):
            raise ConfigError(f"ar option divergence_threshold must be > 0 or null, got {thr!r}")
        if c["graph"] and (c["backward_weights"] != "transpose" or not c["derivative"]
                           or not c["weight_derivative"]):
            raise ConfigError("ar graph mode relaxes with each node's exact local "
                              "vector-Jacobian product; it supports backward_weights="
                              "'transpose' with derivative=true and weight_derivative=true only")

    # ------------------------------------------------------------------ model
    def _layout(self, model: nn.Module) -> MLPLayout:
        return mlp_layout(model)

    def _feedback_layers(self, model: nn.Module) -> list[nn.Linear]:
        """The Linear layers whose backward map relaxes a hidden layer (all but the first)."""
        return [lin for lin, _ in self._layout(model).layers[1:]]

    def prepare(self, model: nn.Module, example: torch.Tensor | None = None) -> nn.Module:
        """Check the model can be relaxed; attach ψ (``feedback``) for random/learned weights."""
        if self.config["graph"]:
            from .ar_graph import trace_model

            trace_model(model)
            return model
        layout = self._layout(model)
        if self.config["backward_weights"] == "transpose":
            return model
        learned = self.config["backward_weights"] == "learned"
        for lin, _ in layout.layers[1:]:
            psi = getattr(lin, "feedback", None)
            if not (isinstance(psi, torch.Tensor) and psi.shape == lin.weight.shape):
                w = lin.weight
                gen = self.generator(w.device)
                data = torch.randn(w.shape, generator=gen, device=w.device, dtype=w.dtype)
                psi = nn.Parameter(data.mul_(float(self.config["feedback_std"])))
                if hasattr(lin, "feedback"):
                    delattr(lin, "feedback")
                lin.register_parameter("feedback", psi)
            psi.requires_grad_(learned)
        return model

    def aux_parameters(self, model: nn.Module) -> dict[str, list[nn.Parameter]]:
        if self.config["graph"] or self.config["backward_weights"] != "learned":
            return {}
        return {"feedback": [self._psi(lin) for lin in self._feedback_layers(model)]}

    def feedback_pairs(self, model: nn.Module) -> list[FeedbackPair]:
        if self.config["graph"] or self.config["backward_weights"] == "transpose":
            return []
        names = {id(m): n for n, m in model.named_modules()}
        return [FeedbackPair(f"{names[id(lin)]}.weight", lin.weight, self._psi(lin))
                for lin in self._feedback_layers(model)]

    @staticmethod
    def _psi(lin: nn.Linear) -> nn.Parameter:
        psi = getattr(lin, "feedback", None)
        if not isinstance(psi, torch.Tensor):
            raise ConfigError("this model has no feedback weights ψ: call rule.prepare(model) "
                              "before training with backward_weights='random' or 'learned'")
        return psi

    # ------------------------------------------------------------ relaxation
    def forward_chain(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn) -> Chain:
        """Stored forward pass, ``f′`` and output error of one batch, with the backward maps."""
        c = self.config
        layout = self._layout(model)
        chain = forward_chain(layout, x, y, loss_fn,
                              need_fprime=c["derivative"] or c["weight_derivative"])
        if c["backward_weights"] == "transpose":
            chain.feedback = [None] + [lin.weight.detach() for lin, _ in layout.layers[1:]]
        else:
            chain.feedback = [None] + [self._psi(lin).detach() for lin, _ in layout.layers[1:]]
        chain.derivative = c["derivative"]
        return chain

    def relax(self, chain: Chain, callback=None) -> list[torch.Tensor]:
        """Relaxed hidden layers ``[x_1(K), …, x_{L−1}(K)]`` by the configured solver.

        A ``callback(k, hidden)`` forces the literal loop and sees every step.
        """
        c = self.config
        hidden0 = chain.forward[1:-1]
        with torch.no_grad():
            if callback is not None or c["solver"] == "loop":
                return relax_loop(hidden0, chain.error, chain.backward, c["relax_steps"],
                                  c["eta_x"], c["sweep"], callback)
            if c["solver"] == "fixed_point":
                return relax_fixed_point(hidden0, chain.error, chain.backward)
            return relax_closed_form(hidden0, chain.error, chain.backward, c["relax_steps"],
                                     c["eta_x"], c["sweep"])

    def _check(self, loss: torch.Tensor, values: list[torch.Tensor], where: str) -> None:
        self._steps_done += 1
        peaks = [torch.stack(torch.aminmax(v)).abs().amax() for v in values if v.numel()]
        peak = float(torch.stack(peaks).amax()) if peaks else 0.0
        self._last_max = peak
        thr = self.config["divergence_threshold"]
        bad_loss = not math.isfinite(float(loss))
        if bad_loss or not math.isfinite(peak) or (thr is not None and peak > thr):
            what = (f"the loss is {float(loss)}" if bad_loss else
                    f"the largest relaxed {where} value is {peak:.3g} (threshold {thr})")
            hint = (" Fixed random backward weights (FA) are known to diverge (paper §4.1);"
                    " try backward_weights='learned' or a smaller learning rate."
                    if self.config["backward_weights"] == "random" else
                    " Try a smaller learning rate.")
            raise DivergenceError(f"activation relaxation diverged at training step "
                                  f"{self._steps_done}: {what}.{hint}")

    def train_step(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn) -> StepResult:
        """Forward, relax, and write ``.grad`` of every W, b (and learned ψ) — eq 1, 5, 6."""
        if self.config["graph"]:
            from .ar_graph import graph_train_step

            out, loss, relaxed = graph_train_step(self, model, x, y, loss_fn)
            self._check(loss, relaxed, "node")
            return StepResult(loss, out)
        c = self.config
        chain = self.forward_chain(model, x, y, loss_fn)
        # Relax per-example errors; the loss's batch reduction goes into the weight update.
        per_example = x.shape[0] if batch_mean(loss_fn) else 1
        if per_example != 1:
            chain.error = chain.error * per_example
        relaxed = self.relax(chain)
        self._check(chain.loss, relaxed + [chain.error], "activity")
        values = relaxed + [chain.error]  # x_{l+1} for l = 0..L−1
        learned = c["backward_weights"] == "learned"
        with torch.no_grad():
            for l, (lin, _) in enumerate(chain.layout.layers):
                delta = values[l]
                fp = chain.fprime[l]
                if c["weight_derivative"] and fp is not None:
                    delta = delta * fp
                if per_example != 1:
                    delta = delta / per_example
                gw = _grad_buffer(lin.weight)
                torch.mm(delta.t(), chain.forward[l], out=gw)
                if lin.bias is not None:
                    torch.sum(delta, 0, out=_grad_buffer(lin.bias))
                if learned and l > 0:
                    _grad_buffer(self._psi(lin)).copy_(gw)
        return StepResult(chain.loss, chain.output)

    def metrics(self, model: nn.Module) -> dict[str, float]:
        """The largest |relaxed value| of the last step (a divergence indicator)."""
        return {"relax_max_abs": self._last_max}


def batch_mean(loss_fn) -> bool:
    """True for losses averaged over the batch (``Loss.reduction == "mean"``).

    Their output error is ``1/N`` times each example's error; AR relaxes the per-example
    errors (so the relaxation starts on the same scale as the stored activities) and applies
    the ``1/N`` to the weight update. A plain callable is taken as a summed loss.
    """
    return getattr(loss_fn, "reduction", "sum") == "mean"


def _grad_buffer(p: torch.Tensor) -> torch.Tensor:
    """``p.grad`` to overwrite in place (allocated when absent or of the wrong shape/dtype)."""
    g = p.grad
    if g is None or g.shape != p.shape or g.dtype != p.dtype:
        g = torch.empty_like(p)
        p.grad = g
    return g
