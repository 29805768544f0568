"""Ghost-unit rules ``ghost-ma``, ``ghost-ma-prime``, ``ghost-mb`` (Mesnard et al. 2019).

The model is a plain sigmoid MLP (``nn.Sequential`` of optional ``Flatten``, then ``Linear`` +
``Sigmoid`` pairs, the output included: the network output is ρ(s_L)). The rule owns the
feedback ``W^b`` (FA; TF keeps it equal to ``Wᵀ``), the ghost-unit weights ``V^f``, ``V^b`` and,
for MB, the carried circuit state ``s``, ``g``. All updates — forward weights included — are
applied by the rule inside :meth:`train_step` at the rates ``eta_w`` (one per forward matrix,
input side first) and ``eta_v`` (one per hidden layer); the optimizer has nothing to do.

The nudge uses the paper's cost ``C = Σ_j (ρ(s_L[j]) − t[j])²`` per example with one-hot
targets ``t`` (targets of the output's shape are used as they are); the trainer's loss is
only reported. Evaluation is the model's plain feedforward pass (§3.3).

Options the paper leaves open, with their defaults: ``reduction="mean"`` (batch
mean of the outer products; ``v_reduction`` sets the V updates' reduction apart from W's),
``state_init`` (MA: ``"feedforward"`` s = s̃, g = V^f ρ(s̃);
MB: ``"carry"`` the state over from the previous example), synchronous layer updates from the
pre-step state, ``input_rate="x"`` (not ρ(x)), ``v_init="uniform"`` on [−γ, γ] (γ = ``gamma``,
or each layer's max |W| when ``gamma`` is null), FA feedback drawn the same way.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import nn

from ...core.rule import Rule, StepResult
from ...errors import ConfigError, DivergenceError, IncompatibleModelError
from ...nn.mlp import mlp_layout
from .circuit import Circuit, HParams, feedforward_state, literal_example, zero_state
from .fast import FastCircuit

COMMON: dict[str, Any] = {
    "feedback": "transpose",     # transpose (TF) | random (FA)
    "dt": 0.001,
    "tau": 0.01,
    "beta": 10.0,
    "free_steps": 200,
    "clamped_steps": 200,        # weakly-clamped steps
    "eta_w": 0.1,                # float or one per forward matrix (input side first)
    "eta_v": 0.05,               # float or one per hidden layer
    "gamma": None,               # V (and FA W^b) init U[−γ, γ]; null: each layer's max |W|
    "v_init": "uniform",         # uniform | converged (V^f = W of the layer above, V^b = W^b; MA)
    "reduction": "mean",         # mean | sum over the batch of the W updates (and V's, unless v_reduction)
    "v_reduction": None,         # null (as reduction) | mean | sum: batch reduction of the V updates
    "state_init": "feedforward",
    "input_rate": "x",           # x | rho
    "weight_clip": None,         # bound |W|, |V| after each update (Theorem 1's boundedness)
    "solver": "fast",            # fast | literal (the oracle: Algorithms 1-2 step by step)
    "diagnostics_every": 0,      # every N steps: record the Fig. 4 trace and the Fig. 5 error
    "divergence_threshold": 1e6,
}


def _num(c: dict, key: str, lo: float | None = None, strict: bool = True) -> float:
    v = c[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ConfigError(f"ghost option {key} must be a number, got {v!r}")
    if lo is not None and (v <= lo if strict else v < lo):
        raise ConfigError(f"ghost option {key} must be {'>' if strict else '>='} {lo}, got {v!r}")
    return float(v)


def _count(c: dict, key: str, lo: int) -> int:
    v = c[key]
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ConfigError(f"ghost option {key} must be an integer >= {lo}, got {v!r}")
    return v


def _per_layer(value: Any, n: int, key: str, what: str) -> list[float]:
    vals = list(value) if isinstance(value, (list, tuple)) else [value] * n
    if len(vals) != n:
        raise ConfigError(f"ghost option {key} has {len(vals)} values but the model has {n} {what}; "
                          f"give one number or {n} (input side first)")
    for v in vals:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise ConfigError(f"ghost option {key} values must be numbers >= 0, got {value!r}")
    return [float(v) for v in vals]


class GhostRule(Rule):
    """Shared machinery of the three ghost-unit models; subclasses set ``model``.

    Options common to MA, MA′ and MB (Mesnard et al. 2019; defaults per model from Tables 2–4):
    ``feedback`` — ``"transpose"`` (TF, W^b = Wᵀ) or ``"random"`` (FA); ``dt``, ``tau`` — Euler
    step and time constant; ``beta`` — nudging strength β; ``free_steps``, ``clamped_steps`` —
    Euler steps of the free and weakly-clamped phases; ``eta_w`` — rate per forward matrix (input
    side first); ``eta_v`` — rate of the ghost-unit weights per hidden layer; ``gamma`` — V (and
    FA W^b) drawn U[−γ, γ] (``None``: each layer's max |W|); ``v_init`` — ``"uniform"`` or
    ``"converged"``; ``reduction`` / ``v_reduction`` — batch ``"mean"`` or ``"sum"`` of the W / V
    updates; ``state_init`` — circuit state at the start of an example; ``input_rate`` — ``"x"``
    or ``"rho"``; ``weight_clip`` — bound on |W|, |V| (``None``: off); ``solver`` — ``"fast"`` or
    ``"literal"`` (Algorithms 1–2 step by step); ``diagnostics_every`` — record the Figs 4–5
    traces every N steps; ``divergence_threshold`` — stop when the circuit state exceeds it;
    ``ghost_units`` — ghost units per hidden layer (MB).

    Models: sigmoid MLPs — ``nn.Sequential`` of an optional ``Flatten``, then ``Linear`` +
    ``Sigmoid`` pairs, the output included (``mlp:...,activation=sigmoid,output_activation=sigmoid``).
    """

    option_help: ClassVar[dict[str, str]] = {
        "dt": "Euler step of the circuit dynamics (s)", "tau": "membrane time constant τ (s)",
        "beta": "β, strength of the output nudge in the weakly-clamped phase",
        "free_steps": "Euler steps of the free phase",
        "state_init": "circuit state at the start of a step: feedforward (s = s̃), carry (from the previous "
                      "example, MB) or zero",
        "divergence_threshold": "|state| above this (or non-finite) stops the run as diverged",
        "ghost_units": "ghost units per hidden layer: null = one per unit of the layer above (MA), or a count",
        "clip_dvb": "MA′: element-wise bound on ΔV^b (null: no clipping)",
        "clip_on": "MA′: clip the per-step increment (increment) or V̇^b before the dt factor (derivative)",
        "kernel": "MB's per-example loop: auto (numba where installed), numba or torch",
    }

    family = "circuit"
    paper = ("Mesnard, Vignoud, Sacramento, Senn & Bengio 2019, Ghost units yield biologically "
             "plausible backprop in deep neural networks (arXiv 1911.08585)")
    model: ClassVar[str] = "MA"
    updates_forward: ClassVar[bool] = True
    STATE_INITS: ClassVar[tuple[str, ...]] = ("feedforward", "zero")

    def __init__(self, **config: Any) -> None:
        self._aux: dict[str, torch.Tensor] = {}
        self._fast: FastCircuit | None = None
        self._kernel: Any = None
        self._steps = 0
        self._metrics: dict[str, float] = {}
        self._gains: dict[int, list] = {}  # layer -> [sum, count] of update_gain since the last metrics()
        self.trace: dict[str, list[list[float]]] = {}
        self._version = 0
        self._cache: tuple | None = None
        self._eye: torch.Tensor | None = None
        self._hp: tuple[int, HParams] | None = None
        super().__init__(**config)

    # ---------------------------------------------------------------- config
    def validate(self) -> None:
        c = self.config
        if c["feedback"] not in ("transpose", "random"):
            raise ConfigError(f"ghost option feedback={c['feedback']!r} is not valid; accepted: transpose "
                              "(TF, W^b = Wᵀ after every update), random (FA, W^b fixed)")
        dt, tau = _num(c, "dt", 0.0), _num(c, "tau", 0.0)
        if dt / tau >= 1.0:
            raise ConfigError(f"ghost options dt={dt} and tau={tau} give dt/tau = {dt / tau:.3g} >= 1: the "
                              "explicit Euler step overshoots; use dt < tau (the paper: dt/tau = 0.1 or 0.5)")
        _num(c, "beta", 0.0, strict=False)
        _count(c, "free_steps", 0)
        _count(c, "clamped_steps", 0)
        for key, choices in (("reduction", ("mean", "sum")), ("input_rate", ("x", "rho")),
                             ("solver", ("fast", "literal")), ("v_init", ("uniform", "converged")),
                             ("state_init", self.STATE_INITS)):
            if c[key] not in choices:
                raise ConfigError(f"{self.name} option {key}={c[key]!r} is not valid; accepted: "
                                  f"{', '.join(choices)}")
        if c["v_reduction"] not in (None, "mean", "sum"):
            raise ConfigError(f"{self.name} option v_reduction={c['v_reduction']!r} is not valid; accepted: "
                              "null (as reduction), mean, sum")
        for key in ("gamma", "weight_clip"):
            if c[key] is not None:
                _num(c, key, 0.0)
        _count(c, "diagnostics_every", 0)
        if c["divergence_threshold"] is not None:  # a string would fail at the first step, a negative
            _num(c, "divergence_threshold", 0.0)    # one would make every run "diverge at step 1"

    def hparams(self, n_layers: int) -> HParams:
        if self._hp is not None and self._hp[0] == n_layers:
            return self._hp[1]
        c = self.config
        hp = HParams(dt=float(c["dt"]), tau=float(c["tau"]), beta=float(c["beta"]),
                       eta_w=_per_layer(c["eta_w"], n_layers, "eta_w", "forward matrices"),
                       eta_v=[0.0] + _per_layer(c["eta_v"], n_layers - 1, "eta_v", "hidden layers"),
                       transpose=c["feedback"] == "transpose", reduction=c["reduction"],
                       v_reduction=c["v_reduction"],
                       clip_dvb=c.get("clip_dvb"), clip_on=c.get("clip_on", "increment"),
                       weight_clip=c["weight_clip"], input_rate=c["input_rate"])
        self._hp = (n_layers, hp)
        return hp

    # ----------------------------------------------------------------- model
    def _linears(self, model: nn.Module) -> list[nn.Linear]:
        try:
            layout = mlp_layout(model)
        except IncompatibleModelError:
            raise IncompatibleModelError(
                f"{self.name} trains a multilayer perceptron: an nn.Sequential of Flatten, then "
                "Linear + Sigmoid pairs (e.g. model 'mlp:784-500-10' with activation and "
                "output_activation sigmoid); this model is not one") from None
        for i, (lin, acts) in enumerate(layout.layers):
            if len(acts) != 1 or not isinstance(acts[0], nn.Sigmoid):
                got = ", ".join(type(a).__name__ for a in acts) or "nothing"
                raise IncompatibleModelError(
                    f"{self.name} needs every Linear layer (the output layer too) followed by one "
                    f"nn.Sigmoid, the paper's ρ; Linear {i} is followed by {got}. Build the MLP with "
                    "activation: sigmoid and output_activation: sigmoid")
        if len(layout.layers) < 2:
            raise IncompatibleModelError(f"{self.name} needs at least one hidden layer (ghost units live "
                                         "in hidden layers); this MLP has none")
        self._prefix = layout.prefix
        return [lin for lin, _ in layout.layers]

    def ghost_counts(self, sizes: list[int]) -> list[int]:
        """``k_h`` per hidden layer h = 1..L−1 (MA: the size of the layer above)."""
        return [sizes[h + 1] for h in range(1, len(sizes) - 1)]

    def _store(self, name: str, tensor: torch.Tensor, group: str, layer: int, buffer: bool = False) -> None:
        own = getattr(self, "own_buffer" if buffer else "own", None)
        if own is None:
            self._aux[name] = tensor
            return
        if buffer:
            self._aux[name] = own(name, tensor)
        else:
            p = own(name, tensor, group=group, layer=layer, self_applied=True)
            p.requires_grad_(False)
            self._aux[name] = p

    def _get(self, name: str) -> torch.Tensor | None:
        owned = getattr(self, "owned", None)
        if owned is not None and hasattr(owned, "get"):
            try:
                return owned.get(name)
            except (KeyError, AttributeError):
                pass
        return self._aux.get(name)

    def prepare(self, model: nn.Module, example: torch.Tensor | None = None) -> nn.Module:
        lins = self._linears(model)
        sizes = [lins[0].in_features] + [lin.out_features for lin in lins]
        counts = self.ghost_counts(sizes)
        self.hparams(len(lins))  # checks eta_w / eta_v lengths now
        w0 = lins[0].weight
        gen = self.generator(w0.device)
        for h in range(1, len(lins)):
            if self._get(f"Vf.{h}") is not None:
                continue
            W = lins[h].weight.detach()
            gamma = self.config["gamma"] or float(W.abs().max())
            shape_vf = (counts[h - 1], sizes[h])

            def uni(shape: tuple[int, ...], g: float = gamma) -> torch.Tensor:
                return torch.empty(shape, dtype=w0.dtype, device=w0.device).uniform_(-g, g, generator=gen)
            wb = W.t().contiguous() if self.config["feedback"] == "transpose" else uni(tuple(W.t().shape))
            if self.config["v_init"] == "converged":
                if counts[h - 1] != sizes[h + 1]:
                    raise ConfigError(f"{self.name} v_init='converged' copies W into V^f, which needs as "
                                      f"many ghost units as units in the layer above ({sizes[h + 1]})")
                vf, vb = W.clone(), wb.clone()
            else:
                vf, vb = uni(shape_vf), uni((sizes[h], counts[h - 1]))
            self._store(f"Wb.{h}", wb, "feedback", h)
            self._store(f"Vf.{h}", vf, "ghost", h)
            self._store(f"Vb.{h}", vb, "ghost", h)
        n_hidden = len(lins) - 1
        for phase, key in (("free", "free_steps"), ("clamped", "clamped_steps")):
            if self._get(f"diag.trace_{phase}") is None:  # Fig. 4: ‖t_h − c_h‖ per Euler step
                self._store(f"diag.trace_{phase}", w0.new_zeros(self.config[key], n_hidden), "diag", 0,
                            buffer=True)
        self._fast = None
        self._kernel = None
        self._version += 1
        return model

    def to(self, device=None, dtype=None) -> GhostRule:
        self._version += 1
        return super().to(device, dtype)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        owned = state.get("owned")
        if owned is not None:  # checkpoints written before the Fig. 4 trace buffers existed
            current = self.owned.state_dict()
            missing = {k: v for k, v in current.items() if k.startswith("diag.") and k not in owned}
            state = {**state, "owned": {**owned, **missing}}
        super().load_state_dict(state)
        self._steps = int(state.get("ghost_steps", 0))
        self._version += 1

    def _circuit(self, model: nn.Module) -> Circuit:
        """The circuit's weights (cached per model and owned tensors); fresh, empty state lists."""
        if self._cache is not None:
            key, c, lins = self._cache
            if key == (id(model), self._version) and all(
                    lin.weight.data_ptr() == w.data_ptr() for lin, w in zip(lins, c.W)):
                return Circuit(c.W, c.bias, c.Wb, c.Vf, c.Vb)
        for p in model.parameters():  # the rule never fills .grad: drop stale ones once
            p.grad = None
        c = self._build_circuit(model)
        self._cache = ((id(model), self._version), c, self._linears(model))
        return Circuit(c.W, c.bias, c.Wb, c.Vf, c.Vb)

    def _build_circuit(self, model: nn.Module) -> Circuit:
        lins = self._linears(model)
        L = len(lins)
        if self._get("Vf.1") is None:
            raise ConfigError(f"call {self.name}.prepare(model) before training")
        c = Circuit(W=[lin.weight.data for lin in lins],
                    bias=[None if lin.bias is None else lin.bias.data for lin in lins],
                    Wb=[None] + [self._get(f"Wb.{h}").data for h in range(1, L)],
                    Vf=[None] + [self._get(f"Vf.{h}").data for h in range(1, L)],
                    Vb=[None] + [self._get(f"Vb.{h}").data for h in range(1, L)])
        return c

    def _inputs(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, n_out: int):
        h = x
        for m in self._prefix:
            h = m(h)
        h = h.reshape(h.shape[0], -1).contiguous()
        if y.shape == (x.shape[0], n_out) and y.is_floating_point():
            target = y.to(h.dtype)
        else:
            eye = self._eye
            if eye is None or eye.shape[0] != n_out or eye.dtype != h.dtype or eye.device != h.device:
                eye = self._eye = torch.eye(n_out, dtype=h.dtype, device=h.device)
            target = eye.index_select(0, y.reshape(-1).long())
        return h, target

    # ------------------------------------------------------------------ step
    def init_state(self, c: Circuit, x: torch.Tensor) -> None:
        if self.config["state_init"] == "zero":
            zero_state(c, x.shape[0])
        else:
            feedforward_state(c, x, self.hparams(c.L))

    def compiled(self, c: Circuit, callback=None) -> bool:
        """Whether :meth:`run_circuit` returns the pre-update feedforward output itself."""
        return False

    def run_circuit(self, c: Circuit, x: torch.Tensor, target: torch.Tensor, hp: HParams,
                    callback=None) -> torch.Tensor | None:
        """Both phases on one batch with the configured solver (the literal one with ``callback``)."""
        cfg = self.config
        if cfg["solver"] == "literal" or callback is not None:
            literal_example(c, x, target, hp, self.model, cfg["free_steps"], cfg["clamped_steps"], callback)
            return None
        if self._fast is None:
            self._fast = FastCircuit(c, hp)
        self._fast.c, self._fast.hp = c, hp
        self._fast.run(x, target, self.model, cfg["free_steps"], cfg["clamped_steps"])
        return None

    def train_step(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn) -> StepResult:
        with torch.no_grad():
            c = self._circuit(model)
            hp = self.hparams(c.L)
            xin, target = self._inputs(model, x, y, c.W[-1].shape[0])
            before = [w.clone() for w in c.W] if self._diag_due() else None
            callback = self._recorder(hp) if before is not None else None
            output = None if self.compiled(c, callback) else model(x)
            self.load_state(c, xin)
            ran = self.run_circuit(c, xin, target, hp, callback)
            output = ran if output is None else output
            loss = loss_fn(output, y)
            self.save_state(c)
            self._steps += 1
            self._check(c, loss)
        if before is not None:
            self._update_error(model, x, y, before, hp)
        return StepResult(loss.detach(), output.detach())

    def load_state(self, c: Circuit, x: torch.Tensor) -> None:
        self.init_state(c, x)

    def save_state(self, c: Circuit) -> None:
        """MA starts every batch afresh; MB overrides this to carry the state over."""

    # ------------------------------------------------------------ diagnostics
    def _diag_due(self) -> bool:
        every = self.config["diagnostics_every"]
        return every > 0 and self._steps % every == 0

    def _recorder(self, hp: HParams):
        trace: dict[str, list[list[float]]] = {"free": [], "clamped": []}

        def record(phase: str, i: int, c: Circuit, e: list) -> None:
            trace[phase].append([float(e[h].norm(dim=1).mean()) for h in range(1, c.L)])
        self.trace = trace
        return record

    def effective_rates(self, hp: HParams) -> list[float]:
        """The SGD step ΔW ≈ −rate·∂C̃/∂W each W update approximates (Corollary 1)."""
        return [e * hp.dt * hp.beta * self.config["clamped_steps"] for e in hp.eta_w]

    def _update_error(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                      before: list[torch.Tensor], hp: HParams) -> None:
        """Fig. 5: relative error of the batch's net W change against −rate·∂C̃/∂W at W_before."""
        lins = self._linears(model)
        after = [lin.weight.detach().clone() for lin in lins]
        with torch.no_grad():
            for lin, w in zip(lins, before):
                lin.weight.copy_(w)
        with torch.enable_grad():
            out = model(x)
            _, target = self._inputs(model, x, y, out.shape[1])
            cost = ((out - target) ** 2).sum(1)
            cost = cost.mean() if hp.reduction == "mean" else cost.sum()
            grads = torch.autograd.grad(cost, [lin.weight for lin in lins])
        with torch.no_grad():
            for lin, w in zip(lins, after):
                lin.weight.copy_(w)
        for l, (g, w0, w1, rate) in enumerate(zip(grads, before, after, self.effective_rates(hp))):
            ref = -rate * g.double()
            delta = (w1 - w0).double()
            rel = (delta - ref).norm() / ref.norm().clamp_min(1e-300)
            self._metrics[f"update_rel_error/{l}"] = float(rel)
            # the step actually taken along the Corollary-1 step, as a fraction of it (1: as large)
            gain = float((delta * ref).sum() / (ref * ref).sum().clamp_min(1e-300))
            self._metrics[f"update_gain/{l}"] = gain
            acc = self._gains.setdefault(l, [0.0, 0])
            acc[0] += gain
            acc[1] += 1
            cos = float((delta * ref).sum() / (delta.norm() * ref.norm()).clamp_min(1e-300))
            self._metrics[f"update_angle/{l}"] = math.degrees(math.acos(max(-1.0, min(1.0, cos))))
        for phase, rows in self.trace.items():
            if rows:
                for h, v in enumerate(rows[-1], start=1):
                    self._metrics[f"cancel_residual_{phase}/{h}"] = v
                buf = self._get(f"diag.trace_{phase}")
                if buf is not None and buf.shape == (len(rows), len(rows[0])):
                    buf.copy_(torch.tensor(rows, dtype=buf.dtype))

    def _check(self, c: Circuit, loss: torch.Tensor) -> None:
        thr = self.config["divergence_threshold"]
        peak = max(float(s.abs().max()) for s in c.s[1:])
        if not math.isfinite(peak) or (thr is not None and peak > thr) or not math.isfinite(float(loss)):
            raise DivergenceError(f"{self.name} diverged at training step {self._steps}: the largest |s| is "
                                  f"{peak:.3g}. Try smaller eta_w / eta_v, a smaller beta, or weight_clip")

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "ghost_steps": self._steps}

    def metrics(self, model: nn.Module) -> dict[str, float]:
        """Fig. 3 distances ‖V^f − W_{h}‖/‖W_h‖ and ‖V^b − W^b‖/‖W^b‖ (MA), plus the last diagnostics."""
        out = dict(self._metrics)
        for l, (total, count) in self._gains.items():  # mean step gain over the diagnosed batches
            out[f"update_gain_mean/{l}"] = total / count
        self._gains = {}
        if self._get("Vf.1") is None:
            return out
        c = self._circuit(model)
        for h in range(1, c.L):
            if c.Vf[h].shape == c.W[h].shape:
                out[f"vf_error/{h}"] = float((c.Vf[h] - c.W[h]).norm() / c.W[h].norm().clamp_min(1e-300))
                out[f"vb_error/{h}"] = float((c.Vb[h] - c.Wb[h]).norm() / c.Wb[h].norm().clamp_min(1e-300))
        return out
