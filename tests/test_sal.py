"""SAL (spec §7): oracles from the mathematics, in float64 on small synthetic tensors.

* fast path == the literal per-sample loop of spec §7.2, for every flag combination;
* Q = R = I frozen + ReLU-Jacobian downstream == KP (``kp``) step by step;
* Table 2 special cases: B = Wᵀ == SGD (BP's gradient), B frozen == FA / WM's learning step;
* Lemma 1: ‖Q − Rᵀ‖ shrinks by exactly (1 − η_Q γ) per SGD step; and the W/B analogue
  ``Q_{l+1}B_lᵀ − W_l R_lᵀ`` by (1 − η_W γ) when Q, R are frozen (spec §7.3 (ii));
* §7.3: with Q = Rᵀ, B at its fixed point and an over-parametrised downstream, the upstream error
  is the derivative-free BP signal preconditioned by RᵀR.
"""

from __future__ import annotations

import copy
import itertools

import pytest
import torch

import bioplausible as bp
from bioplausible.core.losses import get_loss
from bioplausible.errors import ConfigError
from bioplausible.rules.sal.sal_ops import _costs, literal_updates

MSE = get_loss("mse_batchmean")
#: The spec's reconstruction (§7.2 defaults), so that the tests do not depend on the rule's defaults.
SPEC = {"downstream": "identity", "sign": 1, "top": "fixed", "qr_init": "zero", "b_init": "normal",
        "rates": {"W": 1, "B": 1, "Q": 10, "R": 10}, "decay": 1e-3}
#: A configuration that trains stably on the synthetic blobs (zero B, identity Q/R, slow Q/R).
STABLE = {"qr_init": "identity", "b_init": "zero", "rates": {"W": 1, "B": 1, "Q": 0.1, "R": 0.1}}


def _net(sizes=(6, 5, 4, 3), seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    spec = "mlp:" + "-".join(map(str, sizes))
    model = bp.build_model(spec, input_shape=(sizes[0],), num_classes=sizes[-1], activation="relu")
    return model.to(dtype)


def _batch(n=7, dim=6, classes=3, seed=1, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, dim, generator=g, dtype=dtype), torch.randint(0, classes, (n,), generator=g)


def _linears(model):
    return [m for m in model.modules() if isinstance(m, torch.nn.Linear)]


def _sal(model, lr=0.1, **opts):
    rule = bp.make("sal", **{**SPEC, **opts})
    rule.set_seed(3)
    model = rule.prepare(model)
    opt = torch.optim.SGD(rule.param_groups(model, lr=lr))
    return rule, model, opt


def _grads(rule, model):
    out = {f"W.{l}": lin.weight.grad for l, lin in enumerate(_linears(model))}
    out.update({f"b.{l}": lin.bias.grad for l, lin in enumerate(_linears(model))})
    out.update({k: v.grad for k, v in rule.tensors.items()})
    return {k: v for k, v in out.items() if v is not None}


FLAGS = list(itertools.product(["identity", "relu_jacobian", "relu", "tanh"], [1, -1],
                               ["activity", "potential"], ["after", "before"], ["fixed", "plastic"]))


@pytest.mark.parametrize("kind,sign,term,read,top", FLAGS)
@pytest.mark.parametrize("width", [1, 2])
@pytest.mark.parametrize("n", [1, 7])
def test_fast_path_equals_literal_loop(kind, sign, term, read, top, width, n):
    model = _net()
    rule, model, _ = _sal(model, downstream=kind, sign=sign, qr_term=term, read=read, top=top,
                          width=width, qr_init="random", qr_init_scale=1.0)
    x, y = _batch(n=n)
    rule.train_step(model, x, y, MSE)
    lins = _linears(model)
    L = len(lins)
    B, Q, R = ([rule.tensors.get(f"{t}.{k}") for k in range(L + 1)] for t in "BQR")
    B, Q, R = ([None if t is None else t.detach() for t in lst] for lst in (B, Q, R))
    onehot = torch.nn.functional.one_hot(y, 3).double()

    def error(hL, n):  # each example's ∂ℓ_n/∂h_L of ℓ_n = ‖h_L − y_n‖²; the loss is their mean
        return 2.0 * (hL - onehot[n].reshape(-1, 1))

    ref = literal_updates([m.weight.detach() for m in lins], [m.bias.detach() for m in lins],
                          ["relu"] * (L - 1) + ["linear"], B, Q, R, x, error,
                          kind=kind, sign=sign, term=term, read=read, mean=True)
    got = _grads(rule, model)
    assert set(got) == set(ref)
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=1e-12, atol=1e-14, msg=k)


def test_the_fast_path_takes_both_associations_on_the_literal_test_net():
    """The batch sizes above exercise both ways of writing the W/B updates (a cost model, so it
    is checked from the multiply-add counts): one example favours the chains through the
    signal, seven examples the shared ``dᵀh`` (first layer: n_in = 6, widths 5)."""
    one, seven = _costs(1, 6, 5, 5, True, None), _costs(7, 6, 5, 5, True, None)
    assert one["W_chain"] < one["W_M"] and seven["W_M"] < seven["W_chain"]
    one, seven = _costs(1, 5, 4, 4, True, 5), _costs(7, 5, 4, 4, True, 5)
    assert one["B_chain"] < one["B_M"] and seven["B_M"] < seven["B_chain"]


def _literal(rule, model, x, y, B=None, Q=None, R=None, **flags):
    lins = _linears(model)
    L = len(lins)
    get = (lambda t: [None if rule.tensors.get(f"{t}.{k}") is None else rule.tensors[f"{t}.{k}"].detach()
                      for k in range(L + 1)])
    onehot = torch.nn.functional.one_hot(y, lins[-1].out_features).double()
    opts = {"kind": rule.config["downstream"], "sign": rule.config["sign"], "term": rule.config["qr_term"],
            "read": rule.config["read"], **flags}
    return literal_updates([m.weight.detach() for m in lins], [m.bias.detach() for m in lins],
                           ["relu"] * (L - 1) + ["linear"], B or get("B"), Q or get("Q"), R or get("R"), x,
                           lambda hL, n: 2.0 * (hL - onehot[n].reshape(-1, 1)), mean=True, **opts)


def test_feedback_first_timing_steps_b_q_r_before_w_reads_the_circuit():
    lr, gamma = 0.1, 0.05
    rule, model, _ = _sal(_net(), lr=lr, timing="feedback_first", qr_init="random", decay=gamma,
                          rates={"W": 1, "B": 2, "Q": 3, "R": 3})
    x, y = _batch()
    L = len(_linears(model))
    first = _literal(rule, model, x, y)
    new = {}
    for name, t in rule.tensors.items():
        eta = lr * {"B": 2, "Q": 3, "R": 3}[name[0]]
        new[name] = t.detach() - eta * (first[name] + gamma * t.detach())
    rule.train_step(model, x, y, MSE)
    for name, t in new.items():
        torch.testing.assert_close(rule.tensors[name].detach(), t, rtol=1e-12, atol=1e-14)
        assert rule.tensors[name].grad is None
    lists = {k: [new.get(f"{k}.{i}") for i in range(L + 1)] for k in "BQR"}
    second = _literal(rule, model, x, y, B=lists["B"], Q=lists["Q"], R=lists["R"])
    for l, lin in enumerate(_linears(model)):
        torch.testing.assert_close(lin.weight.grad, second[f"W.{l}"], rtol=1e-12, atol=1e-14)


def _kp_pair(decay=0.01, lr=0.05):
    base = _net()
    rule, sal_model, sal_opt = _sal(copy.deepcopy(base), lr=lr, qr_init="identity", plastic=["W", "B"],
                                    downstream="relu_jacobian", rates={"W": 1, "B": 1}, decay=decay)
    kp = bp.make("kp", decay=decay)
    kp.set_seed(0)
    kp_model = kp.prepare(copy.deepcopy(base))
    fb = [m for m in kp_model.modules() if hasattr(m, "feedback")]
    with torch.no_grad():  # the same feedback matrices: kp's B is in W's layout (B_salᵀ)
        for l, layer in enumerate(fb[1:], start=1):
            layer.feedback.copy_(rule.tensors[f"B.{l}"].t())
    kp_opt = torch.optim.SGD(kp.param_groups(kp_model, lr=lr))
    return (rule, sal_model, sal_opt), (kp, kp_model, kp_opt, fb)


def test_identity_inter_stream_is_kolen_pollack_step_by_step():
    (rule, sm, so), (kp, km, ko, fb) = _kp_pair()
    for step in range(4):
        x, y = _batch(seed=10 + step)
        rule.train_step(sm, x, y, MSE)
        kp.train_step(km, x, y, MSE)
        for l, (a, b) in enumerate(zip(_linears(sm), fb)):
            torch.testing.assert_close(a.weight.grad, b.weight.grad, rtol=1e-12, atol=1e-15)
            torch.testing.assert_close(a.bias.grad, b.bias.grad, rtol=1e-12, atol=1e-15)
            if l > 0:
                torch.testing.assert_close(rule.tensors[f"B.{l}"].grad, b.feedback.grad.t(),
                                           rtol=1e-12, atol=1e-15)
        so.step()
        ko.step()
    for l, (a, b) in enumerate(zip(_linears(sm), fb)):
        torch.testing.assert_close(a.weight, b.weight, rtol=1e-12, atol=1e-14)
        if l > 0:
            torch.testing.assert_close(rule.tensors[f"B.{l}"], b.feedback.t(), rtol=1e-12, atol=1e-14)


def test_transposed_feedback_is_sgd():
    """Table 2, SGD: B = Wᵀ and Q = R = I; B learns W's update, so it stays Wᵀ and W.grad is BP's."""
    rule, model, opt = _sal(_net(), lr=0.1, qr_init="identity", plastic=["W", "B"], b_init="transpose",
                            downstream="relu_jacobian", rates={"W": 1, "B": 1}, decay=0.0)
    for step in range(4):
        x, y = _batch(seed=20 + step)
        ref = rule.bp_gradients(model, x, y, MSE)
        rule.train_step(model, x, y, MSE)
        for name, p in model.named_parameters():
            torch.testing.assert_close(p.grad, ref[name], rtol=1e-10, atol=1e-13)
        opt.step()


@pytest.mark.parametrize("other", ["fa", "wm"])
def test_frozen_feedback_is_fa_and_the_wm_learning_step(other):
    """Table 2, FA (and WM's engaged step): B fixed, Q = R = I: δ_l = (B_l δ_{l+1}) ⊙ f′(u_l)."""
    base = _net()
    rule, sm, _ = _sal(copy.deepcopy(base), qr_init="identity", plastic=["W"], downstream="relu_jacobian")
    ref_rule = bp.make(other)
    ref_rule.set_seed(0)
    rm = ref_rule.prepare(copy.deepcopy(base))
    fb = [m for m in rm.modules() if hasattr(m, "feedback")]
    with torch.no_grad():
        for l, layer in enumerate(fb[1:], start=1):
            layer.feedback.copy_(rule.tensors[f"B.{l}"].t())
    x, y = _batch()
    rule.train_step(sm, x, y, MSE)
    ref_rule.train_step(rm, x, y, MSE)
    for a, b in zip(_linears(sm), fb):
        torch.testing.assert_close(a.weight.grad, b.weight.grad, rtol=1e-12, atol=1e-15)
    assert all(t.grad is None for t in rule.tensors.values())  # nothing but W learns


@pytest.mark.parametrize("scaling", ["rate", "absolute"])
def test_lemma1_q_minus_r_transpose_decays_by_the_predicted_factor(scaling):
    lr, gamma = 0.05, 0.2
    rule, model, opt = _sal(_net(), lr=lr, qr_init="random", qr_init_scale=1.0, top="plastic",
                            rates={"W": 1, "B": 1, "Q": 3, "R": 3}, decay=gamma, decay_scaling=scaling)
    factor = 1 - (lr * 3 * gamma if scaling == "rate" else gamma)
    for step in range(3):
        before = {k: (rule.tensors[f"Q.{k}"] - rule.tensors[f"R.{k}"].t()).detach().clone()
                  for k in (1, 2, 3)}
        x, y = _batch(seed=30 + step)
        rule.train_step(model, x, y, MSE)
        opt.step()
        for k, d in before.items():
            after = rule.tensors[f"Q.{k}"] - rule.tensors[f"R.{k}"].t()
            assert float(d.norm()) > 0.1
            torch.testing.assert_close(after, factor * d, rtol=1e-12, atol=1e-14)


def test_potential_variant_breaks_exact_alignment():
    """§7.4 item 2: with membrane potentials the two data terms differ, so Lemma 1 is only approximate."""
    rule, model, opt = _sal(_net(), lr=0.05, qr_term="potential", decay=0.0)
    x, y = _batch()
    rule.train_step(model, x, y, MSE)
    opt.step()
    assert float((rule.tensors["Q.1"] - rule.tensors["R.1"].t()).detach().norm()) > 1e-6


def test_w_and_b_align_through_frozen_inter_stream_matrices():
    """§7.3 (ii): Q, R frozen, η_B = η_W: Q_{l+1}B_lᵀ − W_l R_lᵀ shrinks by (1 − η γ) per step."""
    lr, gamma = 0.1, 0.3
    rule, model, opt = _sal(_net(), lr=lr, qr_init="random", qr_init_scale=1.0, plastic=["W", "B"],
                            rates={"W": 1, "B": 1}, decay=gamma, width=2)
    lins = _linears(model)
    L = len(lins)

    def gap(l):
        q = rule.tensors[f"Q.{l + 1}"] if l + 1 < L else torch.eye(lins[-1].out_features, dtype=torch.float64)
        return (q @ rule.tensors[f"B.{l}"].t() - lins[l].weight @ rule.tensors[f"R.{l}"].t()).detach().clone()

    for step in range(3):
        before = {l: gap(l) for l in range(1, L)}
        x, y = _batch(seed=40 + step)
        rule.train_step(model, x, y, MSE)
        opt.step()
        for l, d in before.items():
            torch.testing.assert_close(gap(l), (1 - lr * gamma) * d, rtol=1e-11, atol=1e-13)


def test_aligned_circuit_gives_preconditioned_derivative_free_bp_signal():
    """§7.3: Q_k = R_kᵀ (full column rank, m_k = 3 n_k), B_k R_{k+1} = R_k W_kᵀ ⇒
    Q_{l+1} g_{l+1} = R_{l+1}ᵀR_{l+1} λ̃_{l+1}, λ̃_L = e, λ̃_k = W_kᵀ λ̃_{k+1} (no f′)."""
    rule, model, _ = _sal(_net(sizes=(6, 5, 4, 4, 3)), qr_init="random", qr_init_scale=1.0, width=3,
                          downstream="identity")
    lins = _linears(model)
    L = len(lins)
    R = {k: rule.tensors[f"R.{k}"].detach() for k in range(1, L)}
    R[L] = torch.eye(3, dtype=torch.float64)
    with torch.no_grad():
        for k in range(1, L):
            rule.tensors[f"Q.{k}"].copy_(R[k].t())
            rule.tensors[f"B.{k}"].copy_(R[k] @ lins[k].weight.t() @ torch.linalg.pinv(R[k + 1]))
    x, y = _batch()
    rule.train_step(model, x, y, MSE)
    h = [x]
    for lin in lins:
        h.append(torch.relu(lin(h[-1])) if lin is not lins[-1] else lin(h[-1]))
    lam = {L: 2.0 * (h[L] - torch.nn.functional.one_hot(y, 3).double()) / x.shape[0]}
    for k in range(L - 1, 0, -1):
        lam[k] = lam[k + 1] @ lins[k].weight
    for l in range(L):
        k = l + 1
        M = R[k].t() @ R[k]
        assert float(torch.linalg.eigvalsh(M)[0]) > 1e-6  # PD: R_k has full column rank
        torch.testing.assert_close(lins[l].weight.grad, (lam[k] @ M.t()).t() @ h[l], rtol=1e-9, atol=1e-12)


def test_short_term_modulation_lowers_the_loss():
    rule, model, _ = _sal(_net(), qr_init="identity", b_init="transpose", downstream="relu_jacobian")
    x, y = _batch()
    plain = MSE(model(x), y)
    for tau in (1e-3, 1e-2):
        assert float(MSE(rule.modulate(model, x, y, MSE, tau=tau), y)) < float(plain.detach())
    torch.testing.assert_close(rule.modulate(model, x, y, MSE, tau=0.0), model(x).detach())


def test_metrics_and_gram_images(tmp_path):
    from bioplausible.rules.sal.sal_diag import effective_rank, gram_images

    assert effective_rank(torch.eye(5)) == pytest.approx(5.0)
    assert effective_rank(torch.ones(4, 3)) == pytest.approx(1.0)
    rule, model, opt = _sal(_net(), lr=0.1)
    x, y = _batch()
    for _ in range(3):
        rule.train_step(model, x, y, MSE)
        opt.step()
    m = rule.metrics(model)
    assert m["qr_misalignment"] == pytest.approx(0.0, abs=1e-12)  # zero init: Q ≡ Rᵀ
    assert m["qr_lambda_min"] >= -1e-10  # Q R = Rᵀ R is PSD
    assert {"erank/W.0", "erank/B.1", "erank/Q.2", "erank/R.1"} <= set(m)
    assert gram_images(rule, model, tmp_path / "g.png").stat().st_size > 1000


def test_float32_and_training_on_blobs(tmp_path):
    from conftest import make_bundle

    data = make_bundle()
    torch.manual_seed(0)
    model = bp.build_model("mlp:20-32-32-4", activation="relu")
    cfg = {"progress": False, "rule": {"name": "sal", **SPEC, **STABLE}}
    res = bp.fit(model, "sal", data, config=cfg, epochs=3, lr=0.05, loss="mse_batchmean", batch_size=32)
    assert res.status == "completed"
    assert all(t.dtype == torch.float32 for t in res.rule.tensors.values())
    assert res.history[-1]["test_accuracy"] >= 90.0


def test_resume_is_bit_identical(tmp_path):
    from conftest import make_bundle

    data = make_bundle()

    def run(out, epochs, resume=False):
        torch.manual_seed(0)
        model = bp.build_model("mlp:20-16-16-4", activation="relu")
        cfg = {"progress": False, "rule": {"name": "sal", **SPEC, **STABLE, "qr_init": "random"},
               "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.9}}
        return bp.fit(model, "sal", data, config=cfg, epochs=epochs, loss="mse_batchmean",
                      batch_size=32, out=out, resume=resume)

    full = run(tmp_path / "a", 4)
    run(tmp_path / "b", 2)
    resumed = run(tmp_path / "b", 4, resume=True)
    assert full.status == resumed.status == "completed"
    assert len(full.rule.tensors) == 6 and float(full.rule.tensors["Q.1"].detach().norm()) > 0
    for (k, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), k
    for k, t in full.rule.tensors.items():
        assert torch.equal(t, resumed.rule.tensors[k]), k


def test_bad_input():
    with pytest.warns(UserWarning, match="over-parametrised"):
        bp.make("sal", width=0.5)
    with pytest.raises(ConfigError, match="downstream"):
        bp.make("sal", downstream="softmax")
    with pytest.raises(ConfigError, match="plastic"):
        bp.make("sal", plastic=["W", "X"])
    with pytest.raises(ConfigError, match="rate ratio is 0"):
        bp.make("sal", rates={"Q": 0})
    bp.make("sal", rates={"Q": 0, "R": 0}, plastic=["W", "B"])  # frozen matrices may have rate 0
    with pytest.raises(ConfigError, match="rates"):
        bp.make("sal", rates={"Z": 1})
    with pytest.raises(ConfigError, match="one ratio per hidden layer"):
        bp.make("sal", width=[1, 2, 3]).prepare(_net())
    with pytest.raises(ConfigError, match="multiple of"):
        bp.make("sal", width=1.5, downstream="relu_jacobian").prepare(_net())
    with pytest.raises(ConfigError, match="lr"):
        rule = bp.make("sal")
        rule.param_groups(rule.prepare(_net()))


def test_probe_logs_angle_and_circuit_metrics(tmp_path):
    """The SGD configuration (B = Wᵀ, Q = R = I, ReLU Jacobian) has a 0° angle to BP."""
    import json

    from conftest import make_bundle

    torch.manual_seed(0)
    model = bp.build_model("mlp:20-16-16-4", activation="relu")
    cfg = {"progress": False, "probe_every": 2, "dtype": "float64",
           "rule": {"name": "sal", **SPEC, "qr_init": "identity", "b_init": "transpose",
                    "plastic": ["W", "B"], "downstream": "relu_jacobian", "rates": {"W": 1, "B": 1}}}
    bp.fit(model, "sal", make_bundle(), config=cfg, epochs=1, lr=0.01, loss="mse_batchmean",
           batch_size=32, out=tmp_path)
    probes = [json.loads(ln) for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()
              if json.loads(ln)["kind"] == "probe"]
    assert probes and all(p["grad_angle"] < 1e-3 for p in probes)
    assert all("qr_lambda_min/1" in p and "erank/B.1" in p for p in probes)


def test_frozen_upstream_ablation_trains_only_the_circuit():
    rule, model, opt = _sal(_net(), plastic=["B", "Q", "R"])
    before = [m.weight.detach().clone() for m in _linears(model)]
    x, y = _batch()
    rule.train_step(model, x, y, MSE)
    opt.step()
    assert all(torch.equal(a, m.weight) for a, m in zip(before, _linears(model)))
    assert float(rule.tensors["Q.1"].detach().norm()) > 0


@pytest.mark.parametrize("kind,loss,scale", [("mse", "mse_batchmean", 0.5), ("cross_entropy", "cross_entropy", 1.0)])
def test_explicit_output_errors_match_the_loss_gradient(kind, loss, scale):
    """``mse``: g_L = (h_L − y)/N = ½ ∂/∂h_L of mse_batchmean; ``cross_entropy``: (softmax − y)/N."""
    x, y = _batch()
    got, ref = [], []
    for mode, out in ((kind, got), ("loss", ref)):
        rule, model, _ = _sal(_net(), output_error=mode, qr_init="random")
        rule.train_step(model, x, y, get_loss(loss))
        out.append(_grads(rule, model))
    assert set(got[0]) == set(ref[0])
    for k, v in ref[0].items():  # every update is linear in g_L (φ = identity in SPEC)
        torch.testing.assert_close(got[0][k], scale * v, rtol=1e-10, atol=1e-13)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_step_matches_cpu():
    rule, model, _ = _sal(_net(dtype=torch.float32), qr_init="random")
    x, y = _batch(dtype=torch.float32)
    rule.train_step(model, x, y, MSE)
    cpu = _grads(rule, model)
    rule2, model2, _ = _sal(_net(dtype=torch.float32).cuda(), qr_init="random")
    rule2.train_step(model2, x.cuda(), y.cuda(), MSE)
    for k, v in _grads(rule2, model2).items():
        assert v.device.type == "cuda"
        torch.testing.assert_close(v.cpu(), cpu[k], rtol=1e-4, atol=1e-5)


def test_extra_downstream_units_stay_silent_from_identity_and_zero_init():
    """Q = [I 0], R = [I; 0], B = 0: every update leaves the extra units' rows/columns at zero,
    so a wider downstream computes exactly what the equal-width one does."""
    opts = {"qr_init": "identity", "b_init": "zero", "downstream": "relu_jacobian", "sign": -1}
    narrow, wide = (_sal(_net(), lr=0.1, width=w, **opts) for w in (1, 3))
    for step in range(3):
        x, y = _batch(seed=50 + step)
        for rule, model, opt in (narrow, wide):
            rule.train_step(model, x, y, MSE)
            opt.step()
    for a, b in zip(_linears(narrow[1]), _linears(wide[1])):
        torch.testing.assert_close(a.weight, b.weight, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(wide[0].tensors["Q.1"][:, 5:], torch.zeros(5, 10, dtype=torch.float64))


@pytest.mark.parametrize("kind", ["tanh", "relu", "identity"])
@pytest.mark.parametrize("output_error", ["loss", "mse"])
def test_update_independent_of_batch_size_for_copies_of_one_example(kind, output_error):
    """A batch of N copies of one example has the batch-mean loss of that example alone, so
    every update (W, b, B, Q, R) must equal the single example's: the downstream stream must
    carry the example's own error (tanh is not homogeneous: tanh(v/N) ≠ tanh(v)/N)."""
    x, y = _batch(n=1)
    got = {}
    for n in (1, 8):
        rule, model, _ = _sal(_net(), downstream=kind, output_error=output_error,
                              qr_init="random", qr_init_scale=1.0, b_init="normal")
        rule.train_step(model, x.repeat(n, 1), y.repeat(n), MSE)
        got[n] = _grads(rule, model)
    assert set(got[1]) == set(got[8])
    for k in got[1]:
        torch.testing.assert_close(got[8][k], got[1][k], rtol=1e-12, atol=1e-14, msg=k)
