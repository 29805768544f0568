"""The controls of Lansdell et al. 2020: matched (KP without decay), BP/FA with activation noise, DAE."""

from __future__ import annotations

import pytest
import torch

import bioplausible as bp
from bioplausible.core.losses import get_loss
from bioplausible.errors import ConfigError
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
