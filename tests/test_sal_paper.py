"""SAL at the paper's setting: random connectivity, the connection-ratio width, assembly metrics.

Oracles: the connection count of B against W's, Lemma 1's exact decay factor of Q − Rᵀ with the
data term on (the two data terms are transposes of each other), and the metrics' definitions
evaluated by hand on small matrices.
"""

from __future__ import annotations

import math

import pytest
import torch

import bioplausible as bp
from bioplausible.core.losses import get_loss
from bioplausible.errors import ConfigError
from bioplausible.rules.sal.sal_paper import PAPER_SETTING, backward_alignment, m_spectrum

MSE = get_loss("mse_batchmean")


def _net(sizes=(8, 10, 10, 3), seed=0):
    torch.manual_seed(seed)
    model = bp.build_model("mlp:" + "-".join(map(str, sizes)), input_shape=(sizes[0],),
                           num_classes=sizes[-1], activation="relu")
    return model.double()


def _linears(model):
    return [m for m in model.modules() if isinstance(m, torch.nn.Linear)]


@pytest.mark.parametrize("ratio", [1, 4, 9])
def test_connection_ratio_sets_the_downstream_width(ratio):
    rule = bp.make("sal", setting="paper", connections=ratio)
    model = rule.prepare(_net())
    w1 = _linears(model)[1].weight          # 10 x 10, hidden to hidden
    b1 = rule.tensors["B.1"]                # m_1 x m_2
    assert b1.numel() == ratio * w1.numel()
    k = math.isqrt(ratio)
    assert b1.shape == (10 * k, 10 * k)
    assert rule.tensors["B.2"].shape == (10 * k, 3)   # the top B reaches the n_L output errors
    assert rule.tensors["Q.1"].shape == (10, 10 * k) and rule.tensors["R.2"].shape == (10 * k, 10)


def test_connection_ratio_bad_input():
    with pytest.raises(ConfigError, match="connections"):
        bp.make("sal", connections=0)
    with pytest.raises(ConfigError, match="connections"):
        bp.make("sal", connections=True)
    with pytest.raises(ConfigError, match="not both"):
        bp.make("sal", connections=4, width=2)
    with pytest.raises(ConfigError, match="setting"):
        bp.make("sal", setting="papers")
    with pytest.raises(ConfigError, match="qr_fan"):
        bp.make("sal", qr_fan="out")


def test_paper_setting_draws_all_four_matrices_iid_gaussian():
    rule = bp.make("sal", setting="paper", connections=4, decay=0.3)
    assert rule.config["decay"] == 0.3                     # explicit options win
    for key, value in PAPER_SETTING.items():
        if key != "decay":
            assert rule.config[key] == value, key
    model = rule.prepare(_net(sizes=(300, 200, 200, 3)))
    lins = _linears(model)
    for lin in lins:                                       # W_l ~ N(0, 1/(3 n_l)), biases 0
        var = float(lin.weight.detach().double().var())
        assert var == pytest.approx(1 / (3 * lin.weight.shape[1]), rel=0.08 if lin.weight.numel() > 1000 else 0.5)
        assert float(lin.bias.detach().abs().max()) == 0.0
    t = rule.tensors
    assert float(t["B.1"].detach().var()) == pytest.approx(1 / 400, rel=0.05)     # N(0, 1/m_k)
    assert float(t["B.2"].detach().var()) == pytest.approx(1 / 400, rel=0.15)
    for name in ("Q.1", "R.1", "Q.2", "R.2"):                           # N(0, 1/m_k), m_k = 400
        assert float(t[name].detach().var()) == pytest.approx(1 / 400, rel=0.05)
    # independent draws: Q and Rᵀ are unaligned, ‖Q − Rᵀ‖/‖Q‖ ≈ √2
    assert rule.metrics(model)["qr_misalignment"] == pytest.approx(math.sqrt(2), rel=0.05)
    # M = RᵀR of a 400 x 200 R with entries of variance 1/400: Marchenko–Pastur edge (1 − √½)²
    lam, mean = m_spectrum(t["R.1"])
    assert mean == pytest.approx(1.0, rel=0.05)
    assert lam == pytest.approx((1 - math.sqrt(0.5)) ** 2, rel=0.3)


def test_lemma1_from_random_connectivity_with_the_data_term_on():
    """Lemma 1 at the paper's setting: the data terms of Q and R are transposes, so Q − Rᵀ
    shrinks by exactly (1 − η_Q γ) per step while Q and R themselves move with the data."""
    lr, gamma = 0.05, 0.3
    rule = bp.make("sal", setting="paper", connections=4, decay=gamma)
    rule.set_seed(2)
    model = rule.prepare(_net())
    opt = rule.build_optimizer(model, {"name": "sgd", "lr": lr})
    g = torch.Generator().manual_seed(5)
    gap0 = {k: (rule.tensors[f"Q.{k}"] - rule.tensors[f"R.{k}"].t()).detach().clone() for k in (1, 2)}
    q0 = rule.tensors["Q.1"].detach().clone()
    steps = 6
    for _ in range(steps):
        x = torch.randn(9, 8, generator=g, dtype=torch.float64)
        y = torch.randint(0, 3, (9,), generator=g)
        opt.zero_grad()
        rule.train_step(model, x, y, MSE)
        assert float(rule.tensors["Q.1"].grad.norm()) > 1e-3    # the data term is on
        opt.step()
    for k, d in gap0.items():
        after = rule.tensors[f"Q.{k}"] - rule.tensors[f"R.{k}"].t()
        torch.testing.assert_close(after, (1 - lr * gamma) ** steps * d, rtol=1e-10, atol=1e-12)
    # Q itself did not just decay: the data term moved it
    assert float((rule.tensors["Q.1"] - (1 - lr * gamma) ** steps * q0).norm()) > 1e-3


def test_backward_alignment_and_spectrum_by_hand():
    eye = torch.eye(2, dtype=torch.float64)
    w = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64)
    # assembled: B R_{k+1} = R Wᵀ with Q = R = I → angle 0, residual 0
    assert backward_alignment(eye, w.t(), None, eye, w) == pytest.approx((0.0, 0.0), abs=1e-6)
    assert backward_alignment(eye, -w.t(), None, eye, w) == pytest.approx((180.0, 2.0), abs=1e-6)
    # W = I, B = [[1, 1], [0, 1]]: residual ‖B − I‖/‖I‖ = 1/√2; angle acos(tr B / (‖B‖ ‖I‖)) = acos(2/√6)
    b = torch.tensor([[1.0, 1.0], [0.0, 1.0]], dtype=torch.float64)
    ang, rel = backward_alignment(eye, b, None, eye, eye)
    assert rel == pytest.approx(1 / math.sqrt(2))
    assert ang == pytest.approx(math.degrees(math.acos(2 / math.sqrt(6))))
    # Q, R_{k+1} enter: Q = 2I, R_{k+1} = 3I, R = I, W = I, B = I: QBR = 6I (angle 0), ‖3I − I‖/‖I‖ = 2
    ang, rel = backward_alignment(2 * eye, eye, 3 * eye, eye, eye)
    assert (ang, rel) == pytest.approx((0.0, 2.0), abs=1e-6)
    # M = RᵀR with R = [[1, 0], [0, 2], [0, 0]]: eigenvalues 1 and 4
    r = torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.0, 0.0]], dtype=torch.float64)
    assert m_spectrum(r) == pytest.approx((1.0, 2.5))


def test_assembly_metrics_in_the_rules_metrics():
    rule = bp.make("sal", setting="paper", connections=4)
    model = rule.prepare(_net())
    m = rule.metrics(model)
    lins = _linears(model)
    t = rule.tensors
    ang, rel = backward_alignment(t["Q.1"], t["B.1"], t.get("R.2"), t["R.1"],
                                  lins[1].weight)
    assert m["bwd_angle/1"] == pytest.approx(ang) and m["bwd_relerr/1"] == pytest.approx(rel)
    assert m["m_lambda_min"] == pytest.approx(min(m_spectrum(t["R.1"])[0], m_spectrum(t["R.2"])[0]))
    assert {"bwd_angle/2", "bwd_relerr", "m_lambda_mean/1"} <= set(m)


def test_b_init_normal_out_takes_the_variance_of_w_transpose():
    """``normal_out``: B_k ~ N(0, 1/m_k), so the top B (m × n_L) does not amplify the n_L output
    errors √(m/n_L)-fold as B's fan-in init N(0, 1/n_L) does."""
    rule = bp.make("sal", setting="paper", connections=4)   # the paper setting's B init
    assert rule.config["b_init"] == "normal_out"
    rule.prepare(_net(sizes=(300, 200, 200, 3)))
    assert float(rule.tensors["B.1"].var()) == pytest.approx(1 / 400, rel=0.05)
    assert float(rule.tensors["B.2"].var()) == pytest.approx(1 / 400, rel=0.15)
    fan_in = bp.make("sal", setting="paper", connections=4, b_init="normal")
    fan_in.prepare(_net(sizes=(300, 200, 200, 3)))
    assert float(fan_in.tensors["B.2"].var()) == pytest.approx(1 / 3, rel=0.15)
