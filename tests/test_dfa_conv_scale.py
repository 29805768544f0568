"""DFA's convolution-tap scaling (``conv_scale``), shared by ``dfa`` and ``np-dfa``.

Oracle: the documented init, redrawn independently — every ``B_l`` is U(±1/√n_l) from a
generator seeded with the rule's seed + 7877, in tap order; a tap whose layer is a convolution is
then divided by √P (default), P, or nothing (``"none"``: the unscaled draw of earlier versions),
P the spatial positions of that layer's input. Linear taps (every MLP) are never scaled.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import bioplausible as bp
from bioplausible.errors import ConfigError
from bioplausible.nn import feedback_layers

DT = torch.float64


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Conv2d(4, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2, 3)).to(DT)


def _expected(seed: int, taps: list[tuple[int, int, int | None]], how: str) -> list[torch.Tensor]:
    """Redraw (n_out, n_in) per tap; ``positions`` is None for a Linear tap."""
    g = torch.Generator().manual_seed(seed + 7_877)
    out = []
    for n_out, n_in, positions in taps:
        d = torch.empty(n_out, n_in, dtype=DT).uniform_(-1 / math.sqrt(n_in), 1 / math.sqrt(n_in), generator=g)
        if positions is not None and how != "none":
            d = d / (positions if how == "positions" else math.sqrt(positions))
        out.append(d)
    return out


# taps of _cnn on 6×6 inputs: conv2 input 3×6×6, conv3 input 4×3×3 (after the pool), fc input 2×1×1
_TAPS = [(3, 3 * 36, 36), (3, 4 * 9, 9), (3, 2, None)]


@pytest.mark.parametrize("how", ["sqrt_positions", "positions", "none"])
@pytest.mark.parametrize(("name", "with_example"), [("dfa", True), ("dfa", False), ("np-dfa", True)])
def test_conv_taps_follow_the_documented_init(how, name, with_example):
    x = torch.randn(4, 2, 6, 6, dtype=DT)
    rule = bp.make(name, conv_scale=how)
    rule.set_seed(5)
    model = rule.prepare(_cnn(), example=x[:2] if with_example else None)
    if not with_example:
        model(x)  # the first forward pass creates the matrices
    got = [layer.direct_feedback for _, layer in feedback_layers(model) if layer.direct_feedback is not None]
    for d, ref in zip(got, _expected(5, _TAPS, how), strict=True):
        torch.testing.assert_close(d.detach(), ref, rtol=1e-15, atol=0)


def test_default_is_sqrt_positions_and_none_is_the_plain_draw():
    assert bp.make("dfa").config["conv_scale"] == "sqrt_positions"
    assert bp.make("np-dfa").config["conv_scale"] == "sqrt_positions"
    x = torch.randn(4, 2, 6, 6, dtype=DT)
    plain = bp.make("dfa", conv_scale="none").prepare(_cnn(), example=x[:2])
    ref = _expected(0, _TAPS, "none")
    got = [layer.direct_feedback for _, layer in feedback_layers(plain) if layer.direct_feedback is not None]
    assert all(torch.equal(a.detach(), b) for a, b in zip(got, ref))


def test_scaled_conv_update_is_the_unscaled_one_divided_by_sqrt_positions():
    # the signal at a conv tap is linear in its B: the layer feeding it learns 1/√P as fast
    x, y = torch.randn(8, 2, 6, 6, dtype=DT), torch.randint(0, 3, (8,))
    grads = {}
    for how in ("sqrt_positions", "none"):
        rule = bp.make("dfa", conv_scale=how)
        model = rule.prepare(_cnn(), example=x[:2])
        rule.train_step(model, x, y, bp.get_loss("cross_entropy"))
        grads[how] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    torch.testing.assert_close(grads["sqrt_positions"]["0.weight"], grads["none"]["0.weight"] / 6)
    torch.testing.assert_close(grads["sqrt_positions"]["2.weight"], grads["none"]["2.weight"] / 3)
    assert torch.equal(grads["sqrt_positions"]["8.weight"], grads["none"]["8.weight"])  # output layer: BP


@pytest.mark.parametrize("name", ["dfa", "np-dfa"])
def test_mlps_are_unaffected(name):
    x, y = torch.randn(8, 5, dtype=DT), torch.randint(0, 3, (8,))
    runs = []
    for how in ("sqrt_positions", "none"):
        torch.manual_seed(1)
        rule = bp.make(name, conv_scale=how)
        model = rule.prepare(bp.build_model("mlp:5-6-4-3", activation="tanh").to(DT), example=x[:2])
        rule.build_optimizer(model, {"name": "sgd", "lr": 0.1, "groups": {"feedback": {"lr": 0.0}}}
                             if name == "np-dfa" else {"name": "sgd", "lr": 0.1})
        rule.train_step(model, x, y, bp.get_loss("mse_half_sum"))
        runs.append(model)
    for (n, a), b in zip(runs[0].named_parameters(), runs[1].parameters()):
        assert torch.equal(a.detach(), b.detach()), n
        assert (a.grad is None and b.grad is None) or torch.equal(a.grad, b.grad), n
    assert runs[0][1].weight.grad is not None


def test_unknown_conv_scale_is_a_config_error():
    with pytest.raises(ConfigError, match="conv_scale"):
        bp.make("dfa", conv_scale="sqrt")
    with pytest.raises(ConfigError, match="conv_scale"):
        bp.make("np-dfa", conv_scale="sqrt")


def test_a_linear_tap_on_a_4d_activation_is_not_scaled():
    x = torch.randn(3, 1, 4, 4, dtype=DT)
    got = []
    for how in ("sqrt_positions", "none"):
        torch.manual_seed(2)
        net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Linear(4, 3)).to(DT)
        model = bp.make("dfa", conv_scale=how).prepare(net, example=x[:2])
        got.append(model[2].direct_feedback.detach())
    assert got[0].shape == (2 * 4 * 3, 2 * 4 * 4)
    assert torch.equal(got[0], got[1])
