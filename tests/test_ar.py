"""Activation relaxation (rule ``ar``): oracles derived from the maths of the seed paper.

Every expectation comes from an independent computation: autograd on the same model, a
hand-written feedback-alignment or straight-through autograd function, or numbers worked
out by hand — never from the rule's own output.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import bioplausible as bp
from bioplausible.core.losses import get_loss
from bioplausible.rules.ar.ar_relax import relaxation_coefficients

MSE_SUM = get_loss("mse_sum")


def _model(sizes=(12, 9, 8, 6, 4), acts=("tanh", "relu", "sigmoid"), std=0.4, seed=0,
           dtype=torch.float64):
    torch.manual_seed(seed)
    model = bp.build_model("mlp:" + "-".join(map(str, sizes)),
                           activation=list(acts)[: len(sizes) - 2], init=f"normal:{std}")
    for m in model.modules():  # non-zero biases so that bias handling is exercised
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.bias, 0.0, 0.1)
    return model.to(dtype)


def _batch(n=5, d=12, k=4, seed=1, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=dtype), torch.randint(0, k, (n,), generator=g)


def _linears(model):
    return [m for m in model.modules() if isinstance(m, nn.Linear)]


def _grads(rule, model, x, y, loss=MSE_SUM):
    rule.train_step(model, x, y, loss)
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _autograd(model, x, y, loss=MSE_SUM, feedback=None, straight_through=False):
    """Hidden-layer gradients ∂loss/∂h_l and weight gradients by autograd, optionally with
    feedback alignment (grad_input = g @ ψ) or straight-through activations (f′ := 1)."""

    class FA(torch.autograd.Function):
        @staticmethod
        def forward(ctx, h, w, b, psi):
            ctx.save_for_backward(h, psi)
            return F.linear(h, w, b)

        @staticmethod
        def backward(ctx, g):
            h, psi = ctx.saved_tensors
            return g @ psi, g.t() @ h, g.sum(0), None

    class ST(torch.autograd.Function):
        @staticmethod
        def forward(ctx, a, fn):
            return fn(a)

        @staticmethod
        def backward(ctx, g):
            return g, None

    mods = list(model)
    hs, h = [], mods[0](x)
    for i, lin in enumerate(_linears(model)):
        act = mods[mods.index(lin) + 1]
        if feedback is not None and i > 0:
            a = FA.apply(h, lin.weight, lin.bias, feedback[i])
        else:
            a = lin(h)
        h = ST.apply(a, act) if straight_through else act(a)
        hs.append(h)
    loss_value = loss(h, y)
    params = [p for lin in _linears(model) for p in (lin.weight, lin.bias)]
    grads = torch.autograd.grad(loss_value, hs[:-1] + params)
    n = len(hs) - 1
    return list(grads[:n]), list(grads[n:])


def _close(a, b, rtol):
    a, b = a.detach(), b.detach()
    scale = max(float(b.abs().max()), 1e-30)
    return float((a - b).abs().max()) <= rtol * scale


# --------------------------------------------------------------- closed form == loop
def test_coefficients_one_hidden_layer_by_hand():
    a = relaxation_coefficients(2, 5, 0.3, "gauss_seidel")
    assert a[1][1] == pytest.approx(0.7**5) and a[1][2] == pytest.approx(1 - 0.7**5)
    assert a[2] == (0.0, 0.0, 1.0)  # the clamped top never changes
    j = relaxation_coefficients(3, 1, 0.5, "jacobi")
    assert j[1] == (0.0, 0.5, 0.5, 0.0)  # one Jacobi step cannot reach two layers up


CASES = [("transpose", True), ("transpose", False), ("random", True), ("learned", False)]


@pytest.mark.parametrize("sweep", ["gauss_seidel", "jacobi"])
@pytest.mark.parametrize("steps", [1, 2, 7, 100])
@pytest.mark.parametrize("backward_weights,derivative", CASES)
def test_closed_form_equals_loop(sweep, steps, backward_weights, derivative):
    x, y = _batch()
    out = {}
    for solver in ("closed_form", "loop"):
        model = _model()
        rule = bp.make("ar", solver=solver, sweep=sweep, relax_steps=steps, eta_x=0.15,
                       backward_weights=backward_weights, derivative=derivative)
        rule.set_seed(4)
        rule.prepare(model)
        relaxed = rule.relax(rule.forward_chain(model, x, y, MSE_SUM))
        out[solver] = (relaxed, _grads(rule, model, x, y))
    for a, b in zip(out["closed_form"][0], out["loop"][0]):
        assert _close(a, b, 1e-10)
    for name, g in out["loop"][1].items():
        assert _close(out["closed_form"][1][name], g, 1e-10), name


@pytest.mark.parametrize("sweep", ["gauss_seidel", "jacobi"])
def test_closed_form_equals_loop_deep_net(sweep):
    # 7 layers: the closed form switches from mapping every vector to combining per target
    model = _model(sizes=(12, 10, 9, 8, 7, 6, 5, 4), acts=["tanh", "relu"] * 3, std=0.5)
    x, y = _batch()
    res = {}
    for solver in ("closed_form", "loop"):
        rule = bp.make("ar", solver=solver, sweep=sweep, relax_steps=9, eta_x=0.3)
        res[solver] = rule.relax(rule.forward_chain(model, x, y, MSE_SUM))
    for a, b in zip(res["closed_form"], res["loop"]):
        assert _close(a, b, 1e-10)


def test_closed_form_float32_close_to_float64():
    x, y = _batch()
    m64, m32 = _model(), _model(dtype=torch.float32)
    g64 = _grads(bp.make("ar", solver="loop"), m64, x, y)
    g32 = _grads(bp.make("ar"), m32, x.float(), y)
    for name, g in g64.items():
        assert g32[name].dtype == torch.float32
        assert _close(g32[name].double(), g, 1e-4), name


# ------------------------------------------------------------------ convergence oracles
@pytest.mark.parametrize("sweep", ["gauss_seidel", "jacobi"])
def test_relaxed_activities_converge_to_autograd_gradients(sweep):
    model = _model()
    x, y = _batch()
    truth, _ = _autograd(model, x, y)
    rule = bp.make("ar", sweep=sweep, relax_steps=400, eta_x=0.2)
    chain = rule.forward_chain(model, x, y, MSE_SUM)
    errors = []
    rule.relax(chain, callback=lambda k, hs: errors.append(
        [float((h - g).pow(2).mean()) for h, g in zip(hs, truth)]))
    for layer, g in enumerate(truth):
        assert _close(rule.relax(chain)[layer], g, 1e-9)
        assert errors[-1][layer] < 1e-12 * errors[0][layer]
    assert rule.relax(chain)[0].shape == truth[0].shape


@pytest.mark.parametrize("loss_name", ["mse_sum", "mse", "cross_entropy"])
def test_many_steps_weight_update_equals_bp(loss_name):
    loss = get_loss(loss_name)
    model = _model()
    x, y = _batch()
    rule = bp.make("ar", relax_steps=600, eta_x=0.2)
    got = _grads(rule, model, x, y, loss)
    want = rule.bp_gradients(model, x, y, loss)
    for name, g in want.items():
        assert _close(got[name], g, 1e-10), name


def test_few_steps_do_not_equal_bp():
    model = _model()
    x, y = _batch()
    rule = bp.make("ar", relax_steps=3)
    got = _grads(rule, model, x, y)
    want = rule.bp_gradients(model, x, y, MSE_SUM)
    assert not _close(got["1.weight"], want["1.weight"], 1e-2)


def test_fixed_point_equals_bp_and_jacobi_and_gauss_seidel_agree():
    model = _model()
    x, y = _batch()
    fixed = bp.make("ar", solver="fixed_point")
    want = fixed.bp_gradients(model, x, y, MSE_SUM)
    got = _grads(fixed, model, x, y)
    for name, g in want.items():
        assert _close(got[name], g, 1e-12), name
    ref = fixed.relax(fixed.forward_chain(model, x, y, MSE_SUM))
    for sweep in ("jacobi", "gauss_seidel"):
        rule = bp.make("ar", sweep=sweep, relax_steps=800, eta_x=0.25)
        for a, b in zip(rule.relax(rule.forward_chain(model, x, y, MSE_SUM)), ref):
            assert _close(a, b, 1e-10)


def test_unit_step_size_is_exact_after_depth_steps():
    # η_x = 1: Jacobi shifts the error down one layer per step, Gauss-Seidel in one sweep
    model = _model()
    x, y = _batch()
    ref = bp.make("ar", solver="fixed_point")
    ref = ref.relax(ref.forward_chain(model, x, y, MSE_SUM))
    for sweep, steps in (("jacobi", 3), ("gauss_seidel", 1)):
        rule = bp.make("ar", sweep=sweep, relax_steps=steps, eta_x=1.0)
        for a, b in zip(rule.relax(rule.forward_chain(model, x, y, MSE_SUM)), ref):
            assert _close(a, b, 1e-14)
    early = bp.make("ar", sweep="jacobi", relax_steps=2, eta_x=1.0)
    assert not _close(early.relax(early.forward_chain(model, x, y, MSE_SUM))[0], ref[0], 1e-3)


def test_fixed_point_with_random_feedback_equals_feedback_alignment():
    model = _model()
    x, y = _batch()
    rule = bp.make("ar", solver="fixed_point", backward_weights="random")
    rule.prepare(model)
    psi = [None] + [lin.feedback for lin in _linears(model)[1:]]
    _, wgrads = _autograd(model, x, y, feedback=psi)
    got = _grads(rule, model, x, y)
    for i, lin in enumerate(_linears(model)):
        assert _close(lin.weight.grad, wgrads[2 * i], 1e-12)
        assert _close(lin.bias.grad, wgrads[2 * i + 1], 1e-12)
    bp_grads = rule.bp_gradients(model, x, y, MSE_SUM)
    assert not _close(got["1.weight"], bp_grads["1.weight"], 0.1)  # not-BP guard


def test_removing_the_derivative_is_straight_through_backprop():
    # eq 7: without f′ the fixed point is backprop with every activation's derivative := 1
    model = _model()
    x, y = _batch()
    truth, wgrads = _autograd(model, x, y, straight_through=True)
    rule = bp.make("ar", variant="noderiv", solver="fixed_point", weight_derivative=False)
    relaxed = rule.relax(rule.forward_chain(model, x, y, MSE_SUM))
    for a, b in zip(relaxed, truth):
        assert _close(a, b, 1e-12)
    _grads(rule, model, x, y)
    for i, lin in enumerate(_linears(model)):
        assert _close(lin.weight.grad, wgrads[2 * i], 1e-12)
    # the code's default keeps f′ in the weight update: δ = x_{l+1} ⊙ f′(a_{l+1})
    keep = bp.make("ar", variant="noderiv", solver="fixed_point")
    _grads(keep, model, x, y)
    h1 = torch.tanh(_linears(model)[0](x))
    a2 = _linears(model)[1](h1)
    delta = truth[1] * (a2 > 0).to(a2.dtype)
    assert _close(_linears(model)[1].weight.grad, delta.t() @ h1, 1e-12)
    exact, _ = _autograd(model, x, y)
    assert not _close(relaxed[0], exact[0], 0.05)  # and it is not the true gradient


# ------------------------------------------------------------- hand-computed example
def _tiny():
    model = bp.build_model("mlp:1-2-2-1", activation="relu").double()
    l0, l1, l2 = _linears(model)
    with torch.no_grad():
        l0.weight.copy_(torch.tensor([[1.0], [-2.0]]))
        l1.weight.copy_(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
        l2.weight.copy_(torch.tensor([[1.0, -1.0]]))
        for lin in (l0, l1, l2):
            lin.bias.zero_()
    return model, torch.tensor([[1.0]], dtype=torch.float64), torch.tensor([[1.0]], dtype=torch.float64)


def test_one_step_by_hand():
    # h1 = relu([1, −2]) = [1, 0]; h2 = [1, 3]; out = −2; e = 2(out − 1) = −6.
    model, x, y = _tiny()
    gs = bp.make("ar", relax_steps=1, eta_x=0.5)
    x2, x1 = [-2.5, 4.5], [6.0, 6.5]  # x2 = h2 − ½(h2 − e·W2); x1 = h1 − ½(h1 − x2·W1)
    relaxed = gs.relax(gs.forward_chain(model, x, y, MSE_SUM))
    assert relaxed[1].tolist() == [x2] and relaxed[0].tolist() == [x1]
    jac = bp.make("ar", relax_steps=1, eta_x=0.5, sweep="jacobi")
    relaxed = jac.relax(jac.forward_chain(model, x, y, MSE_SUM))
    assert relaxed[0].tolist() == [[5.5, 7.0]]  # uses the old h2 = [1, 3]
    gs.train_step(model, x, y, MSE_SUM)
    l0, l1, l2 = _linears(model)
    assert l2.weight.grad.tolist() == [[-6.0, -18.0]] and l2.bias.grad.tolist() == [-6.0]
    assert l1.weight.grad.tolist() == [[-2.5, 0.0], [4.5, 0.0]]
    assert l0.weight.grad.tolist() == [[6.0], [0.0]]  # f′ = 0 for the dead unit
    assert l0.bias.grad.tolist() == [6.0, 0.0]


def test_input_layer_is_never_relaxed():
    from torch.overrides import TorchFunctionMode

    model = _model()
    x, y = _batch(n=5)  # input width 12, batch 5: a relaxed input would be a (5, 12) tensor
    w0 = _linears(model)[0].weight
    seen = []
    compute = (F.linear, torch.mm, torch.matmul, torch.Tensor.mm, torch.Tensor.matmul,
               torch.Tensor.__matmul__, torch.Tensor.t, torch.Tensor.detach, torch.Tensor.mul)

    class Spy(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if isinstance(out, torch.Tensor):
                reads_w0 = func in compute and any(a is w0 for a in args)
                seen.append((func, tuple(out.shape), reads_w0))
            return out

    for solver in ("closed_form", "loop", "fixed_point"):
        seen.clear()
        rule = bp.make("ar", solver=solver, relax_steps=5)
        with Spy():
            rule.train_step(model, x, y, MSE_SUM)
        forward_ops = (F.linear, torch.Tensor.flatten)  # the forward pass reads the input
        assert not [s for s in seen if s[1] == (5, 12) and s[0] not in forward_ops], solver
        assert sum(s[2] for s in seen) == 1  # W_0 is read once: the forward pass
    assert len(rule.relax(rule.forward_chain(model, x, y, MSE_SUM))) == 3  # hidden only


# ---------------------------------------------------------------- backward weights
def test_learned_feedback_keeps_w_minus_psi_constant():
    for momentum in (0.0, 0.9):
        model = _model()
        rule = bp.make("ar", variant="learned")
        rule.prepare(model)
        groups = rule.param_groups(model, lr=0.05)
        assert [g["name"] for g in groups] == ["forward", "feedback"]
        opt = torch.optim.SGD(groups, momentum=momentum)
        lins = _linears(model)[1:]
        gap0 = [(lin.weight - lin.feedback).detach().clone() for lin in lins]
        w0 = [lin.weight.detach().clone() for lin in lins]
        for s in range(6):
            x, y = _batch(seed=10 + s)
            rule.train_step(model, x, y, MSE_SUM)
            opt.step()
        for lin, g0, w in zip(lins, gap0, w0):
            assert torch.allclose(lin.weight - lin.feedback, g0, atol=1e-12, rtol=0)
            assert not torch.allclose(lin.weight, w)
        assert len(rule.feedback_pairs(model)) == 3


def test_random_feedback_is_fixed_seeded_and_saved():
    model = _model()
    rule = bp.make("ar", variant="fa", feedback_std=0.05)
    rule.set_seed(3)
    rule.prepare(model)
    lins = _linears(model)
    assert not hasattr(lins[0], "feedback")  # ψ_0 would never be used
    psi = [lin.feedback.detach().clone() for lin in lins[1:]]
    assert all(abs(float(p.std()) - 0.05) < 0.03 for p in psi)
    assert "3.feedback" in model.state_dict()
    opt = torch.optim.SGD(rule.param_groups(model, lr=0.1))
    x, y = _batch()
    rule.train_step(model, x, y, MSE_SUM)
    opt.step()
    assert all(torch.equal(lin.feedback, p) for lin, p in zip(lins[1:], psi))
    again = _model()
    other = bp.make("ar", variant="fa")
    other.set_seed(3)
    other.prepare(again)
    assert torch.equal(_linears(again)[1].feedback, psi[0])


@pytest.mark.parametrize("variant", ["default", "learned", "fa", "fa_noderiv", "noderiv",
                                     "full_construct"])
def test_every_fig3_variant_trains(variant):
    model = _model(dtype=torch.float32)
    rule = bp.make("ar", variant=variant)
    rule.prepare(model)
    opt = torch.optim.SGD(rule.param_groups(model, lr=0.01))
    x, y = _batch(dtype=torch.float32)
    before = rule.train_step(model, x, y, MSE_SUM).loss
    for _ in range(20):
        rule.train_step(model, x, y, MSE_SUM)
        opt.step()
    assert rule.train_step(model, x, y, MSE_SUM).loss < before


def test_other_activations_and_inplace_modules_equal_bp_at_the_fixed_point():
    torch.manual_seed(5)
    model = nn.Sequential(
        nn.Flatten(), nn.Linear(12, 9), nn.LeakyReLU(0.2), nn.Linear(9, 8), nn.Softplus(),
        nn.Linear(8, 7), nn.ReLU(inplace=True), nn.ELU(), nn.Linear(7, 4), nn.Tanh(),
    ).double()
    x, y = _batch()
    rule = bp.make("ar", solver="fixed_point")
    got = _grads(rule, model, x, y)
    want = rule.bp_gradients(model, x, y, MSE_SUM)
    for name, g in want.items():
        assert _close(got[name], g, 1e-12), name


# ------------------------------------------------------- batch-mean losses (issue: core contract)
def _per_example_grads(rule, model, x, y, loss):
    """The oracle: relax each example alone (a batch of one, where a batch-mean loss is that
    example's own loss, so no reduction is involved) and combine the per-example updates with
    the loss's batch reduction (mean or sum)."""
    total = None
    for n in range(x.shape[0]):
        g = _grads(rule, model, x[n : n + 1], y[n : n + 1], loss)
        total = g if total is None else {k: total[k] + g[k] for k in g}
    scale = 1.0 / x.shape[0] if loss.reduction == "mean" else 1.0
    return {k: v * scale for k, v in total.items()}


@pytest.mark.parametrize("loss_name", ["cross_entropy", "mse_batchmean", "mse_sum"])
@pytest.mark.parametrize("steps", [1, 5, 100])
@pytest.mark.parametrize("solver", ["closed_form", "loop"])
def test_batch_update_is_the_per_example_relaxation_with_the_losss_reduction(loss_name, steps, solver):
    loss = get_loss(loss_name)
    model = _model()
    x, y = _batch(n=6)
    rule = bp.make("ar", relax_steps=steps, solver=solver)
    got = _grads(rule, model, x, y, loss)
    want = _per_example_grads(rule, model, x, y, loss)
    for name, g in want.items():
        assert torch.allclose(got[name], g, rtol=1e-8, atol=1e-12 * float(g.abs().max())), name


def test_batch_mean_loss_at_finite_k_is_as_close_to_bp_as_a_summed_loss():
    """Relaxing per-example errors makes the relative error to BP independent of the batch
    reduction: cross-entropy's and mse_batchmean's equal mse_sum's on the same model and K."""
    model = _model()
    x, y = _batch(n=7)
    rule = bp.make("ar", relax_steps=40)

    def rel_err(loss):
        got = _grads(rule, model, x, y, loss)
        want = rule.bp_gradients(model, x, y, loss)
        return float((got["3.weight"] - want["3.weight"]).norm() / want["3.weight"].norm())

    summed, averaged = rel_err(get_loss("mse_sum")), rel_err(get_loss("mse_batchmean"))
    assert averaged == pytest.approx(summed, rel=1e-9)
