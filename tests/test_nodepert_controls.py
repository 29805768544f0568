"""The controls of Lansdell et al. 2020: matched (KP without decay), BP/FA with activation noise, DAE."""

from __future__ import annotations

import pytest
import torch

import bioplausible as bp
from bioplausible.errors import ConfigError
from bioplausible.core.losses import get_loss
from bioplausible.nn.convert import feedback_layers


def _mlp(seed=0):
    torch.manual_seed(seed)
    return bp.build_model("mlp:6-5-4-3", activation="tanh").double()


def test_matched_gives_b_the_update_of_w_without_decay():
    rule = bp.make("matched")
    assert rule.config["decay"] == 0.0
    model = rule.prepare(_mlp())
    opt = rule.build_optimizer(model, {"name": "sgd", "lr": 0.1})
    layers = [layer for _, layer in feedback_layers(model)][1:]
    gap = [(layer.weight - layer.feedback).detach().clone() for layer in layers]
    x, y = torch.randn(8, 6, dtype=torch.float64), torch.randint(0, 3, (8,))
    for _ in range(3):
        rule.train_step(model, x, y, get_loss("mse_half_sum"))
        opt.step()
    for layer, g in zip(layers, gap):  # W − B is unchanged: B received exactly W's update
        torch.testing.assert_close((layer.weight - layer.feedback).detach(), g)


@pytest.mark.parametrize("name", ["bp-noise", "fa-noise", "dfa-noise"])
def test_activation_noise_only_in_training_passes(name):
    rule = bp.make(name, c_h=0.5)
    model = rule.prepare(_mlp())
    x, y = torch.randn(8, 6, dtype=torch.float64), torch.randint(0, 3, (8,))
    with torch.no_grad():
        clean = _mlp()(x)
    out = rule.train_step(model, x, y, get_loss("mse_half_sum")).output
    assert float((out - clean).abs().max()) > 1e-3  # noisy training pass
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), clean)  # evaluation is clean
    model.train()
    ref = bp.make("bp").bp_gradients(_mlp(), x, y, get_loss("mse_half_sum"))
    mine = rule.bp_gradients(model, x, y, get_loss("mse_half_sum"))
    for k in ref:  # the probe's BP reference runs without the noise
        torch.testing.assert_close(mine[k], ref[k])


def test_dae_perturbs_the_input_only():
    rule = bp.make("dae")
    assert rule.config["input_noise"] == 0.3
    model = _mlp()
    x = torch.zeros(64, 6, dtype=torch.float64)
    seen = []
    model[1].register_forward_pre_hook(lambda m, a: seen.append(a[0].detach().clone()))
    rule.train_step(model, x, torch.randint(0, 3, (64,)), get_loss("mse_half_sum"))
    assert abs(float(seen[0].std()) - 0.3) < 0.05


@pytest.mark.parametrize(("name", "cfg"), [("bp-noise", {"c_h": 0}), ("fa-noise", {"c_h": -1}), ("dfa-noise", {"c_h": 0}),
                                           ("dae", {"input_noise": 0.0})])
def test_bad_noise_levels(name, cfg):
    with pytest.raises(ConfigError):
        bp.make(name, **cfg)


# ------------------------------------------------------------------ independent float64 reference
@pytest.mark.parametrize("decay", [0.0, 0.1])
def test_matched_step_equals_a_per_example_float64_reference(decay):
    """``matched`` (KP with decay 0 by default; here also λ = 0.1 in the backward) against a
    literal per-example loop with column vectors and no autograd: δ_L = e, δ_l = (B_{l+1}ᵀ δ_{l+1})
    ⊙ f′(a_l) with B in W's layout; W_l.grad = Σ_n δ_l h_{l−1}ᵀ + λW_l on every layer (the first
    included), B_l.grad = Σ_n δ_l h_{l−1}ᵀ + λB_l where B_l carries an error (l ≥ 2), b_l.grad = Σ_n δ_l."""
    torch.manual_seed(3)
    dt = torch.float64
    net = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Tanh(), torch.nn.Linear(4, 3),
                              torch.nn.Sigmoid(), torch.nn.Linear(3, 2)).to(dt)
    rule = bp.make("matched", decay=decay, decay_in="backward")
    model = rule.prepare(net)
    g = torch.Generator().manual_seed(4)
    x, t = torch.randn(6, 5, generator=g, dtype=dt), torch.randn(6, 2, generator=g, dtype=dt)
    lins = [model[0], model[2], model[4]]
    W = [m.weight.detach().clone() for m in lins]
    b = [m.bias.detach().clone() for m in lins]
    B = [m.feedback.detach().clone() for m in lins]
    rule.train_step(model, x, t, lambda o, y: 0.5 * ((o - y) ** 2).sum())

    gW = [torch.zeros_like(w) for w in W]
    gb = [torch.zeros_like(v) for v in b]
    for n in range(x.shape[0]):
        h0 = x[n].reshape(-1, 1)
        a1 = W[0] @ h0 + b[0].reshape(-1, 1)
        h1 = torch.tanh(a1)
        a2 = W[1] @ h1 + b[1].reshape(-1, 1)
        h2 = 1.0 / (1.0 + torch.exp(-a2))
        o = W[2] @ h2 + b[2].reshape(-1, 1)
        d3 = o - t[n].reshape(-1, 1)
        d2 = (B[2].T @ d3) * h2 * (1.0 - h2)
        d1 = (B[1].T @ d2) * (1.0 - h1 * h1)
        for k, (d, h) in enumerate(((d1, h0), (d2, h1), (d3, h2))):
            gW[k] += d @ h.T
            gb[k] += d.reshape(-1)
    for k, m in enumerate(lins):
        torch.testing.assert_close(m.weight.grad, gW[k] + decay * W[k], rtol=1e-13, atol=1e-14)
        torch.testing.assert_close(m.bias.grad, gb[k], rtol=1e-13, atol=1e-14)
        if k == 0:
            assert m.feedback.grad is None  # B_1 carries no error anywhere: not learned by default
        else:
            torch.testing.assert_close(m.feedback.grad, gW[k] + decay * B[k], rtol=1e-13, atol=1e-14)
