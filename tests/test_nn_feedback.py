"""Feedback layers, their autograd Functions and ``convert``: mechanics and bad input."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from torch import nn

import bioplausible as bp
from bioplausible.nn import (
    Conv2dFeedbackFunction,
    FeedbackConv2d,
    FeedbackLinear,
    LinearFeedbackFunction,
    exact_backward,
    feedback_layers,
)

DT = torch.float64


def bp_grads(net, x):
    names, params = zip(*net.named_parameters())
    return dict(zip(names, torch.autograd.grad(net(x).square().sum(), params)))


def grads(model, x):
    for p in model.parameters():
        p.grad = None
    model(x).square().sum().backward()
    return {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


def symmetric(model):
    with torch.no_grad():
        for _, layer in feedback_layers(model):
            layer.feedback.copy_(layer.weight)
    return model


# ------------------------------------------------------------- autograd Functions
def test_functions_with_weight_as_feedback_pass_gradcheck():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, dtype=DT, generator=g, requires_grad=True)
    w = torch.randn(2, 4, dtype=DT, generator=g, requires_grad=True)
    b = torch.randn(2, dtype=DT, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x, w, b: LinearFeedbackFunction.apply(x, w, b, None, w.detach(), None), (x, w, b))
    xc = torch.randn(2, 2, 5, 5, dtype=DT, generator=g, requires_grad=True)
    wc = torch.randn(3, 2, 3, 3, dtype=DT, generator=g, requires_grad=True)
    bc = torch.randn(3, dtype=DT, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x, w, b: Conv2dFeedbackFunction.apply(x, w, b, None, w.detach(), None,
                                                     (2, 1), (1, 0), (1, 2), 1), (xc, wc, bc))


@pytest.mark.parametrize("conv", [
    {"in_channels": 4, "out_channels": 6, "kernel_size": 3, "stride": 2, "padding": 1, "groups": 2},
    {"in_channels": 2, "out_channels": 3, "kernel_size": (3, 2), "dilation": 2, "padding": (2, 1)},
    {"in_channels": 2, "out_channels": 3, "kernel_size": 3, "padding": 1, "padding_mode": "reflect"},
    {"in_channels": 2, "out_channels": 3, "kernel_size": 3, "padding": "same", "padding_mode": "circular"},
    {"in_channels": 2, "out_channels": 3, "kernel_size": 3, "padding": "valid", "bias": False},
])
def test_conv_variants_with_symmetric_feedback_are_backprop(conv):
    net = nn.Sequential(nn.Conv2d(2, conv["in_channels"], 1), nn.Tanh(), nn.Conv2d(**conv),
                        nn.Flatten()).to(DT)
    model = symmetric(bp.convert(net, "fa"))
    x = torch.randn(2, 2, 7, 6, dtype=DT)
    torch.testing.assert_close(model(x), net(x))
    got, ref = grads(model, x), bp_grads(net, x)
    for name in ref:
        torch.testing.assert_close(got[name], ref[name])


def test_linear_on_sequences_and_unbatched_conv():
    net = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2)).to(DT)
    model = symmetric(bp.convert(net, "fa"))
    x = torch.randn(3, 7, 4, dtype=DT)  # (batch, time, features)
    got, ref = grads(model, x), bp_grads(net, x)
    for name in ref:
        torch.testing.assert_close(got[name], ref[name])
    conv = symmetric(bp.convert(nn.Sequential(nn.Conv2d(2, 3, 3), nn.Tanh(), nn.Conv2d(3, 1, 3)).to(DT), "fa"))
    xu = torch.randn(2, 6, 6, dtype=DT)
    assert conv(xu).shape == (1, 2, 2)
    grads(conv, xu)


def test_other_modules_keep_backprop():
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                        nn.MaxPool2d(2), nn.Dropout(0.3), nn.Flatten(), nn.Linear(64, 10),
                        nn.ReLU(), nn.Dropout(0.2), nn.Linear(10, 3)).to(DT)
    model = symmetric(bp.convert(net, "fa"))
    kinds = [type(m).__name__ for m in model]
    assert kinds[:6] == ["FeedbackConv2d", "BatchNorm2d", "ReLU", "MaxPool2d", "Dropout", "Flatten"]
    x = torch.randn(5, 1, 8, 8, dtype=DT)
    torch.manual_seed(3)
    got = grads(model, x)  # same dropout masks through the same seed
    torch.manual_seed(3)
    ref = bp_grads(net, x)
    assert set(got) == set(ref)
    for name in ref:
        torch.testing.assert_close(got[name], ref[name])


# ------------------------------------------------------------- convert
def test_convert_copies_weights_and_leaves_the_original_alone():
    net = bp.build_model("lenet", input_shape=(1, 28, 28))
    state = {k: v.clone() for k, v in net.state_dict().items()}
    rng = torch.get_rng_state()
    model = bp.convert(net, "fa")
    assert torch.equal(torch.get_rng_state(), rng)  # convert draws from the rule's generator
    for k, v in net.state_dict().items():
        assert torch.equal(v, state[k])
        assert torch.equal(model.state_dict()[k], v)
        assert model.state_dict()[k].data_ptr() != v.data_ptr()
    assert all(isinstance(m, nn.Linear | nn.Conv2d) is isinstance(m, FeedbackLinear | FeedbackConv2d)
               for m in model.modules())
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(model(x), net(x))


def test_convert_keeps_shared_layers_shared_and_converts_a_bare_layer():
    shared = nn.Linear(4, 4)
    model = bp.convert(nn.Sequential(shared, nn.Tanh(), shared), "fa")
    assert model[0] is model[2]
    assert isinstance(model[0], FeedbackLinear)
    single = bp.convert(nn.Conv2d(1, 2, 3), "kp")
    assert isinstance(single, FeedbackConv2d) and single.feedback.requires_grad


def test_model_without_linear_or_conv_is_rejected():
    with pytest.raises(bp.IncompatibleModelError, match="Sequential has no nn.Linear or nn.Conv2d"):
        bp.convert(nn.Sequential(nn.ReLU(), nn.Flatten()), "fa")
    with pytest.raises(bp.IncompatibleModelError, match="Sequential"):
        bp.convert(nn.Sequential(nn.ReLU()), "dfa")


def test_convert_rejects_options_with_a_rule_object():
    with pytest.raises(bp.ConfigError):
        bp.convert(nn.Linear(2, 2), bp.make("fa"), feedback_init="weight")


def test_wrong_feedback_shape_names_the_layer():
    model = bp.convert(nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3)), "fa")
    state = model.state_dict()
    model[2].feedback = nn.Parameter(torch.zeros(5, 3), requires_grad=False)
    with pytest.raises(bp.IncompatibleModelError, match=r"layer '2'.*\(5, 3\).*\(3, 5\)"):
        model(torch.randn(2, 4))
    with pytest.raises(bp.IncompatibleModelError, match="layer '2'"):
        bp.convert(model, "fa")
    with pytest.raises(bp.IncompatibleModelError, match="layer '2'"):
        bp.make("fa").feedback_pairs(model)
    fresh = bp.convert(nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3)), "fa")
    state["2.feedback"] = torch.zeros(3, 4)
    with pytest.raises(bp.IncompatibleModelError, match="layer '2'"):
        fresh.load_state_dict(state)


def test_asymmetric_same_padding_is_rejected_with_the_layer_name():
    net = nn.Sequential(nn.Conv2d(1, 2, 2, padding="same"))
    with pytest.raises(bp.IncompatibleModelError, match="layer '0'"):
        bp.convert(net, "fa")


def test_exact_backward_switches_every_layer_to_backprop():
    net = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).to(DT)
    model = bp.convert(net, "usf")
    x = torch.randn(3, 4, dtype=DT)
    with exact_backward():
        got = grads(model, x)
    ref = bp_grads(net, x)
    for name in ref:
        torch.testing.assert_close(got[name], ref[name])
    assert not torch.allclose(grads(model, x)["0.weight"], ref["0.weight"])


def test_models_copy_and_pickle():
    rule = bp.make("brsf")
    model = rule.prepare(nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)))
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert torch.equal(clone[2].feedback, model[2].feedback)
        grads(clone, torch.randn(2, 4))
    assert "feedback=sign_random" in repr(model)


def test_plain_model_loads_the_trained_weights():
    model = bp.convert(bp.build_model("mlp:8-6-3"), "kp")
    plain = bp.build_model("mlp:8-6-3")
    missing, unexpected = plain.load_state_dict(model.state_dict(), strict=False)
    assert not missing and sorted(unexpected) == ["1.feedback", "3.feedback"]
    x = torch.randn(2, 8)
    with torch.no_grad():
        torch.testing.assert_close(plain(x), model(x))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ["fa", "usf", "brsf", "frsf", "kp", "wm", "dfa"])
def test_rules_run_on_cuda(name):
    rule = bp.make(name)
    model = rule.prepare(bp.build_model("lenet", input_shape=(1, 28, 28)).cuda())
    x, y = torch.randn(4, 1, 28, 28, device="cuda"), torch.randint(0, 10, (4,), device="cuda")
    out = rule.train_step(model, x, y, bp.get_loss("cross_entropy"))
    rule.after_step(model)
    assert torch.isfinite(out.loss)
    for p in rule.forward_weights(model).values():
        assert p.grad is not None and p.grad.device.type == "cuda"


@pytest.mark.parametrize("name", ["fa", "kp", "dfa"])
def test_autocast_runs_the_backward_in_the_weight_dtype(name):
    net = bp.build_model("lenet", input_shape=(1, 28, 28))
    model = bp.convert(net, name)
    if name == "fa":
        symmetric(model)
    x = torch.randn(4, 1, 28, 28)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(x).float().square().sum()
    loss.backward()
    for p in bp.make(name).forward_weights(model).values():
        assert p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all()
    if name == "fa":  # symmetric feedback: close to the float32 BP gradient
        ref = bp_grads(net, x)
        g, r = model[0].weight.grad.flatten(), ref["0.weight"].flatten()
        assert torch.dot(g, r) / (g.norm() * r.norm()) > 0.99


# ------------------------------------------------------------------ convert refuses silent swaps
@pytest.mark.parametrize("name", ["np", "sg", "np-dfa", "sg-dfa", "dae", "ar", "sal", "bfa"])
def test_convert_refuses_rules_whose_update_is_not_a_plain_backward(name):
    """np/sg learn B inside train_step: a plain loss.backward() loop would train plain FA with a
    B that never moves. convert refuses in one line instead of swapping the algorithm."""
    from bioplausible.errors import ConfigError

    net = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))
    with pytest.raises(ConfigError) as err:
        bp.convert(net, name)
    assert len(str(err.value).splitlines()) == 1 and "train_step" in str(err.value)


@pytest.mark.parametrize("name", ["fa", "kp", "wm", "dfa", "usf"])
def test_convert_keeps_plain_loop_rules_and_names_layers_left_exact(name):
    class Mixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(10, 8)
            self.conv1 = nn.Conv1d(8, 8, 3, padding=1)
            self.lstm = nn.LSTM(8, 8, batch_first=True)
            self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
            self.norm = nn.LayerNorm(8)
            self.head = nn.Linear(8, 3)

        def forward(self, tokens):
            h = self.emb(tokens)
            h = self.conv1(h.transpose(1, 2)).transpose(1, 2)
            h, _ = self.lstm(h)
            h, _ = self.attn(h, h, h)
            return self.head(self.norm(h).mean(1))

    with pytest.warns(UserWarning, match="exact backprop") as rec:
        model = bp.convert(Mixed(), name)
    text = str(rec[0].message)
    for layer in ("emb (Embedding)", "conv1 (Conv1d)", "lstm (LSTM)", "attn (MultiheadAttention"):
        assert layer in text
    assert "norm (" not in text and "head (" not in text
    assert text.split("feedback): ")[1].count(", ") == 3  # those four only
    assert len(list(feedback_layers(model))) >= 1


def test_convert_of_linear_and_conv2d_only_warns_nothing():
    import warnings

    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 4 * 4, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bp.convert(net, "fa")
