"""SAL, the self-assembling four-matrix learning circuit (Liao, Ziyin, Gan, Cheung, Harnett & Poggio
2024, arXiv 2412.20018). **The rules are a reconstruction**: the text of the paper available to us
lost every equation; each uncertain element is an option below.

The user's MLP is the upstream stream. A downstream stream of width ``m_k = width·n_k`` per hidden
layer runs top-down from the output error, ``g_L = e``, ``g_k = φ(B_k g_{k+1})``; it does not
drive the upstream during learning. Four matrices per layer learn by heterosynaptic rules, each
synapse gated by what arrives at its neuron through the *other* stream (column-vector form)::

    ΔW_l = −η_W (Q_{l+1} g_{l+1}) h_lᵀ − γ W_l        ΔB_k = −η_B (R_k h_k) g_{k+1}ᵀ − γ B_k
    ΔQ_k =  s η_Q h_k g_kᵀ − γ Q_k                     ΔR_k =  s η_R g_k h_kᵀ − γ R_k

Special cases (paper Table 2): ``Q = R = I`` frozen with ``downstream="relu_jacobian"`` is KP
(Kolen-Pollack) exactly; the same with B frozen is FA, with ``b_init="transpose"`` it is SGD.
With ``Q = Rᵀ`` (zero init: ``Q ≡ Rᵀ`` forever) and B at its fixed point, the upstream error is
the derivative-free BP signal preconditioned by ``R_kᵀR_k`` (positive definite iff ``m_k ≥ n_k``).

Options. The defaults are the best configuration of the search in
``benchmarks/results/sal_search.md`` (MNIST, quick scale, best at the overall lr 0.3; over 100
epochs of the Table 1 setting that rate, and 0.1, diverge, while 0.03 trains stably to 97.66 %
— ``benchmarks/results/paper_scale/sal_table1_mnist/report.md``): s = −1
(the gradient-descent sign of the bilinear local losses), Q = R = I at init with plastic top
Q_L/R_L, B = 0 at init, the ReLU-Jacobian downstream, all four rates equal, γ = 1e-4. That
starting point is the KP special case with B learned from zero; the paper's own default
(identity downstream, Q/R from zero or random) learned less in the search.

* ``setting``: ``"library"`` (the defaults below) or ``"paper"``: the paper's random connectivity
  (:data:`~bioplausible.rules.sal.sal_paper.PAPER_SETTING`: W, B, Q, R all i.i.d. Gaussian, identity
  downstream, everything plastic, one uniform decay, equal rates); options given explicitly win.
* ``width``: downstream width per hidden layer as a multiple of the upstream width (a number or
  a list, one per hidden layer); < 1 warns (the theorem needs an over-parametrised downstream).
* ``connections``: the paper's Fig. 2 axis instead of ``width``: the ratio of backprojection to
  forward connections; it sets every hidden downstream width to ``√connections`` × the upstream
  (the hidden-to-hidden B then has ``connections`` × W's connections).
* ``w_init``: ``model`` (keep the model's weights) or ``normal`` (W ~ N(0, w_init_scale²/fan_in),
  biases 0); ``qr_fan``: Q and R drawn with variance ``qr_init_scale²`` over their fan-in (``in``)
  or over the downstream width m_k (``downstream``, so M = RᵀR starts near I at any width).
* ``downstream``: φ = ``identity`` (paper default), ``relu_jacobian`` (the upstream gate f′(u_k),
  tiled over the ``width`` downstream copies of each unit; this gives KP), ``relu``, ``tanh``.
* ``rates``: ``{W, B, Q, R}`` ratio of the learning rates; the optimizer's lr is the overall scale.
* ``decay``: γ, weight decay on all four (the optimizer's ``weight_decay`` of each group);
  ``decay_scaling="rate"`` shrinks X by ``η_X·γ`` per step (torch's convention), ``"absolute"``
  by ``γ`` for every matrix. Biases are not decayed.
* ``plastic``: the matrices that learn (paper Fig. 4 ablations); the others stay at their init.
* §7.4 flags: ``sign`` s = ±1 of the Q/R data term; ``qr_term`` = ``activity`` (h, g) or
  ``potential`` (u, v); ``read`` = W gated by g (``after`` φ) or v (``before``); ``top`` =
  ``fixed`` (option a: Q_L = R_L = I) or ``plastic`` (option b); ``qr_init`` = ``zero``,
  ``random`` (independent N(0, qr_init_scale²/fan_in)), ``tied`` (random R, Q = Rᵀ) or
  ``identity``; ``b_init`` = ``normal`` (N(0, 1/fan_in)), ``normal_out`` (N(0, 1/m_k), the
  variance of W_kᵀ), ``zero`` or ``transpose`` (Wᵀ, equal
  widths); ``timing`` = ``simultaneous`` (all four from one cycle) or
  ``feedback_first`` (B, Q, R step first, in place at their rate, then W reads a fresh
  downstream pass); ``output_error`` = ``loss`` (∂loss/∂h_L of the trainer's loss), ``mse``
  ((h_L − y)/N) or ``cross_entropy`` ((softmax − y)/N). With a batch-mean error the downstream
  stream carries each example's own error (N times it) and the 1/N is applied to the updates,
  so a nonlinear φ (``tanh``) makes the same update whatever the batch size.
* ``modulation``: τ of the optional inference-time short-term modulation (:meth:`SAL.modulate`).

B, Q, R are rule-owned tensors (``rule.owned``, checkpointed and resumed) created in
:meth:`prepare` on the model's device and dtype, in the parameter groups ``B``, ``Q``, ``R``
(``layer=k``): the rule writes their ``.grad`` and the optimizer applies the rates and the decay
(with ``timing="feedback_first"`` the rule applies them itself, at ``group_lr``).
"""

from __future__ import annotations

import copy
import math
import warnings
from typing import Any, ClassVar

import torch
from torch import nn

from ...core.rule import FeedbackPair, Rule, StepResult
from ...errors import ConfigError
from ...nn.mlp import MLPLayout, mlp_layout
from ..registry import register
from .sal_ops import NONLINEARITIES, downstream, fast_updates, upstream, upstream_signal

MATRICES = ("W", "B", "Q", "R")
CHOICES: dict[str, tuple[Any, ...]] = {
    "downstream": NONLINEARITIES, "qr_term": ("activity", "potential"), "read": ("after", "before"),
    "top": ("fixed", "plastic"), "qr_init": ("zero", "random", "tied", "identity"),
    "b_init": ("normal", "normal_out", "zero", "transpose"), "timing": ("simultaneous", "feedback_first"),
    "output_error": ("loss", "mse", "cross_entropy"), "decay_scaling": ("rate", "absolute"),
    "sign": (1, -1),
}


@register("sal")
class SAL(Rule):
    """SAL, the self-assembling four-matrix circuit — a reconstruction (see the module docstring).

    A downstream stream ``g_L = e``, ``g_k = φ(B_k g_{k+1})`` and four heterosynaptic matrices per
    layer: ``ΔW = −η_W(Q g)hᵀ``, ``ΔB = −η_B(R h)gᵀ``, ``ΔQ = sη_Q h gᵀ``, ``ΔR = sη_R g hᵀ``, each
    with decay γ (Liao, Ziyin, Gan, Cheung, Harnett & Poggio 2024). The paper's equations are not
    available; every uncertain element is an option, and it reduces to KP, FA and SGD exactly.

    Options: ``width`` — downstream width per hidden layer, a multiple of the upstream width;
    ``downstream`` — φ; ``rates`` — ratios of the W, B, Q, R learning rates; ``decay`` — γ and
    ``decay_scaling`` (``"rate"`` or ``"absolute"``); ``plastic`` — which of W, B, Q, R learn;
    ``sign`` — s = ±1; ``qr_term`` — ``"activity"`` or ``"potential"``; ``read`` — W gated by g
    ``"after"`` or ``"before"`` φ; ``top`` — ``"fixed"`` or ``"plastic"`` top Q, R; ``qr_init``,
    ``qr_init_scale``, ``b_init`` — initialisations; ``timing`` — ``"simultaneous"`` or
    ``"feedback_first"``; ``output_error`` — ``"loss"``, ``"mse"`` or ``"cross_entropy"``;
    ``modulation`` — τ of the inference-time short-term modulation; ``setting`` — ``"library"``
    or ``"paper"`` (the paper's random connectivity: all four i.i.d. Gaussian, identity
    downstream, everything plastic, uniform decay, equal rates); ``connections`` — the paper's
    ratio of backprojection to forward connections (sets ``width`` to its square root);
    ``w_init`` / ``w_init_scale`` — keep the model's W or draw it N(0, scale²/fan_in);
    ``qr_fan`` — Q and R scaled by their fan-in or by the downstream width. The module docstring
    gives every value.

    Models: MLPs of ``nn.Linear`` layers with elementwise activations.
    """

    option_help: ClassVar[dict[str, str]] = {
        "width": "downstream width per hidden layer, a multiple of the upstream width (a number or one per layer)",
        "downstream": "φ of the downstream stream: identity (paper), relu_jacobian (f′(u_k); gives KP), relu, tanh",
        "rates": "{W, B, Q, R}: ratios of the four learning rates; the optimizer's lr is the overall scale",
        "decay": "γ, weight decay on all four matrices (the optimizer's weight_decay of each group)",
        "decay_scaling": "rate: X shrinks by η_X·γ per step (torch's convention); absolute: by γ for every matrix",
        "plastic": "the matrices that learn (paper Fig. 4 ablations); the others keep their init",
        "sign": "s = ±1 of the Q/R data term (−1: the gradient-descent sign of the local losses)",
        "qr_term": "Q/R data term from activity (h, g) or potential (u, v)",
        "read": "W gated by g (after φ) or v (before φ)",
        "top": "fixed (Q_L = R_L = I) or plastic top-layer Q/R",
        "qr_init": "Q, R at init: zero, random N(0, qr_init_scale²/fan_in), tied (random R, Q = Rᵀ) or identity",
        "qr_init_scale": "std scale of a random Q/R init: N(0, qr_init_scale²/fan_in)",
        "b_init": "B at init: normal N(0, 1/fan_in), zero or transpose (Wᵀ, equal widths)",
        "timing": "simultaneous (all four from one cycle) or feedback_first (B, Q, R step first, then W)",
        "output_error": "the top error e: loss (∂loss/∂h_L of the trainer's loss), mse ((h_L − y)/N) or cross_entropy",
        "modulation": "τ of the optional inference-time short-term modulation (SAL.modulate); 0: off",
    }
    family = "circuit"
    paper = "Liao, Ziyin, Gan, Cheung, Harnett & Poggio 2024 (arXiv 2412.20018), reconstructed"
    summary = "four heterosynaptic matrices W, B, Q, R: ΔW = −η(Q g)hᵀ, ΔB = −η(R h)gᵀ, ΔQ = sη h gᵀ"
    defaults: ClassVar[dict[str, Any]] = {
        # The best configuration of benchmarks/sal_search.py (MNIST quick scale, overall lr 0.3).
        "width": 1, "downstream": "relu_jacobian", "rates": {"W": 1.0, "B": 1.0, "Q": 1.0, "R": 1.0},
        "decay": 1e-4, "decay_scaling": "rate", "plastic": ["W", "B", "Q", "R"], "sign": -1,
        "qr_term": "activity", "read": "after", "top": "plastic", "qr_init": "identity",
        "qr_init_scale": 0.1, "b_init": "zero", "timing": "simultaneous", "output_error": "loss",
        "modulation": 0.0, "w_init": "model", "w_init_scale": 1.0, "qr_fan": "in", "connections": None, "setting": "library",
    }

    def __init__(self, **config: Any) -> None:
        # setting="paper" fills every option the caller did not give from PAPER_SETTING
        if config.get("setting") == "paper":
            from .sal_paper import PAPER_SETTING

            config = {**copy.deepcopy(PAPER_SETTING), **config}
        if config.get("connections") is not None and "width" in config:
            raise ConfigError("sal: give either width (a width multiple) or connections (the "
                              "downstream:upstream connection ratio), not both")
        super().__init__(**config)

    @property
    def tensors(self) -> dict[str, torch.Tensor]:
        """The owned B, Q, R by name (``"B.1"``, ``"Q.2"``, ...), in :attr:`owned`."""
        return {name: self.owned.get(name) for name in self._owned_meta}

    # ----------------------------------------------------------------- config
    def validate(self) -> None:
        c = self.config
        for key, accepted in CHOICES.items():
            if c[key] not in accepted or isinstance(c[key], bool):
                raise ConfigError(f"sal option {key}={c[key]!r} is not valid; accepted: "
                                  f"{', '.join(map(str, accepted))}")
        plastic = c["plastic"]
        if isinstance(plastic, str):
            plastic = [p for p in plastic.replace(",", " ").split() if p]
        if not isinstance(plastic, (list, tuple)) or any(p not in MATRICES for p in plastic):
            raise ConfigError(f"sal option plastic={c['plastic']!r} is not valid: give a list of "
                              f"matrices from {', '.join(MATRICES)} (e.g. [W, B])")
        c["plastic"] = [m for m in MATRICES if m in plastic]
        rates = c["rates"]
        if not isinstance(rates, dict) or any(k not in MATRICES for k in rates):
            raise ConfigError(f"sal option rates={rates!r} is not valid: a mapping from "
                              f"{', '.join(MATRICES)} to learning-rate ratios")
        rates = {**self.defaults["rates"], **rates}
        for k, r in rates.items():
            if isinstance(r, bool) or not isinstance(r, (int, float)) or not r >= 0:
                raise ConfigError(f"sal rate ratio for {k} must be a number >= 0, got {r!r}")
            if r == 0 and k in c["plastic"]:
                raise ConfigError(f"sal: {k} is marked plastic but its rate ratio is 0; give it a "
                                  f"positive ratio or remove it from plastic")
        c["rates"] = {k: float(v) for k, v in rates.items()}
        for key in ("decay", "qr_init_scale", "w_init_scale", "modulation"):
            v = c[key]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0:
                raise ConfigError(f"sal option {key} must be a number >= 0, got {v!r}")
            c[key] = float(v)
        if c["setting"] not in ("library", "paper"):
            raise ConfigError(f"sal option setting={c['setting']!r} is not valid; accepted: library, paper")
        if c["qr_fan"] not in ("in", "downstream"):
            raise ConfigError(f"sal option qr_fan={c['qr_fan']!r} is not valid; accepted: in, downstream")
        if c["w_init"] not in ("model", "normal"):
            raise ConfigError(f"sal option w_init={c['w_init']!r} is not valid; accepted: model, normal")
        if c["connections"] is not None:
            from .sal_paper import width_from_connections

            c["width"] = width_from_connections(c["connections"])
        width = c["width"]
        widths = width if isinstance(width, (list, tuple)) else [width]
        for w in widths:
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not w > 0:
                raise ConfigError(f"sal option width must be a number > 0 or a list of them, got {width!r}")
        if any(w < 1 for w in widths):
            warnings.warn(f"sal: downstream width {width!r} is narrower than the upstream; the "
                          "paper's theorem needs an over-parametrised downstream (width >= 1)",
                          UserWarning, stacklevel=3)
        if c["b_init"] == "transpose" and any(w != 1 for w in widths):
            raise ConfigError("sal option b_init='transpose' needs equal widths (width=1)")

    # ------------------------------------------------------------------ model
    def _layout(self, model: nn.Module) -> MLPLayout:
        return mlp_layout(model)

    def widths(self, model: nn.Module) -> tuple[list[int], list[int]]:
        """Upstream widths ``n_0..n_L`` and downstream widths ``m_0..m_L`` (``m_0`` unused, ``m_L = n_L``)."""
        layers = self._layout(model).layers
        n = [layers[0][0].in_features] + [lin.out_features for lin, _ in layers]
        L = len(layers)
        w = self.config["width"]
        ratios = list(w) if isinstance(w, (list, tuple)) else [w] * (L - 1)
        if len(ratios) != L - 1:
            raise ConfigError(f"sal option width lists {len(ratios)} ratios but the model has "
                              f"{L - 1} hidden layers; give one ratio per hidden layer")
        m = [n[0]] + [max(1, round(r * n[k + 1])) for k, r in enumerate(ratios)] + [n[L]]
        if self.config["downstream"] == "relu_jacobian":
            for k in range(1, L):
                if m[k] % n[k]:
                    raise ConfigError(f"sal downstream='relu_jacobian' gates each downstream unit by "
                                      f"an upstream one: layer {k} needs a width multiple of {n[k]}, got {m[k]}")
        return n, m

    def prepare(self, model: nn.Module, example: torch.Tensor | None = None) -> nn.Module:
        """Create B, Q, R on the model's device and dtype (drawn from the rule's generator).

        They are owned tensors (``self.own``) in groups ``B``, ``Q``, ``R`` with ``layer=k``;
        frozen ones (not in ``plastic``) are kept and saved but never stepped.
        """
        c = self.config
        layers = self._layout(model).layers
        n, m = self.widths(model)
        L = len(layers)
        w0 = layers[0][0].weight
        dev, dt = w0.device, w0.dtype
        gen = self.generator(dev)
        first = c["timing"] == "feedback_first"
        if c["w_init"] == "normal":  # the paper's i.i.d. Gaussian start: W ~ N(0, w_init_scale²/fan_in)
            with torch.no_grad():
                for lin, _ in layers:
                    fan_in = lin.weight.shape[1]
                    lin.weight.copy_(torch.randn(lin.weight.shape, generator=gen, device=dev, dtype=dt)
                                     * (c["w_init_scale"] / math.sqrt(fan_in)))
                    if lin.bias is not None:
                        lin.bias.zero_()
        if "W" not in c["plastic"]:  # frozen upstream (ablations): no optimizer group, no probe entry
            for lin, _ in layers:
                for p in lin.parameters():
                    p.requires_grad_(False)

        def new(name: str, t: torch.Tensor, matrix: str, k: int) -> None:
            plastic = matrix in c["plastic"]
            # contiguous: a transposed copy would keep W's strides, which the fused CPU SGD
            # mis-steps when the .grad (from a matmul) is laid out differently
            t = t.contiguous()
            self.own(name, t, group=matrix, layer=k, trainable=plastic and not first,
                     self_applied=plastic and first)

        for k in range(1, L):
            if c["b_init"] == "transpose":
                b = layers[k][0].weight.detach().t().clone()
            elif c["b_init"] == "zero":
                b = torch.zeros(m[k], m[k + 1], device=dev, dtype=dt)
            else:  # normal: N(0, 1/m_{k+1}) (B's fan-in); normal_out: N(0, 1/m_k), the variance
                # W_kᵀ has under a fan-in init of W, so g_k starts at BP's scale, not √(m_k/n_L)-fold
                fan = m[k] if c["b_init"] == "normal_out" else m[k + 1]
                b = torch.randn(m[k], m[k + 1], generator=gen, device=dev, dtype=dt) / math.sqrt(fan)
            new(f"B.{k}", b, "B", k)
        qr_layers = list(range(1, L)) + ([L] if c["top"] == "plastic" else [])
        for k in qr_layers:
            r = self._qr_init(m[k], n[k], gen, dev, dt, m[k])
            q = r.t().clone() if c["qr_init"] == "tied" else self._qr_init(n[k], m[k], gen, dev, dt, m[k])
            new(f"Q.{k}", q, "Q", k)
            new(f"R.{k}", r, "R", k)
        return model

    def _qr_init(self, rows: int, cols: int, gen: torch.Generator, dev, dt, down: int) -> torch.Tensor:
        c = self.config
        kw = {"device": dev, "dtype": dt}
        if c["qr_init"] == "zero":
            return torch.zeros(rows, cols, **kw)
        if c["qr_init"] == "identity":
            return torch.eye(rows, cols, **kw)
        # fan "in": N(0, scale²/fan_in); "downstream": N(0, scale²/m_k) for both Q_k and R_k, so
        # that M = RᵀR starts near the identity whatever the downstream width
        fan = down if c["qr_fan"] == "downstream" else cols
        return torch.randn(rows, cols, generator=gen, **kw) * (c["qr_init_scale"] / math.sqrt(fan))

    def _lists(self, model: nn.Module):
        L = len(self._layout(model).layers)
        get = self.tensors.get
        B = [get(f"B.{k}") for k in range(L + 1)]
        Q = [get(f"Q.{k}") for k in range(L + 1)]
        R = [get(f"R.{k}") for k in range(L + 1)]
        return B, Q, R

    def decay_for(self, matrix: str, eta: float) -> float:
        """The ``weight_decay`` of matrix X at rate η_X: γ (``rate``) or γ/η_X (``absolute``)."""
        gamma = self.config["decay"]
        if self.config["decay_scaling"] == "absolute":
            return gamma / eta if eta > 0 else 0.0
        return gamma

    def param_groups(self, model: nn.Module, lr: float | None = None,
                     group_options: dict[str, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
        """Groups ``forward`` (Linear weights), ``forward_other`` (biases), ``B``, ``Q``, ``R``.

        Each gets ``lr × rates[X]`` (unless ``group_options`` sets its lr) and ``weight_decay``
        from γ (biases: none; groups the rule applies itself take the decay in the rule).
        """
        if lr is None:
            raise ConfigError("sal scales its rate ratios by the overall lr: pass lr to "
                              "rule.param_groups(model, lr=...) or optimizer.lr")
        group_options = dict(group_options or {})
        groups = super().param_groups(model, lr, group_options)
        weights = {id(lin.weight) for lin, _ in self._layout(model).layers}
        out = []
        for group in groups:
            name = group["name"]
            base = name.partition(".")[0]
            matrix = "W" if base == "forward" else base
            if matrix not in MATRICES:
                out.append(group)
                continue
            if "lr" not in {**group_options.get(base, {}), **group_options.get(name, {})}:
                group["lr"] = float(lr) * self.config["rates"][matrix]
            if base == "forward":
                rest = {**group, "name": name.replace("forward", "forward_other", 1),
                        "params": [p for p in group["params"] if id(p) not in weights]}
                group = {**group, "params": [p for p in group["params"] if id(p) in weights]}
                out.append(rest)
            if not group.get("self_applied"):
                group["weight_decay"] = group.get("weight_decay", 0.0) + self.decay_for(matrix, group["lr"])
            out.append(group)
        out = [g for g in out if g["params"] or g.get("self_applied")]
        self._groups = {g["name"]: g for g in out}
        return out

    def feedback_pairs(self, model: nn.Module) -> list[FeedbackPair]:
        names = {id(m): n for n, m in model.named_modules()}
        out = []
        for k, (lin, _) in enumerate(self._layout(model).layers):
            b = self.tensors.get(f"B.{k}")
            if b is not None and b.shape[::-1] == lin.weight.shape:
                out.append(FeedbackPair(f"{names[id(lin)]}.weight", lin.weight, b.t()))
        return out

    # ------------------------------------------------------------------ step
    def output_error(self, output: torch.Tensor, y: torch.Tensor, loss_fn) -> tuple[torch.Tensor, torch.Tensor]:
        """``(e, loss)``: the downstream input ``g_L`` and the batch loss of the trainer's loss."""
        kind = self.config["output_error"]
        if kind == "loss":
            with torch.enable_grad():
                out = output.detach().requires_grad_(True)
                loss = loss_fn(out, y)
                (e,) = torch.autograd.grad(loss, out)
            return e.detach(), loss.detach()
        with torch.no_grad():
            loss = loss_fn(output, y)
            target = y if y.dim() == 2 else torch.nn.functional.one_hot(y.long(), output.shape[1])
            target = target.to(output.dtype)
            pred = output if kind == "mse" else torch.softmax(output, dim=1)
            return (pred - target) / output.shape[0], loss

    def batch_scale(self, output: torch.Tensor, loss_fn) -> float:
        """``N`` when the output error is a batch mean (``1/N`` times each example's error), else 1."""
        if self.config["output_error"] != "loss" or getattr(loss_fn, "reduction", "sum") == "mean":
            return float(output.shape[0])
        return 1.0

    def cycle(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn,
              per_example: bool = False):
        """One upstream and downstream pass: ``(cycle, loss)``.

        ``per_example``: the downstream stream carries each example's own error (``N·e`` for a
        batch-mean loss, so that a nonlinear φ such as tanh sees the same input whatever the
        batch size); ``cyc.scale`` is that ``N`` and the updates are divided by it.
        """
        layout = self._layout(model)
        B, _, _ = self._lists(model)
        with torch.no_grad():
            cyc = upstream(layout, x, self.config["downstream"] == "relu_jacobian")
        e, loss = self.output_error(cyc.output, y, loss_fn)
        cyc.scale = self.batch_scale(cyc.output, loss_fn) if per_example else 1.0
        with torch.no_grad():
            downstream(cyc, e * cyc.scale if cyc.scale != 1.0 else e, B, self.config["downstream"])
        return cyc, loss

    def train_step(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn) -> StepResult:
        """Upstream pass, downstream pass, and the four updates as ``.grad`` (no autograd graph)."""
        c = self.config
        cyc, loss = self.cycle(model, x, y, loss_fn, per_example=True)
        B, Q, R = self._lists(model)
        plastic = set(c["plastic"])
        opts = {"sign": float(c["sign"]), "term": c["qr_term"], "read": c["read"]}
        with torch.no_grad():
            if c["timing"] == "feedback_first":
                self._apply_feedback_first(cyc, Q, R, plastic - {"W"}, opts)
                downstream(cyc, cyc.g[-1], B, c["downstream"])
                plastic &= {"W"}
            grads = fast_updates(cyc, Q, R, want=plastic, **opts)
            if cyc.scale != 1.0:  # per-example errors: the batch mean's 1/N goes into the update
                grads = {name: g.div_(cyc.scale) for name, g in grads.items()}
            layers = self._layout(model).layers
            for name, g in grads.items():
                kind, k = name.split(".")
                if kind in ("W", "b"):
                    lin = layers[int(k)][0]
                    p = lin.weight if kind == "W" else lin.bias
                    if p is not None and p.requires_grad:
                        p.grad = g
                else:
                    self.owned.get(name).grad = g
        return StepResult(loss, cyc.output.detach())

    def _apply_feedback_first(self, cyc, Q, R, want: set[str], opts: dict[str, Any]) -> None:
        """B, Q, R step in place: ``X ← X − η_X (grad + wd_X X)`` at their group rates."""
        for name, g in fast_updates(cyc, Q, R, want=want, **opts).items():
            if cyc.scale != 1.0:
                g = g / cyc.scale
            kind, k = name.split(".")
            eta = self.group_lr(kind, int(k))
            p = self.owned.get(name)
            p.mul_(1.0 - eta * self.decay_for(kind, eta)).sub_(g, alpha=eta)

    @torch.no_grad()
    def modulate(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn,
                 tau: float | None = None) -> torch.Tensor:
        """Short-term modulation (paper §2.3), inference only: after one cycle every upstream layer
        accumulates its downstream input, ``h_k ← h_k − τ Q_k g_k`` (top: ``−τ g_L``), and the
        change is carried up through the layers above. Returns the modulated output; no weight changes.
        """
        tau = self.config["modulation"] if tau is None else float(tau)
        cyc, _ = self.cycle(model, x, y, loss_fn)
        _, Q, _ = self._lists(model)
        layout = self._layout(model)
        h = cyc.h[0]
        for l, (lin, acts) in enumerate(layout.layers):
            h = torch.nn.functional.linear(h, lin.weight, lin.bias)
            for a in acts:
                h = a(h.clone())
            h = h - tau * upstream_signal(cyc, Q, l + 1, "after")
        return h

    # ------------------------------------------------------------------ diagnostics
    def metrics(self, model: nn.Module) -> dict[str, float]:
        """Per layer: ‖Q − Rᵀ‖/‖Q‖, λ_min of the symmetrised Q R, and effective ranks of W, B, Q, R."""
        from .sal_diag import sal_metrics

        return sal_metrics(self, model)


__all__ = ["SAL"]
