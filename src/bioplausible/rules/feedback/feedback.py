"""Feedback-pathway rules in W's layout: FA, sign symmetry (uSF, brSF, frSF), KP and WM.

All of them train a converted model (:func:`bioplausible.nn.convert`): the backward pass of
every Linear/Conv2d uses ``B_eff`` in place of ``W`` (``δ_l = (B_l δ_{l+1}) ⊙ f′(a_l)``, spec
§1) and leaves the weight gradient ``δ_{l+1} h_lᵀ`` as it is. They differ only in ``B``:

* ``fa``   — fixed random B (Lillicrap et al. 2016).
* ``usf``  — ``B = sign(W)·c`` (uniform sign-concordant feedback; Liao, Leibo & Poggio 2016;
  Xiao et al. 2018).
* ``brsf`` — ``B = sign(W) ⊙ M·c``, magnitudes M redrawn every batch (Liao et al. 2016).
* ``frsf`` — ``B = sign(W) ⊙ M·c``, M drawn once at ``prepare`` (Liao et al. 2016).
* ``kp``   — Kolen-Pollack (Kolen & Pollack 1994; Akrout et al. 2019): B gets W's gradient,
  both decay: ``ΔW = −η(δhᵀ + λW)``, ``ΔB = −η(δhᵀ + λB)``, so under SGD
  ``W − B ← (1 − ηλ)(W − B)`` every step. ``decay=0`` is the "matched" rule of Lansdell et
  al. 2020 and the learned backward weights of activation relaxation. The gradients are
  written by the backward pass itself (no extra call). A layer whose input needs no gradient
  (the first layer) never uses its B; by default KP does not update that B (``.grad`` stays
  ``None``, which saves an O(params) update per step, ~30% of an MNIST MLP step);
  ``learn_unused=True`` learns it too, e.g. to plot its alignment. ``decay_in="optimizer"``
  (the default) hands λ to the optimizer's ``weight_decay`` of the W and B groups; ``"backward"``
  adds λW and λB to the gradients in the backward pass instead (see :meth:`KolenPollack.param_groups`):
  the same update, free with a fused optimizer, but lost if the optimizer is not built from
  :meth:`param_groups`.
* ``wm``   — weight mirrors (Akrout et al. 2019): fixed during learning steps; after every
  ``mirror_every`` optimizer steps, :meth:`WeightMirror.after_step` runs ``mirror_steps``
  mirror steps per layer (:mod:`bioplausible.nn.mirror`): ``B ← (1 − λ)B + η yᵀξ/(mσ²)``,
  ``y = Wξ``. B is updated in place by this Hebbian rule with its own rate η (the paper's
  mirror mode), so it is not an optimizer parameter (``requires_grad=False``): momentum, Adam
  and weight decay never touch it. Defaults η = λ = 0.01 (B tracks W with a time constant of
  100 mirror steps; the residual angle from the noise is ≈ √(n_in·η/(2m)) rad, 11° for
  n_in = 500, m = 64) and m = 64 noise samples per step (cost ≈ 0.64 of a BP step at batch
  100).

The sign rules' scale ``c`` (``scale``) and the magnitudes M are described in
:mod:`bioplausible.nn.layers`. Feedback initialisation (``feedback_init``, FA/KP/WM):
``default`` U(±1/√fan_in) like PyTorch's weight init, ``weight_std`` N(0, std(W)²), ``weight``
a copy of W. All random draws come from the rule's seeded generator.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from ...core.rule import FeedbackPair, Rule
from ...nn.convert import feedback_layers, swap_layers
from ...nn.layers import FEEDBACK_INITS, init_feedback
from ...nn.mirror import mirror_update
from ...nn.pathway import (
    SCALES,
    FeedbackPathway,
    FixedFeedback,
    SignFeedback,
    SignRandomFeedback,
    Streams,
    draw_magnitudes,
)
from ..registry import register


class FeedbackRule(Rule):
    option_help: ClassVar[dict[str, str]] = {
        "feedback_init": "initial B: default U(±1/√fan_in), weight_std N(0, std(W)²), weight a copy of W",
        "scale": "sign rules' magnitude c: mean_abs (the layer's mean |W|, BP's magnitude) or unit (c = 1)",
    }
    """Common part: convert the model, give every layer the rule's pathway, initialise B."""

    family = "feedback"
    learns_feedback = False

    def pathway(self) -> FeedbackPathway:
        """The backward path of each converted layer (one new object per layer)."""
        return FixedFeedback()

    def validate(self) -> None:
        if "feedback_init" in self.config:
            self.check_choice("feedback_init", FEEDBACK_INITS)
        if "scale" in self.config:
            self.check_choice("scale", SCALES)

    def prepare(self, model: nn.Module, example: torch.Tensor | None = None) -> nn.Module:
        device = next(iter(model.parameters()), torch.empty(0)).device
        model = swap_layers(model, feedback=True, generator=self.generator(device))
        for _, layer in feedback_layers(model):
            layer.pathway = self.pathway()
            self.init_layer(layer)
            if layer.feedback is not None:
                layer.feedback.requires_grad_(self.learns_feedback)
        return model

    def init_layer(self, layer: nn.Module) -> None:
        init_feedback(layer, self.config["feedback_init"], self.generator(layer.weight.device))

    def aux_parameters(self, model: nn.Module) -> dict[str, list[nn.Parameter]]:
        if not self.learns_feedback:
            return {}
        return {"feedback": [layer.feedback for _, layer in feedback_layers(model)
                             if layer.feedback is not None]}

    def feedback_pairs(self, model: nn.Module) -> list[FeedbackPair]:
        return [FeedbackPair(name, layer.weight, layer.effective_feedback())
                for name, layer in feedback_layers(model)]


@register("fa")
class FeedbackAlignment(FeedbackRule):
    """Feedback alignment: the error travels back through fixed random matrices.

    ``δ_l = (B_l δ_{l+1}) ⊙ f′(a_l)`` with ``B_l`` random and fixed, in place of BP's
    ``W_lᵀ``; the weight update keeps BP's form ``δ_{l+1} h_lᵀ`` (Lillicrap, Cownden, Tweed &
    Akerman 2016, Fig. 1). The output layer receives the true error.

    Options: ``feedback_init`` — ``"default"`` U(±1/√fan_in), like PyTorch's weight init;
    ``"weight_std"`` N(0, std(W)²); ``"weight"`` a copy of W (then FA starts as BP).

    Models: any model whose layers are ``nn.Linear`` / ``nn.Conv2d`` (those are converted by
    :func:`bioplausible.convert`; other modules — activations, pooling, BatchNorm, skip
    connections — backpropagate as usual): MLPs, LeNet, the CIFAR ResNets, your own.
    """

    paper = "Lillicrap, Cownden, Tweed & Akerman 2016"
    summary = "fixed random feedback: δ_l = (B_l δ_{l+1}) ⊙ f′(a_l)"
    defaults: ClassVar[dict[str, Any]] = {"feedback_init": "default"}


class _SignSymmetry(FeedbackRule):
    paper = "Liao, Leibo & Poggio 2016; Xiao, Chen, Liao & Poggio 2018"
    defaults: ClassVar[dict[str, Any]] = {"scale": "mean_abs"}
    kind = "sign_random"
    redraw = False

    def pathway(self) -> FeedbackPathway:
        if self.kind == "sign":
            return SignFeedback(self.config["scale"])
        return SignRandomFeedback(self.config["scale"], redraw=self.redraw, streams=self._streams)

    def prepare(self, model: nn.Module, example: torch.Tensor | None = None) -> nn.Module:
        self._streams = Streams(self.seed + 104_729)
        return super().prepare(model, example)

    def init_layer(self, layer: nn.Module) -> None:
        if self.kind == "sign":
            layer.feedback = None  # sign(W) needs no stored tensor
            return
        draw_magnitudes(layer.feedback, self.generator(layer.weight.device))

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        streams = getattr(self, "_streams", None)
        if streams is not None:
            state["magnitude_streams"] = {k: g.get_state() for k, g in streams.generators.items()}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        streams = getattr(self, "_streams", None)
        if streams is not None:
            for key, st in state.get("magnitude_streams", {}).items():
                streams.get(key).set_state(st)


@register("usf")
class UniformSignFeedback(_SignSymmetry):
    """Uniform sign-concordant feedback (uSF): ``B = sign(W)·c``, recomputed every step.

    The backward pass uses only the signs of the forward weights, with one magnitude ``c`` per
    layer (Liao, Leibo & Poggio 2016, "uniform sign-concordant feedbacks"; Xiao, Chen, Liao &
    Poggio 2018 at ImageNet scale): ``δ_l = (sign(W_l)ᵀ c_l δ_{l+1}) ⊙ f′(a_l)``.

    Options: ``scale`` — the magnitude c: ``"mean_abs"`` (mean |W| of the layer, default),
    or ``"unit"`` (c = 1).

    Models: any model of ``nn.Linear`` / ``nn.Conv2d`` layers, as ``fa``.
    """

    summary = "B = sign(W)·c (uniform sign-concordant feedback)"
    kind = "sign"


@register("brsf")
class BatchRandomSignFeedback(_SignSymmetry):
    """Batchwise random-magnitude sign-concordant feedback (brSF): ``B = sign(W) ⊙ M·c``.

    The magnitudes ``M`` (positive, random) are drawn again for every batch, so only the signs of
    W carry information (Liao, Leibo & Poggio 2016; Xiao et al. 2018).

    Options: ``scale`` — the magnitude scale c, as for ``usf``.

    Models: any model of ``nn.Linear`` / ``nn.Conv2d`` layers, as ``fa``.
    """

    summary = "B = sign(W) ⊙ M·c, magnitudes M redrawn every batch"
    redraw = True


@register("frsf")
class FixedRandomSignFeedback(_SignSymmetry):
    """Fixed random-magnitude sign-concordant feedback (frSF): ``B = sign(W) ⊙ M·c``.

    As ``brsf`` but the random magnitudes ``M`` are drawn once, at ``prepare`` (Liao, Leibo &
    Poggio 2016; Xiao et al. 2018); the signs follow W as it learns.

    Options: ``scale`` — the magnitude scale c, as for ``usf``.

    Models: any model of ``nn.Linear`` / ``nn.Conv2d`` layers, as ``fa``.
    """

    summary = "B = sign(W) ⊙ M·c, magnitudes M fixed at prepare"


@register("kp")
class KolenPollack(FeedbackRule):
    """Kolen-Pollack (KP): B learns W's update, and decay makes W and B converge.

    ``ΔW_l = −η(δ_{l+1} h_lᵀ + λW_l)`` and ``ΔB_l = −η(δ_{l+1} h_lᵀ + λB_l)`` (in W's layout), so
    under SGD ``W − B ← (1 − ηλ)(W − B)`` every step (Kolen & Pollack 1994; Akrout, Wilson,
    Humphreys, Lillicrap & Tweed 2019, "Kolen-Pollack" method). Errors travel back as in ``fa``.

    Options: ``decay`` — λ (1e-3; 0 is the "matched" rule); ``feedback_init`` — as ``fa``;
    ``learn_unused`` — also learn the first layer's B, which no error ever uses (off: saves an
    O(params) update per step); ``decay_in`` — ``"optimizer"`` hands λ to the optimizer's
    ``weight_decay`` of the W and B groups (works with fused optimizers), ``"backward"`` adds λW,
    λB to the gradients in the backward pass (see :meth:`param_groups`).

    Models: any model of ``nn.Linear`` / ``nn.Conv2d`` layers, as ``fa``.
    """

    option_help: ClassVar[dict[str, str]] = {
        "decay": "λ, weight decay on W and B: W − B shrinks by (1 − lr·λ) per SGD step; 0 is the matched rule",
        "learn_unused": "also learn the first layer's B, which no signal passes through (to plot its alignment)",
        "decay_in": "where λ is applied: optimizer (its weight_decay of the W and B groups) or backward (in the gradients)",
    }
    paper = "Kolen & Pollack 1994; Akrout, Wilson, Humphreys, Lillicrap & Tweed 2019"
    summary = "B learns W's update; decay λ on both: W − B shrinks by (1 − lr·λ) per SGD step"
    defaults: ClassVar[dict[str, Any]] = {"decay": 1e-3, "feedback_init": "default",
                                          "learn_unused": False, "decay_in": "optimizer"}

    def validate(self) -> None:
        super().validate()
        self.check_number("decay", 0.0)
        self.check_bool("learn_unused")
        self.check_choice("decay_in", ("backward", "optimizer"))

    learns_feedback = True

    def pathway(self) -> FeedbackPathway:
        in_backward = self.config["decay_in"] == "backward"
        return FixedFeedback(learn=True, learn_unused=self.config["learn_unused"],
                             decay=float(self.config["decay"]) if in_backward else 0.0)

    def param_groups(self, model: nn.Module, lr: float | None = None,
                     group_options: dict[str, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
        """With ``decay_in="optimizer"`` the decay λ becomes the optimizer's ``weight_decay``.

        The feedback-layer weights stay in the group ``forward`` and B in ``feedback``, both with
        ``weight_decay`` = λ (plus any ``weight_decay`` given in ``group_options``); the other
        forward parameters (biases, other modules) form ``forward_other`` without it. Optimizers that implement ``weight_decay`` as ``grad +=
        λp`` (SGD, Adam, RMSprop, ...) then make the same update as ``decay_in="backward"``,
        and a fused optimizer (``torch.optim.SGD(..., fused=True)``) applies it without an extra
        pass over the weights.
        """
        groups = super().param_groups(model, lr, group_options)
        if self.config["decay_in"] != "optimizer":
            return groups
        decayed = {id(layer.weight) for _, layer in feedback_layers(model)}
        out = []
        for group in groups:
            base = group["name"].partition(".")[0]
            if base == "forward":
                rest = {**group, "name": group["name"].replace("forward", "forward_other", 1),
                        "params": [p for p in group["params"] if id(p) not in decayed]}
                group = {**group, "params": [p for p in group["params"] if id(p) in decayed]}
                out.append(rest)
            if base in ("forward", "feedback"):
                group["weight_decay"] = group.get("weight_decay", 0.0) + float(self.config["decay"])
            out.append(group)
        out = [g for g in out if g["params"]]
        self._groups = {g["name"]: g for g in out}
        return out


@register("wm")
class WeightMirror(FeedbackRule):
    """Weight mirrors (WM): B learns W from noise in a separate mirror phase.

    After every ``mirror_every`` optimizer steps each layer runs ``mirror_steps`` mirror steps:
    noise ``ξ ~ N(0, σ²)`` (``m`` samples) drives the layer, ``y = Wξ``, and the Hebbian rule
    ``B ← (1 − λ)B + η yᵀξ/(mσ²)`` moves B towards ``(η/λ)W`` (Akrout et al. 2019, "weight
    mirrors"). B is not an optimizer parameter. Errors travel back as in ``fa``.

    Options: ``feedback_init`` — as ``fa``; ``mirror_lr`` — η (0.01); ``mirror_decay`` — λ per
    mirror step (0.01); ``mirror_noise`` — σ (1.0); ``mirror_batch`` — m noise samples per step
    (64); ``mirror_every`` — optimizer steps between mirror phases (1); ``mirror_steps`` — mirror
    steps per phase (1); ``mirror_warmup`` — mirror steps run once at ``prepare`` (0).

    Models: any model of ``nn.Linear`` / ``nn.Conv2d`` layers, as ``fa``; call
    ``rule.after_step(model)`` after ``opt.step()`` in your own loop.
    """

    paper = "Akrout, Wilson, Humphreys, Lillicrap & Tweed 2019"
    summary = "B learned in a mirror phase: B ← (1−λ)B + η yᵀξ/(mσ²), y = Wξ, ξ ~ N(0, σ²)"
    defaults: ClassVar[dict[str, Any]] = {
        "feedback_init": "default",
        "mirror_lr": 0.01,      # η: Hebbian rate (E[ΔB] = η W − λ B)
        "mirror_decay": 0.01,   # λ: decay per mirror step; B → (η/λ) W
        "mirror_noise": 1.0,    # σ: noise std
        "mirror_batch": 64,     # m: noise samples per mirror step
        "mirror_every": 1,      # optimizer steps between mirror phases
        "mirror_steps": 1,      # mirror steps per phase
        "mirror_warmup": 0,     # mirror steps run once at prepare, before training
    }

    def __init__(self, **config: Any) -> None:
        super().__init__(**config)
        self._step = 0
        self._buffers: dict = {}  # reused noise/response tensors, per layer

    def validate(self) -> None:
        super().validate()
        self.check_number("mirror_lr", 0.0, positive=True)
        self.check_number("mirror_decay", 0.0, 1.0)
        self.check_number("mirror_noise", 0.0, positive=True)
        for key in ("mirror_batch", "mirror_every", "mirror_steps"):
            self.check_number(key, 1, integer=True)
        self.check_number("mirror_warmup", 0, integer=True)

    def prepare(self, model: nn.Module, example: torch.Tensor | None = None) -> nn.Module:
        model = super().prepare(model, example)
        self.mirror(model, self.config["mirror_warmup"])
        return model

    def mirror(self, model: nn.Module, steps: int | None = None) -> None:
        """Run ``steps`` (default ``mirror_steps``) mirror steps on every feedback layer."""
        cfg = self.config
        steps = cfg["mirror_steps"] if steps is None else int(steps)
        layers = [layer for _, layer in feedback_layers(model)]
        for _ in range(steps):
            for layer in layers:
                mirror_update(layer, lr=cfg["mirror_lr"], decay=cfg["mirror_decay"],
                              noise_std=cfg["mirror_noise"], batch=cfg["mirror_batch"],
                              generator=self.generator(layer.weight.device), cache=self._buffers)

    def after_step(self, model: nn.Module) -> None:
        """The mirror phase, every ``mirror_every`` optimizer steps (call after ``opt.step()``)."""
        self._step += 1
        if self._step % self.config["mirror_every"] == 0:
            self.mirror(model)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "mirror_step": self._step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._step = int(state.get("mirror_step", 0))


__all__ = ["BatchRandomSignFeedback", "FeedbackAlignment", "FeedbackRule",
           "FixedRandomSignFeedback", "KolenPollack", "UniformSignFeedback", "WeightMirror"]
