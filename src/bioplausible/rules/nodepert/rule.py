"""Feedback weights learned by node perturbation: ``np`` (FA form), ``np-dfa`` (DFA form), and the
synthetic-gradient control ``sg`` / ``sg-dfa`` (Lansdell, Prakash & Kording 2020).

Per batch:

1. **clean pass** through the converted model: the forward weights get their gradients from
   the synthetic backward pass, FA form ``ẽ^i = (ẽ^{i+1} B^{i+1}) ⊙ σ′(a^i)`` (B in W's layout,
   the layer's pathway) or DFA form ``ẽ^i = (e D^i) ⊙ σ′(a^i)`` (``D^i`` of shape
   ``(n_out, n_i)``, the DFA head), ``ΔW = −η ẽ hᵀ`` from the clean activities;
2. **noisy pass** without a graph: ``c_h ξ``, ``ξ ~ N(0, I)``, is added to the input of every
   layer after the first, i.e. to every hidden activity at once (``noise_at="post"``, the
   authors' code), or to the output of every layer but the last (``"pre"``, the paper's
   equation, where σ′ enters the estimate). It starts from the clean pass's first-layer
   pre-activation (exact: the noise enters after ``W₁x``) when the model is an
   ``nn.Sequential`` whose Linear/Conv2d layers are direct children (otherwise forward hooks add
   the noise in a full second pass); dropout masks are the clean pass's;
3. **estimate** ``λ̂_n = (ℓ̃_n − ℓ_n) ξ_n / c_h`` with ``ℓ̃_n − ℓ_n`` per example (for the MSE
   losses as ``w Σ_k (õ − o)(õ + o − 2t)`` in float32 or wider, free of cancellation; otherwise
   from float64 per-example losses); ``sg``: the true ``λ_n = ∂ℓ_n/∂h_n`` from an exact
   backward pass instead. The SGD step uses ``Σ ẽᵀ(ẽB − λ̂) = (ẽᵀẽ)B − (c ẽ)ᵀξ`` with
   ``c = (ℓ̃ − ℓ)/c_h``, so λ̂ itself is never materialised;
4. **regress** every B onto it: ``solver="sgd"`` (eq 3), ``B ← B − η_B Σ_n ẽ_nᵀ(ẽ_n B − λ̂_n)``
   with ``η_B`` the learning rate of the parameter group ``feedback`` (the rule applies it
   itself: ``optimizer.groups.feedback.lr``); ``solver="ridge"`` (App. C.3),
   ``B = (γI + Σẽᵀẽ)⁻¹ Σẽᵀλ̂`` over every sample seen.

**Fast path** (:mod:`.fast`): a plain MLP — ``nn.Sequential`` of an optional ``Flatten`` and
``Linear`` layers each followed by sigmoid, tanh, ReLU or identity, no dropout — with the ``np``
target runs the same step by hand: no autograd graph, no module calls, the backward pass with
autograd's own kernels (η_B = 0 stays FA / DFA bit for bit), eq 3 as ``s⁻² δᵀ(g − s c ξ)`` from
the synthetic signal ``g = δB`` the backward pass already formed. Any other model, a hook added
to its modules after ``prepare``, autocast, or ``sg`` take the general path above
(``tests/test_nodepert_fast.py`` checks one against the other and both against a literal oracle).
The clean and noisy passes stay two GEMMs per layer rather than one on a 2×batch tensor: a GEMM's
rows may round differently with the row count, which would break the bit-for-bit FA/DFA identity.

``ẽ`` and ``λ̂`` are per example (the batch backward's errors divided by the loss's batch factor,
see :func:`~.estimator.per_example_losses`), so with the paper's batch-summed loss the update
is exactly eq 3 summed over the batch. ``warmup``: for that many first steps the forward
weights get a zero ``.grad`` (frozen under SGD, momentum or Adam; an optimizer weight decay
would still shrink them) and only B learns (the paper: 1000 steps). ``η_B = 0`` is FA / DFA
exactly. Each step's noise is kept in ``rule.last_noise`` (one tensor per learned layer).

DFA conv taps (``conv_scale``): the random initial ``D`` of a tap whose layer is a convolution
is divided by ``√P`` (``"sqrt_positions"``, default), ``P`` (``"positions"``) or 1 (``"none"``),
with ``P = H·W`` the spatial positions of that layer's input (the same option and default as
``dfa``; :mod:`bioplausible.nn.dfa`). A conv weight's gradient sums
``δ·h`` over every output position, while each position's DFA signal comes from the same ``e``,
so unscaled DFA conv updates are far larger than BP's: on the CIFAR CNN at init ‖ΔW_DFA‖/‖ΔW_BP‖
is 30 and 15 for the first two convolutions, against 1-2.5 for the dense layers
(benchmarks/results/np_conv_scale.md); ÷√P brings them to ≈ 2, ÷P overshoots to ≈ 0.1-0.2.
The scaling changes only the random start; NP still regresses D onto the true gradient.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, ClassVar

import torch
from torch import nn

from ...core.context import exact_backward
from ...core.losses import as_loss
from ...core.rule import FeedbackPair, Rule, StepResult
from ...errors import ConfigError, IncompatibleModelError, UserError
from ...nn.convert import feedback_layers, swap_layers
from ...nn.dfa import CONV_SCALES, attach_direct_feedback
from ...nn.layers import FEEDBACK_INITS, FeedbackLinear, init_feedback
from ...nn.pathway import FixedFeedback
from ..registry import register
from . import fast
from .estimator import loss_difference, regression_grad, ridge_update, signal_angle

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _positive(rule: Rule, key: str) -> None:
    v = rule.config[key]
    if not (isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 and math.isfinite(v)):
        raise ConfigError(f"rule {rule.name!r}: {key} must be a positive number; got {v!r}")


class _Estimates:
    """The step's λ̂_k = ξ_k · coef (coef = (ℓ̃ − ℓ)/c_h per example), built on indexing."""

    def __init__(self, xi: list[torch.Tensor], coef: torch.Tensor) -> None:
        self.xi, self.coef = list(xi), coef

    def __len__(self) -> int:
        return len(self.xi)

    def __getitem__(self, k: int) -> torch.Tensor:
        xi = self.xi[k]
        return xi * self.coef.to(xi.dtype).view((-1,) + (1,) * (xi.dim() - 1))


class _Hooks:
    """Forward (pre-)hooks of one layer, calling back into the rule (picklable, no closures)."""

    def __init__(self, rule: _NodePerturbation, index: int) -> None:
        self.rule, self.index = rule, index

    def pre(self, module: nn.Module, args):
        return self.rule._pre_hook(self.index, args)

    def post(self, module: nn.Module, args, output):
        return self.rule._post_hook(self.index, output)


class _NodePerturbation(Rule):
    option_help: ClassVar[dict[str, str]] = {
        "feedback_init": "initial B: default U(±1/√fan_in), weight_std N(0, std(W)²), weight a copy of W",
        "conv_scale": "a conv tap's initial D: ÷√positions (sqrt_positions), ÷positions or none, as dfa",
    }
    family = "feedback"
    paper = "Lansdell, Prakash & Kording 2020"
    form: ClassVar[str] = "fa"       # "fa" | "dfa"
    target: ClassVar[str] = "np"     # "np" | "sg"
    #: B (or D) regresses onto a noisy estimate: at the forward rate (0.1) it overshoots and the
    #: forward weights follow a wrong signal; 1e-3 learns (the paper's Fig. 2 uses 5e-4 with lr 4e-4)
    recommended: ClassVar[dict[str, Any]] = {"optimizer": {"groups": {"feedback": {"lr": 1e-3}}}}
    defaults: ClassVar[dict[str, Any]] = {
        "c_h": 0.01,               # noise std of the perturbation (Fig. 2: 0.01)
        "noise_at": "post",        # "post": after σ (authors' code) | "pre": inside σ (paper eq)
        "solver": "sgd",           # "sgd": eq 3, one step per batch | "ridge": App. C.3
        "gamma": 0.1,              # ridge prior γ (V_0 = γI)
        "warmup": 0,               # first steps with W frozen (the paper: 1000)
        "feedback_init": "default",
    }

    # ---------------------------------------------------------------- config
    def validate(self) -> None:
        cfg = self.config
        _positive(self, "c_h")
        _positive(self, "gamma")
        for key, choices in (("noise_at", ("post", "pre")), ("solver", ("sgd", "ridge"))):
            if cfg[key] not in choices:
                raise ConfigError(f"rule {self.name!r}: {key} must be one of "
                                  f"{', '.join(map(repr, choices))}; got {cfg[key]!r}")
        w = cfg["warmup"]
        if not (isinstance(w, int) and not isinstance(w, bool) and w >= 0):
            raise ConfigError(f"rule {self.name!r}: warmup must be an integer >= 0 (steps with W "
                              f"frozen); got {w!r}")
        if "feedback_init" in cfg and cfg["feedback_init"] not in FEEDBACK_INITS:
            raise ConfigError(f"rule {self.name!r}: feedback_init must be one of "
                              f"{', '.join(map(repr, FEEDBACK_INITS))}; got {cfg['feedback_init']!r}")
        if "conv_scale" in cfg and cfg["conv_scale"] not in CONV_SCALES:
            raise ConfigError(f"rule {self.name!r}: conv_scale must be one of "
                              f"{', '.join(map(repr, CONV_SCALES))}; got {cfg['conv_scale']!r}")

    # --------------------------------------------------------------- prepare
    def prepare(self, model: nn.Module, example: torch.Tensor | None = None) -> nn.Module:
        first = next(iter(model.parameters()), None)
        if first is not None and first.dtype in _LOW_PRECISION:
            raise ConfigError(
                f"rule {self.name!r}: the model is {first.dtype}; ℓ̃ − ℓ of a perturbation with "
                f"c_h={self.config['c_h']} rounds off in reduced precision: train in float32 or float64")
        device = first.device if first is not None else torch.device("cpu")
        if self.form == "fa":
            model = swap_layers(model, feedback=True, generator=self.generator(device))
        else:
            model = swap_layers(model, feedback=False)
        named = list(feedback_layers(model))
        if len(named) < 2:
            raise IncompatibleModelError(
                f"rule {self.name!r} learns the feedback of hidden layers; the model has "
                f"{len(named)} Linear/Conv2d layer(s), so there is no hidden layer to perturb")
        self._names = [n for n, _ in named]
        layers = [layer for _, layer in named]
        if self.form == "fa":
            for name, layer in named[1:]:
                if not isinstance(layer, FeedbackLinear):
                    raise IncompatibleModelError(
                        f"rule {self.name!r} (FA form) learns W-shaped feedback for Linear layers "
                        f"only; layer {name!r} is {type(layer).__name__}: use "
                        f"{self.name}-dfa, whose feedback maps the output error to any layer")
            for i, layer in enumerate(layers):  # the first layer's B is never used: plain autograd
                layer.pathway = FixedFeedback(record=i > 0)
                init_feedback(layer, self.config["feedback_init"], self.generator(device))
                layer.feedback.requires_grad_(False)
            feedback = [layer.feedback for layer in layers[1:]]
        else:
            if example is None:
                raise ConfigError(f"rule {self.name!r} creates its direct feedback matrices from "
                                  f"an input batch: call rule.prepare(model, example=x[:2])")
            attach_direct_feedback(model, layers, "bp", seed=self.seed + 7_877, example=example,
                                   conv_scale=self.config["conv_scale"])
            feedback = []
            for name, layer in named[1:]:
                d = layer.direct_feedback
                if d is None:
                    raise IncompatibleModelError(f"layer {name!r} got no direct feedback matrix")
                feedback.append(d)
        for k, b in enumerate(feedback):
            self.own(f"B.{k + 1}", b, group="feedback", layer=k + 1, self_applied=True)
        self._feedback = feedback
        if self.config["solver"] == "ridge":  # V = γI + Σẽᵀẽ, S = Σẽᵀλ̂ (checkpointed)
            # the sums never forget and grow with every step: they accumulate in float64 (or the
            # model's wider dtype) whatever the model's dtype, as RidgeState does; in float32 the
            # rounding of each addition into sums of ~10⁵ batches swamped the per-batch signal:
            # Fig. 4's top relative error fell to 0.035-0.055 by epoch 20 and then grew to
            # 0.7-1.7 by epoch 100 (seeds 0-2), where the float64 sums keep falling (0.038 at 60)
            wide = torch.promote_types(feedback[0].dtype, torch.float64) if feedback else torch.float64
            for k, b in enumerate(feedback):
                n_e = b.shape[0]
                self.own_buffer(f"ridge.V.{k + 1}", torch.eye(n_e, device=b.device, dtype=wide)
                                * float(self.config["gamma"]))
                self.own_buffer(f"ridge.S.{k + 1}", torch.zeros_like(b, dtype=wide))
        self._step = 0
        self._mode: str | None = None
        self._xi: list[torch.Tensor | None] = [None] * len(feedback)
        self._inputs: list[torch.Tensor | None] = [None] * len(feedback)
        self._layers = layers
        self._params = [p for p in model.parameters()]
        self._dropout = any(isinstance(m, nn.modules.dropout._DropoutNd) for m in model.modules())
        # The noisy pass of an nn.Sequential whose layers are direct children runs the children
        # after the first layer by hand, from the cached clean W₁x (+b₁); others use hooks.
        self._tail = None
        children = list(model) if isinstance(model, nn.Sequential) else []
        ids = [id(m) for m in children]
        if all(id(layer) in ids for layer in layers):
            tap = {id(layer): k for k, layer in enumerate(layers[1:])}
            pre = {id(layer): i for i, layer in enumerate(layers[:-1])}
            self._tail = [(m, tap.get(id(m)), pre.get(id(m))) for m in children[ids.index(id(layers[0])) + 1:]]
        for i, layer in enumerate(layers):
            hooks = _Hooks(self, i)
            if i >= 1 and (self._tail is None or self.target == "sg"):
                layer.register_forward_pre_hook(hooks.pre)
            if i == 0 or (self._tail is None and self.config["noise_at"] == "pre" and i < len(layers) - 1):
                layer.register_forward_hook(hooks.post)
        # plain MLPs (no dropout) take the hand-written step of fast.py (hooks checked per step)
        self._plan = fast.plan_mlp(model, layers) if self.target == "np" else None
        return model

    # ------------------------------------------------------------------ hooks
    def _noise(self, k: int, like: torch.Tensor) -> torch.Tensor:
        xi = torch.randn(like.shape, generator=self.generator(like.device), device=like.device,
                         dtype=like.dtype)
        self._xi[k] = xi
        return like + self.config["c_h"] * xi

    def _pre_hook(self, index: int, args):
        mode, k = self._mode, index - 1
        if mode == "noisy" and self.config["noise_at"] == "post":
            return (self._noise(k, args[0]), *args[1:])
        if mode == "exact":
            self._inputs[k] = args[0]
        return None

    def _post_hook(self, index: int, output):
        if self._mode == "clean" and index == 0:
            self._a1 = output.detach()
        elif self._mode == "noisy" and self.config["noise_at"] == "pre":
            return self._noise(index, output)
        return None

    # ------------------------------------------------------------------- step
    def _rng_state(self, device: torch.device):
        state = torch.get_rng_state()
        cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
        return state, cuda

    def _set_rng_state(self, saved, device: torch.device) -> None:
        torch.set_rng_state(saved[0])
        if saved[1] is not None:
            torch.cuda.set_rng_state(saved[1], device)

    def _noisy_output(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            if self._tail is None:  # any other model: hooks add the noise
                self._mode = "noisy"
                try:
                    return model(x)
                finally:
                    self._mode = None
            c, post = self.config["c_h"], self.config["noise_at"] == "post"
            h = self._a1
            gen = self.generator(h.device)
            if not post:
                h = self._add_noise(0, h, c, gen)
            for module, tap, pre in self._tail:
                if post and tap is not None:
                    h = self._add_noise(tap, h, c, gen)
                h = module(h)
                if not post and pre is not None:
                    h = self._add_noise(pre, h, c, gen)
            return h

    def _add_noise(self, k: int, h: torch.Tensor, c: float, gen: torch.Generator) -> torch.Tensor:
        xi = torch.randn(h.shape, generator=gen, device=h.device, dtype=h.dtype)
        self._xi[k] = xi
        return torch.add(h, xi, alpha=c)

    def _true_gradients(self, model, x, y, loss_fn, scale: float) -> list[torch.Tensor]:
        """SG's target: ``λ_n = ∂ℓ_n/∂h_n`` at every tap input, by exact backprop."""
        self._mode = "exact"
        try:
            with exact_backward(), torch.enable_grad():
                loss = loss_fn(model(x), y)
        finally:
            self._mode = None
        grads = torch.autograd.grad(loss, self._inputs)
        self._inputs = [None] * len(self._inputs)
        return [g.detach() / scale for g in grads]

    def train_step(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn) -> StepResult:
        plan = self._plan
        if plan is not None and plan.hook_count() == plan.hooks and not torch.is_autocast_enabled(x.device.type):
            return self._fast_step(x, y, loss_fn)
        for p in self._params:
            p.grad = None
        device = x.device
        saved = self._rng_state(device) if self._dropout else None
        self._mode = "clean"
        try:
            output = model(x)
        finally:
            self._mode = None
        if self.form == "dfa":
            output.retain_grad()
        y = self._dense_target(loss_fn, output, y)
        loss = loss_fn(output, y)
        loss.backward()
        n = output.shape[0]
        scale = as_loss(loss_fn).batch_factor(n)
        if self.target == "np":
            if saved is not None:
                after = self._rng_state(device)
                self._set_rng_state(saved, device)
            noisy_out = self._noisy_output(model, x)
            if saved is not None:
                self._set_rng_state(after, device)
            with torch.no_grad():  # ℓ̃ − ℓ per example, float32 or wider
                diff = loss_difference(loss_fn, noisy_out, output.detach(), y)
                if self._step < 10 and not bool(diff.any()):  # checked on the first steps
                    base = self._a1 if self.config["noise_at"] == "pre" else None
                    self._check_no_change(noisy_out, output.detach(), base)
                coef = diff / self.config["c_h"]  # λ̂ = (ℓ̃ − ℓ)ξ/c_h, eq 2
                targets = _Estimates(self._xi, coef)  # λ̂_k = ξ_k coef, formed only where needed
        else:
            if saved is not None:
                after = self._rng_state(device)
                self._set_rng_state(saved, device)
            targets = self._true_gradients(model, x, y, loss_fn, scale)
            if saved is not None:
                self._set_rng_state(after, device)
        with torch.no_grad():
            if self.form == "fa":
                errors = [layer.pathway.last_error for layer in self._layers[1:]]
                if scale != 1.0:
                    errors = [e / scale for e in errors]
                for layer in self._layers:
                    layer.pathway.last_input = layer.pathway.last_error = None
            else:
                e = output.grad.reshape(output.shape[0], -1)
                e = e / scale if scale != 1.0 else e
                errors = [e] * len(self._feedback)
            self._update_feedback(errors, targets)
        self._last = (errors, targets)
        self.last_noise = self._xi  # ξ of this step per tap (for tests and diagnostics)
        self._xi = [None] * len(self._xi)
        if self._step < self.config["warmup"]:  # W frozen: a zero update (exact under SGD/Adam
            for p in self._params:               # without weight decay; the probe reads 90°)
                if p.grad is not None:
                    p.grad.zero_()
        self._step += 1
        return StepResult(loss.detach(), output.detach())

    def _check_no_change(self, noisy: torch.Tensor, clean: torch.Tensor,
                         base: torch.Tensor | None) -> None:
        """``ℓ̃ − ℓ`` is zero for every example (checked on the first steps): refuse a float
        round-off, accept an exact zero.

        Round-off: the noisy outputs differ but the loss difference rounded to 0, or the noise
        ``c_h ξ`` vanished when added to ``base`` (the clean activity it perturbs first). Exact:
        the noise moved ``base`` but no output changed — every path from the perturbed units is
        cut (e.g. every hidden ReLU off with ``noise_at="pre"``), so ``λ̂ = 0`` is the right
        estimate. Without a ``base`` to check (``noise_at="post"`` on a model run through hooks)
        the step is taken with a warning.
        """
        c = self.config["c_h"]
        what = f"rule {self.name!r}: the perturbation c_h={c} changed no example's loss in {clean.dtype}"
        if not torch.equal(noisy, clean):
            raise UserError(f"{what} (the outputs changed but the loss rounded off); raise c_h or "
                            f"train in float64")
        xi = self._xi[0]
        if base is not None and xi is not None and xi.shape == base.shape:
            if torch.equal(torch.add(base, xi, alpha=c), base):
                raise UserError(f"{what} (c_h*xi rounds off against the activities); raise c_h or "
                                f"train in float64")
            return  # exact: the noise moved the units but no output depends on them here
        warnings.warn(f"{what}: no output changed, taking the estimate 0 (exact when every path "
                      f"from the perturbed units is cut, e.g. all hidden ReLUs off; otherwise raise "
                      f"c_h or train in float64)", stacklevel=3)

    def _fast_step(self, x: torch.Tensor, y: torch.Tensor, loss_fn) -> StepResult:
        """The same step for a plain MLP without autograd graph or module calls (fast.py)."""
        plan, c = self._plan, self.config["c_h"]
        with torch.no_grad():
            hs, (a1,) = fast.clean_forward(plan, x)
            out = hs[-1]
            y = self._dense_target(loss_fn, out, y)
            loss = loss_fn(out, y)
            mse = fast.output_error(loss_fn, out, y)
            if mse is None:  # any other loss: e = ∂loss/∂o by autograd on the loss alone
                with torch.enable_grad():
                    o = out.detach().requires_grad_(True)
                    (e,) = torch.autograd.grad(loss_fn(o, y), o)
            else:
                e, d = mse
            scale = as_loss(loss_fn).batch_factor(out.shape[0])
            noisy = fast.noisy_forward(plan, hs, a1, c, self.config["noise_at"] == "post",
                                       self.generator(x.device), self._xi)
            if mse is not None:  # coef = (ℓ̃ − ℓ)/c_h in the outputs' dtype, cancellation-free
                coef = fast.mse_coefficient(loss_fn.name, noisy, out, d, c)
            else:  # float64 per-example losses
                coef = loss_difference(loss_fn, noisy, out, y).div_(c)
            if self._step < 10 and not bool(coef.any()):
                self._check_no_change(noisy, out, a1 if self.config["noise_at"] == "pre" else hs[1])
            errs, sigs = fast.backward(plan, hs, e, self.form, self._feedback)
            targets = _Estimates(self._xi, coef)
            if self.config["solver"] == "sgd":
                rates = [self.feedback_lr(k + 1) for k in range(len(self._feedback))]
                fast.regress_sgd(self._feedback, errs, sigs, self._xi, coef, scale, rates)
            else:
                n = len(self._feedback)
                fast.regress_ridge(self._feedback, [self.owned.get(f"ridge.V.{k + 1}") for k in range(n)],
                                   [self.owned.get(f"ridge.S.{k + 1}") for k in range(n)], errs, self._xi,
                                   coef, scale)
            if self._step < self.config["warmup"]:
                for p in self._params:
                    if p.grad is not None:
                        p.grad.zero_()
        self._last = (errs, targets)  # errors unscaled: the probe's angles do not depend on s
        self.last_noise = self._xi
        self._xi = [None] * len(self._xi)
        self._step += 1
        return StepResult(loss.detach(), out)

    @staticmethod
    def _dense_target(loss_fn, output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Class indices → one-hot once per step for the MSE/BCE losses (same loss values; the
        per-example losses of both passes then reuse it)."""
        name = getattr(loss_fn, "name", "")
        if (name.startswith("mse") or name == "bce") and y.dim() == 1 and not y.is_floating_point() \
                and output.dim() == 2:
            return torch.zeros_like(output, requires_grad=False).scatter_(1, y.view(-1, 1).long(), 1.0)
        return y

    def _update_feedback(self, errors: list[torch.Tensor], targets) -> None:
        ridge = self.config["solver"] == "ridge"
        for k, (b, err) in enumerate(zip(self._feedback, errors)):
            err = err.reshape(err.shape[0], -1).to(b.dtype)
            if ridge:
                v, s = self.owned.get(f"ridge.V.{k + 1}"), self.owned.get(f"ridge.S.{k + 1}")
                tgt = targets[k]
                b.copy_(ridge_update(v, s, err, tgt.reshape(tgt.shape[0], -1).to(b.dtype)))
                continue
            lr = self.feedback_lr(k + 1)
            if not lr:
                continue
            if isinstance(targets, _Estimates):  # Σ ẽᵀ(ẽB − ξ c) = (ẽᵀẽ)B − (c ẽ)ᵀξ: λ̂ never formed
                xi = targets.xi[k].reshape(err.shape[0], -1).to(b.dtype)
                grad = (err.t() @ err) @ b
                grad.addmm_((err * targets.coef.to(b.dtype).unsqueeze(1)).t(), xi, alpha=-1.0)
                b.sub_(grad, alpha=lr)
            else:
                tgt = targets[k]
                b.sub_(regression_grad(err, b, tgt.reshape(tgt.shape[0], -1).to(b.dtype)), alpha=lr)

    def feedback_lr(self, layer: int) -> float:
        """η_B of the tap ``layer`` (1-based among the converted layers), from group ``feedback``."""
        return self.group_lr("feedback", layer)

    # --------------------------------------------------------------- metrics
    def feedback_pairs(self, model: nn.Module) -> list[FeedbackPair]:
        if self.form == "fa":
            return [FeedbackPair(n, layer.weight, layer.feedback)
                    for n, layer in zip(self._names, self._layers)][1:]
        return [FeedbackPair(n, layer.weight, None) for n, layer in zip(self._names, self._layers)][1:]

    def epoch_metrics(self, model: nn.Module) -> dict[str, float]:
        """:meth:`metrics`, and a warning when an epoch ends inside the warm-up (W still frozen)."""
        step, warmup = getattr(self, "_step", 0), self.config["warmup"]
        if 0 < step < warmup and not getattr(self, "_warned", False):
            self._warned = True
            warnings.warn(f"rule {self.name!r}: the warm-up of {warmup} steps (W frozen) is not over "
                          f"after {step} steps; the forward weights have not learned yet. Lower "
                          f"warmup or train longer", UserWarning, stacklevel=2)
        return self.metrics(model)

    def metrics(self, model: nn.Module) -> dict[str, float]:
        """Fig. 2B's angle per layer on the last batch, and DFA's Corollary-1 relative error.

        ``signal_angle/<layer>``: FA form, between ``ẽ B`` and ``ẽ W`` for the same ẽ; DFA form,
        ``dfa_relative_error/<layer>``: ‖D − W_L⋯W_{l}‖/‖W_L⋯W_{l}‖ when every layer above is
        Linear (the limit for linear networks; only a reference for nonlinear ones).
        """
        out: dict[str, float] = {}
        step, warmup = getattr(self, "_step", 0), self.config["warmup"]
        if step < warmup:
            out["warmup_left"] = float(warmup - step)
        last = getattr(self, "_last", None)
        names, layers = self._names[1:], self._layers[1:]
        if self.form == "fa" and last is not None:
            with torch.no_grad():
                for name, layer, err in zip(names, layers, last[0]):
                    out[f"signal_angle/{name}"] = signal_angle(err @ layer.feedback, err @ layer.weight)
        if self.form == "dfa" and all(isinstance(m, FeedbackLinear) for m in layers):
            with torch.no_grad():
                prod = None
                for name, layer, d in reversed(list(zip(names, layers, self._feedback))):
                    w = layer.weight.double()
                    prod = w if prod is None else prod @ w
                    out[f"dfa_relative_error/{name}"] = float(
                        (d.double() - prod).norm() / prod.norm().clamp_min(1e-300))
        return out

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Rule:
        """Move the owned tensors; the ridge sums stay at least float64 (see :meth:`prepare`)."""
        sums = {n: t for n, t in self.owned.named_buffers() if n.startswith("ridge.") and t.is_floating_point()}
        super().to(device, dtype)
        for name, t in sums.items():  # moved from their own values, never through a narrower dtype
            wide = torch.promote_types(t.dtype if dtype is None else dtype, torch.float64)
            self.own_buffer(name, t.to(device=t.device if device is None else device, dtype=wide))
        return self

    # ------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "np_step": getattr(self, "_step", 0)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._step = int(state.get("np_step", 0))


@register("np")
class NodePerturbation(_NodePerturbation):
    """Node-perturbation-learned feedback (NP), FA form: B regressed onto a noisy gradient estimate.

    A clean pass trains W through the feedback, ``ẽ^i = (ẽ^{i+1} B^{i+1}) ⊙ σ′(a^i)``; a noisy pass
    adds ``c_h ξ`` to the hidden activities and gives ``λ̂ = (ℓ̃ − ℓ)ξ/c_h`` (Lansdell, Prakash &
    Kording 2020, eq 2); B is regressed onto it, ``B ← B − η_B Σ ẽᵀ(ẽB − λ̂)`` (eq 3).

    Options: ``c_h`` — noise std of the perturbation (0.01); ``noise_at`` — ``"post"`` (added to
    hidden activities, the authors' code) or ``"pre"`` (the paper's equation); ``solver`` —
    ``"sgd"`` (eq 3, at the rate of the ``feedback`` parameter group) or ``"ridge"`` (App. C.3,
    online ridge regression with ridge γ = ``gamma``); ``warmup`` — first steps in which only the
    feedback learns; ``feedback_init`` — as ``fa``.

    Models: any model of ``nn.Linear`` / ``nn.Conv2d`` layers; plain MLPs take a faster
    hand-written step with the same numbers.
    """

    summary = "B regressed onto the node-perturbation estimate λ̂ = (L̃ − L)ξ/c_h; FA form ẽB"


@register("np-dfa")
class NodePerturbationDFA(_NodePerturbation):
    """Node-perturbation-learned feedback, DFA form (NP-DFA): direct matrices regressed onto λ̂.

    ``ẽ^i = (e D^i) ⊙ σ′(a^i)`` with ``D^i`` of shape ``(n_out, n_i)`` regressed onto the
    node-perturbation estimate λ̂ as in ``np`` (Lansdell, Prakash & Kording 2020, eqs 2–3, Table 1).

    Options: ``c_h`` — noise std of the perturbation (0.01); ``noise_at`` — ``"post"`` (added to
    hidden activities, the authors' code) or ``"pre"`` (the paper's equation); ``solver`` —
    ``"sgd"`` (eq 3, at the rate of the ``feedback`` parameter group) or ``"ridge"`` (App. C.3,
    online ridge regression with ridge γ = ``gamma``); ``warmup`` — first steps in which only the
    feedback learns; ``conv_scale`` — as ``dfa``.

    Models: any model of ``nn.Linear`` / ``nn.Conv2d`` layers (the paper's CIFAR CNN, ``npcnn``).
    """

    summary = "DFA form of np: D_l regressed onto λ̂, signal e·D_l"
    form = "dfa"
    defaults: ClassVar[dict[str, Any]] = {**{k: v for k, v in _NodePerturbation.defaults.items()
                                             if k != "feedback_init"}, "conv_scale": "sqrt_positions"}


@register("sg")
class SyntheticGradient(_NodePerturbation):
    """Synthetic-gradient control (SG), FA form: B regressed onto the true gradient λ.

    As ``np`` with the exact ``λ = ∂ℓ/∂h`` from a backward pass in place of the noisy estimate
    (Lansdell, Prakash & Kording 2020, control). ``c_h`` and ``noise_at`` are accepted for
    symmetry with ``np`` and unused.

    Options: ``c_h`` — noise std of the perturbation (0.01); ``noise_at`` — ``"post"`` (added to
    hidden activities, the authors' code) or ``"pre"`` (the paper's equation); ``solver`` —
    ``"sgd"`` (eq 3, at the rate of the ``feedback`` parameter group) or ``"ridge"`` (App. C.3,
    online ridge regression with ridge γ = ``gamma``); ``warmup`` — first steps in which only the
    feedback learns; ``feedback_init`` — as ``fa``.

    Models: any model of ``nn.Linear`` / ``nn.Conv2d`` layers.
    """

    summary = "control: B regressed onto the true gradient λ (FA form), no perturbation"
    target = "sg"


@register("sg-dfa")
class SyntheticGradientDFA(NodePerturbationDFA):
    """Synthetic-gradient control, DFA form: direct matrices regressed onto the true gradient λ.

    As ``np-dfa`` with the exact λ (Lansdell, Prakash & Kording 2020, control).

    Options: ``c_h`` — noise std of the perturbation (0.01); ``noise_at`` — ``"post"`` (added to
    hidden activities, the authors' code) or ``"pre"`` (the paper's equation); ``solver`` —
    ``"sgd"`` (eq 3, at the rate of the ``feedback`` parameter group) or ``"ridge"`` (App. C.3,
    online ridge regression with ridge γ = ``gamma``); ``warmup`` — first steps in which only the
    feedback learns; ``conv_scale`` — as ``dfa``.

    Models: any model of ``nn.Linear`` / ``nn.Conv2d`` layers.
    """

    summary = "control: D_l regressed onto the true gradient λ (DFA form)"
    target = "sg"


__all__ = ["NodePerturbation", "NodePerturbationDFA", "SyntheticGradient", "SyntheticGradientDFA"]
