"""The plain model back: ``to_plain`` and ``plain_state_dict`` after converting and training.

Oracle: the user's own architecture, built from scratch, must accept the returned state with
``strict=True`` and then compute exactly what the trained converted model computes (the
forward pass of a feedback layer is the plain layer's forward). Training must have changed
the weights, so the check is not satisfied by the initial values.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import bioplausible as bp
from bioplausible.nn import FeedbackConv2d, FeedbackLinear

DT = torch.float64
RULES = ["fa", "usf", "brsf", "frsf", "kp", "wm", "dfa"]


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 12)
        self.act = nn.Tanh()

    def forward(self, x):
        return self.act(self.fc(x))


class UserNet(nn.Module):
    """A user's architecture: conv with reflect padding, BatchNorm, a nested block, a head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1, padding_mode="reflect")
        self.bn = nn.BatchNorm2d(4)
        self.pool = nn.MaxPool2d(2)
        self.block = Block()
        self.head = nn.Linear(12, 3)

    def forward(self, x):
        h = self.pool(torch.relu(self.bn(self.conv(x))))
        return self.head(self.block(h.flatten(1)))


def _data(n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 2, 8, 8, generator=g, dtype=DT), torch.randint(0, 3, (n,), generator=g)


def _train(rule_name: str, steps: int = 3):
    torch.manual_seed(0)
    net = UserNet().to(DT)
    initial = {k: v.clone() for k, v in net.state_dict().items()}
    rule = bp.make(rule_name)
    rule.set_seed(1)
    model = rule.prepare(net)
    opt = torch.optim.SGD(rule.param_groups(model, lr=0.1))
    loss = bp.get_loss("cross_entropy")
    for i in range(steps):
        x, y = _data(seed=i)
        rule.train_step(model, x, y, loss)
        opt.step()
        rule.after_step(model)
    return net, model, initial


@pytest.mark.parametrize("rule_name", RULES)
def test_plain_state_dict_loads_strictly_and_predicts_the_same(rule_name):
    _, model, initial = _train(rule_name)
    assert any(isinstance(m, (FeedbackLinear, FeedbackConv2d)) for m in model.modules())
    state = bp.plain_state_dict(model)
    assert list(state) == list(initial)  # same keys, same order as the user's module
    assert not torch.equal(state["conv.weight"], initial["conv.weight"])  # training happened
    fresh = UserNet().to(DT)
    fresh.load_state_dict(state)  # strict=True is the default
    x, _ = _data(seed=9)
    model.eval()
    fresh.eval()
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))


@pytest.mark.parametrize("rule_name", RULES)
def test_to_plain_gives_an_ordinary_module(rule_name):
    _, model, _ = _train(rule_name)
    plain = bp.to_plain(model)
    types = {type(m) for m in plain.modules()}
    assert FeedbackLinear not in types and FeedbackConv2d not in types
    assert type(plain.conv) is nn.Conv2d and plain.conv.padding_mode == "reflect"
    assert type(plain.block.fc) is nn.Linear and type(plain.head) is nn.Linear
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in plain.modules())
    assert list(plain.state_dict()) == list(UserNet().state_dict())
    fresh = UserNet().to(DT)
    fresh.load_state_dict(plain.state_dict())
    x, y = _data(seed=5)
    for mode in (True, False):  # train mode (batch statistics) and eval mode
        plain.train(mode)
        model.train(mode)
        fresh.train(mode)
        with torch.no_grad():
            ref = model(x)
            assert torch.equal(plain(x), ref) and torch.equal(fresh(x), ref)
    # With gradients on, the plain copy backpropagates exactly: its gradient is BP's.
    plain.train()
    fresh.train()
    loss = nn.functional.cross_entropy
    g_plain = torch.autograd.grad(loss(plain(x), y), list(plain.parameters()))
    g_fresh = torch.autograd.grad(loss(fresh(x), y), list(fresh.parameters()))
    for a, b in zip(g_plain, g_fresh):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_to_plain_copies_and_keeps_shared_layers_shared():
    shared = nn.Linear(4, 4)
    net = nn.Sequential(shared, nn.ReLU(), shared).to(DT)
    model = bp.convert(net, "fa")
    plain = bp.to_plain(model)
    assert plain[0] is plain[2] and type(plain[0]) is nn.Linear
    with torch.no_grad():
        plain[0].weight.add_(1.0)
    assert not torch.equal(plain[0].weight, model[0].weight)  # a copy, not a view
    single = bp.to_plain(bp.convert(nn.Linear(3, 2), "kp"))  # the model itself is a layer
    assert type(single) is nn.Linear and set(single.state_dict()) == {"weight", "bias"}


def test_learned_ar_feedback_is_dropped_from_plain_linears():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)).to(DT)
    rule = bp.make("ar", backward_weights="learned", relax_steps=5)
    model = rule.prepare(net)
    assert any(k.endswith("feedback") for k in model.state_dict())
    state = bp.plain_state_dict(model)
    nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)).to(DT).load_state_dict(state)
    assert not any(k.endswith("feedback") for k in bp.to_plain(model).state_dict())


def test_non_modules_are_rejected():
    with pytest.raises(bp.ConfigError, match="nn.Module"):
        bp.to_plain({"weight": torch.zeros(2)})
    with pytest.raises(bp.ConfigError, match="nn.Module"):
        bp.plain_state_dict(None)


@pytest.mark.parametrize("rule_name", bp.list_rules())
def test_every_registered_rule_gives_the_plain_mlp_back(rule_name):
    """Any rule (circuit rules too) trained a step: the MLP's own class takes the state strictly."""

    def mlp():
        return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).to(DT)

    torch.manual_seed(0)
    x, y = torch.randn(5, 6, dtype=DT), torch.randint(0, 3, (5,))
    rule = bp.make(rule_name)
    try:
        model = rule.prepare(mlp(), example=x[:2])
    except bp.IncompatibleModelError as exc:  # a rule for other architectures only
        pytest.skip(str(exc))
    opt = rule.build_optimizer(model, {"name": "sgd", "lr": 0.1})
    rule.train_step(model, x, y, bp.get_loss("cross_entropy"))
    opt.step()
    rule.after_step(model)
    fresh = mlp()
    fresh.load_state_dict(bp.plain_state_dict(model))
    plain = bp.to_plain(model)
    assert [type(m) for m in plain] == [nn.Linear, nn.Tanh, nn.Linear]
    model.eval()
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x)) and torch.equal(plain(x), model(x))
