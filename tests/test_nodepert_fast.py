"""The hand-written MLP step of np / np-dfa (rules/nodepert/fast.py) against independent oracles.

* several SGD steps, with a warm-up, both noise placements, FA and DFA forms, summed, mean and
  cross-entropy losses, against a literal per-example float64 implementation of spec §5 that
  keeps its own W, b and B (only the noise draws are taken from the rule);
* the fast path equals the general (autograd + hooks) path over several steps, ridge included;
* the MSE output errors equal autograd's to the bit; a hook added after ``prepare`` sends the step
  down the general path.
"""

from __future__ import annotations

import pytest
import torch

import bioplausible as bp
from bioplausible.core.losses import get_loss
from bioplausible.nn.convert import feedback_layers
from bioplausible.rules.nodepert import fast
from bioplausible.rules.nodepert.rule import _NodePerturbation

_F = {"sigmoid": torch.sigmoid, "tanh": torch.tanh, "relu": torch.relu}
_DF = {"sigmoid": lambda a: torch.sigmoid(a) * (1 - torch.sigmoid(a)), "tanh": lambda a: 1 - torch.tanh(a) ** 2,
       "relu": lambda a: (a > 0).double()}


def _per_example(loss, o, y, n_out):
    """(ℓ_n, ∂ℓ_n/∂o, s) of one example, with loss = s Σ_n ℓ_n."""
    t = torch.nn.functional.one_hot(y, n_out).double()
    if loss == "mse_half_sum":
        return 0.5 * ((o - t) ** 2).sum(), o - t, 1.0
    if loss == "mse":
        return ((o - t) ** 2).mean(), 2 * (o - t) / o.numel(), None
    p = torch.softmax(o, 0)
    return -torch.log(p[y]), p - t, None


def _literal_step(Ws, bs, Fs, x, y, xis, c, loss, act, form, post):
    """Spec §5.1-5.2 one example at a time: (W grads, b grads, eq-3 B gradients)."""
    L, N, n_out = len(Ws), x.shape[0], Ws[-1].shape[0]
    gW, gb, gF = [torch.zeros_like(W) for W in Ws], [torch.zeros_like(b) for b in bs], [torch.zeros_like(F) for F in Fs]
    for n in range(N):
        hs, As = [x[n]], []
        for i in range(L):
            As.append(Ws[i] @ hs[-1] + bs[i])
            hs.append(_F[act](As[-1]) if i < L - 1 else As[-1])
        h = x[n]
        for i in range(L):  # every hidden layer perturbed at once, after or inside σ
            a = Ws[i] @ h + bs[i]
            if i == L - 1:
                h = a
            else:
                h = _F[act](a) + c * xis[i][n] if post else _F[act](a + c * xis[i][n])
        ell, e, s = _per_example(loss, hs[-1], y[n], n_out)
        noisy_ell = _per_example(loss, h, y[n], n_out)[0]
        s = 1.0 if s is not None else 1.0 / N
        lam = [(noisy_ell - ell) * xis[i][n] / c for i in range(L - 1)]
        delta = e
        for i in reversed(range(L)):
            gW[i] += s * torch.outer(delta, hs[i])
            gb[i] += s * delta
            if i == 0:
                break
            src = e if form == "dfa" else delta
            sig = src @ Fs[i - 1]
            gF[i - 1] += torch.outer(src, sig - lam[i - 1])
            delta = sig * _DF[act](As[i - 1])
    return gW, gb, gF


def _rule(name, sizes, act, x, lr, fb_lr, seed=0, **cfg):
    torch.manual_seed(seed)
    model = bp.build_model("mlp:" + "-".join(map(str, sizes)), activation=act).double()
    rule = bp.make(name, **cfg)
    model = rule.prepare(model, example=x[:2])
    opt = rule.build_optimizer(model, {"name": "sgd", "lr": lr, "groups": {"feedback": {"lr": fb_lr}}})
    return rule, model, opt


def _no_general_path(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the general path ran")
    monkeypatch.setattr(_NodePerturbation, "_noisy_output", refuse)


@pytest.mark.parametrize("form", ["fa", "dfa"])
@pytest.mark.parametrize("noise_at", ["post", "pre"])
@pytest.mark.parametrize(("loss", "act"), [("mse_half_sum", "sigmoid"), ("mse", "tanh"), ("cross_entropy", "sigmoid")])
def test_several_steps_with_warmup_match_the_literal_oracle(monkeypatch, form, noise_at, loss, act):
    _no_general_path(monkeypatch)
    g = torch.Generator().manual_seed(3)
    sizes, lr, fb_lr, c, warmup = [6, 5, 4, 3], 0.3, 0.2, 0.05, 2
    xs = [torch.randn(7, 6, generator=g, dtype=torch.float64) for _ in range(5)]
    ys = [torch.randint(0, 3, (7,), generator=g) for _ in range(5)]
    rule, model, opt = _rule("np" if form == "fa" else "np-dfa", sizes, act, xs[0], lr, fb_lr,
                             c_h=c, noise_at=noise_at, warmup=warmup)
    layers = [layer for _, layer in feedback_layers(model)]
    fb = [(lay.feedback if form == "fa" else lay.direct_feedback) for lay in layers[1:]]
    Ws = [lay.weight.detach().clone() for lay in layers]
    W0 = Ws[0]
    bs = [lay.bias.detach().clone() for lay in layers]
    Fs = [f.detach().clone() for f in fb]
    for step, (x, y) in enumerate(zip(xs, ys)):
        rule.train_step(model, x, y, get_loss(loss))
        opt.step()
        rule.after_step(model)
        gW, gb, gF = _literal_step(Ws, bs, Fs, x, y, rule.last_noise, c, loss, act, form, noise_at == "post")
        if step >= warmup:
            Ws = [W - lr * d for W, d in zip(Ws, gW)]
            bs = [b - lr * d for b, d in zip(bs, gb)]
        Fs = [F - fb_lr * d for F, d in zip(Fs, gF)]
        for lay, W, b in zip(layers, Ws, bs):
            torch.testing.assert_close(lay.weight.detach(), W, rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(lay.bias.detach(), b, rtol=1e-10, atol=1e-12)
        for f, F in zip(fb, Fs):
            torch.testing.assert_close(f.detach(), F, rtol=1e-10, atol=1e-12)
    assert not torch.equal(Ws[0], W0)  # the forward weights learned after the warm-up


@pytest.mark.parametrize("name", ["np", "np-dfa"])
@pytest.mark.parametrize("cfg", [{"noise_at": "post"}, {"noise_at": "pre", "solver": "ridge"},
                                 {"noise_at": "post", "solver": "ridge", "warmup": 1}])
@pytest.mark.parametrize("loss", ["mse_half_sum", "mse_batchmean", "cross_entropy"])
def test_fast_path_equals_the_general_path(name, cfg, loss):
    g = torch.Generator().manual_seed(4)
    xs = [torch.randn(9, 8, generator=g, dtype=torch.float64) for _ in range(4)]
    ys = [torch.randint(0, 4, (9,), generator=g) for _ in range(4)]
    runs = []
    for general in (False, True):
        rule, model, opt = _rule(name, [8, 7, 6, 4], "tanh", xs[0], 0.2, 0.1, c_h=0.02, **cfg)
        model[1].bias.requires_grad_(False)  # a frozen tensor: no gradient on either path
        if general:  # any hook sends the step down the general path
            model.register_forward_hook(lambda m, a, o: None)
        for x, y in zip(xs, ys):
            rule.train_step(model, x, y, get_loss(loss))
            opt.step()
            rule.after_step(model)
        runs.append((model, rule))
    (fast_model, fast_rule), (slow_model, slow_rule) = runs
    for (k, a), b in zip(fast_model.state_dict().items(), slow_model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-13, msg=k)
    for (k, a), b in zip(fast_rule.owned.state_dict().items(), slow_rule.owned.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-13, msg=k)
    for a, b in zip(fast_rule.last_noise, slow_rule.last_noise):
        assert torch.equal(a, b)  # the same draws in the same order
    assert fast_model[1].bias.grad is None and slow_model[1].bias.grad is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", sorted(fast.MSE_NAMES))
def test_mse_output_error_is_autograds_to_the_bit(name, dtype):
    g = torch.Generator().manual_seed(5)
    loss = get_loss(name)
    for n in (1, 7, 32):
        o = torch.randn(n, 10, generator=g).to(dtype) * 3
        t = torch.nn.functional.one_hot(torch.randint(0, 10, (n,), generator=g), 10).to(dtype)
        leaf = o.clone().requires_grad_(True)
        (ref,) = torch.autograd.grad(loss(leaf, t), leaf)
        e, d = fast.output_error(loss, o, t)
        assert torch.equal(e, ref)
        assert torch.equal(d, o - t)


def test_plain_mlps_only_and_hooks_send_the_step_down_the_general_path(monkeypatch):
    x, y = torch.randn(8, 5, dtype=torch.float64), torch.randint(0, 3, (8,))
    rule, model, _ = _rule("np", [5, 4, 3], "sigmoid", x, 0.1, 0.1)
    assert rule._plan is not None
    sg = bp.make("sg")
    sg.prepare(bp.build_model("mlp:5-4-3").double(), example=x[:2])
    assert sg._plan is None  # the true-gradient target needs the exact backward pass
    for act in ("leaky_relu", "softplus"):  # activations without a hand-written derivative
        other = bp.make("np")
        other.prepare(bp.build_model("mlp:5-4-3", activation=act).double(), example=x[:2])
        assert other._plan is None
    # an in-place ReLU is never called by the fast path (it uses the ReLU kernel): the plan takes it
    inplace = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.ReLU(inplace=True), torch.nn.Linear(4, 3)).double()
    other = bp.make("np")
    other.prepare(inplace, example=x[:2])
    assert other._plan is not None
    dropout = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Tanh(), torch.nn.Dropout(0.5),
                                  torch.nn.Linear(4, 3)).double()
    other = bp.make("np")
    other.prepare(dropout, example=x[:2])
    assert other._plan is None
    calls = []
    model[3].register_forward_hook(lambda m, a, o: calls.append(1))
    monkeypatch.setattr(_NodePerturbation, "_fast_step", lambda *a: (_ for _ in ()).throw(AssertionError))
    rule.train_step(model, x, y, get_loss("mse_half_sum"))
    assert calls  # the general path called the module, so its hook ran


@pytest.mark.parametrize("name", ["np", "np-dfa"])
def test_autoencoder_shape_with_identity_hidden_and_relu_output(name):
    # the autoencoder's layout (tanh, identity, tanh, relu output) and a reconstruction target
    g = torch.Generator().manual_seed(6)
    xs = [torch.rand(10, 6, generator=g, dtype=torch.float64) for _ in range(3)]
    runs = []
    for general in (False, True):
        torch.manual_seed(0)
        model = bp.build_model("mlp:6-5-2-5-6", activation=["tanh", "identity", "tanh"],
                               output_activation="relu").double()
        rule = bp.make(name, c_h=0.03, noise_at="pre" if name == "np" else "post")
        model = rule.prepare(model, example=xs[0][:2])
        assert rule._plan is not None
        opt = rule.build_optimizer(model, {"name": "sgd", "lr": 0.3, "groups": {"feedback": {"lr": 0.2}}})
        if general:
            model.register_forward_hook(lambda m, a, o: None)
        for x in xs:
            rule.train_step(model, x, x, get_loss("mse_half_sum"))
            opt.step()
        runs.append(model.state_dict())
    for k, a in runs[0].items():
        torch.testing.assert_close(a, runs[1][k], rtol=1e-11, atol=1e-13, msg=k)


def test_a_gradient_hook_on_a_weight_runs(monkeypatch):
    x, y = torch.randn(8, 5, dtype=torch.float64), torch.randint(0, 3, (8,))
    rule, model, _ = _rule("np", [5, 4, 3], "sigmoid", x, 0.1, 0.1)
    seen = []
    model[3].weight.register_hook(lambda g: seen.append(g.clone()))
    rule.train_step(model, x, y, get_loss("mse_half_sum"))
    assert len(seen) == 1 and torch.equal(seen[0], model[3].weight.grad)


@pytest.mark.parametrize("name", ["np", "np-dfa"])
def test_a_model_whose_layers_end_without_an_activation_takes_the_fast_path_to_the_same_numbers(name):
    # a user's Sequential: a Linear with nothing after it (here the output, and one hidden layer
    # followed directly by the next Linear) is the identity
    g = torch.Generator().manual_seed(7)
    xs = [torch.randn(9, 6, generator=g, dtype=torch.float64) for _ in range(3)]
    ys = [torch.randint(0, 3, (9,), generator=g) for _ in range(3)]
    runs = []
    for general in (False, True):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Sigmoid(), torch.nn.Linear(5, 4),
                                    torch.nn.Linear(4, 4), torch.nn.Tanh(), torch.nn.Linear(4, 3)).double()
        rule = bp.make(name, c_h=0.03)
        model = rule.prepare(model, example=xs[0][:2])
        assert rule._plan is not None
        assert [a[0] for a in rule._plan.acts][1] is None  # Linear(5, 4) has the identity after it
        opt = rule.build_optimizer(model, {"name": "sgd", "lr": 0.3, "groups": {"feedback": {"lr": 0.2}}})
        if general:
            model.register_forward_hook(lambda m, a, o: None)
        for x, y in zip(xs, ys):
            rule.train_step(model, x, y, get_loss("cross_entropy"))
            opt.step()
        runs.append(model.state_dict())
    for k, a in runs[0].items():
        torch.testing.assert_close(a, runs[1][k], rtol=1e-11, atol=1e-13, msg=k)


def test_the_ridge_sums_accumulate_in_float64_in_a_float32_run(tmp_path, synthetic_root):
    """The ridge solver's never-forgetting sums V = γI + Σẽᵀẽ and S = Σẽᵀλ̂ stay float64 when the
    model is float32 — through the trainer's move to the run's dtype, training and a checkpoint
    round trip — and B, their solve, is the model's dtype. (In float32 the rounding of each
    addition into the growing sums swamped the per-batch signal over Fig. 4's 187,500 steps.)"""
    from bioplausible.engine.config import TrainConfig
    from bioplausible.experiments.jobs import Job, _build, load_data

    cfg = TrainConfig.from_dict({
        # Fig. 4's setting: W fixed, sigmoid, Xavier, inputs in [0, 1]
        "dataset": {"name": "mnist", "subset": 200, "flatten": True, "normalize": "unit"},
        "model": {"spec": "mlp:784-12-10", "activation": "sigmoid", "init": "xavier"},
        "rule": {"name": "np", "solver": "ridge", "gamma": 0.1}, "loss": "mse_half_sum",
        "optimizer": {"name": "sgd", "lr": 1.0, "groups": {"forward": {"lr": 0.0}}}, "epochs": 1, "batch_size": 20,
        "dtype": "float32",
        "progress": False})
    data = load_data(cfg)

    def build(config):
        return _build(Job(config.to_dict(), str(tmp_path / "run"), "np", 0), data, config, out=tmp_path / "run")

    trainer = build(cfg)

    def sums(rule):
        return {n: t for n, t in rule.owned.named_buffers() if n.startswith("ridge.")}

    assert sums(trainer.rule) and all(t.dtype == torch.float64 for t in sums(trainer.rule).values())
    v0 = sums(trainer.rule)["ridge.V.1"].clone()
    assert trainer.run().summary["status"] == "completed"
    after = sums(trainer.rule)
    assert all(t.dtype == torch.float64 for t in after.values())
    assert not torch.equal(after["ridge.V.1"], v0)  # the sums did grow
    assert trainer.rule.owned.get("B.1").dtype == torch.float32
    resumed = build(cfg)
    resumed.load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    for name, t in sums(resumed.rule).items():
        assert t.dtype == torch.float64 and torch.equal(t, after[name])
    # moving the rule again never rounds the sums through the narrower dtype
    trainer.rule.to("cpu", torch.float32)
    for name, t in sums(trainer.rule).items():
        assert t.dtype == torch.float64 and torch.equal(t, after[name])
