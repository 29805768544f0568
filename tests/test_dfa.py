"""Oracles for direct feedback alignment (Nøkland 2016).

DFA gives every hidden layer the signal ``e @ B_l`` at its output (the input of the next
parametric layer), with ``e = ∂loss/∂output``; with one hidden layer and ``B_1 = W_2`` (the
spec's ``B = W₂ᵀ``) this is exactly backprop.
"""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from torch import nn

import bioplausible as bp
from bioplausible.nn import exact_backward, feedback_layers

DT = torch.float64


def sse(out, target):
    return 0.5 * ((out - target) ** 2).sum()


def grads(model, x, t):
    for p in model.parameters():
        p.grad = None
    sse(model(x), t).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def bp_grads(net, x, t):
    names, params = zip(*net.named_parameters())
    return dict(zip(names, torch.autograd.grad(sse(net(x), t), params)))


def one_hidden(kind: str, bias: bool) -> tuple[nn.Module, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    if kind == "mlp":
        net = nn.Sequential(nn.Linear(6, 5, bias=bias), nn.Tanh(), nn.Linear(5, 3, bias=bias))
        x = torch.randn(4, 6, generator=g, dtype=DT)
    else:
        net = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, bias=bias), nn.ReLU(), nn.Flatten(),
                            nn.Linear(3 * 5 * 5, 3, bias=bias))
        x = torch.randn(4, 2, 5, 5, generator=g, dtype=DT)
    return net.to(DT), x


@pytest.mark.parametrize("kind", ["mlp", "conv"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("policy", ["bp", "dfa"])
def test_one_hidden_layer_with_output_weights_as_feedback_is_backprop(kind, bias, policy):
    net, x = one_hidden(kind, bias)
    t = torch.randn(4, 3, dtype=DT)
    model = bp.convert(net, "dfa", output_layer=policy)
    out_layer = model[-1]
    out_layer.direct_feedback = nn.Parameter(out_layer.weight.detach().clone(), requires_grad=False)
    got, ref = grads(model, x, t), bp_grads(net, x, t)
    assert set(got) == set(ref)
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("kind", ["mlp", "conv"])
def test_random_direct_feedback_is_not_backprop(kind):
    net, x = one_hidden(kind, True)
    t = torch.randn(4, 3, dtype=DT)
    got, ref = grads(bp.convert(net, "dfa"), x, t), bp_grads(net, x, t)
    assert (got["0.weight"] - ref["0.weight"]).norm() > 0.1 * ref["0.weight"].norm()
    last = [n for n in ref if n.endswith("weight")][-1]
    torch.testing.assert_close(got[last], ref[last])


def test_every_hidden_layer_gets_its_own_direct_signal():
    # three hidden layers; each layer's update must be (e @ B_l) ⊙ f′(a_l) times its input
    net = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 4), nn.Sigmoid(),
                        nn.Linear(4, 7), nn.Tanh(), nn.Linear(7, 3)).to(DT)
    model = bp.convert(net, "dfa")
    x, t = torch.randn(8, 5, dtype=DT), torch.randn(8, 3, dtype=DT)
    got = grads(model, x, t)
    # recompute by hand from the plain forward pass
    h0 = x
    a1 = h0 @ net[0].weight.T + net[0].bias
    h1 = torch.tanh(a1)
    a2 = h1 @ net[2].weight.T + net[2].bias
    h2 = torch.sigmoid(a2)
    a3 = h2 @ net[4].weight.T + net[4].bias
    h3 = torch.tanh(a3)
    y = h3 @ net[6].weight.T + net[6].bias
    e = y - t
    b = {name: layer.direct_feedback for name, layer in feedback_layers(model)
         if layer.direct_feedback is not None}
    assert sorted(b) == ["2", "4", "6"]  # the feedback to h_l sits at the next layer's input
    assert b["2"].shape == (3, 6) and b["4"].shape == (3, 4) and b["6"].shape == (3, 7)
    d1 = (e @ b["2"]) * (1 - h1 ** 2)
    d2 = (e @ b["4"]) * h2 * (1 - h2)
    d3 = (e @ b["6"]) * (1 - h3 ** 2)
    torch.testing.assert_close(got["0.weight"], d1.T @ h0)
    torch.testing.assert_close(got["2.weight"], d2.T @ h1)
    torch.testing.assert_close(got["4.weight"], d3.T @ h2)
    torch.testing.assert_close(got["6.weight"], e.T @ h3)
    torch.testing.assert_close(got["0.bias"], d1.sum(0))


def test_output_layer_option_with_an_output_nonlinearity():
    net = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3), nn.Sigmoid()).to(DT)
    x, t = torch.randn(8, 5, dtype=DT), torch.randn(8, 3, dtype=DT)
    results = {}
    for policy in ("bp", "dfa"):
        model = bp.convert(net, "dfa", output_layer=policy)
        results[policy] = (model, grads(model, x, t))
    h = torch.tanh(x @ net[0].weight.T + net[0].bias)
    y = torch.sigmoid(h @ net[2].weight.T + net[2].bias)
    e = y - t  # ∂loss/∂output
    # "bp": true gradient of the output layer, δ_L = e ⊙ σ′(a_L)
    torch.testing.assert_close(results["bp"][1]["2.weight"], (e * y * (1 - y)).T @ h)
    # "dfa": the error itself at the output layer, δ_L = e
    torch.testing.assert_close(results["dfa"][1]["2.weight"], e.T @ h)
    # the hidden layer gets B e in both cases (same seed, same B)
    torch.testing.assert_close(results["bp"][1]["0.weight"], results["dfa"][1]["0.weight"])


def test_unknown_output_policy_is_rejected():
    with pytest.raises(bp.ConfigError, match=r"output_layer 'last'.*'bp', 'dfa'"):
        bp.make("dfa", output_layer="last")


def test_dfa_output_policy_needs_matching_output_shape():
    net = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 4), nn.Flatten(0))
    model = bp.convert(net, "dfa", output_layer="dfa")
    with pytest.raises(bp.IncompatibleModelError, match="'2'"):
        model(torch.randn(3, 5))


def test_wrong_direct_feedback_shape_names_the_layer():
    model = bp.convert(nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3)), "dfa")
    model[2].direct_feedback = nn.Parameter(torch.zeros(4, 6), requires_grad=False)
    with pytest.raises(bp.IncompatibleModelError, match="layer '2'"):
        model(torch.randn(3, 5))


def test_conv_taps_use_the_flattened_activation_shape():
    net = bp.build_model("lenet", input_shape=(3, 32, 32))
    model = bp.convert(net, "dfa")
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    shapes = {n: tuple(layer.direct_feedback.shape) for n, layer in feedback_layers(model)
              if layer.direct_feedback is not None}
    # conv2 sees 6×16×16 (conv1 output after the pool), fc1 the flattened 16×6×6
    assert shapes == {"3": (10, 6 * 16 * 16), "7": (10, 16 * 6 * 6), "9": (10, 120), "11": (10, 84)}
    assert model[0].direct_feedback is None  # the input needs no feedback
    for p in model.parameters():
        if p.requires_grad:
            assert p.grad is not None


def test_exact_backward_and_no_grad_do_not_tap():
    net, x = one_hidden("mlp", True)
    model = bp.convert(net, "dfa")
    with exact_backward():
        out = model(x)
    assert out.grad_fn is not None and "DirectFeedback" not in type(out.grad_fn).__name__
    with torch.no_grad():
        torch.testing.assert_close(model(x), net(x))


def test_state_dict_round_trip_into_a_fresh_model():
    net, x = one_hidden("conv", True)
    rule = bp.make("dfa")
    rule.set_seed(1)
    model = rule.prepare(net)
    model(x)  # creates the direct feedback matrices
    other = bp.make("dfa")
    other.set_seed(2)
    fresh = other.prepare(net)
    fresh.load_state_dict(model.state_dict())
    assert torch.equal(fresh[3].direct_feedback, model[3].direct_feedback)
    t = torch.randn(4, 3, dtype=DT)
    for key, g in grads(model, x, t).items():
        torch.testing.assert_close(grads(fresh, x, t)[key], g)


def test_direct_feedback_is_reproducible_and_model_copies_work():
    def feedback(seed):
        rule = bp.make("dfa")
        rule.set_seed(seed)
        model = rule.prepare(nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3)))
        model(torch.randn(2, 5))
        return model

    a, b, c = feedback(0), feedback(0), feedback(1)
    assert torch.equal(a[2].direct_feedback, b[2].direct_feedback)
    assert not torch.equal(a[2].direct_feedback, c[2].direct_feedback)
    for clone in (copy.deepcopy(a), pickle.loads(pickle.dumps(a))):
        x, t = torch.randn(4, 5), torch.randn(4, 3)
        ga, gc = grads(a, x, t), grads(clone, x, t)
        for key in ga:
            torch.testing.assert_close(ga[key], gc[key])
