"""Stacked training steps: R runs of one rule on one MLP shape, one batched step for all of them.

Each class here reproduces, for a plain MLP ``[Flatten,] (Linear[, activation])*`` and SGD without
momentum, the step the unstacked rule takes (its ``train_step``, the optimizer's step and its
``after_step``), with every tensor carrying a leading run dimension:

* forward ``a_l = b_l + h_{l−1} W_lᵀ``, ``h_l = f_l(a_l)`` (``baddbmm``);
* output error ``e_r = ∂loss_r/∂o_r`` of each run's own batch loss (:mod:`.losses`);
* backward ``δ_L = e ⊙ f_L′``, ``δ_{l−1} = (δ_l F_l) ⊙ f′_{l−1}`` with the rule's ``F_l``
  (BP: ``W_l``; FA, KP: the stored ``B_l``; uSF: ``sign(W_l)·c``; frSF/brSF:
  ``sign(W_l) ⊙ M_l·c``; DFA: the hidden signal is ``e D_l`` instead);
* SGD ``θ ← θ − η_r (g + λ_r θ)`` with every run's own learning rate and weight decay, read per
  tensor from that run's optimizer (so parameter groups and schedules carry over);
* the rule's own updates (KP's ``B``, node perturbation's regression of ``B`` onto
  ``λ̂ = (ℓ̃ − ℓ)ξ/c_h``, weight mirrors' Hebbian phase).

Randomness is drawn with each run's *own* generator in the order the unstacked rule draws it
(brSF's magnitudes from its magnitude streams, node perturbation's ξ and the mirrors' noise from
the rule's generator), so a stack of R runs computes what the R runs compute one after another,
up to floating-point rounding (``tests/test_stacked.py`` checks 1e-10 in float64).

A gradient is applied to layer ``l`` as soon as the error has passed through it: the error
below uses the values from before the update, as in the unstacked step.
"""

from __future__ import annotations

import functools
from typing import Any, ClassVar

import torch

from .losses import loss_and_error
from .mlp import StackedMLP, bmm_as
from .noise import draw_noise


def _inference(step):
    """``step`` under ``torch.inference_mode``: a stacked step needs no autograd (the few products
    that do, a loss without a closed-form error, leave the mode for it), and the mode skips the
    version counters and autograd bookkeeping of every op: about 5 % of a dispatch-bound step
    (8 runs of the NP Fig. 2 net). Tensors the step keeps (errors for metrics, captured gradients)
    are inference tensors: read them, or clone them, outside."""

    @functools.wraps(step)
    def wrapped(self, *args, **kwargs):
        with torch.inference_mode():
            return step(self, *args, **kwargs)

    return wrapped


def _per_run(values: list[float], shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(values, dtype=like.dtype, device=like.device).view(-1, *shape)


class StackedRule:
    """Base: BP. Subclasses override :meth:`propagate` and add their own state and updates."""

    name: ClassVar[str] = "bp"
    #: the rule changes its feedback inside its train_step (a probe reads it after the step)
    feedback_in_step: ClassVar[bool] = False
    #: the rule steps the forward weights inside its train_step (a probe reads their net change)
    forward_in_step: ClassVar[bool] = False
    #: rule options whose values may differ between the runs of one stack (the step reads them
    #: run by run); every other option must be equal in all runs
    per_run_options: ClassVar[tuple[str, ...]] = ()
    #: the step runs under ``torch.inference_mode`` (:func:`_inference`); False for a step that
    #: may call the rules' own autograd steps
    inference_step: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "step" in cls.__dict__ and cls.inference_step:
            cls.step = _inference(cls.__dict__["step"])

    def __init__(self, models: list, rules: list, optimizers: list, loss_fn: Any) -> None:
        self.capture = False  # keep the forward weights' gradients of the next step (for a probe)
        self.captured: dict[int, tuple[torch.Tensor, torch.Tensor | None]] = {}
        self.net = StackedMLP(models)
        self.rules, self.optimizers, self.loss_fn = list(rules), list(optimizers), loss_fn
        self.check_options()
        self.setup()
        self.refresh_rates()

    def check_options(self) -> None:
        """The runs are of one rule whose options agree but for :attr:`per_run_options`."""
        lead = self.rules[0]
        for rule in self.rules[1:]:
            differ = sorted(k for k in set(lead.config) | set(rule.config)
                            if k not in self.per_run_options and rule.config.get(k) != lead.config.get(k))
            if type(rule) is not type(lead) or differ:
                free = " and ".join(self.per_run_options)
                raise ValueError(f"the runs of a {lead.name} stack differ in {differ or 'rule'}; only runs that "
                                 f"differ by seed and learning rate{' and ' + free if free else ''} stack")

    def per_run(self, option: str, shape: tuple[int, ...] = ()) -> torch.Tensor:
        """Rule option ``option`` of every run as an ``(R, *shape)`` tensor on the stack's device and dtype."""
        return _per_run([float(rule.config[option]) for rule in self.rules], shape, self.net.W[0])

    # ----------------------------------------------------------------- state
    def setup(self) -> None:
        """Stack the rule's own tensors (copied from every run's prepared rule and model)."""

    def feedback_tensors(self) -> dict[str, list]:
        """Stacked tensors the rule owns by kind, with the per-run tensors they mirror:
        ``{kind: [(stacked (R, ...), [run tensor, ...]), ...]}`` (written back by :meth:`unstack`)."""
        return {}

    def _copy_feedback(self, to_runs: bool) -> None:
        """Every owned tensor from the stack into the runs (``to_runs``) or back."""
        with torch.no_grad():
            for pairs in self.feedback_tensors().values():
                for stacked, runs in pairs:
                    for r, t in enumerate(runs):
                        (t.copy_(stacked[r]) if to_runs else stacked[r].copy_(t))

    def unstack(self) -> None:
        """Write every run's state back into its own model and rule (before evaluation, checkpoints)."""
        self.net.unstack()
        self._copy_feedback(to_runs=True)
        self.unstack_rule()

    def unstack_rule(self) -> None:
        """Non-tensor rule state (step counters, the last batch's errors for metrics)."""

    def restack(self) -> None:
        """Read every run's state again (after a checkpoint was loaded into the runs)."""
        self.net.restack()
        self._copy_feedback(to_runs=False)
        self.restack_rule()

    def restack_rule(self) -> None:
        pass

    def select(self, keep: list[int]) -> None:
        """Keep only the runs ``keep``: a diverged run leaves the stack."""
        self.net.select(keep)
        self.rules = [self.rules[r] for r in keep]
        self.optimizers = [self.optimizers[r] for r in keep]
        self.select_rule(keep)
        self.refresh_rates()

    def select_rule(self, keep: list[int]) -> None:
        pass

    # ----------------------------------------------------------------- rates
    def _rates_of(self, tensors: list[torch.Tensor | None], shape: tuple[int, ...], like: torch.Tensor):
        """``(−η, λ)`` per run for the per-run tensors ``tensors`` (η = 0: not trained)."""
        lrs, wds = [], []
        for opt, t in zip(self.optimizers, tensors):
            lr = wd = 0.0
            if t is not None:
                for group in opt.param_groups:
                    if any(p is t for p in group["params"]):
                        lr, wd = float(group["lr"]), float(group.get("weight_decay", 0.0))
                        break
            lrs.append(-lr)
            wds.append(wd)
        neg = _per_run(lrs, shape, like)
        return neg, (None if not any(wds) else _per_run(wds, shape, like))

    def refresh_rates(self) -> None:
        """Read every run's learning rates and weight decays (again after an LR schedule step)."""
        net = self.net
        self.rate_w = [self._rates_of([run[i].weight for run in net.layers], (1, 1), net.W[i])
                       for i in range(net.depth)]
        self.rate_b = [None if net.b[i] is None else
                       self._rates_of([run[i].bias for run in net.layers], (1,), net.W[i])
                       for i in range(net.depth)]

    # ------------------------------------------------------------------ step
    @_inference
    def step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One training step of every run on its batch ``x[r]``, ``y[r]``; returns the per-run
        losses ``(R,)`` and outputs ``(R, B, K)``."""
        net = self.net
        self.before_forward()
        hs, outs = self.forward_pass(x)
        self.outs = outs  # the layouts the errors are computed in (bmm_as)
        out = hs[-1]
        loss, e, d = loss_and_error(self.loss_fn, out, y)
        self.after_forward(hs, y, e, d)
        delta = self.output_delta(e, out)
        last = net.depth - 1
        for i in range(last, -1, -1):
            g = self.propagate(i, delta, e) if i > 0 else None
            self.update_layer(i, delta, hs[i])
            if i == 0:
                break
            delta = net.act_backward(i - 1, g, outs[i])
        self.after_update()
        return loss, out

    def forward_pass(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """``(hs, outs)``: every layer's input (what its weights' gradient reads) and every
        activation's output (what its derivative reads); the same list for a clean pass."""
        return self.net.passes(x)

    def output_delta(self, e: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        return self.net.act_backward(self.net.depth - 1, e, out)

    def before_forward(self) -> None:
        pass

    def after_forward(self, hs: list[torch.Tensor], y: torch.Tensor, e: torch.Tensor,
                      d: torch.Tensor | None) -> None:
        """After the clean pass: ``e`` the output error, ``d = o − t`` for the MSE losses."""

    def after_update(self) -> None:
        pass

    def propagate(self, i: int, delta: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """The error at layer ``i``'s input, ``δ_i F_i`` (before the layer is updated)."""
        return bmm_as(delta, self.net.W[i], self.outs[i])

    def forward_frozen(self) -> bool:
        """True while the forward weights must not learn (node perturbation's warm-up)."""
        return False

    def capture_grads(self, i: int, delta: torch.Tensor, h: torch.Tensor, decay: float = 0.0) -> None:
        """Keep layer ``i``'s ``.grad`` as the unstacked rule writes it: ``δᵀh`` (+ ``λW`` where
        the backward pass adds a decay; zero while the forward weights are frozen) and ``Σ_n δ``."""
        w, b = self.net.W[i], self.net.b[i]
        if self.forward_frozen():
            self.captured[i] = (torch.zeros_like(w), None if b is None else torch.zeros_like(b))
            return
        gw = torch.bmm(delta.transpose(1, 2), h)
        if decay:
            gw.add_(w, alpha=decay)
        self.captured[i] = (gw, None if b is None else delta.sum(1))

    def write_grads(self) -> None:
        """The captured gradients as ``.grad`` of every run's own forward weights."""
        for i, (gw, gb) in self.captured.items():
            for r, run in enumerate(self.net.layers):
                run[i].weight.grad = gw[r].clone()
                if gb is not None and run[i].bias is not None:
                    run[i].bias.grad = gb[r].clone()
        self.captured = {}

    def write_feedback(self) -> None:
        """Every run's feedback tensors as they stand (a probe after a step that changed them)."""
        self._copy_feedback(to_runs=True)

    def update_layer(self, i: int, delta: torch.Tensor, h: torch.Tensor) -> None:
        """SGD on ``W_i`` and ``b_i`` with the gradient ``δ_iᵀ h`` and ``Σ_n δ_i``."""
        net = self.net
        if self.capture:
            self.capture_grads(i, delta, h)
        frozen = self.forward_frozen()
        neg, wd = self.rate_w[i]
        outer(net.W[i], neg, wd, None if frozen else delta, h)
        self.step_bias(i, None if frozen else delta)

    def step_bias(self, i: int, delta: torch.Tensor | None) -> None:
        """SGD on ``b_i`` with the gradient ``Σ_n δ_i`` and its run's decay (``δ=None``: decay only)."""
        if self.net.b[i] is not None:
            sgd_(self.net.b[i], None if delta is None else delta.sum(1), self.rate_b[i])


def sgd_(t: torch.Tensor, grad: torch.Tensor | None, rate: tuple) -> None:
    """``t ← t − η (grad + λ t)`` per run in place; ``rate = (−η, λ)`` as :meth:`StackedRule._rates_of`
    gives it (``λ`` None: no decay; ``grad`` None: decay only)."""
    neg, wd = rate
    if wd is not None:
        t.mul_(1.0 + neg * wd)
    if grad is not None:
        t.addcmul_(grad, neg)


def outer(t: torch.Tensor, neg: torch.Tensor, wd: torch.Tensor | None, delta: torch.Tensor | None,
          h: torch.Tensor) -> None:
    """``t ← t − η (δᵀh + λ t)`` per run in place (``neg`` = −η ``(R, 1, 1)``; ``δ=None``: decay only)."""
    if wd is not None:
        t.mul_(1.0 + neg * wd)
    if delta is not None:
        t.baddbmm_(torch.mul(delta, neg).transpose(1, 2), h)


# ---------------------------------------------------------------------------- feedback rules
class StackedFA(StackedRule):
    """FA: ``F_l = B_l``, the fixed feedback of every run's converted layer."""

    name = "fa"

    def setup(self) -> None:
        net = self.net
        self.B = [torch.stack([run[i].feedback.detach() for run in net.layers]).contiguous()
                  if net.layers[0][i].feedback is not None else None for i in range(net.depth)]

    def feedback_tensors(self) -> dict[str, list]:
        return {"feedback": [(b, [run[i].feedback for run in self.net.layers])
                             for i, b in enumerate(self.B) if b is not None]}

    def select_rule(self, keep: list[int]) -> None:
        idx = torch.tensor(keep, device=self.net.W[0].device)
        self.B = [None if b is None else b.index_select(0, idx) for b in self.B]

    def effective(self, i: int) -> torch.Tensor:
        return self.B[i]

    def propagate(self, i: int, delta: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        return bmm_as(delta, self.effective(i), self.outs[i])


class StackedSign(StackedFA):
    """uSF ``sign(W)·c``; frSF/brSF ``sign(W) ⊙ M·c`` (brSF redraws M before every forward pass),
    ``c = mean|W|`` per run and layer (``scale="mean_abs"``) or 1."""

    feedback_in_step = True  # brSF's redraw

    def setup(self) -> None:
        rule = self.rules[0]
        self.kind, self.redraw = rule.kind, rule.redraw
        self.mean_abs = rule.config["scale"] == "mean_abs"
        if self.kind == "sign":
            self.B = [None] * self.net.depth
        else:
            super().setup()

    def before_forward(self) -> None:
        if not self.redraw:
            return
        from ...nn.pathway import draw_magnitudes

        device = self.net.W[0].device
        for r, rule in enumerate(self.rules):
            gen = rule._streams.get(device)
            for i in range(1, self.net.depth):  # layers whose input needs a gradient, in forward order
                draw_magnitudes(self.B[i][r], gen)

    def effective(self, i: int) -> torch.Tensor:
        w = self.net.W[i]
        if self.kind == "sign":
            b = torch.sign(w)
        else:
            m = self.B[i]
            b = torch.copysign(m, w)
            if not bool(w.all()):
                b.mul_(w != 0)
        if self.mean_abs:
            b.mul_(w.abs().sum((1, 2), keepdim=True).div_(w[0].numel()))
        return b


class StackedKP(StackedFA):
    """Kolen-Pollack: ``B_l`` takes ``W_l``'s gradient; the decay λ from the optimizer's weight
    decay (``decay_in="optimizer"``) or added in the backward pass (``"backward"``), as the rule does."""

    name = "kp"

    def setup(self) -> None:
        super().setup()
        cfg = self.rules[0].config
        self.learn_unused = bool(cfg["learn_unused"])
        self.grad_decay = float(cfg["decay"]) if cfg["decay_in"] == "backward" else 0.0

    def refresh_rates(self) -> None:
        super().refresh_rates()
        net = self.net
        self.rate_fb = [self._rates_of([run[i].feedback for run in net.layers], (1, 1), net.W[i])
                        for i in range(net.depth)]

    def _learns(self, i: int) -> bool:
        return i > 0 or self.learn_unused

    def update_layer(self, i: int, delta: torch.Tensor, h: torch.Tensor) -> None:
        lam = self.grad_decay  # the backward pass adds λW to W's gradient and λB to B's (0: optimizer decay)
        learns = self._learns(i)
        if not learns and not lam:
            return super().update_layer(i, delta, h)
        # W (and B where it learns) take the same raw gradient δᵀh: one product, scaled adds; an
        # unused B (the first layer) is not learned, but W still decays: δᵀh + λW
        if self.capture:
            self.capture_grads(i, delta, h, lam)
        gw = torch.bmm(delta.transpose(1, 2), h)
        self._decayed_add(self.net.W[i], self.rate_w[i], lam, gw)
        self.step_bias(i, delta)
        if learns:
            self._decayed_add(self.B[i], self.rate_fb[i], lam, gw)
        return None

    @staticmethod
    def _decayed_add(t, rate, lam, gw) -> None:
        """``t ← t − η (gw + (λ + λ_opt) t)`` per run."""
        neg, wd = rate
        total = lam + (0.0 if wd is None else wd)
        if isinstance(total, torch.Tensor) or total:
            t.mul_(1.0 + neg * total)
        t.addcmul_(gw, neg)


class StackedWM(StackedFA):
    """Weight mirrors: FA steps, then every ``mirror_every`` steps ``mirror_steps`` mirror steps
    per layer, ``B ← (1 − λ)B + η/(mσ²) (ξWᵀ)ᵀξ`` with ``ξ`` from each run's generator."""

    name = "wm"

    def setup(self) -> None:
        super().setup()
        self.count = self.rules[0]._step

    def after_update(self) -> None:
        cfg = self.rules[0].config
        self.count += 1
        if self.count % cfg["mirror_every"]:
            return
        net = self.net
        m, sigma, lr, decay = cfg["mirror_batch"], cfg["mirror_noise"], cfg["mirror_lr"], cfg["mirror_decay"]
        device = net.W[0].device
        gens = [rule.generator(device) for rule in self.rules]
        for _ in range(cfg["mirror_steps"]):
            for i in range(net.depth):
                w = net.W[i]
                xi = torch.empty(net.R, m, w.shape[2], dtype=w.dtype, device=device)
                for r, gen in enumerate(gens):
                    xi[r].normal_(0.0, sigma, generator=gen)
                y = torch.bmm(xi, w.transpose(1, 2))
                self.B[i].baddbmm_(y.transpose(1, 2), xi, beta=1.0 - decay, alpha=lr / (m * sigma ** 2))

    def unstack_rule(self) -> None:
        for rule in self.rules:
            rule._step = self.count

    def restack_rule(self) -> None:
        self.count = self.rules[0]._step


class StackedDFA(StackedRule):
    """DFA: the hidden error at layer ``l``'s input is ``e D_l`` for every tap at once (one
    batched product with ``[D_1 … D_L]``); the output layer by its true gradient."""

    name = "dfa"

    def setup(self) -> None:
        net = self.net
        if any(net.layers[0][i].direct_feedback is None for i in range(1, net.depth)):
            raise ValueError("a DFA layer has no direct feedback matrix yet")
        sizes = [net.W[i].shape[2] for i in range(1, net.depth)]
        self.D_cat = torch.cat([torch.stack([run[i].direct_feedback.detach() for run in net.layers])
                                for i in range(1, net.depth)], dim=2).contiguous()
        self.sizes = sizes
        self._split()
        self.inject = self.rules[0].config.get("output_layer", "bp") == "dfa"

    def _split(self) -> None:
        self.D = [None, *self.D_cat.split(self.sizes, dim=2)]  # views: updates reach D_cat

    def feedback_tensors(self) -> dict[str, list]:
        return {"direct": [(self.D[i], [run[i].direct_feedback for run in self.net.layers])
                           for i in range(1, self.net.depth)]}

    def select_rule(self, keep: list[int]) -> None:
        self.D_cat = self.D_cat.index_select(0, torch.tensor(keep, device=self.D_cat.device))
        self._split()

    def output_delta(self, e: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        self.signals = None
        return e if self.inject else super().output_delta(e, out)

    def propagate(self, i: int, delta: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        if self.signals is None:
            self.signals = [None, *torch.bmm(e, self.D_cat).split(self.sizes, dim=2)]
        return self.signals[i]


class PerRunNoise:
    """Rules whose noise std ``c_h`` may differ between the runs of a stack (node perturbation,
    the noise controls; e.g. Fig. 2's sweep over c_h): :attr:`c_h` is refreshed with the rates."""

    per_run_options = ("c_h",)

    def noise_std(self) -> float | torch.Tensor:
        """The runs' ``c_h``: one number when every run has the same (the unstacked step's own
        operation), else an ``(R, 1, 1)`` tensor, one per run."""
        c_hs = [float(rule.config["c_h"]) for rule in self.rules]
        return c_hs[0] if len(set(c_hs)) == 1 else self.per_run("c_h", (1, 1))

    def refresh_rates(self) -> None:
        super().refresh_rates()
        self.c_h = self.noise_std()  # again after a diverged run left the stack


class _ActivationNoise(PerRunNoise):
    """The noise controls (``bp-noise``, ``fa-noise``, ``matched-noise``, ``dfa-noise``): in the
    training pass every hidden activity — the input of every Linear but the first — becomes
    ``h + c_h ξ`` with ξ drawn from the run's own generator in forward order (the unstacked
    rule's forward pre-hook); the weights' gradients read the noisy input, the activation's
    derivative its clean output, as autograd does through the hook."""

    def forward_pass(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        gens = [rule.generator(x.device) for rule in self.rules]

        def noisy(i: int, h: torch.Tensor) -> torch.Tensor:
            (xi,) = draw_noise(gens, [tuple(h.shape[1:])], h.device, h.dtype)
            return h + self.c_h * xi

        return self.net.passes(x, perturb=noisy)


class StackedNoisyBP(_ActivationNoise, StackedRule):
    name = "bp-noise"


class StackedNoisyFA(_ActivationNoise, StackedFA):
    name = "fa-noise"


class StackedNoisyKP(_ActivationNoise, StackedKP):
    name = "matched-noise"


class StackedNoisyDFA(_ActivationNoise, StackedDFA):
    name = "dfa-noise"


__all__ = ["StackedDFA", "StackedFA", "StackedKP", "StackedNoisyBP", "StackedNoisyDFA", "StackedNoisyFA",
           "StackedNoisyKP", "StackedRule", "StackedSign", "StackedWM", "outer", "sgd_"]
