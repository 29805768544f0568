"""Ghost units: the fast paths (torch, numba) give the literal Algorithms 1-2's numbers, step by step."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import bioplausible as bp
from bioplausible.rules.ghost import mb_kernel
from bioplausible.rules.ghost.circuit import (
    Circuit,
    HParams,
    feedforward_state,
    literal_example,
    mb_weight_update,
)
from bioplausible.rules.ghost.fast import FastCircuit, euler_runs, run_buffers

D = torch.float64


def circuit(sizes, ks, seed=0, bias=False, transpose=True, scale=0.5):
    g = torch.Generator().manual_seed(seed)

    def u(*shape):
        return (torch.rand(*shape, generator=g, dtype=D) * 2 - 1) * scale
    L = len(sizes) - 1
    W = [u(sizes[l + 1], sizes[l]) for l in range(L)]
    bias_ = [u(sizes[l + 1]) if bias else None for l in range(L)]
    Wb = [None] + [W[h].t().contiguous() if transpose else u(sizes[h], sizes[h + 1]) for h in range(1, L)]
    Vf = [None] + [u(ks[h - 1], sizes[h]) for h in range(1, L)]
    Vb = [None] + [u(sizes[h], ks[h - 1]) for h in range(1, L)]
    return Circuit(W, bias_, Wb, Vf, Vb)


def hparams(L, transpose=True, **kw):
    base = {"dt": 0.01, "tau": 0.05, "beta": 0.7, "eta_w": [0.3 + 0.1 * l for l in range(L)],
            "eta_v": [0.0] + [0.8] * (L - 1), "transpose": transpose}
    base.update(kw)
    return HParams(**base)


def batch(n_in, n_out, B, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(B, n_in, generator=g, dtype=D)
    t = nn.functional.one_hot(torch.randint(0, n_out, (B,), generator=g), n_out).to(D)
    return x, t


def assert_same(a: Circuit, b: Circuit, tol=1e-10):
    for name in ("W", "bias", "Wb", "Vf", "Vb", "s", "g"):
        for i, (u, v) in enumerate(zip(getattr(a, name), getattr(b, name))):
            if u is None:
                assert v is None
                continue
            err = float((u - v).abs().max())
            assert err <= tol * max(1.0, float(u.abs().max())), f"{name}[{i}] differs by {err}"


@pytest.mark.parametrize("model", ["MA", "MA'", "MB"])
@pytest.mark.parametrize("transpose", [True, False])
@pytest.mark.parametrize("sizes", [[7, 6, 3], [7, 6, 5, 3]])
@pytest.mark.parametrize("bias", [False, True])
def test_fast_torch_equals_literal(model, transpose, sizes, bias):
    ks = sizes[2:] if model != "MB" else [2] * (len(sizes) - 2)
    extra = {"clip_dvb": 1e-4} if model == "MA'" else {}
    hp = hparams(len(sizes) - 1, transpose, **extra)
    B = 1 if model == "MB" else 4
    base = circuit(sizes, ks, bias=bias, transpose=transpose)
    x, t = batch(sizes[0], sizes[-1], B)
    for free, clamped in [(1, 0), (0, 1), (3, 2), (6, 5)]:
        lit, fast = base.clone(), base.clone()
        feedforward_state(lit, x, hp)
        feedforward_state(fast, x, hp)
        for rep in range(2):  # two consecutive batches: the state and weights carry over
            literal_example(lit, x, t, hp, model, free, clamped)
            FastCircuit(fast, hp).run(x, t, model, free, clamped)
            assert_same(lit, fast)
    # the comparison is not vacuous: something moved
    assert float((lit.W[0] - base.W[0]).abs().max()) > 1e-6 or model != "MB"


def test_fast_torch_equals_literal_with_weight_clip_and_sum():
    sizes, ks = [7, 6, 5, 3], [5, 3]
    hp = hparams(3, True, weight_clip=0.45, reduction="sum", input_rate="rho", clip_dvb=0.05,
                 clip_on="derivative")
    base = circuit(sizes, ks, bias=True)
    x, t = batch(7, 3, 4)
    lit, fast = base.clone(), base.clone()
    feedforward_state(lit, x, hp)
    feedforward_state(fast, x, hp)
    literal_example(lit, x, t, hp, "MA'", 4, 4)
    FastCircuit(fast, hp).run(x, t, "MA'", 4, 4)
    assert_same(lit, fast)
    assert float(lit.W[0].abs().max()) <= 0.45 + 1e-15


@pytest.mark.parametrize("model", ["MA", "MA'"])
@pytest.mark.parametrize("transpose", [True, False])
def test_fast_torch_equals_literal_with_mixed_reductions(model, transpose):
    """W updates averaged, V updates summed over the batch (``v_reduction``), and the reverse."""
    sizes, ks = [7, 6, 5, 3], [5, 3]
    for red, v_red in (("mean", "sum"), ("sum", "mean")):
        extra = {"clip_dvb": 0.05} if model == "MA'" else {}
        hp = hparams(3, transpose, reduction=red, v_reduction=v_red, **extra)
        base = circuit(sizes, ks, bias=True, transpose=transpose)
        x, t = batch(7, 3, 4)
        lit, fast = base.clone(), base.clone()
        feedforward_state(lit, x, hp)
        feedforward_state(fast, x, hp)
        for _ in range(2):
            literal_example(lit, x, t, hp, model, 4, 3)
            FastCircuit(fast, hp).run(x, t, model, 4, 3)
            assert_same(lit, fast)


def test_v_reduction_sum_over_copies_is_a_larger_v_rate():
    """B copies of one example: summed V updates are B single-example V updates, averaged W updates one."""
    sizes, ks = [7, 6, 5, 3], [5, 3]
    B = 3
    x1, t1 = batch(7, 3, 1)
    xb, tb = x1.repeat(B, 1), t1.repeat(B, 1)
    hp_b = hparams(3, True, reduction="mean", v_reduction="sum")
    hp_1 = hparams(3, True, eta_v=[0.0] + [0.8 * B] * 2)
    one, many = circuit(sizes, ks), circuit(sizes, ks)
    feedforward_state(one, x1, hp_1)
    feedforward_state(many, xb, hp_b)
    literal_example(one, x1, t1, hp_1, "MA", 5, 4)
    literal_example(many, xb, tb, hp_b, "MA", 5, 4)
    for name in ("W", "Vf", "Vb", "Wb"):
        for u, v in zip(getattr(one, name), getattr(many, name)):
            if u is not None:
                assert torch.allclose(u, v, atol=1e-12, rtol=0), name
    # and the V rate matters: with the mean the V's differ from the B-fold rate
    mean = circuit(sizes, ks)
    hp_m = hparams(3, True, reduction="mean")
    feedforward_state(mean, xb, hp_m)
    literal_example(mean, xb, tb, hp_m, "MA", 5, 4)
    assert float((mean.Vf[1] - one.Vf[1]).abs().max()) > 1e-6



@pytest.mark.parametrize("model", ["MA", "MA'", "MB"])
@pytest.mark.parametrize("transpose", [True, False])
@pytest.mark.parametrize("extra", [{}, {"weight_clip": 0.45, "clip_dvb": 0.05, "clip_on": "derivative",
                                        "reduction": "sum", "input_rate": "rho"}])
def test_the_loop_over_a_stack_of_runs_equals_literal_run_by_run(model, transpose, extra):
    """``euler_runs`` on three runs at once (own weights, data and rates ``eta_w``, ``eta_v``)
    gives each run's literal Algorithm 1-2 numbers: the run dimension is the loop's own, not
    only the stacked engine's (whose tests compare against this loop with one run)."""
    sizes = [7, 6, 5, 3]
    ks = sizes[2:] if model != "MB" else [2, 2]
    B = 1 if model == "MB" else 4
    if model == "MA'" and not extra:
        extra = {"clip_dvb": 1e-4}
    rates = [([0.3, 0.4, 0.5], [0.0, 0.8, 0.6]), ([0.6, 0.2, 0.4], [0.0, 0.3, 1.2]), ([0.1, 0.5, 0.3], [0.0, 1.0, 0.0])]
    hps = [hparams(3, transpose, eta_w=ew, eta_v=ev, **extra) for ew, ev in rates]
    lits, data = [], []
    for k, hp in enumerate(hps):
        c = circuit(sizes, ks, seed=k, bias=True, transpose=transpose)
        x, t = batch(7, 3, B, seed=10 + k)
        feedforward_state(c, x, hp)
        lits.append(c)
        data.append((x, t))
    stack = {name: [None if lits[0].__dict__[name][i] is None else
                    torch.stack([c.__dict__[name][i] for c in lits])
                    for i in range(len(lits[0].__dict__[name]))]
             for name in ("W", "bias", "Wb", "Vf", "Vb", "s", "g")}
    x = torch.stack([d[0] for d in data])
    t = torch.stack([d[1] for d in data])
    eta_w = [torch.tensor([hp.eta_w[l] for hp in hps], dtype=D).view(3, 1, 1) for l in range(3)]
    eta_v = [None] + [torch.tensor([hp.eta_v[h] for hp in hps], dtype=D).view(3, 1, 1) for h in (1, 2)]
    n = [7, 6, 5, 3]
    bufs = run_buffers(3, B, n, [0] + ks, x)
    for _ in range(2):
        for c, (xk, tk), hp in zip(lits, data, hps):
            literal_example(c, xk, tk, hp, model, 5, 4)
        euler_runs(*(stack[k] for k in ("W", "bias", "Wb", "Vf", "Vb", "s", "g")), x, t, hps[0], model, 5, 4,
                   eta_w, eta_v, bufs)
        for k in range(3):
            run = Circuit(*([None if v is None else v[k] for v in stack[name]]
                            for name in ("W", "bias", "Wb", "Vf", "Vb", "s", "g")))
            if model == "MB":
                mb_weight_update(run, data[k][0], data[k][1], hps[k])
            assert_same(lits[k], run)


@pytest.mark.skipif(not mb_kernel.AVAILABLE, reason="numba not installed")
@pytest.mark.parametrize("transpose", [True, False])
@pytest.mark.parametrize("sizes", [[7, 6, 3], [7, 6, 5, 3]])
@pytest.mark.parametrize("bias", [False, True])
def test_numba_mb_equals_literal(transpose, sizes, bias):
    ks = [2] * (len(sizes) - 2)
    hp = hparams(len(sizes) - 1, transpose, weight_clip=None if not bias else 0.6)
    base = circuit(sizes, ks, bias=bias, transpose=transpose)
    lit, fast = base.clone(), base.clone()
    x, t = batch(sizes[0], sizes[-1], 1)
    feedforward_state(lit, x, hp)
    feedforward_state(fast, x, hp)
    kern = mb_kernel.MBKernel(fast, hp)
    for free, clamped in [(1, 0), (0, 1), (4, 3), (7, 2)]:
        x, t = batch(sizes[0], sizes[-1], 1, seed=free + 10 * clamped)
        literal_example(lit, x, t, hp, "MB", free, clamped)
        kern.run(x, t, free, clamped)
        assert_same(lit, fast)
    assert float((lit.W[0] - base.W[0]).abs().max()) > 1e-6


def mlp(sizes, seed=0):
    torch.manual_seed(seed)
    return bp.MLP(sizes, activation="sigmoid", output_activation="sigmoid", init="uniform:0.5").double()


@pytest.mark.parametrize("name,opts", [
    ("ghost-ma", {"free_steps": 5, "clamped_steps": 4, "dt": 0.01, "tau": 0.05, "eta_w": 0.5}),
    ("ghost-ma-prime", {"free_steps": 5, "clamped_steps": 4, "dt": 0.01, "tau": 0.05}),
    ("ghost-mb", {"free_steps": 5, "clamped_steps": 4, "eta_w": [2.0, 1.0, 0.5], "ghost_units": [3, 2]}),
    ("ghost-mb", {"free_steps": 5, "clamped_steps": 4, "eta_w": [2.0, 1.0, 0.5], "ghost_units": 2,
                  "kernel": "torch"}),
])
@pytest.mark.parametrize("feedback", ["transpose", "random"])
def test_rule_fast_equals_literal_over_steps(name, opts, feedback):
    sizes = [8, 6, 5, 4]
    B = 1 if name == "ghost-mb" else 3
    g = torch.Generator().manual_seed(3)
    xs = torch.rand(4, B, 8, generator=g, dtype=D)
    ys = torch.randint(0, 4, (4, B), generator=g)
    if name == "ghost-mb" and isinstance(opts["ghost_units"], int):
        opts = {**opts, "ghost_units": [2, 2]}
    models, rules = [], []
    for solver in ("literal", "fast"):
        rule = bp.make(name, feedback=feedback, solver=solver, **opts)
        rule.set_seed(0)
        m = rule.prepare(mlp(sizes))
        models.append(m)
        rules.append(rule)
    loss = bp.get_loss("mse_sum")
    for x, y in zip(xs, ys):
        for rule, m in zip(rules, models):
            rule.train_step(m, x, y, loss)
        for p, q in zip(models[0].parameters(), models[1].parameters()):
            torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)
        for key in ("Vf.1", "Vb.1", "Wb.1", "Vf.2", "Vb.2", "Wb.2"):
            torch.testing.assert_close(rules[0]._get(key), rules[1]._get(key), rtol=1e-10, atol=1e-12)
    assert any(float((p - q).detach().abs().max()) > 1e-6 for p, q in zip(models[0].parameters(),
                                                                   mlp(sizes).parameters()))


@pytest.mark.skipif(not mb_kernel.AVAILABLE, reason="numba not installed")
def test_numba_step_reports_the_pre_update_feedforward_output():
    rule = bp.make("ghost-mb", free_steps=3, clamped_steps=2, ghost_units=2, eta_w=[5.0, 5.0, 5.0])
    model = rule.prepare(mlp([8, 6, 5, 4]))
    x = torch.rand(1, 8, dtype=D)
    expected = model(x).detach().clone()
    res = rule.train_step(model, x, torch.tensor([2]), bp.get_loss("mse_sum"))
    assert rule._kernel is not None
    torch.testing.assert_close(res.output, expected, rtol=1e-12, atol=1e-14)
    assert not torch.allclose(model(x), expected)
