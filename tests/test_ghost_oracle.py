"""Ghost units against the mathematics of the paper (Theorems 1-2, Corollary 1), and bad input."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

import bioplausible as bp
from bioplausible.errors import ConfigError, IncompatibleModelError
from bioplausible.rules.ghost.circuit import (
    Circuit,
    HParams,
    feedforward_state,
    literal_example,
    literal_step,
    output_error,
    zero_state,
)

D = torch.float64


def net(sizes, seed=0, scale=0.8):
    g = torch.Generator().manual_seed(seed)
    W = [(torch.rand(sizes[l + 1], sizes[l], generator=g, dtype=D) * 2 - 1) * scale
         for l in range(len(sizes) - 1)]
    return W


def converged(W, transpose=True, seed=1):
    """MA ghost units at their fixed point: V^f_h = W_h, V^b_h = W^b_h."""
    L = len(W)
    g = torch.Generator().manual_seed(seed)
    Wb = [None] + [W[h].t().clone() if transpose else torch.rand(W[h].t().shape, generator=g, dtype=D) - 0.5
                   for h in range(1, L)]
    return Circuit([w.clone() for w in W], [None] * L, Wb, [None] + [W[h].clone() for h in range(1, L)],
                   [None] + [Wb[h].clone() for h in range(1, L)])


def hp(beta, L, dt=0.02, tau=0.1, eta_w=0.0):
    return HParams(dt=dt, tau=tau, beta=beta, eta_w=[eta_w] * L, eta_v=[0.0] * L, transpose=True)


def mlp_forward(W, x):
    s, r = [], x
    for w in W:
        s.append(r @ w.t())
        r = torch.sigmoid(s[-1])
    return s


def data(n_in, n_out, B=3, seed=2):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(B, n_in, generator=g, dtype=D)
    t = nn.functional.one_hot(torch.randint(0, n_out, (B,), generator=g), n_out).to(D)
    return x, t


SIZES = [6, 5, 4, 3]


def test_beta0_converged_steady_state_is_the_mlp_forward_pass():
    W = net(SIZES)
    c = converged(W)
    x, t = data(6, 3)
    h = hp(0.0, 3)
    zero_state(c, 3)  # start far from the answer
    for _ in range(1500):
        e = literal_step(c, x, t, 0.0, h, ())
    ref = mlp_forward(W, x)
    for l in range(1, 4):
        torch.testing.assert_close(c.s[l], ref[l - 1], rtol=0, atol=1e-9)
    for h_ in (1, 2):
        assert float(e[h_].abs().max()) < 1e-9


def steady_errors(beta, W, x, t, steps=1500):
    c = converged(W)
    h = hp(beta, len(W))
    feedforward_state(c, x, h)
    for _ in range(steps):
        literal_step(c, x, t, beta, h, ())
    return c, output_error(c, x, t, beta, h)


def bp_dC_drho(W, x, t):
    """dC̃/dρ(s̃_l) for every layer l = 1..L, C̃ = Σ_b Σ_j (ρ(s̃_L) − t)²."""
    rates, r = [], x
    with torch.enable_grad():
        for w in W:
            r = torch.sigmoid(r @ w.t().requires_grad_(True))
            r.retain_grad()
            rates.append(r)
        ((r - t) ** 2).sum().backward()
    return [q.grad.detach() for q in rates]


def test_theorem1_hidden_errors_approach_minus_beta_dC_drho():
    W = net(SIZES, seed=3)
    x, t = data(6, 3)
    Wg = [w.clone().requires_grad_(False) for w in W]
    ref = bp_dC_drho([w.clone() for w in Wg], x, t)
    errs = []
    for beta in (0.1, 0.01, 0.001):
        _, e = steady_errors(beta, W, x, t)
        rel = [float((e[l] / -beta - ref[l - 1]).norm() / ref[l - 1].norm()) for l in (1, 2)]
        errs.append(max(rel))
    assert errs[0] > errs[1] > errs[2]
    assert errs[2] < 5e-3
    assert errs[1] < errs[0] / 5  # O(β): shrinks roughly tenfold per decade


def test_corollary1_ma_weight_update_approaches_minus_eta_beta_grad():
    W = net(SIZES, seed=4)
    x, t = data(6, 3)
    eta, errs = 0.5, []
    for beta in (0.1, 0.01, 0.001):
        c, _ = steady_errors(beta, W, x, t)
        h = hp(beta, 3, eta_w=eta)
        before = [w.clone() for w in c.W]
        literal_step(c, x, t, beta, h, ("W",))
        Wq = [w.clone().requires_grad_(True) for w in W]
        s = mlp_forward(Wq, x)
        cost = ((torch.sigmoid(s[-1]) - t) ** 2).sum(1).mean()  # batch mean, as reduction="mean"
        grads = torch.autograd.grad(cost, Wq)
        rel = [float(((a - b) - (-eta * h.dt * beta * g)).norm() / (eta * h.dt * beta * g).norm())
               for a, b, g in zip(c.W, before, grads)]
        errs.append(max(rel))
    assert errs[0] > errs[1] > errs[2]
    assert errs[2] < 5e-3


def test_mb_free_phase_cancels_top_down_feedback():
    """Theorem 2's premise: after MB's free phase (eq 15), c_l ≈ t_l for the current input."""
    W = net(SIZES, seed=5, scale=0.5)
    g = torch.Generator().manual_seed(6)
    L = 3
    ks = [2, 2]
    Wb = [None] + [W[h].t().contiguous() for h in range(1, L)]
    Vf = [None] + [(torch.rand(ks[h - 1], SIZES[h], generator=g, dtype=D) - 0.5) for h in range(1, L)]
    Vb = [None] + [(torch.rand(SIZES[h], ks[h - 1], generator=g, dtype=D) - 0.5) for h in range(1, L)]
    c = Circuit([w.clone() for w in W], [None] * L, Wb, Vf, Vb)
    x, t = data(6, 3, B=1)
    h = HParams(dt=0.005, tau=0.01, beta=0.1, eta_w=[0.0] * L, eta_v=[0.0, 20.0, 20.0], transpose=True)
    feedforward_state(c, x, h)
    e0 = output_error(c, x, t, 0.0, h)
    start = [float(e0[l].norm()) for l in (1, 2)]
    literal_example(c, x, t, h, "MB", 400, 0)
    e = output_error(c, x, t, 0.0, h)
    r = [None] + [torch.sigmoid(c.s[l]) for l in range(1, L + 1)]
    for l in (1, 2):
        top_down = (r[l + 1] @ c.Wb[l].t()).norm()
        assert float(e[l].norm()) < 0.01 * float(top_down)
        assert float(e[l].norm()) < 0.05 * start[l - 1]


def mlp(sizes=(6, 5, 4), seed=0, **kw):
    torch.manual_seed(seed)
    return bp.MLP(list(sizes), activation="sigmoid", output_activation="sigmoid", init="uniform:0.5",
                  **kw).double()


@pytest.mark.parametrize("name", ["ghost-ma", "ghost-ma-prime", "ghost-mb"])
def test_tf_keeps_wb_equal_wT_and_fa_leaves_wb_untouched(name):
    x = torch.rand(4, 6, dtype=D)
    y = torch.tensor([0, 1, 2, 3])
    B = 1 if name == "ghost-mb" else 4
    opts = {"free_steps": 3, "clamped_steps": 3}
    if name == "ghost-mb":
        opts["eta_w"] = [1.0, 1.0, 1.0]
    loss = bp.get_loss("mse_sum")
    for feedback in ("transpose", "random"):
        rule = bp.make(name, feedback=feedback, **opts)
        model = rule.prepare(mlp((6, 5, 4, 4)))
        wb0 = [rule._get(f"Wb.{h}").clone() for h in (1, 2)]
        w0 = [m.weight.detach().clone() for m in model if isinstance(m, nn.Linear)]
        for i in range(0, 4, B):
            rule.train_step(model, x[i:i + B], y[i:i + B], loss)
            lins = [m for m in model if isinstance(m, nn.Linear)]
            for h in (1, 2):
                wb = rule._get(f"Wb.{h}")
                if feedback == "transpose":
                    assert torch.equal(wb, lins[h].weight.detach().t())
                else:
                    assert torch.equal(wb, wb0[h - 1])
        assert not torch.equal(lins[1].weight.detach(), w0[1])


def test_ma_prime_clip_bounds_every_dvb():
    clip = 2e-5
    rule = bp.make("ghost-ma-prime", free_steps=6, clamped_steps=6, eta_v=5.0, clip_dvb=clip)
    model = rule.prepare(mlp((6, 5, 4)))
    c = rule._circuit(model)
    x, t = data(6, 4)
    h = rule.hparams(2)
    feedforward_state(c, x, h)
    steps = []

    def record(phase, i, c_, e):
        steps.append(c_.Vb[1].clone())
    prev = c.Vb[1].clone()
    literal_example(c, x, t, h, "MA'", 6, 6, record)
    deltas = [float((b - a).abs().max()) for a, b in zip([prev] + steps[:-1], steps)]
    assert max(deltas) <= clip * (1 + 1e-12)
    assert max(deltas) > 0.5 * clip  # the clip was active
    # without the clip the same steps move V^b further
    h = dataclasses.replace(h, clip_dvb=None)
    c2 = rule._circuit(mlp((6, 5, 4)))
    c2.Vb[1] = prev.clone()
    feedforward_state(c2, x, h)
    first = c2.Vb[1].clone()
    literal_step(c2, x, t, 0.0, h, ("Vf", "Vb", "W"))
    assert float((c2.Vb[1] - first).abs().max()) > clip


def test_evaluation_is_the_plain_feedforward_pass():
    rule = bp.make("ghost-ma", free_steps=2, clamped_steps=2)
    model = rule.prepare(mlp())
    x = torch.rand(3, 6, dtype=D)
    res = rule.train_step(model, x, torch.tensor([0, 1, 2]), bp.get_loss("mse_sum"))
    assert type(model) is bp.MLP
    assert res.output.shape == (3, 4)


# ----------------------------------------------------------------------------- bad input
def test_bad_input_is_one_clear_line():
    with pytest.raises(ConfigError, match="dt/tau"):
        bp.make("ghost-ma", dt=0.01, tau=0.01)
    with pytest.raises(ConfigError, match="feedback"):
        bp.make("ghost-mb", feedback="kp")
    with pytest.raises(IncompatibleModelError, match="Sigmoid"):
        bp.make("ghost-ma").prepare(bp.MLP([6, 5, 4], activation="relu", output_activation="sigmoid"))
    with pytest.raises(IncompatibleModelError, match="Sigmoid"):
        bp.make("ghost-ma").prepare(bp.MLP([6, 5, 4], activation="sigmoid"))
    with pytest.raises(IncompatibleModelError, match="multilayer perceptron"):
        bp.make("ghost-mb").prepare(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Sigmoid()))
    with pytest.raises(IncompatibleModelError, match="hidden layer"):
        bp.make("ghost-ma").prepare(bp.MLP([6, 4], output_activation="sigmoid"))
    with pytest.raises(ConfigError, match="ghost_units must be \\[4\\]"):
        bp.make("ghost-ma", ghost_units=5).prepare(mlp())
    with pytest.raises(ConfigError, match="eta_w has 2 values"):
        bp.make("ghost-mb").prepare(mlp((6, 5, 5, 4)))
    rule = bp.make("ghost-mb", eta_w=[1.0, 1.0])
    model = rule.prepare(mlp())
    with pytest.raises(ConfigError, match="batch_size must be 1"):
        rule.train_step(model, torch.rand(2, 6, dtype=D), torch.tensor([0, 1]), bp.get_loss("mse_sum"))
    with pytest.raises(ConfigError, match="no option"):
        bp.make("ghost-ma", clip_dvb=1.0)


# ----------------------------------------------------------------------------- trainer, resume
@pytest.mark.parametrize("name,opts", [
    ("ghost-ma", {"free_steps": 3, "clamped_steps": 3, "diagnostics_every": 2}),
    ("ghost-mb", {"free_steps": 3, "clamped_steps": 2, "eta_w": [1.0, 0.1]}),
])
def test_resume_is_bit_identical(tmp_path, name, opts):
    from bioplausible.data import DataBundle, DatasetInfo, Split

    g = torch.Generator().manual_seed(0)
    x = torch.rand(24, 6, generator=g)
    y = torch.randint(0, 4, (24,), generator=g)
    data = DataBundle(Split(x, y), Split(x[:8], y[:8]), None, DatasetInfo("toy", (6,), 4, "multiclass"))
    batch = 1 if name == "ghost-mb" else 4
    cfg = {"epochs": 4, "batch_size": batch, "loss": "mse_sum", "probe_every": 0}

    def run(out, epochs, resume=False):
        torch.manual_seed(0)
        model = bp.MLP([6, 5, 4], activation="sigmoid", output_activation="sigmoid", init="uniform:0.5")
        rule = bp.make(name, **opts)
        res = bp.fit(model, rule, data, config={**cfg, "epochs": epochs}, out=out, resume=resume)
        return res, rule
    full, rule_full = run(tmp_path / "full", 4)
    run(tmp_path / "part", 2)
    part, rule_part = run(tmp_path / "part", 4, resume=True)
    for (n, p), (_, q) in zip(full.model.state_dict().items(), part.model.state_dict().items()):
        assert torch.equal(p, q), n
    a, b = rule_full.owned.state_dict(), rule_part.owned.state_dict()
    assert a.keys() == b.keys() and len(a) > 0
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _toy_bundle():
    from bioplausible.data import DataBundle, DatasetInfo, Split

    g = torch.Generator().manual_seed(0)
    x = torch.rand(24, 6, generator=g)
    y = torch.randint(0, 4, (24,), generator=g)
    return DataBundle(Split(x, y), Split(x[:8], y[:8]), None, DatasetInfo("toy", (6,), 4, "multiclass"))


def test_an_optimizer_option_that_cannot_apply_is_refused():
    model = bp.MLP([6, 5, 4], activation="sigmoid", output_activation="sigmoid")
    with pytest.raises(ConfigError, match="momentum"):
        bp.fit(model, bp.make("ghost-ma", free_steps=2, clamped_steps=2), _toy_bundle(),
               config={"epochs": 1, "batch_size": 4,
                       "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9}})


def test_diagnostics_are_logged_and_plotted(tmp_path):
    from bioplausible.cli import main
    from bioplausible.rules.ghost.diagnostics import load_records

    torch.manual_seed(0)
    model = bp.MLP([6, 5, 4], activation="sigmoid", output_activation="sigmoid", init="uniform:0.5")
    rule = bp.make("ghost-ma", free_steps=4, clamped_steps=3, diagnostics_every=2)
    bp.fit(model, rule, _toy_bundle(), config={"epochs": 2, "batch_size": 4, "probe_every": 0}, out=tmp_path)
    last = [r for r in load_records(tmp_path) if "rule/vf_error/1" in r][-1]
    for key in ("vf_error/1", "vb_error/1", "update_rel_error/0", "update_angle/1",
                "cancel_residual_free/1", "cancel_residual_clamped/1"):
        assert key in rule.metrics(model) and f"rule/{key}" in last
    # the trace is the literal run's per-step residual, saved with the rule state
    state = torch.load(tmp_path / "rule_state.pt", weights_only=True)
    assert state["diag.trace_free"].shape == (4, 1) and float(state["diag.trace_free"].abs().max()) > 0
    assert main(["ghost-diagnostics", str(tmp_path)]) == 0
    assert (tmp_path / "ghost_diagnostics.png").stat().st_size > 1000


def test_update_gain_is_one_at_small_beta_and_shrinks_with_beta(tmp_path):
    """Corollary 1's step η_W·dt·β·n_clamped is reached as β → 0 (up to the error's settling time)
    and is an upper bound at large β, where the nudge pulls the output towards the target and the
    error the W update sees shrinks (spec §3.4)."""
    from bioplausible.rules.ghost.diagnostics import load_records

    gains = []
    for beta in (1e-3, 1.0, 20.0):
        torch.manual_seed(0)
        model = bp.MLP([6, 5, 4], activation="sigmoid", output_activation="sigmoid",
                       init="uniform:0.5").double()
        rule = bp.make("ghost-ma", free_steps=20, clamped_steps=400, dt=0.01, tau=0.1, beta=beta,
                       eta_w=1e-7 / beta, eta_v=0.0, v_init="converged", diagnostics_every=1)
        out = tmp_path / str(beta)
        bp.fit(model, rule, _toy_bundle(), config={"epochs": 1, "batch_size": 24, "probe_every": 0,
                                                   "dtype": "float64"}, out=out)
        m = [r for r in load_records(out) if "rule/update_gain/0" in r][-1]
        gains.append([m["rule/update_gain/0"], m["rule/update_gain/1"]])
        assert m["rule/update_gain_mean/0"] == pytest.approx(m["rule/update_gain/0"])  # one diagnosed batch
    small, mid, large = gains
    for l in (0, 1):
        assert 0.9 < small[l] <= 1.0 + 1e-6  # settling costs ~ τ/dt of 400 steps
        assert small[l] > mid[l] > large[l]
        assert large[l] < 0.5


def test_nudged_output_is_the_circuits_output_steady_state():
    """The clamped circuit's output settles where s_L = W ρ(s_{L-1}) − 2β(ρ(s_L) − t): the fixed point
    ``losses.nudged_output`` solves, for the displaced hidden rates of the same steady state."""
    from bioplausible.rules.ghost.losses import nudged_output

    W = net(SIZES, seed=5)
    x, t = data(6, 3)
    for beta in (0.1, 2.0, 10.0):
        c, _ = steady_errors(beta, W, x, t, steps=3000)
        drive = torch.sigmoid(c.s[2]) @ c.W[2].t()
        star = nudged_output(drive, t, beta)
        assert torch.allclose(star, c.s[3], atol=1e-9, rtol=0), beta
        assert float((star - drive).abs().max()) > 1e-3 * beta  # the nudge moved the output


def test_nudged_loss_gradient_is_the_nudged_output_error():
    """∂/∂s̃ of ``nudged_batchmean:β`` is 2ρ′(s*)(ρ(s*) − t)/N, s* from Newton's method written here;
    as β → 0 it becomes C's gradient 2ρ′(s̃)(ρ(s̃) − t)/N; its value is C at ρ(s̃)."""
    from bioplausible.core.losses import get_loss

    g = torch.Generator().manual_seed(3)
    pre = torch.randn(5, 4, generator=g, dtype=D) * 3
    t = nn.functional.one_hot(torch.randint(0, 4, (5,), generator=g), 4).to(D)
    for beta in (1e-6, 0.5, 10.0):
        s = pre.clone().requires_grad_(True)
        o = torch.sigmoid(s)
        loss = get_loss(f"nudged_batchmean:{beta}")(o, t)
        assert float(loss.detach()) == pytest.approx(float(((o.detach() - t) ** 2).sum() / 5), rel=1e-12)
        loss.backward()
        def f(z, beta=beta):
            return z - pre + 2 * beta * (torch.sigmoid(z) - t)
        star = pre.clone()
        for _ in range(200):  # damped Newton on f(s) = s − s̃ + 2β(ρ(s) − t), f′ = 1 + 2βρ′(s) > 0
            r = torch.sigmoid(star)
            step = f(star) / (1 + 2 * beta * r * (1 - r))
            for _ in range(60):  # halve the step until |f| does not grow
                bad = f(star - step).abs() > f(star).abs()
                if not bool(bad.any()):
                    break
                step = torch.where(bad, step / 2, step)
            star = star - step
        assert float(f(star).abs().max()) < 1e-12
        r = torch.sigmoid(star)
        want = 2 * r * (1 - r) * (r - t) / 5
        assert torch.allclose(s.grad, want, atol=1e-12, rtol=1e-9), beta
    r0 = torch.sigmoid(pre)
    small = pre.clone().requires_grad_(True)
    get_loss("nudged_batchmean:1e-9")(torch.sigmoid(small), t).backward()
    assert torch.allclose(small.grad, 2 * r0 * (1 - r0) * (r0 - t) / 5, rtol=1e-6, atol=1e-12)
    with pytest.raises(ConfigError, match="nudge beta"):
        get_loss("nudged_sum:-1")
