"""The three registered ghost-unit rules: MA (Algorithm 1), MA′ and MB (Algorithm 2)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from ...errors import ConfigError
from ..registry import register
from .circuit import Circuit, HParams, feedforward_state, zero_state
from .rule import COMMON, GhostRule, _num


def _mb_kernel():
    """The numba kernel module, imported on first use (numba costs ~0.2 s and ~100 MB to import,
    which every other rule and the CLI should not pay)."""
    from . import mb_kernel

    return mb_kernel


@register("ghost-ma")
class GhostMA(GhostRule):
    """MA: one ghost unit per unit of the layer above (k_h = n_{h+1}).

    Free phase: eqs 4-5 (V^f, V^b) at every Euler step; weakly-clamped phase: eq 6 (W) at every
    step, W^b re-set to Wᵀ after each update (TF). Defaults: Table 2, 1 hidden layer (dt 0.001,
    τ 0.01, 200 + 200 steps, β 10, η_W 0.1, η_V 0.05, batch mean).
    """

    summary = "ghost units MA: V learns in the free phase (eqs 4-5), W at every nudged step (eq 6)"
    model = "MA"
    #: Table 2's network: sigmoid units everywhere (the output too), no biases, U(−0.2, 0.2), the
    #: nudged loss with β 10 on unit-scaled inputs; batches of 10 rather than the paper's 100: at
    #: Table 2's rates MA needs many steps (26 % after one epoch of 10k images at batch 100,
    #: REPRODUCTION.md), ten times as many updates per epoch learn within one epoch
    recommended: ClassVar[dict[str, Any]] = {
        "batch_size": 10,
        "model": {"activation": "sigmoid", "output_activation": "sigmoid", "bias": False, "init": "uniform:0.2"},
        "dataset": {"normalize": "unit"}, "loss": "nudged_batchmean:10"}
    defaults: ClassVar[dict[str, Any]] = {**COMMON, "ghost_units": None}

    def validate(self) -> None:
        super().validate()
        k = self.config["ghost_units"]
        if k is not None and (isinstance(k, bool) or not isinstance(k, (int, list, tuple))):
            raise ConfigError(f"{self.name} option ghost_units must be null (one per unit of the layer "
                              f"above) or those counts, got {k!r}")

    def ghost_counts(self, sizes: list[int]) -> list[int]:
        need = [sizes[h + 1] for h in range(1, len(sizes) - 1)]
        k = self.config["ghost_units"]
        if k is not None:
            given = list(k) if isinstance(k, (list, tuple)) else [k] * len(need)
            if given != need:
                raise ConfigError(f"{self.name} pairs each ghost unit of layer h with one unit of layer h+1, "
                                  f"so ghost_units must be {need} for this MLP, got {k!r}; use ghost-mb "
                                  "for a free number of ghost units")
        return need


@register("ghost-ma-prime")
class GhostMAPrime(GhostMA):
    """MA′: eqs 4, 5 and 6 at every step of both phases, each ΔV^b clipped element-wise.

    ``clip_dvb`` is the bound (2). ``clip_on="increment"`` bounds the per-step increment η_V dt ⟨e ρ(g)ᵀ⟩ (Table 3: "Clipping
    ΔV^b 2"); ``"derivative"`` bounds V̇^b = η_V ⟨e ρ(g)ᵀ⟩ before the dt factor. Defaults: Table 3
    (β 0.2, η_W 0.2, η_V 0.03, clip 2).
    """

    summary = "ghost units MA′: V and W learn at every step of both phases, ΔV^b clipped"
    model = "MA'"
    #: Table 3's network and loss (sigmoid everywhere, no biases, U(−0.2, 0.2), squared error, unit
    #: inputs, batch 100) with the updates summed over the batch (Table 3's runs; the batch mean
    #: learns too slowly to leave chance in one epoch)
    recommended: ClassVar[dict[str, Any]] = {
        "model": {"activation": "sigmoid", "output_activation": "sigmoid", "bias": False, "init": "uniform:0.2"},
        "dataset": {"normalize": "unit"}, "loss": "mse_batchmean", "rule": {"reduction": "sum"}}
    defaults: ClassVar[dict[str, Any]] = {**GhostMA.defaults, "beta": 0.2, "eta_w": 0.2, "eta_v": 0.03,
                                          "clip_dvb": 2.0, "clip_on": "increment"}

    def validate(self) -> None:
        super().validate()
        c = self.config
        if c["clip_dvb"] is not None:
            _num(c, "clip_dvb", 0.0)
        if c["clip_on"] not in ("increment", "derivative"):
            raise ConfigError(f"{self.name} option clip_on={c['clip_on']!r} is not valid; accepted: "
                              "increment, derivative")


@register("ghost-mb")
class GhostMB(GhostRule):
    """MB: a free number of ghost units per hidden layer, V^f fixed random, V^b fast (eq 15).

    Faithful MB runs one example per step (batch 1) and carries V^b and the circuit state
    (s, g) from one example to the next (Algorithm 2); W learns once per example at the end
    of the weakly-clamped phase with a rate per matrix and no dt (eq 16). Defaults: Table 4,
    784-X-10 (5 ghost units, dt 0.005, τ 0.01, 100 + 40 steps, β 0.1, η_V 20, η_W 4, 0.04).
    ``kernel="numba"`` (default where numba is installed) compiles the per-example loop;
    ``"torch"`` uses the fused torch path; ``solver="literal"`` the oracle.
    """

    summary = "ghost units MB: V^b cancels feedback per example (eq 15), W learns once per example"
    model = "MB"
    #: Table 4: one example per step, sigmoid units everywhere, no biases, U(−0.05, 0.05), summed
    #: squared error on unit-scaled inputs
    recommended: ClassVar[dict[str, Any]] = {
        "batch_size": 1,
        "model": {"activation": "sigmoid", "output_activation": "sigmoid", "bias": False, "init": "uniform:0.05"},
        "dataset": {"normalize": "unit"}, "loss": "mse_sum"}
    STATE_INITS: ClassVar[tuple[str, ...]] = ("carry", "feedforward", "zero")
    defaults: ClassVar[dict[str, Any]] = {
        **COMMON, "dt": 0.005, "tau": 0.01, "beta": 0.1, "free_steps": 100, "clamped_steps": 40,
        "eta_w": [4.0, 0.04], "eta_v": 20.0, "state_init": "carry", "ghost_units": 5,
        "kernel": "auto",
    }

    def validate(self) -> None:
        super().validate()
        c = self.config
        k = c["ghost_units"]
        vals = list(k) if isinstance(k, (list, tuple)) else [k]
        if not vals or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in vals):
            raise ConfigError(f"{self.name} option ghost_units must be a positive integer or one per hidden "
                              f"layer, got {k!r}")
        if c["kernel"] not in ("auto", "numba", "torch"):
            raise ConfigError(f"{self.name} option kernel={c['kernel']!r} is not valid; accepted: auto, "
                              "numba, torch")
        if c["kernel"] == "numba" and not _mb_kernel().AVAILABLE:
            raise ConfigError(f"{self.name} kernel='numba' needs numba (pip install numba); or use "
                              "kernel='torch'")

    def ghost_counts(self, sizes: list[int]) -> list[int]:
        k = self.config["ghost_units"]
        n_hidden = len(sizes) - 2
        vals = list(k) if isinstance(k, (list, tuple)) else [k] * n_hidden
        if len(vals) != n_hidden:
            raise ConfigError(f"{self.name} option ghost_units has {len(vals)} counts for {n_hidden} hidden "
                              "layers; give one number or one per hidden layer")
        return vals

    def effective_rates(self, hp: HParams) -> list[float]:
        return [e * hp.beta for e in hp.eta_w]

    def prepare(self, model: torch.nn.Module, example: torch.Tensor | None = None) -> torch.nn.Module:
        model = super().prepare(model, example)
        if self._get("state.s.1") is None:
            lins = self._linears(model)
            w = lins[0].weight
            for l, lin in enumerate(lins, start=1):
                self._store(f"state.s.{l}", w.new_zeros(1, lin.out_features), "state", l, buffer=True)
            for h in range(1, len(lins)):
                k = self._get(f"Vf.{h}").shape[0]
                self._store(f"state.g.{h}", w.new_zeros(1, k), "state", h, buffer=True)
            self._store("state.started", w.new_zeros(()), "state", 0, buffer=True)
        return model

    def load_state(self, c: Circuit, x: torch.Tensor) -> None:
        if x.shape[0] != 1:
            raise ConfigError(f"{self.name} is faithful to the paper: one example per step with V^b and the "
                              f"circuit state carried over, so batch_size must be 1 (got {x.shape[0]})")
        started = self._get("state.started")
        mode = self.config["state_init"]
        if not (mode == "carry" and started is not None and float(started) > 0):
            if mode == "zero":
                zero_state(c, 1)
            else:
                feedforward_state(c, x, self.hparams(c.L))
            self.save_state(c)  # the persistent buffers hold the state the step starts from
        c.s = [None] + [self._get(f"state.s.{l}") for l in range(1, c.L + 1)]
        c.g = [None] + [self._get(f"state.g.{h}") for h in range(1, c.L)]

    def save_state(self, c: Circuit) -> None:
        for l in range(1, c.L + 1):
            buf = self._get(f"state.s.{l}")
            if buf is not c.s[l]:
                buf.copy_(c.s[l])
        for h in range(1, c.L):
            buf = self._get(f"state.g.{h}")
            if buf is not c.g[h]:
                buf.copy_(c.g[h])
        self._get("state.started").fill_(1.0)

    def _use_numba(self, c: Circuit) -> bool:
        k = self.config["kernel"]
        if k == "torch" or not _mb_kernel().AVAILABLE:
            return False
        # the compiled kernel takes float32/float64 CPU arrays; other dtypes (float16) run on torch
        return c.W[0].device.type == "cpu" and c.W[0].dtype in (torch.float32, torch.float64)

    def compiled(self, c: Circuit, callback=None) -> bool:
        return self.config["solver"] == "fast" and callback is None and self._use_numba(c)

    def run_circuit(self, c: Circuit, x: torch.Tensor, target: torch.Tensor, hp: HParams,
                    callback=None) -> torch.Tensor | None:
        if self.compiled(c, callback):
            key = tuple(t.data_ptr() for t in c.W + c.Vb[1:] + c.Vf[1:] + c.Wb[1:] + c.bias if t is not None)
            if self._kernel is None or self._kernel[0] != key:
                self._kernel = (key, _mb_kernel().MBKernel(c, hp))
            kern = self._kernel[1]
            kern.hp = hp
            return kern.run(x, target, self.config["free_steps"], self.config["clamped_steps"])
        return super().run_circuit(c, x, target, hp, callback)
