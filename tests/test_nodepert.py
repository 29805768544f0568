"""Node-perturbation-learned feedback (np, np-dfa, sg, sg-dfa): oracles from the mathematics.

* the rule's step equals a literal per-example implementation of spec §5 (float64): clean
  pass, noisy pass with the same ξ, λ̂ = (ℓ̃ − ℓ)ξ/c_h, synthetic errors, W gradients and
  the eq-3 B step (FA and DFA forms, summed and mean losses);
* η_B = 0 is FA / DFA exactly;
* the estimator's mean over many draws is ∂ℓ/∂h within its sampling error; its bias grows with c_h;
* Theorem 1, Theorem 2, Corollary 1 (B → W, every B → W in a deep linear net, D → W_L⋯W_l);
* the ridge solution equals closed-form least squares over the samples seen.
"""

from __future__ import annotations

import pytest
import torch
from conftest import make_bundle

import bioplausible as bp
from bioplausible.errors import ConfigError, IncompatibleModelError, UserError
from bioplausible.core.losses import get_loss
from bioplausible.rules.nodepert import (
    RidgeState,
    loss_difference,
    np_estimate,
    per_example_losses,
    regression_grad,
)


def _mlp(sizes, act="sigmoid", seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    return bp.build_model("mlp:" + "-".join(map(str, sizes)), activation=act).to(dtype)


def _prepared(name, model, x, fb_lr=0.05, lr=0.1, **cfg):
    rule = bp.make(name, **cfg)
    model = rule.prepare(model, example=x[:2])
    groups = {"feedback": {"lr": fb_lr}}
    if lr == 0:  # frozen forward weights: a group rate of 0 (the optimizer's own rate must be > 0)
        groups["forward"] = {"lr": 0.0}
    opt = rule.build_optimizer(model, {"name": "sgd", "lr": lr or 1.0, "groups": groups})
    return rule, model, opt


def _linears(model):
    from bioplausible.nn.convert import feedback_layers

    return [layer for _, layer in feedback_layers(model)]


# ------------------------------------------------------------------ literal oracle
def _literal(Ws, bs, Fs, x, y, xis, c, loss, act, form):
    """Per-example loops of spec §5.1-5.2; returns (W grads, b grads, B gradients of eq 3)."""
    L = len(Ws)
    dact = {"sigmoid": lambda a: torch.sigmoid(a) * (1 - torch.sigmoid(a)), "tanh": lambda a: 1 - torch.tanh(a) ** 2}
    f = {"sigmoid": torch.sigmoid, "tanh": torch.tanh}[act]
    N = x.shape[0]
    onehot = torch.nn.functional.one_hot(y, Ws[-1].shape[0]).double()
    per = {"mse_half_sum": (lambda o, t: 0.5 * ((o - t) ** 2).sum(), lambda o, t: o - t, 1.0),
           "mse": (lambda o, t: ((o - t) ** 2).mean(), lambda o, t: 2 * (o - t) / o.numel(), 1.0 / N)}[loss]
    ell, dell, s = per
    gW = [torch.zeros_like(W) for W in Ws]
    gb = [torch.zeros_like(b) for b in bs]
    gF = [torch.zeros_like(F) for F in Fs]
    for n in range(N):
        hs, As = [x[n]], []
        for i in range(L):
            a = Ws[i] @ hs[-1] + bs[i]
            As.append(a)
            hs.append(f(a) if i < L - 1 else a)
        out, t = hs[-1], onehot[n]
        h = hs[0]
        for i in range(L):  # noisy pass: c ξ on every hidden activity (input of layers 1..L-1)
            a = Ws[i] @ h + bs[i]
            h = f(a) + c * xis[i][n] if i < L - 1 else a
        lam = [(ell(h, t) - ell(out, t)) * xis[i][n] / c for i in range(L - 1)]
        e = dell(out, t)  # per-example output error ∂ℓ_n/∂o (identity output)
        delta = e
        for i in reversed(range(L)):
            gW[i] += s * torch.outer(delta, hs[i])
            gb[i] += s * delta
            if i == 0:
                break
            sig = (e @ Fs[i - 1]) if form == "dfa" else (delta @ Fs[i - 1])
            src = e if form == "dfa" else delta
            gF[i - 1] += torch.outer(src, sig - lam[i - 1])
            delta = sig * dact[act](As[i - 1])
    return gW, gb, gF


@pytest.mark.parametrize("form", ["fa", "dfa"])
@pytest.mark.parametrize("loss", ["mse_half_sum", "mse"])
def test_step_matches_literal_oracle(form, loss):
    torch.manual_seed(1)
    x, y = torch.randn(7, 6, dtype=torch.float64), torch.randint(0, 3, (7,))
    name = "np" if form == "fa" else "np-dfa"
    rule, model, _ = _prepared(name, _mlp([6, 5, 4, 3]), x, fb_lr=0.3, c_h=0.05)
    layers = _linears(model)
    fb = [(lay.feedback if form == "fa" else lay.direct_feedback) for lay in layers[1:]]
    F0 = [f.detach().clone() for f in fb]
    rule.train_step(model, x, y, get_loss(loss))
    gW, gb, gF = _literal([lay.weight.detach() for lay in layers], [lay.bias.detach() for lay in layers],
                          F0, x, y, rule.last_noise, 0.05, loss, "sigmoid", form)
    for lay, g, gbias in zip(layers, gW, gb):
        torch.testing.assert_close(lay.weight.grad, g, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(lay.bias.grad, gbias, rtol=1e-10, atol=1e-12)
    for f, f0, g in zip(fb, F0, gF):
        torch.testing.assert_close(f.detach(), f0 - 0.3 * g, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(("name", "base"), [("np", "fa"), ("np-dfa", "dfa")])
def test_zero_feedback_rate_is_fa_or_dfa_exactly(name, base):
    torch.manual_seed(2)
    x, y = torch.randn(16, 8, dtype=torch.float64), torch.randint(0, 3, (16,))
    rule, model, opt = _prepared(name, _mlp([8, 6, 5, 3]), x, fb_lr=0.0, c_h=0.1)
    ref = bp.make(base)
    ref_model = ref.prepare(_mlp([8, 6, 5, 3]), example=x[:2])
    ref_opt = ref.build_optimizer(ref_model, {"name": "sgd", "lr": 0.1})
    loss = get_loss("mse_half_sum")
    for _ in range(4):
        rule.train_step(model, x, y, loss)
        ref.train_step(ref_model, x, y, loss)
        for (n, p), q in zip(model.named_parameters(), ref_model.parameters()):
            assert torch.equal(p.detach(), q.detach()), n
            if p.grad is not None or q.grad is not None:
                assert torch.equal(p.grad, q.grad), n
        opt.step()
        ref_opt.step()


# ------------------------------------------------------------------- estimator
def _toy_loss(h, W, t):
    return 0.5 * ((torch.tanh(h @ W.t()) - t) ** 2).sum(-1)


def test_estimator_mean_matches_gradient_and_bias_grows_with_c_h():
    g = torch.Generator().manual_seed(0)
    W = torch.randn(3, 4, generator=g, dtype=torch.float64)
    h = torch.randn(1, 4, generator=g, dtype=torch.float64)
    t = torch.randn(1, 3, generator=g, dtype=torch.float64)
    hh = h.clone().requires_grad_(True)
    true = torch.autograd.grad(_toy_loss(hh, W, t).sum(), hh)[0][0]
    M = 400_000
    xi = torch.randn(M, 4, generator=g, dtype=torch.float64)  # common draws for every c_h
    clean = _toy_loss(h, W, t).expand(M)
    errors = {}
    for c in (1e-3, 0.3, 1.0):
        lam = np_estimate(_toy_loss(h + c * xi, W, t), clean, xi, c)
        mean, se = lam.mean(0), lam.std(0) / M ** 0.5
        errors[c] = float((mean - true).norm())
        if c == 1e-3:
            assert ((mean - true).abs() < 4 * se).all(), (mean, true, se)
    assert errors[1e-3] < errors[0.3] < errors[1.0]
    assert errors[1.0] > 10 * (lam.std(0) / M ** 0.5).norm()  # a real bias, not noise


def test_per_example_losses_recompose_the_batch_loss():
    torch.manual_seed(3)
    o, y = torch.randn(5, 4, dtype=torch.float64), torch.randint(0, 4, (5,))
    for name in ("mse", "mse_batchmean", "mse_sum", "mse_half_sum", "cross_entropy", "bce"):
        loss = get_loss(name)
        per, s = per_example_losses(loss, o, y)
        torch.testing.assert_close(s * per.sum(), loss(o, y))
    plain = lambda a, b: torch.nn.functional.cross_entropy(a, b)
    per, s = per_example_losses(plain, o, y)
    torch.testing.assert_close(s * per.sum(), plain(o, y))


@pytest.mark.parametrize("name", ["mse", "mse_batchmean", "mse_sum", "mse_half_sum", "cross_entropy", "bce"])
def test_loss_difference_equals_difference_of_per_example_losses(name):
    torch.manual_seed(10)
    o, t = torch.randn(6, 4, dtype=torch.float64), torch.randn(6, 4, dtype=torch.float64)
    noisy = o + 1e-3 * torch.randn(6, 4, dtype=torch.float64)
    if name == "cross_entropy":
        t = t.softmax(1)
    if name == "bce":
        t = (t > 0).double()
    loss = get_loss(name)
    direct = loss.per_sample(noisy, t) - loss.per_sample(o, t)
    torch.testing.assert_close(loss_difference(loss, noisy, o, t), direct, rtol=1e-9, atol=1e-12)


def test_regression_grad_is_gradient_of_squared_residual():
    torch.manual_seed(4)
    e, lam = torch.randn(9, 3, dtype=torch.float64), torch.randn(9, 5, dtype=torch.float64)
    B = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    (0.5 * ((e @ B - lam) ** 2).sum()).backward()
    torch.testing.assert_close(regression_grad(e, B.detach(), lam), B.grad)


def test_ridge_equals_closed_form_least_squares_over_samples_seen():
    torch.manual_seed(5)
    r = RidgeState(3, 5, gamma=0.1)
    es, ls = [], []
    for _ in range(4):
        e, lam = torch.randn(8, 3, dtype=torch.float64), torch.randn(8, 5, dtype=torch.float64)
        B = r.update(e, lam)
        es.append(e)
        ls.append(lam)
        E, Lm = torch.cat(es), torch.cat(ls)
        closed = torch.linalg.solve(E.t() @ E + 0.1 * torch.eye(3, dtype=torch.float64), E.t() @ Lm)
        torch.testing.assert_close(B, closed)
        # and it minimises the ridge objective: its gradient vanishes
        torch.testing.assert_close(E.t() @ (E @ B - Lm) + 0.1 * B, torch.zeros_like(B), atol=1e-10, rtol=0)


# ------------------------------------------------------------- theorems (fixed W)
def _fixed_w_run(name, sizes, act, c_h, steps=400, batch=64, seed=0):
    torch.manual_seed(seed)
    model = _mlp(sizes, act, seed=seed)
    x0 = torch.randn(batch, sizes[0], dtype=torch.float64)
    rule, model, opt = _prepared(name, model, x0, fb_lr=0.0, lr=0.0, c_h=c_h, solver="ridge",
                                 gamma=0.1)
    loss = get_loss("mse_half_sum")
    g = torch.Generator().manual_seed(seed + 1)
    for _ in range(steps):
        x = torch.randn(batch, sizes[0], generator=g, dtype=torch.float64)
        y = torch.randint(0, sizes[-1], (batch,), generator=g)
        rule.train_step(model, x, y, loss)
        opt.step()
    return rule, model


def _rel(b, w):
    return float((b - w).norm() / w.norm())


def test_theorem1_top_feedback_converges_to_w_as_c_h_shrinks():
    errs = {}
    for c in (0.5, 0.01):
        _, model = _fixed_w_run("np", [10, 8, 3], "sigmoid", c)
        top = _linears(model)[-1]
        errs[c] = _rel(top.feedback.detach(), top.weight.detach())
    assert errs[0.01] < 0.05, errs
    assert errs[0.01] < errs[0.5]


def test_theorem2_every_feedback_converges_in_a_deep_linear_net():
    # widths ≤ the output's, so that every ẽẽᵀ has full rank (the theorem's assumption; with a
    # narrower output ẽ lives in a subspace and B is identifiable only there)
    _, model = _fixed_w_run("np", [8, 6, 6, 6], "identity", 0.01, steps=800, batch=256)
    for layer in _linears(model)[1:]:
        assert _rel(layer.feedback.detach(), layer.weight.detach()) < 0.1


def test_corollary1_dfa_form_converges_to_product_of_weights_above():
    _, model = _fixed_w_run("np-dfa", [8, 7, 6, 4], "identity", 0.01, steps=600)
    layers = _linears(model)
    for i in range(1, len(layers)):
        prod = layers[-1].weight.detach()
        for layer in reversed(layers[i:-1]):
            prod = prod @ layer.weight.detach()
        assert _rel(layers[i].direct_feedback.detach(), prod) < 0.05, i


def test_sg_regresses_onto_the_true_gradient():
    _, model = _fixed_w_run("sg", [10, 8, 3], "sigmoid", 0.5, steps=60)
    top = _linears(model)[-1]
    assert _rel(top.feedback.detach(), top.weight.detach()) < 0.01


def test_sgd_solver_aligns_feedback_and_probe_metrics():
    torch.manual_seed(6)
    x0 = torch.randn(32, 10, dtype=torch.float64)
    rule, model, _ = _prepared("np", _mlp([10, 8, 3]), x0, fb_lr=0.005, lr=0.0, c_h=0.01)
    top = _linears(model)[-1]
    before = _rel(top.feedback.detach(), top.weight.detach())
    g = torch.Generator().manual_seed(7)
    for _ in range(300):
        rule.train_step(model, torch.randn(32, 10, generator=g, dtype=torch.float64),
                        torch.randint(0, 3, (32,), generator=g), get_loss("mse_half_sum"))
    assert _rel(top.feedback.detach(), top.weight.detach()) < 0.2
    assert before > 1.0
    m = rule.metrics(model)
    assert m[f"signal_angle/{rule.feedback_pairs(model)[-1].name}"] < 15.0


# --------------------------------------------------------------------- details
def test_noisy_pass_reuses_the_clean_dropout_masks():
    torch.manual_seed(8)
    model = torch.nn.Sequential(torch.nn.Linear(6, 20), torch.nn.Tanh(), torch.nn.Dropout(0.5),
                                torch.nn.Linear(20, 3)).double()
    x, y = torch.randn(16, 6, dtype=torch.float64), torch.randint(0, 3, (16,))
    rule, model, _ = _prepared("np", model, x, c_h=1e-6)
    rule.train_step(model, x, y, get_loss("mse_half_sum"))
    lam = rule._last[1][0]  # λ̂ = (ℓ̃ − ℓ)ξ/c_h stays O(|∂ℓ/∂h|·|ξ|²) only if the masks agree
    assert float(lam.abs().max()) < 100.0


def test_warmup_freezes_forward_weights():
    x, y = torch.randn(8, 5, dtype=torch.float64), torch.randint(0, 3, (8,))
    rule, model, opt = _prepared("np", _mlp([5, 4, 3]), x, warmup=2, c_h=0.1)
    w0 = [p.detach().clone() for p in model.parameters() if p.requires_grad]
    for step in range(3):
        rule.train_step(model, x, y, get_loss("mse_half_sum"))
        opt.step()
        same = all(torch.equal(a, b) for a, b in zip(w0, (p for p in model.parameters() if p.requires_grad)))
        assert same == (step < 2)


def test_warmup_longer_than_the_run_warns():
    from bioplausible.engine.config import TrainConfig
    from bioplausible.engine.trainer import Trainer

    cfg = TrainConfig.from_dict({"epochs": 1, "batch_size": 64, "progress": False, "loss": "mse_half_sum",
                                 "optimizer": {"name": "sgd", "lr": 0.001}})
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match="warm-up of 100 steps"):
        Trainer(bp.build_model("mlp:20-8-4", activation="sigmoid"), bp.make("np", warmup=100),
                make_bundle(), cfg).run()


def test_dfa_conv_taps_are_scaled_and_fa_form_refuses_convolutions():
    torch.manual_seed(9)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv2d(2, 2, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(2 * 6 * 6, 3))
    x, y = torch.randn(4, 1, 6, 6), torch.randint(0, 3, (4,))
    with pytest.raises(IncompatibleModelError, match="np-dfa"):
        bp.make("np").prepare(net, example=x)
    scaled = _linears(bp.make("np-dfa", conv_scale="positions").prepare(net, example=x))[1].direct_feedback
    root = _linears(bp.make("np-dfa").prepare(net, example=x))[1].direct_feedback
    plain = _linears(bp.make("np-dfa", conv_scale="none").prepare(net, example=x))[1].direct_feedback
    torch.testing.assert_close(scaled * 36, plain)  # the conv tap's input has 6·6 positions
    torch.testing.assert_close(root * 6, plain)
    dense = [_linears(bp.make("np-dfa", conv_scale=c).prepare(net, example=x))[2].direct_feedback
             for c in ("positions", "none")]
    torch.testing.assert_close(dense[0], dense[1])  # a Linear tap is never scaled
    rule, model, opt = _prepared("np-dfa", net, x, c_h=0.05)
    rule.train_step(model, x, y, get_loss("cross_entropy"))
    opt.step()


@pytest.mark.parametrize("cfg", [{"c_h": 0}, {"c_h": -0.1}, {"gamma": 0.0}, {"solver": "newton"},
                                 {"noise_at": "inside"}, {"warmup": -1}, {"warmup": 1.5}])
def test_bad_options_are_config_errors(cfg):
    with pytest.raises(ConfigError):
        bp.make("np", **cfg)


def test_reduced_precision_is_refused_and_vanishing_perturbation_is_reported():
    with pytest.raises(ConfigError, match="float32 or float64"):
        bp.make("np").prepare(_mlp([5, 4, 3], dtype=torch.float16))
    x, y = torch.randn(8, 5), torch.randint(0, 3, (8,))
    rule, model, _ = _prepared("np", _mlp([5, 4, 3], dtype=torch.float32), x, c_h=1e-30)
    with pytest.raises(UserError, match="raise c_h"):
        rule.train_step(model, x, y, get_loss("mse_half_sum"))


class _TwoLayers(torch.nn.Module):  # not an nn.Sequential: the noisy pass runs through hooks
    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Linear(1, 1), torch.nn.Linear(1, 1)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


@pytest.mark.parametrize("wrapped", [False, True], ids=["sequential", "hooks"])
@pytest.mark.parametrize("name", ["np", "np-dfa"])
def test_every_relu_off_is_an_exact_zero_not_a_refusal(name, wrapped):
    """1-1-1 ReLU net, hidden bias −10, input 0, noise_at="pre": the noise never opens the ReLU,
    so ℓ̃ − ℓ = 0 exactly and λ̂ = 0 is the right estimate; the step must be taken (also within
    the first ten steps) and B regress onto 0: eq 3 with λ̂ = 0, ΔB = −η_B Σ_n ẽ_nᵀ ẽ_n B."""
    torch.manual_seed(0)
    net = _TwoLayers() if wrapped else torch.nn.Sequential(torch.nn.Linear(1, 1), torch.nn.ReLU(),
                                                           torch.nn.Linear(1, 1))
    net = net.double()
    first = next(m for m in net.modules() if isinstance(m, torch.nn.Linear))
    with torch.no_grad():
        first.bias.fill_(-10.0)
    x, y = torch.zeros(4, 1, dtype=torch.float64), torch.ones(4, 1, dtype=torch.float64)
    rule, model, _ = _prepared(name, net, x, noise_at="pre")
    last = _linears(model)[-1]
    for _ in range(3):
        (b,) = [p.detach().clone() for p in rule._feedback]
        e = float(last.bias.detach()) - 1.0  # every hidden unit off: o = b₂, ẽ = o − t per example
        rule.train_step(model, x, y, get_loss("mse_half_sum"))
        torch.testing.assert_close(rule._feedback[0].detach(), b - 0.05 * 4 * e * e * b)
        assert float(last.bias.grad) == pytest.approx(4 * e)
        with torch.no_grad():
            last.bias.sub_(0.1 * last.bias.grad)


def test_np_dfa_needs_an_example():
    with pytest.raises(ConfigError, match="example"):
        bp.make("np-dfa").prepare(_mlp([5, 4, 3]))


@pytest.mark.parametrize("name", ["np", "np-dfa"])
def test_resume_is_bit_identical_with_owned_feedback(tmp_path, name):
    from bioplausible.engine.config import TrainConfig
    from bioplausible.engine.trainer import Trainer

    data = make_bundle()
    cfg = TrainConfig.from_dict({"epochs": 4, "batch_size": 32, "progress": False, "loss": "mse_half_sum",
                                 "optimizer": {"name": "sgd", "lr": 0.002, "groups": {"feedback": {"lr": 0.001}}},
                                 "probe_every": 3})
    rule_cfg = {"warmup": 3, "solver": "ridge"} if name == "np" else {"warmup": 3}

    def model():
        torch.manual_seed(0)
        return bp.build_model("mlp:20-16-8-4", activation="sigmoid")

    full = Trainer(model(), bp.make(name, **rule_cfg), data, cfg, out=tmp_path / "a").run()
    Trainer(model(), bp.make(name, **rule_cfg), data, cfg.updated({"epochs": 2}), out=tmp_path / "b").run()
    resumed = Trainer(model(), bp.make(name, **rule_cfg), data, cfg, out=tmp_path / "b").run(resume=True)
    for (k, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), k
    for (k, a), b in zip(full.rule.owned.state_dict().items(), resumed.rule.owned.state_dict().values()):
        assert torch.equal(a, b), k
