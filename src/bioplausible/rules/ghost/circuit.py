"""Ghost-unit circuits (Mesnard et al. 2019, arXiv 1911.08585): state, literal oracle, fast path.

Row-batch form. Layers ``l = 0..L`` (input 0, output L); ``W[l]`` is the forward weight of
``nn.Linear`` ``l`` (``n_{l+1} × n_l``, the seed's ``W^f_{l+1,l}``), ``bias[l]`` its bias (the
seed has none; a bias is treated as a weight on a constant presynaptic rate 1). Hidden layers
``h = 1..L−1`` carry ghost units: ``Vf[h]`` (``k_h × n_h``, PU → GU), ``Vb[h]`` (``n_h × k_h``,
GU → PU, inhibitory) and the feedback ``Wb[h]`` (``n_h × n_{h+1}``; TF: ``W[h]ᵀ``). Index 0 of
``Wb``, ``Vf``, ``Vb``, ``g`` is ``None``; ``s[0]`` is unused (the input is clamped).

One explicit-Euler step (Algorithms 1 and 2), every quantity taken from the state *before*
the step (synchronous update of all layers, the explicit-Euler reading of eqs 2-6)::

    r_l = ρ(s_l) (r_0 = x or ρ(x)),      ρ = sigmoid
    e_h = Wb_h r_{h+1} − Vb_h ρ(g_h)                       (hidden: t_h − c_h)
    e_L = −β ∂C/∂ρ(s_L) = −2β (r_L − target)               (β = 0 in the free phase)
    s_l ← s_l + dt/τ (−s_l + W_{l−1} r_{l−1} + e_l)        (eq 2)
    g_h ← g_h + dt/τ (−g_h + Vf_h r_h)                     (eq 3)
    Vf_h ← Vf_h + η_V dt ⟨(s_{h+1} − g_h) r_hᵀ⟩            (eq 4; MA)
    Vb_h ← Vb_h + η_V dt ⟨e_h ρ(g_h)ᵀ⟩                     (eq 5 / 15; MA′: clipped)
    W_{l−1} ← W_{l−1} + η_{W,l−1} dt ⟨(e_l ⊙ ρ′(s_l)) r_{l−1}ᵀ⟩   (eq 6; MA, MA′)
    Wb ← Wᵀ after every W update (TF)

``⟨·⟩`` is the batch mean (``reduction="mean"``) or sum. MB applies its W update once, at the
end of the weakly-clamped phase, from the final state, without dt (eq 16).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

Tensor = torch.Tensor
PLASTIC = ("Vf", "Vb", "W")


@dataclass
class HParams:
    """Numbers of one circuit (see the rule classes for their meaning and defaults)."""

    dt: float
    tau: float
    beta: float
    eta_w: list[float]            # one per forward matrix (layer l = 0..L−1)
    eta_v: list[float]            # one per layer, index 0 unused
    transpose: bool               # TF (True) or FA (False)
    reduction: str = "mean"       # "mean" | "sum" over the batch (W updates; V too unless v_reduction)
    v_reduction: str | None = None  # "mean" | "sum" for the V updates (eqs 4, 5, 15); None: as reduction
    clip_dvb: float | None = None  # MA′: element-wise bound of each ΔV^b
    clip_on: str = "increment"    # "increment" (η_V dt ⟨e ρ(g)ᵀ⟩) | "derivative" (η_V ⟨e ρ(g)ᵀ⟩)
    weight_clip: float | None = None  # optional bound on |W|, |V| after each update (Thm 1)
    input_rate: str = "x"         # presynaptic rate of the input layer: "x" | "rho"


@dataclass
class Circuit:
    """Weights and state of one ghost-unit network (tensors are shared with the model/rule)."""

    W: list[Tensor]
    bias: list[Tensor | None]
    Wb: list[Tensor | None]
    Vf: list[Tensor | None]
    Vb: list[Tensor | None]
    s: list[Tensor | None] = field(default_factory=list)
    g: list[Tensor | None] = field(default_factory=list)

    @property
    def L(self) -> int:
        return len(self.W)

    def clone(self) -> Circuit:
        def c(v: list) -> list:
            return [None if t is None else t.clone() for t in v]
        return Circuit(c(self.W), c(self.bias), c(self.Wb), c(self.Vf), c(self.Vb), c(self.s), c(self.g))


def input_rate(x: Tensor, hp: HParams) -> Tensor:
    return torch.sigmoid(x) if hp.input_rate == "rho" else x


def feedforward_state(c: Circuit, x: Tensor, hp: HParams) -> None:
    """Initialise ``s_l = s̃_l`` (the MLP's pre-activations, eq 1) and ``g_h = Vf_h ρ(s̃_h)``."""
    r = input_rate(x, hp)
    c.s = [None]
    c.g = [None]
    for l in range(c.L):
        s = r @ c.W[l].t()
        if c.bias[l] is not None:
            s = s + c.bias[l]
        c.s.append(s)
        r = torch.sigmoid(s)
        if l + 1 < c.L:
            c.g.append(r @ c.Vf[l + 1].t())


def zero_state(c: Circuit, batch: int) -> None:
    w = c.W[0]
    c.s = [None] + [w.new_zeros(batch, W.shape[0]) for W in c.W]
    c.g = [None] + [w.new_zeros(batch, c.Vf[h].shape[0]) for h in range(1, c.L)]


def _red(hp: HParams, batch: int) -> float:
    """Batch factor of the W updates (eq 6 / 16): 1/B for the mean, 1 for the sum."""
    return 1.0 / batch if hp.reduction == "mean" else 1.0


def _red_v(hp: HParams, batch: int) -> float:
    """Batch factor of the V updates (eqs 4, 5, 15)."""
    how = hp.v_reduction or hp.reduction
    return 1.0 / batch if how == "mean" else 1.0


def _clip_(t: Tensor, bound: float | None) -> None:
    if bound is not None:
        t.clamp_(-bound, bound)


# --------------------------------------------------------------------------- literal oracle
def literal_step(c: Circuit, x: Tensor, target: Tensor, beta: float, hp: HParams,
                 plastic: tuple[str, ...]) -> list[Tensor | None]:
    """One Euler step and the plasticity of ``plastic``, written out as in Algorithms 1-2.

    Returns the errors ``e_l`` (index 0 ``None``) that drove this step.
    """
    L, k = c.L, hp.dt / hp.tau
    B = x.shape[0]
    red, red_v = _red(hp, B), _red_v(hp, B)
    r = [input_rate(x, hp)] + [torch.sigmoid(c.s[l]) for l in range(1, L + 1)]
    rg = [None] + [torch.sigmoid(c.g[h]) for h in range(1, L)]
    e: list[Tensor | None] = [None]
    for h in range(1, L):
        t = r[h + 1] @ c.Wb[h].t()
        cancel = rg[h] @ c.Vb[h].t()
        e.append(t - cancel)
    e.append(-beta * 2.0 * (r[L] - target))
    new_s: list[Tensor | None] = [None]
    for l in range(1, L + 1):
        b = r[l - 1] @ c.W[l - 1].t()
        if c.bias[l - 1] is not None:
            b = b + c.bias[l - 1]
        new_s.append(c.s[l] + k * (-c.s[l] + b + e[l]))
    new_g: list[Tensor | None] = [None]
    for h in range(1, L):
        new_g.append(c.g[h] + k * (-c.g[h] + r[h] @ c.Vf[h].t()))
    # plasticity from the same (pre-step) state
    dVf: list[Tensor | None] = [None] * L
    dVb: list[Tensor | None] = [None] * L
    dW: list[Tensor | None] = [None] * L
    db: list[Tensor | None] = [None] * L
    for h in range(1, L):
        if "Vf" in plastic:
            dVf[h] = hp.eta_v[h] * hp.dt * red_v * ((c.s[h + 1] - c.g[h]).t() @ r[h])
        if "Vb" in plastic:
            rate = hp.eta_v[h] * red_v * (e[h].t() @ rg[h])
            if hp.clip_dvb is not None and hp.clip_on == "derivative":
                rate = rate.clamp(-hp.clip_dvb, hp.clip_dvb)
            dVb[h] = rate * hp.dt
            if hp.clip_dvb is not None and hp.clip_on == "increment":
                dVb[h] = dVb[h].clamp(-hp.clip_dvb, hp.clip_dvb)
    if "W" in plastic:
        for l in range(1, L + 1):
            delta = e[l] * r[l] * (1.0 - r[l])
            dW[l - 1] = hp.eta_w[l - 1] * hp.dt * red * (delta.t() @ r[l - 1])
            db[l - 1] = hp.eta_w[l - 1] * hp.dt * red * delta.sum(0)
    c.s, c.g = new_s, new_g
    for h in range(1, L):
        if dVf[h] is not None:
            c.Vf[h] += dVf[h]
            _clip_(c.Vf[h], hp.weight_clip)
        if dVb[h] is not None:
            c.Vb[h] += dVb[h]
            _clip_(c.Vb[h], hp.weight_clip)
    for l in range(L):
        if dW[l] is not None:
            c.W[l] += dW[l]
            _clip_(c.W[l], hp.weight_clip)
            if c.bias[l] is not None:
                c.bias[l] += db[l]
            if hp.transpose and l >= 1:
                c.Wb[l].copy_(c.W[l].t())
    return e


def output_error(c: Circuit, x: Tensor, target: Tensor, beta: float, hp: HParams) -> list[Tensor | None]:
    """``e_l`` of the current state (hidden ``t − c``, output ``−2β(ρ(s_L) − target)``)."""
    L = c.L
    r = [None] + [torch.sigmoid(c.s[l]) for l in range(1, L + 1)]
    e: list[Tensor | None] = [None]
    for h in range(1, L):
        e.append(r[h + 1] @ c.Wb[h].t() - torch.sigmoid(c.g[h]) @ c.Vb[h].t())
    e.append(-beta * 2.0 * (r[L] - target))
    return e


def mb_weight_update(c: Circuit, x: Tensor, target: Tensor, hp: HParams) -> None:
    """Eq 16 from the final state of the weakly-clamped phase.

    ``ΔW_{l−1} = η_{W,l−1} ⟨(e_l ⊙ ρ′(s_l)) r_{l−1}ᵀ⟩``, no dt; TF then re-sets ``Wb = Wᵀ``.
    """
    e = output_error(c, x, target, hp.beta, hp)
    red = _red(hp, x.shape[0])
    r = [input_rate(x, hp)] + [torch.sigmoid(c.s[l]) for l in range(1, c.L + 1)]
    for l in range(1, c.L + 1):
        delta = e[l] * r[l] * (1.0 - r[l])
        c.W[l - 1] += hp.eta_w[l - 1] * red * (delta.t() @ r[l - 1])
        _clip_(c.W[l - 1], hp.weight_clip)
        if c.bias[l - 1] is not None:
            c.bias[l - 1] += hp.eta_w[l - 1] * red * delta.sum(0)
    if hp.transpose:
        for h in range(1, c.L):
            c.Wb[h].copy_(c.W[h].t())


SCHEDULES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # model: (plastic in the free phase, plastic in the weakly-clamped phase)
    "MA": (("Vf", "Vb"), ("W",)),
    "MA'": (PLASTIC, PLASTIC),
    "MB": (("Vb",), ()),
}


def literal_example(c: Circuit, x: Tensor, target: Tensor, hp: HParams, model: str,
                    free_steps: int, clamped_steps: int, callback=None) -> None:
    """Both phases of one batch (MA, MA′) or example (MB), step by step, in place."""
    free, clamped = SCHEDULES[model]
    for i in range(free_steps):
        e = literal_step(c, x, target, 0.0, hp, free)
        if callback is not None:
            callback("free", i, c, e)
    for i in range(clamped_steps):
        e = literal_step(c, x, target, hp.beta, hp, clamped)
        if callback is not None:
            callback("clamped", i, c, e)
    if model == "MB":
        mb_weight_update(c, x, target, hp)
