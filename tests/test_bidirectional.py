"""BFA and BDFA (Luo, Fu & Glass 2017; spec §6): oracles from the paper's equations.

* the batched rules against the literal per-sample column-vector equations (float64, SGD,
  several steps; BFA with the backward phase after the forward step and without);
* BFA's forward phase = FA with B = the generative weights; its backward phase = FA on the
  generative network with the forward weights as feedback; the phases run in order;
* BDFA's forward phase = DFA with its direct matrices; each direct-matrix update = autograd's
  gradient of its per-layer agreement loss;
* bad input, generation, max-norm, training and exact resume.
"""

from __future__ import annotations

import pytest
import torch
from conftest import make_bundle
from torch import nn

import bioplausible as bp
from bioplausible.core.losses import get_loss
from bioplausible.engine.config import TrainConfig
from bioplausible.engine.trainer import Trainer
from bioplausible.errors import ConfigError, IncompatibleModelError
from bioplausible.nn.convert import feedback_layers
from bioplausible.rules.bidirectional import literal
from bioplausible.rules.bidirectional.bdfa import mixed_target

SIZES = {1: [7, 5, 3], 2: [7, 5, 4, 3], 3: [7, 5, 4, 6, 3]}


def _model(sizes, seed=0, dtype=torch.float64, activation="tanh"):
    torch.manual_seed(seed)
    return bp.build_model("mlp:" + "-".join(map(str, sizes)), activation=activation).to(dtype)


def _batch(sizes, n=6, seed=1, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, sizes[0], generator=g, dtype=dtype), torch.randint(0, sizes[-1], (n,), generator=g)


def _linears(model):
    return [m for m in model if isinstance(m, nn.Linear)]


def _tanh_d(a):
    return 1 - torch.tanh(a) ** 2




@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize("sigma_x", ["identity", "sigmoid"])
def test_bfa_matches_literal_equations_in_phase_order(depth, sigma_x):
    sizes, lr = SIZES[depth], 0.05
    model = _model(sizes)
    rule = bp.make("bfa", sigma_x=sigma_x)
    model = rule.prepare(model)
    W = [lin.weight.detach().clone() for lin in _linears(model)]
    b = [lin.bias.detach().clone() for lin in _linears(model)]
    G = [g.detach().clone() for g in rule.gen_w]
    c = [v.detach().clone() for v in rule.gen_b]
    opt = rule.build_optimizer(model, {"name": "sgd", "lr": lr})  # one optimizer per phase
    for step in range(3):
        x, y = _batch(sizes, seed=step)
        rule.train_step(model, x, y, get_loss("bce_sum"))
        opt.step()  # both phases were stepped inside train_step: nothing left to do
        W, b, G, c = literal.bfa_step(W, b, G, c, x, nn.functional.one_hot(y, sizes[-1]).double(), lr,
                                      torch.tanh, _tanh_d, sigma_x, sequential=True)
        for lin, w, v in zip(_linears(model), W, b):
            torch.testing.assert_close(lin.weight.detach(), w, rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(lin.bias.detach(), v, rtol=1e-10, atol=1e-12)
        for g, w, v, cv in zip(rule.gen_w, G, rule.gen_b, c):
            torch.testing.assert_close(g.detach(), w, rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(v.detach(), cv, rtol=1e-10, atol=1e-12)


def test_bfa_single_optimizer_step_matches_literal_without_phase_stepping():
    sizes, lr = SIZES[2], 0.05
    rule = bp.make("bfa")
    model = rule.prepare(_model(sizes))
    W = [lin.weight.detach().clone() for lin in _linears(model)]
    b = [lin.bias.detach().clone() for lin in _linears(model)]
    G = [g.detach().clone() for g in rule.gen_w]
    c = [v.detach().clone() for v in rule.gen_b]
    opt = torch.optim.SGD(rule.param_groups(model, lr))  # a plain optimizer: no phase stepping
    x, y = _batch(sizes)
    rule.train_step(model, x, y, get_loss("bce_sum"))
    opt.step()
    W, b, G, c = literal.bfa_step(W, b, G, c, x, nn.functional.one_hot(y, 3).double(), lr, torch.tanh,
                                  _tanh_d, sequential=False)
    for g, w in zip(rule.gen_w, G):
        torch.testing.assert_close(g.detach(), w, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("sigma_x", ["identity", "sigmoid"])
def test_bfa_class_grouped_generative_phase_equals_per_sample_phase(sigma_x):
    """Class-index labels take the grouped path, one-hot float labels the per-sample one."""
    sizes = SIZES[2]
    x, y = _batch(sizes, n=9)
    grads = []
    for target in (y, nn.functional.one_hot(y, sizes[-1]).double()):
        rule = bp.make("bfa", sigma_x=sigma_x)
        model = rule.prepare(_model(sizes))
        rule.train_step(model, x, target, get_loss("bce"))
        grads.append(([p.grad.clone() for p in rule.generative_parameters()], rule.last_recon))
    for a, b in zip(grads[0][0], grads[1][0]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-13)
    assert grads[0][1] == pytest.approx(grads[1][1], rel=1e-10)


def test_bfa_phases_run_forward_then_generative():
    sizes = SIZES[2]
    rule = bp.make("bfa")
    model = rule.prepare(_model(sizes))
    seen = []

    def record(i):
        seen.append((i, all(p.grad is not None for p in model.parameters()),
                     any(p.grad is not None for p in rule.generative_parameters())))

    rule.build_optimizer(model, {"name": "sgd", "lr": 0.1})
    rule.step_phase = record
    x, y = _batch(sizes)
    rule.train_step(model, x, y, get_loss("bce"))
    assert seen == [(0, True, False), (1, True, True)]
    assert type(rule).phases == (("forward",), ("generative",))


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_bfa_forward_phase_equals_fa_with_generative_weights(depth):
    sizes = SIZES[depth]
    rule = bp.make("bfa")
    model = rule.prepare(_model(sizes))
    fa_model = bp.make("fa").prepare(_model(sizes))
    layers = [layer for _, layer in feedback_layers(fa_model)]
    n = len(layers) - 1
    with torch.no_grad():
        for k, layer in enumerate(layers):  # B for W→_{k+1} in W's layout: (W←_{N+1−k})ᵀ
            layer.feedback.copy_(rule.gen_w[n - k].t())
    x, y = _batch(sizes)
    rule.train_step(model, x, y, get_loss("bce"))
    get_loss("bce")(fa_model(x), y).backward()
    for lin, layer in zip(_linears(model), layers):
        torch.testing.assert_close(lin.weight.grad, layer.weight.grad, rtol=1e-10, atol=1e-13)
        torch.testing.assert_close(lin.bias.grad, layer.bias.grad, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("depth", [1, 2])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_bfa_backward_phase_equals_fa_on_generative_net_with_forward_weights(depth, reduction):
    sizes = SIZES[depth]
    rule = bp.make("bfa", recon_reduction=reduction)
    model = rule.prepare(_model(sizes))
    gen_sizes = sizes[::-1]
    gen_net = _model(gen_sizes, seed=3)
    gen_net = bp.make("fa").prepare(gen_net)
    layers = [layer for _, layer in feedback_layers(gen_net)]
    lins = _linears(model)
    n = len(lins) - 1
    with torch.no_grad():
        for j, layer in enumerate(layers):  # W←_{j+1}, its feedback (W→_{N+1−j})ᵀ in W's layout
            layer.weight.copy_(rule.gen_w[j])
            layer.bias.copy_(rule.gen_b[j])
            layer.feedback.copy_(lins[n - j].weight.t())
    x, y = _batch(sizes)
    rule.train_step(model, x, y, get_loss("bce"))
    x_hat = gen_net(nn.functional.one_hot(y, sizes[-1]).double())
    recon = 0.5 * (x_hat - x).pow(2).sum()
    (recon if reduction == "sum" else recon / x.shape[0]).backward()
    for layer, g, v in zip(layers, rule.gen_w, rule.gen_b):
        torch.testing.assert_close(g.grad, layer.weight.grad, rtol=1e-10, atol=1e-13)
        torch.testing.assert_close(v.grad, layer.bias.grad, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("update", ["code", "paper"])
@pytest.mark.parametrize("target", ["none", "paper", "code"])
@pytest.mark.parametrize("depth", [1, 2, 3])
def test_bdfa_matches_literal_equations(update, target, depth):
    sizes, lr, lr_b = SIZES[depth], 0.05, 0.2
    rule = bp.make("bdfa", update=update, target=target)
    model = rule.prepare(_model(sizes))
    W = [lin.weight.detach().clone() for lin in _linears(model)]
    b = [lin.bias.detach().clone() for lin in _linears(model)]
    B = [m.detach().clone() for m in rule.direct]
    opt = torch.optim.SGD([{"params": list(model.parameters()), "lr": lr},
                           {"params": list(rule.direct), "lr": lr_b}])
    for step in range(3):
        x, y = _batch(sizes, seed=10 + step)
        rule.train_step(model, x, y, get_loss("bce_sum"))
        opt.step()
        W, b, B = literal.bdfa_step(W, b, B, x, nn.functional.one_hot(y, sizes[-1]).double(), lr, lr_b,
                                    torch.tanh, _tanh_d, update, target)
        for lin, w, v in zip(_linears(model), W, b):
            torch.testing.assert_close(lin.weight.detach(), w, rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(lin.bias.detach(), v, rtol=1e-10, atol=1e-12)
        for m, ref in zip(rule.direct, B):
            torch.testing.assert_close(m.detach(), ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_bdfa_forward_phase_equals_dfa_with_its_direct_matrices(depth):
    sizes = SIZES[depth]
    rule = bp.make("bdfa")
    model = rule.prepare(_model(sizes))
    dfa_model = bp.make("dfa").prepare(_model(sizes))
    x, y = _batch(sizes)
    dfa_model(x)  # DFA creates its matrices at the first forward pass
    layers = [layer for _, layer in feedback_layers(dfa_model)]
    with torch.no_grad():
        for layer, m in zip(layers[1:], rule.direct):  # the layer whose input is h_l holds B_l
            layer.direct_feedback.copy_(m)
    rule.train_step(model, x, y, get_loss("bce"))
    get_loss("bce")(dfa_model(x), y).backward()
    for lin, layer in zip(_linears(model), layers):
        torch.testing.assert_close(lin.weight.grad, layer.weight.grad, rtol=1e-10, atol=1e-13)
        torch.testing.assert_close(lin.bias.grad, layer.bias.grad, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("update", ["code", "paper"])
@pytest.mark.parametrize("target", ["none", "paper", "code"])
@pytest.mark.parametrize("pairing", ["fed", "index"])
def test_bdfa_feedback_update_is_gradient_of_its_agreement_loss(update, target, pairing):
    sizes = [7, 5, 5, 5, 3]
    rule = bp.make("bdfa", update=update, target=target, pairing=pairing, alpha=0.25)
    model = rule.prepare(_model(sizes))
    x, y = _batch(sizes)
    rule.train_step(model, x, y, get_loss("bce"))
    # autograd reference: activities of the plain model, targets from its prediction
    h, hs = x, [x]
    for m in list(model)[1:-2]:
        h = m(h)
        if not isinstance(m, nn.Linear):
            hs.append(h.detach())
    y_hat = torch.sigmoid(model(x)).detach()
    y_mix = mixed_target(nn.functional.one_hot(y, 3).double(), y_hat, target, 0.25)
    if target == "code":  # true class 1, others αŷ, written out independently
        ref_mix = 0.25 * y_hat
        ref_mix[torch.arange(len(y)), y] = 1.0
        torch.testing.assert_close(y_mix, ref_mix)
    n = len(rule.direct)
    for l, m in enumerate(rule.direct, start=1):
        partner = l if pairing == "fed" else n + 1 - l
        b = m.detach().clone().requires_grad_(True)
        s = torch.sigmoid(((y_mix @ b) * hs[partner]).sum(1))
        loss = -torch.log(s).sum() if update == "code" else (1 - s).sum()
        (ref,) = torch.autograd.grad(loss, b)
        torch.testing.assert_close(m.grad, ref, rtol=1e-10, atol=1e-13)


def test_bad_input_is_one_line():
    lenet = bp.build_model("lenet", input_shape=(1, 28, 28), num_classes=10)
    for name in ("bfa", "bdfa"):
        with pytest.raises(IncompatibleModelError, match="MLPs only") as info:
            bp.make(name).prepare(lenet)
        assert "\n" not in str(info.value)
    with pytest.raises(IncompatibleModelError, match="mirrored hidden widths"):
        bp.make("bdfa", pairing="index").prepare(_model([7, 5, 4, 3]))
    # the rules' passes flatten from dimension 1: another Flatten is refused, not mishandled
    other_flatten = nn.Sequential(nn.Flatten(start_dim=2), nn.Linear(7, 5), nn.Tanh(), nn.Linear(5, 3))
    for name in ("bfa", "bdfa"):
        with pytest.raises(IncompatibleModelError, match="flattens other than from dimension 1") as info:
            bp.make(name).prepare(other_flatten)
        assert "\n" not in str(info.value)
    bad = [("bfa", {"sigma_x": "tanh"}), ("bfa", {"recon_reduction": "max"}), ("bfa", {"max_norm": -1}),
           ("bfa", {"gen_bias": 1}), ("bdfa", {"max_norm": float("nan")}), ("bdfa", {"alpha": float("inf")}),
           ("bdfa", {"update": "x"}), ("bdfa", {"target": "both"}), ("bdfa", {"alpha": -0.1}),
           ("bdfa", {"pairing": "any"}), ("bdfa", {"mix": 1})]
    for name, opts in bad:
        with pytest.raises(ConfigError) as info:
            bp.make(name, **opts)
        assert "\n" not in str(info.value)


def test_generate_and_max_norm():
    sizes = SIZES[2]
    rule = bp.make("bfa", max_norm=0.3)
    model = rule.prepare(_model(sizes))
    imgs = rule.generate()
    assert imgs.shape == (3, 7)
    onehot = nn.functional.one_hot(torch.arange(3), 3).double()
    ref = onehot
    for j, (g, c) in enumerate(zip(rule.gen_w, rule.gen_b)):
        ref = ref @ g.detach().t() + c.detach()
        ref = torch.tanh(ref) if j < 2 else ref
    torch.testing.assert_close(imgs, ref)
    rule.after_step(model)
    for w in [lin.weight for lin in _linears(model)] + list(rule.gen_w):
        assert float(w.detach().norm(dim=1).max()) <= 0.3 + 1e-12
        assert float(w.detach().norm(dim=0).max()) <= 0.3 + 1e-12


@pytest.mark.parametrize("name", ["bfa", "bdfa"])
def test_float32_training_learns_and_resumes_exactly(tmp_path, name):
    data = make_bundle()
    cfg = TrainConfig.from_dict({"epochs": 4, "batch_size": 32, "progress": False, "loss": "bce",
                                 "optimizer": {"name": "sgd", "lr": 0.5, "momentum": 0.5}})

    def model():
        torch.manual_seed(0)
        return bp.build_model("mlp:20-16-16-4", activation="tanh")

    full = bp.fit(model(), name, data, config=cfg, out=tmp_path / "a")
    assert full.history[-1]["test_accuracy"] >= 90.0
    bp.fit(model(), name, data, config=cfg.updated({"epochs": 2}), out=tmp_path / "b")
    resumed = bp.fit(model(), name, data, config=cfg, out=tmp_path / "b", resume=True)
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3, 4]
    for (k, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), k
    owned_a, owned_b = full.rule.owned.state_dict(), resumed.rule.owned.state_dict()
    assert owned_a.keys() == owned_b.keys() and len(owned_a) == (6 if name == "bfa" else 2)
    for k, v in owned_a.items():
        assert torch.equal(v, owned_b[k]), k
    assert (tmp_path / "b" / "rule_state.pt").is_file()


def test_owned_tensors_have_their_groups_and_layers():
    sizes = SIZES[2]
    bfa = bp.make("bfa")
    model = bfa.prepare(_model(sizes))
    table = {e.name: (e.group, e.layer) for e in bfa.param_table(model)}
    assert table["W_gen.1"] == ("generative", 2) and table["W_gen.3"] == ("generative", 0)
    assert table["0.weight"] == ("forward", 0) if "0.weight" in table else True
    groups = [g["name"] for g in bfa.param_groups(model, 0.1, {"generative": {"lr": 0.01}})]
    assert groups == ["forward", "generative"]
    bdfa = bp.make("bdfa")
    model = bdfa.prepare(_model(sizes))
    table = {e.name: (e.group, e.layer) for e in bdfa.param_table(model)}
    assert table["B.1"] == ("feedback", 1) and table["B.2"] == ("feedback", 2)
    bdfa.to(dtype=torch.float32)
    assert all(b.dtype == torch.float32 for b in bdfa.direct)


def test_generate_cli_writes_png_and_rejects_other_runs(tmp_path, capsys):
    from bioplausible.cli import main
    from bioplausible.rules.bidirectional.generate import generated_images

    data = make_bundle(dim=16)
    cfg = TrainConfig.from_dict({"epochs": 1, "batch_size": 32, "progress": False, "loss": "bce",
                                 "model": {"spec": "mlp:16-8-4", "activation": "tanh"},
                                 "optimizer": {"name": "sgd", "lr": 0.05}})
    torch.manual_seed(0)
    result = Trainer(bp.build_model("mlp:16-8-4", activation="tanh"), "bfa", data,
                     cfg.updated({"rule": {"name": "bfa"}}), out=tmp_path / "run").run()
    images, _ = generated_images(tmp_path / "run")
    torch.testing.assert_close(images, result.rule.generate().float())  # the trained generator
    assert main(["generate", str(tmp_path / "run"), "--out", str(tmp_path / "g.png")]) == 0
    assert (tmp_path / "g.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    Trainer(bp.build_model("mlp:16-8-4", activation="tanh"), "bp", data, cfg, out=tmp_path / "bp").run()
    assert main(["generate", str(tmp_path / "bp")]) == 2
    assert "rule 'bfa'" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["bfa", "bdfa"])
def test_an_in_place_relu_trains_as_the_plain_relu(name):
    """The rules compute activations with their kernels (the model's own modules only in the
    generative pass, on fresh tensors), so ReLU(inplace=True) gives the step of ReLU()."""
    x, y = _batch([7, 5, 4, 3])
    states = []
    for inplace in (False, True):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(7, 5), nn.ReLU(inplace=inplace), nn.Linear(5, 4),
                              nn.ReLU(inplace=inplace), nn.Linear(4, 3)).double()
        rule = bp.make(name)
        model = rule.prepare(model, example=x[:2])
        opt = rule.build_optimizer(model, {"name": "sgd", "lr": 0.1})
        for _ in range(3):
            rule.train_step(model, x, y, get_loss("bce_sum"))
            opt.step()
            rule.after_step(model)
        states.append({**model.state_dict(), **rule.owned.state_dict()})
    assert states[0].keys() == states[1].keys()
    for k in states[0]:
        assert torch.equal(states[0][k], states[1][k]), k
