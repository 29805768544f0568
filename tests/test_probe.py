"""Probe metrics against hand-computed values and known update directions."""

from __future__ import annotations

import math

import pytest
import torch

import bioplausible as bp
from bioplausible.core.probe import Probe, relative_error, sign_congruence, tensor_angle
from bioplausible.core.rule import FeedbackPair, Rule


def test_metric_formulas_on_hand_examples():
    assert tensor_angle(torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0])) == pytest.approx(45.0)
    assert tensor_angle(torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 0.0])) == pytest.approx(180.0)
    w = torch.tensor([[1.0, -2.0], [3.0, 4.0]])
    b = torch.tensor([[2.0, 2.0], [-1.0, 4.0]])
    assert sign_congruence(w, b) == pytest.approx(0.5)
    assert relative_error(w, b) == pytest.approx(math.sqrt(1 + 16 + 16 + 0) / math.sqrt(30))


class _Rotated(Rule):
    """A test rule whose update is BP's gradient plus an orthogonal part of the same norm."""

    name = "rotated"
    defaults: dict = {}

    def train_step(self, model, x, y, loss_fn):
        res = super().train_step(model, x, y, loss_fn)
        for p in model.parameters():
            g = p.grad.reshape(-1)
            v = torch.randn_like(g)
            v -= (v @ g) / (g @ g) * g
            p.grad += (v / v.norm() * g.norm()).reshape(p.shape)
        return res

    def feedback_pairs(self, model):
        w = model[1].weight
        return [FeedbackPair("1", w, -w)]


def test_probe_measures_45_degrees_and_feedback_metrics():
    torch.manual_seed(0)
    model = bp.build_model("mlp:6-5-3", activation="tanh").double()
    x, y = torch.randn(16, 6, dtype=torch.float64), torch.randint(0, 3, (16,))
    loss = bp.get_loss("cross_entropy")
    rule = _Rotated()
    rule.train_step(model, x, y, loss)
    out = Probe(1).measure(rule, model, x, y, loss)
    assert out["grad_angle"] == pytest.approx(45.0, abs=1e-6)
    assert out["weight_angle/1"] == pytest.approx(180.0)
    assert out["sign_congruence/1"] == pytest.approx(0.0)
    assert out["relative_error/1"] == pytest.approx(2.0)


def test_probe_angle_is_zero_for_bp():
    torch.manual_seed(1)
    model = bp.build_model("mlp:6-5-3", activation="sigmoid").double()
    x, y = torch.randn(16, 6, dtype=torch.float64), torch.randint(0, 3, (16,))
    rule = bp.make("bp")
    rule.train_step(model, x, y, bp.get_loss("mse"))
    out = Probe(1).measure(rule, model, x, y, bp.get_loss("mse"))
    assert out["grad_angle"] == pytest.approx(0.0, abs=1e-5)


def test_a_non_finite_update_has_a_nan_angle():
    """A NaN cosine stays NaN (the run's mean angle then says so), never a clamped 0°."""
    import math

    from bioplausible.core.probe import tensor_angle

    assert math.isnan(tensor_angle(torch.tensor([float("nan"), 1.0]), torch.tensor([1.0, 1.0])))
    assert tensor_angle(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0])) == 90.0
