"""The node-perturbation paper's MNIST autoencoder model (784-200-2-200-784)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import bioplausible as bp
from bioplausible.errors import ConfigError


def test_layers_and_activations_in_order():
    m = bp.build_model("autoencoder", input_shape=(1, 28, 28), num_classes=10)
    linears = [x for x in m if isinstance(x, nn.Linear)]
    assert [(x.in_features, x.out_features) for x in linears] == [(784, 200), (200, 2), (2, 200), (200, 784)]
    acts = [type(x) for x in m if not isinstance(x, (nn.Linear, nn.Flatten))]
    assert acts == [nn.Tanh, nn.Identity, nn.Tanh, nn.ReLU]
    assert m(torch.rand(3, 1, 28, 28)).shape == (3, 784)


def test_width_option_and_bad_values():
    assert bp.build_model("autoencoder:50").sizes == [784, 50, 2, 50, 784]
    assert bp.build_model("autoencoder", width=30, code=3).sizes == [784, 30, 3, 30, 784]
    with pytest.raises(ConfigError):
        bp.build_model("autoencoder:0")
    with pytest.raises(ConfigError):
        bp.build_model("autoencoder:50", width=20)


def test_np_trains_the_autoencoder_on_reconstruction():
    torch.manual_seed(0)
    x = torch.rand(16, 784)
    rule = bp.make("np", c_h=0.02)
    model = rule.prepare(bp.build_model("autoencoder:20"), example=x[:2])
    opt = rule.build_optimizer(model, {"name": "sgd", "lr": 1e-3, "groups": {"feedback": {"lr": 1e-4}}})
    loss = bp.get_loss("mse_sum")
    first = float(rule.train_step(model, x, x, loss).loss)
    opt.step()
    for _ in range(30):
        last = float(rule.train_step(model, x, x, loss).loss)
        opt.step()
    assert last < first
