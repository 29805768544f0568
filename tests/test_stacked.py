"""Stacked runs: a stack of R runs computes what the R runs compute one after another.

Oracle: the unstacked trainer itself. Each run is built by ``jobs._build`` (seeded init, the
rule's ``prepare``, its optimizer) twice; one copy trains with ``Trainer.train_epoch`` (the
library's ordinary step), the other inside a stack; after several steps over two epochs (with a
short last batch) every weight, bias and rule tensor must agree to 1e-10 relative in float64.
"""

from __future__ import annotations

import pytest
import torch
from conftest import make_bundle

from bioplausible.engine.config import TrainConfig
from bioplausible.engine.stacked import epoch_orders, gather, make_stack, stackable_rules
from bioplausible.experiments.jobs import Job, _build

SEEDS = (0, 1, 2)
RULES = {
    "bp": {}, "fa": {}, "usf": {}, "brsf": {}, "frsf": {}, "usf-unit": {"scale": "unit"},
    "kp": {"decay": 0.01}, "kp-backward": {"decay": 0.01, "decay_in": "backward"},
    "kp-unused": {"decay": 0.01, "learn_unused": True}, "matched": {},
    "wm": {"mirror_batch": 8, "mirror_every": 2}, "dfa": {},
    "np": {"c_h": 0.01}, "np-pre": {"c_h": 0.01, "noise_at": "pre"}, "np-dfa": {"c_h": 0.01},
    "np-warmup": {"c_h": 0.01, "warmup": 3}, "sg": {}, "sg-dfa": {},
    "bfa": {}, "bfa-sigmoid": {"sigma_x": "sigmoid", "gen_bias": False, "recon_reduction": "sum"},
    "bdfa": {}, "bdfa-paper": {"update": "paper", "target": "paper"}, "bdfa-code": {"target": "code"},
    "ar": {"relax_steps": 20}, "ar-loop": {"solver": "loop", "relax_steps": 5, "sweep": "jacobi"},
    "ar-learned": {"backward_weights": "learned", "relax_steps": 10},
    "ar-fa-noderiv": {"variant": "fa_noderiv", "relax_steps": 10, "solver": "fixed_point"},
    "bp-noise": {"c_h": 0.05}, "fa-noise": {"c_h": 0.05}, "matched-noise": {"c_h": 0.05},
    "dfa-noise": {"c_h": 0.05},
    "sal": {}, "sal-paper": {"downstream": "identity", "qr_init": "random", "qr_term": "potential",
                             "read": "before", "top": "fixed", "b_init": "normal", "sign": 1},
    "sal-wide": {"width": 2, "downstream": "tanh", "qr_init": "tied", "decay_scaling": "absolute",
                 "rates": {"B": 0.5, "Q": 2.0}},
    "sal-frozen": {"plastic": ["W", "B"], "downstream": "relu", "output_error": "cross_entropy"},
}


def _config(rule: str, options: dict, seed: int, lr: float, loss: str = "auto", acts: str = "tanh",
            groups: dict | None = None, weight_decay: float = 0.0) -> TrainConfig:
    name = rule if rule in ("np-dfa", "sg-dfa") or rule.endswith("-noise") else rule.split("-")[0]
    opt = {"name": "sgd", "lr": lr, "groups": groups or {}}
    if weight_decay:
        opt["weight_decay"] = weight_decay
    return TrainConfig.from_dict({
        "dataset": {"name": "blobs"}, "model": {"spec": "mlp:20-16-12-4", "activation": acts},
        "rule": {"name": name, **options}, "optimizer": opt, "epochs": 2, "batch_size": 16,
        "seed": seed, "dtype": "float64", "progress": False, "loss": loss})


def _trainers(rule, options, lrs, **kw):
    data = make_bundle(n_train=100, n_test=20, dim=20, classes=4, dtype=torch.float64)
    out = []
    for seed, lr in zip(SEEDS, lrs):
        cfg = _config(rule, options, seed, lr, **kw)
        out.append(_build(Job(cfg.to_dict(), "unused", rule, seed), data, cfg, out=None, progress=False))
    return out


def _train_unstacked(trainers, epochs: int = 2) -> None:
    for t in trainers:
        for _ in range(epochs):
            t.train_epoch()
            t.epoch += 1


def _train_stacked(trainers, epochs: int = 2, seeds=SEEDS) -> None:
    stack = make_stack(trainers)
    split = trainers[0].train_split
    n, bs = len(split), trainers[0].config["batch_size"]
    for epoch in range(epochs):
        order = epoch_orders(seeds, epoch, n)
        for lo in range(0, n, bs):
            xb, yb = gather(split.x, split.y, order[:, lo:lo + bs])
            stack.step(xb, yb)
    stack.unstack()


def _max_rel(a_trainers, b_trainers) -> float:
    worst = 0.0
    for a, b in zip(a_trainers, b_trainers):
        sa, sb = a.model.state_dict(), b.model.state_dict()
        sa.update({f"owned.{k}": v for k, v in a.rule.owned.state_dict().items()})
        sb.update({f"owned.{k}": v for k, v in b.rule.owned.state_dict().items()})
        assert sa.keys() == sb.keys()
        for k in sa:
            if not sa[k].is_floating_point():
                continue
            scale = float(sa[k].abs().max()) or 1.0
            worst = max(worst, float((sa[k] - sb[k]).abs().max()) / scale)
    return worst


def _moved(trainers_before, trainers_after) -> float:
    return _max_rel(trainers_before, trainers_after)


@pytest.mark.parametrize("rule", sorted(RULES))
def test_a_stack_equals_its_runs_one_after_another(rule):
    lrs = (0.1, 0.05, 0.1)  # per-run learning rates
    a, b, init = (_trainers(rule, RULES[rule], lrs) for _ in range(3))
    _train_unstacked(a)
    _train_stacked(b)
    assert _moved(init, a) > 1e-3  # the runs did learn: the comparison is not between two inits
    assert _max_rel(a, b) < 1e-10


@pytest.mark.parametrize("loss", ["mse_half_sum", "mse", "mse_batchmean", "bce", "bce_sum", "nudged_sum:0.5"])
@pytest.mark.parametrize("rule", ["bp", "np"])
def test_losses_stack(rule, loss):
    lrs = (0.005, 0.002, 0.005) if loss.endswith("sum") else (0.05, 0.02, 0.05)  # sums grow with the batch
    a, b = (_trainers(rule, {}, lrs, loss=loss) for _ in range(2))
    _train_unstacked(a)
    _train_stacked(b)
    assert _max_rel(a, b) < 1e-10


@pytest.mark.parametrize("acts", ["sigmoid", "relu"])
def test_activations_groups_and_decay_stack(acts):
    groups = {"forward.1": {"lr": 0.02}}
    a, b = (_trainers("kp", {"decay": 0.01}, (0.1, 0.05, 0.1), acts=acts, groups=groups, weight_decay=1e-3)
            for _ in range(2))
    _train_unstacked(a)
    _train_stacked(b)
    assert _max_rel(a, b) < 1e-10


@pytest.mark.parametrize("rule", ["fa", "brsf", "np"])
def test_a_run_with_the_wrong_data_order_is_caught(rule):
    """The comparison can fail: run 1 of the stack shuffles with run 2's seed."""
    a, b = (_trainers(rule, RULES[rule], (0.1, 0.1, 0.1)) for _ in range(2))
    _train_unstacked(a)
    _train_stacked(b, seeds=(0, 2, 2))
    assert _max_rel(a, b) > 1e-4


def test_a_run_with_another_generator_is_caught():
    """The comparison can fail: node perturbation's noise of run 1 drawn from run 0's generator."""
    a, b = (_trainers("np", {}, (0.1, 0.1, 0.1)) for _ in range(2))
    b[1].rule._generators = b[0].rule._generators = {}
    b[1].rule.seed = b[0].rule.seed
    _train_unstacked(a)
    _train_stacked(b)
    assert _max_rel(a, b) > 1e-6


def test_every_promised_rule_has_a_stacked_step():
    # the ghost-unit rules need sigmoid MLPs: their equality tests are in test_stacked_ghost.py
    for rule in ("bp", "fa", "usf", "brsf", "frsf", "kp", "wm", "dfa", "np", "np-dfa", "ghost-ma", "ghost-ma-prime",
                 "ghost-mb"):
        assert rule in stackable_rules()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shapes", [[(32, 50), (32, 20)], [(4, 16), (4, 12), (4, 3)], [(5, 12), (5, 16)]])
def test_one_noise_draw_equals_separate_draws(dtype, shapes):
    """The stacked node perturbation draws a run's ξ of every layer at once where it can: the
    numbers must be those of ``torch.randn`` per layer from the same generator."""
    from bioplausible.engine.stacked.nodepert import draw_noise

    gens = [torch.Generator().manual_seed(s) for s in (3, 4)]
    got = draw_noise(gens, shapes, "cpu", dtype)
    for r, seed in enumerate((3, 4)):
        g = torch.Generator().manual_seed(seed)
        for xi, shape in zip(got, shapes):
            assert torch.equal(xi[r], torch.randn(shape, generator=g, dtype=dtype))


@pytest.mark.parametrize("batch", [5, 7])
def test_np_with_odd_batches_and_widths_stacks(batch):
    data = make_bundle(n_train=60, n_test=10, dim=20, classes=4, dtype=torch.float64)

    def build():
        out = []
        for seed in SEEDS:
            cfg = TrainConfig.from_dict({
                "dataset": {"name": "blobs"}, "model": {"spec": "mlp:20-12-9-4", "activation": "sigmoid"},
                "rule": {"name": "np"}, "optimizer": {"name": "sgd", "lr": 0.1, "groups": {"feedback": {"lr": 0.05}}},
                "epochs": 2, "batch_size": batch, "seed": seed, "dtype": "float64", "progress": False})
            out.append(_build(Job(cfg.to_dict(), "unused", "np", seed), data, cfg, out=None, progress=False))
        return out

    a, b = build(), build()
    _train_unstacked(a)
    _train_stacked(b)
    assert _max_rel(a, b) < 1e-10


def _np_trainers(rule: str, c_hs, lrs=(0.1, 0.05, 0.1), **options):
    data = make_bundle(n_train=100, n_test=20, dim=20, classes=4, dtype=torch.float64)
    out = []
    for seed, lr, c_h in zip(SEEDS, lrs, c_hs):
        cfg = _config(rule, {"c_h": c_h, **options}, seed, lr)
        out.append(_build(Job(cfg.to_dict(), "unused", rule, seed), data, cfg, out=None, progress=False))
    return out


@pytest.mark.parametrize("rule,options", [("np", {}), ("np", {"noise_at": "pre"}), ("np-dfa", {}),
                                          ("bp-noise", {}), ("dfa-noise", {})])
def test_node_perturbation_runs_with_their_own_noise_std_stack(rule, options):
    """Runs that differ by c_h (Fig. 2's noise sweep, the noise controls' levels) form one stack,
    each run with its own c_h."""
    c_hs = (0.01, 0.05, 0.002)
    a, b, init = (_np_trainers(rule, c_hs, **options) for _ in range(3))
    _train_unstacked(a)
    _train_stacked(b)
    assert _moved(init, a) > 1e-3
    assert _max_rel(a, b) < 1e-10
    # the same runs all given run 0's c_h end elsewhere: the per-run value is what is used
    c = _np_trainers(rule, (c_hs[0],) * 3, **options)
    _train_stacked(c)
    assert _max_rel(a[1:], c[1:]) > 1e-6


def test_runs_differing_in_another_option_do_not_stack():
    from bioplausible.experiments.runs import plan_groups

    def job(seed, **rule):
        cfg = _config(rule.pop("name"), rule, seed, 0.1)
        return Job(cfg.to_dict(), "unused", "x", seed)

    jobs = [job(0, name="np", c_h=0.01), job(1, name="np", c_h=0.05), job(2, name="np", c_h=0.01, noise_at="pre"),
            job(0, name="kp", decay=0.01), job(1, name="kp", decay=0.02)]
    assert plan_groups(jobs) == [[0, 1], [2], [3], [4]]
    mixed = [_np_trainers("np", (0.01,) * 3)[0], _np_trainers("np", (0.01,) * 3, noise_at="pre")[1]]
    with pytest.raises(ValueError, match=r"differ in \['noise_at'\].*c_h"):
        make_stack(mixed)


@pytest.mark.parametrize("rule", ["np", "bp-noise"])
def test_a_run_leaving_the_stack_takes_its_noise_std_with_it(rule):
    """After a run leaves (it diverged), the others keep their own c_h and train as they do alone."""
    c_hs = (0.01, 0.05, 0.002)
    a, b = _np_trainers(rule, c_hs), _np_trainers(rule, c_hs)
    stack = make_stack(b)
    stack.select([0, 2])
    assert stack.c_h.flatten().tolist() == [0.01, 0.002]
    split = b[0].train_split
    order = epoch_orders([0, 2], 0, len(split))
    for lo in range(0, len(split), 16):
        stack.step(*gather(split.x, split.y, order[:, lo:lo + 16]))
    stack.unstack()
    for t in (a[0], a[2]):
        t.train_epoch()
    assert _max_rel([a[0], a[2]], [b[0], b[2]]) < 1e-10


@pytest.mark.parametrize("batch,width", [(32, 50), (32, 64), (32, 65), (4, 50)])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_either_layout_is_h_wt_plus_b(batch, width, bias):
    """The stacked layer product, feature-major for narrow layers (width ≤ 2·batch) and row-major
    otherwise, is ``h Wᵀ + b`` run by run."""
    from bioplausible.engine.stacked.mlp import linear

    gen = torch.Generator().manual_seed(0)
    R, n_in = 3, 30
    h = torch.randn(R, batch, n_in, generator=gen, dtype=torch.float64)
    w = torch.randn(R, width, n_in, generator=gen, dtype=torch.float64)
    b = torch.randn(R, width, generator=gen, dtype=torch.float64) if bias else None
    out = linear(h, w, b)
    for r in range(R):
        want = h[r] @ w[r].T + (0.0 if b is None else b[r])
        torch.testing.assert_close(out[r], want, rtol=1e-12, atol=1e-12)
    # a second layer reads the first's output, whichever layout it came in
    w2 = torch.randn(R, 7, width, generator=gen, dtype=torch.float64)
    out2 = linear(out, w2, None)
    for r in range(R):
        torch.testing.assert_close(out2[r], out[r] @ w2[r].T, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("out_fm", [False, True])
@pytest.mark.parametrize("g_fm", [False, True])
@pytest.mark.parametrize("act", ["relu", "tanh", "sigmoid"])
def test_the_error_takes_the_layout_of_the_activation_it_meets(act, g_fm, out_fm):
    """``act_backward`` is ``g ⊙ f′`` whatever the two operands' layouts; ``bmm_as`` is the batched
    product in the layout of its ``like`` (so that the error meets its activation's output in that
    output's layout: one elementwise loop over matching strides)."""
    from torch import nn

    from bioplausible.engine.stacked.mlp import StackedMLP, bmm_as, feature_major

    def laid(t, fm):  # the same values, batch-major or feature-major
        return t.transpose(1, 2).contiguous().transpose(1, 2) if fm else t.contiguous()

    gen = torch.Generator().manual_seed(1)
    R, B, n = 3, 6, 5
    kind = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}[act]
    models = [nn.Sequential(nn.Linear(4, n), kind(), nn.Linear(n, 2)).double() for _ in range(R)]
    net = StackedMLP(models)
    a = torch.randn(R, B, n, generator=gen, dtype=torch.float64)
    out = laid(getattr(torch, act)(a), out_fm)
    g = laid(torch.randn(R, B, n, generator=gen, dtype=torch.float64), g_fm)
    assert feature_major(out) == out_fm and feature_major(g) == g_fm
    got = net.act_backward(0, g, out)
    a_req = a.clone().requires_grad_(True)
    (want,) = torch.autograd.grad(getattr(torch, act)(a_req), a_req, g.contiguous())
    torch.testing.assert_close(got, want, rtol=1e-14, atol=1e-14)
    m = torch.randn(R, n, 7, generator=gen, dtype=torch.float64)
    for like_fm in (False, True):
        like = laid(torch.zeros(R, B, 7, dtype=torch.float64), like_fm)
        prod = bmm_as(g, m, like)
        torch.testing.assert_close(prod, torch.bmm(g.contiguous(), m), rtol=1e-13, atol=1e-13)
        assert feature_major(prod) == like_fm
