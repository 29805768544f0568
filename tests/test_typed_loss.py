"""The typed loss: every loss states its batch convention, and rules read it from one place.

``loss = batch_factor(N) · Σ_n per_sample_n`` for every registered loss (the definition of the
convention), and a bare callable is typed once by ``as_loss`` (a batch mean, torch's default),
so a rule gives the same update for a bare callable as for the typed loss it computes.
"""

from __future__ import annotations

import pytest
import torch

import bioplausible as bp
from bioplausible.core.losses import Loss, as_loss, get_loss

N, K = 5, 3


def _batch(name):
    g = torch.Generator().manual_seed(0)
    o = torch.rand(N, K, generator=g, dtype=torch.float64) * 0.8 + 0.1  # rates in (0, 1)
    t = torch.randint(0, K, (N,), generator=g)
    return o, t


@pytest.mark.parametrize("name", [*bp.list_losses(), "nudged_sum:2", "nudged_batchmean:2"])
def test_every_loss_is_its_batch_factor_times_its_per_example_sum(name):
    loss = get_loss(name)
    o, t = _batch(name)
    assert loss.reduction in ("mean", "sum")
    total = loss.batch_factor(N) * loss.per_sample(o, t).sum()
    torch.testing.assert_close(total, loss(o, t), rtol=1e-12, atol=1e-12)


def test_a_bare_callable_is_a_batch_mean_unless_it_says_sum():
    mse = get_loss("mse_batchmean")

    def bare(o, t):
        return mse(o, t)

    typed = as_loss(bare)
    assert typed.reduction == "mean" and typed.batch_factor(4) == 0.25
    o, t = _batch("bare")
    torch.testing.assert_close(typed.per_sample(o, t), mse.per_sample(o, t))
    bare.reduction = "sum"
    assert as_loss(bare).reduction == "sum" and as_loss(mse) is mse
    with pytest.raises(ValueError, match="reduction"):
        Loss("x", bare, "", "batch")


@pytest.mark.parametrize("rule", ["ar", "np", "bfa"])
def test_rules_read_the_convention_of_a_bare_callable_from_as_loss(rule):
    """Before the typed loss, ``ar`` read a bare callable as a batch sum and ``np``/``bfa`` as a
    batch mean; now each gives the same update as for the typed batch-mean loss."""
    typed = get_loss("mse_batchmean")

    def bare(o, t):
        return typed(o, t)

    grads = []
    for loss in (typed, bare):
        torch.manual_seed(0)
        act = torch.nn.Tanh() if rule == "bfa" else torch.nn.Sigmoid()
        model = torch.nn.Sequential(torch.nn.Linear(4, 6), act, torch.nn.Linear(6, 3), torch.nn.Sigmoid())
        r = bp.make(rule)
        r.set_seed(0)
        model = r.prepare(model)
        r.build_optimizer(model, {"name": "sgd", "lr": 0.1})
        g = torch.Generator().manual_seed(1)
        x, y = torch.randn(6, 4, generator=g), torch.randint(0, 3, (6,), generator=g)
        r.train_step(model, x, y, loss)
        grads.append([p.grad.clone() for p in model.parameters() if p.grad is not None])
    assert grads[0] and len(grads[0]) == len(grads[1])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
