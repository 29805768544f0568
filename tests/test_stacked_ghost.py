"""Stacked ghost-unit rules: a stack of R runs computes what the R runs compute one after another.

Oracle: the unstacked rule itself (``GhostRule.train_step`` through ``Trainer.train_epoch``). Each
run is built twice by ``jobs._build``; one copy trains alone, the other inside a stack; after two
epochs (with a short last batch) every weight, ghost-unit weight, feedback matrix, MB's carried
circuit state and the rule's step counter must agree to 1e-10 relative in float64, with the
runs of a stack at their own rates ``eta_w`` / ``eta_v``.
"""

from __future__ import annotations

import pytest
import torch
from conftest import make_bundle
from test_stacked import (  # one epoch loop and comparison for every stacked rule
    _max_rel,
    _train_stacked,
)

from bioplausible.engine.config import TrainConfig
from bioplausible.engine.stacked import (
    config_reason,
    epoch_orders,
    gather,
    make_stack,
    stackable_rules,
)
from bioplausible.experiments.jobs import Job, _build

SEEDS = (0, 1, 2)
FAST = {"dt": 0.005, "tau": 0.01, "free_steps": 12, "clamped_steps": 8}
#: case -> (rule, options, model spec, batch size, bias, per-run (eta_w, eta_v))
CASES = {
    "ma-tf": ("ghost-ma", {**FAST, "beta": 1.0}, "mlp:12-7-4", 8, False, ((2.0, 1.0), (1.0, 2.0), (3.0, 0.5))),
    "ma-fa": ("ghost-ma", {**FAST, "beta": 1.0, "feedback": "random"}, "mlp:12-7-4", 8, False,
              ((2.0, 1.0), (2.0, 1.0), (2.0, 1.0))),
    "ma-deep-bias": ("ghost-ma", {**FAST, "beta": 1.0, "reduction": "sum", "v_reduction": "mean",
                                  "input_rate": "rho", "state_init": "zero"}, "mlp:12-7-5-4", 8, True,
                     (([0.5, 0.3, 0.2], [1.0, 0.5]), ([0.4, 0.3, 0.2], [1.0, 0.4]), (0.3, 0.7))),
    "ma-prime": ("ghost-ma-prime", {**FAST, "eta_w": 2.0, "eta_v": 1.0}, "mlp:12-7-4", 8, False,
                 ((2.0, 1.0), (1.0, 3.0), (2.0, 1.0))),
    "ma-prime-clipped": ("ghost-ma-prime", {**FAST, "clip_dvb": 2e-4, "reduction": "sum"}, "mlp:12-7-5-4", 8,
                         True, ((0.5, 2.0), (0.5, 1.0), (0.2, 2.0))),
    "ma-prime-derivative": ("ghost-ma-prime", {**FAST, "clip_dvb": 0.05, "clip_on": "derivative",
                                               "reduction": "sum"}, "mlp:12-7-4", 8, False,
                            ((0.5, 2.0), (0.5, 1.0), (0.2, 2.0))),
    "ma-prime-weight-clip": ("ghost-ma-prime", {**FAST, "clip_dvb": 2e-3, "weight_clip": 0.3}, "mlp:12-7-5-4", 8,
                             True, ((2.0, 2.0), (1.0, 3.0), (2.0, 1.0))),
    "ma-diagnostics": ("ghost-ma", {**FAST, "beta": 1.0, "diagnostics_every": 2}, "mlp:12-7-4", 8, False,
                       ((2.0, 1.0), (1.0, 2.0), (2.0, 1.0))),
    "mb-tf": ("ghost-mb", {**FAST, "beta": 0.5, "ghost_units": 3}, "mlp:12-7-4", 1, False,
              (([2.0, 0.5], 5.0), ([1.0, 0.5], 5.0), ([2.0, 0.2], 2.0))),
    "mb-fa": ("ghost-mb", {**FAST, "beta": 0.5, "ghost_units": 3, "feedback": "random"}, "mlp:12-7-5-4", 1, True,
              (([2.0, 0.5, 0.5], [5.0, 2.0]), ([2.0, 0.5, 0.5], [5.0, 2.0]), ([1.0, 0.5, 0.5], [5.0, 2.0]))),
    "mb-torch": ("ghost-mb", {**FAST, "beta": 0.5, "ghost_units": 3, "kernel": "torch"}, "mlp:12-7-4", 1, True,
                 (([2.0, 0.5], 5.0), ([1.0, 0.5], 5.0), ([2.0, 0.2], 2.0))),
    "mb-feedforward": ("ghost-mb", {**FAST, "beta": 0.5, "ghost_units": 2, "state_init": "feedforward"},
                       "mlp:12-7-4", 1, False, (([2.0, 0.5], 5.0), ([1.0, 0.5], 5.0), ([2.0, 0.2], 2.0))),
    "mb-diagnostics": ("ghost-mb", {**FAST, "beta": 0.5, "ghost_units": 3, "diagnostics_every": 3},
                       "mlp:12-7-4", 1, False, (([2.0, 0.5], 5.0), ([1.0, 0.5], 5.0), ([2.0, 0.2], 2.0))),
}


def _trainers(case: str, same_rates: bool = False):
    rule, options, spec, batch, bias, rates = CASES[case]
    n_train = 20 if batch > 1 else 7  # 8, 8, 4: a short last batch
    data = make_bundle(n_train=n_train, n_test=5, dim=12, classes=4, dtype=torch.float64)
    out = []
    for seed, (eta_w, eta_v) in zip(SEEDS, rates if not same_rates else [rates[0]] * 3):
        cfg = TrainConfig.from_dict({
            "dataset": {"name": "blobs"},
            "model": {"spec": spec, "activation": "sigmoid", "output_activation": "sigmoid", "bias": bias},
            "rule": {"name": rule, **options, "eta_w": eta_w, "eta_v": eta_v},
            "optimizer": {"name": "sgd", "lr": 0.1}, "loss": "mse_sum", "epochs": 2, "batch_size": batch,
            "seed": seed, "dtype": "float64", "progress": False, "probe_every": 0})
        out.append(_build(Job(cfg.to_dict(), "unused", rule, seed), data, cfg, out=None, progress=False))
    return out


def _train_unstacked(trainers, epochs: int = 2) -> list[float]:
    losses = []
    for t in trainers:
        for _ in range(epochs):
            losses.append(t.train_epoch()["train_loss"])
            t.epoch += 1
    return losses


def _state(t) -> dict[str, torch.Tensor]:
    out = dict(t.model.state_dict())
    out.update({f"owned.{k}": v for k, v in t.rule.owned.state_dict().items()})
    return out


def test_the_ghost_rules_are_stacked():
    for rule in ("ghost-ma", "ghost-ma-prime", "ghost-mb"):
        assert rule in stackable_rules()


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_ghost_stack_equals_its_runs_one_after_another(case):
    a, b, init = _trainers(case), _trainers(case), _trainers(case)
    _train_unstacked(a)
    _train_stacked(b)
    plastic = ("weight", "owned.Vb.1") + (() if CASES[case][0] == "ghost-mb" else ("owned.Vf.1",))
    for name in plastic:  # the runs did learn: W and the ghost-unit weights moved
        moved = max(float((_state(x)[k] - _state(y)[k]).abs().max())
                    for x, y in zip(init, a) for k in _state(x) if k.endswith(name))
        assert moved > 1e-4, name
    if CASES[case][0] == "ghost-mb":  # the carried state is compared too, and it is not the initial one
        assert all(float(_state(x)["owned.state.started"]) == 1.0 for x in a)
    clip = CASES[case][1].get("weight_clip")
    if clip is not None:  # the bound binds: weights of every run sit on it
        assert all(max(float(v.abs().max()) for k, v in _state(x).items() if k.endswith("weight")) == clip
                   for x in b)
    assert _max_rel(a, b) < 1e-10
    for x, y in zip(a, b):  # the step counter of the checkpoint (diagnostics_every counts on it)
        assert x.rule.state_dict()["ghost_steps"] == y.rule.state_dict()["ghost_steps"] > 0
        assert x.rule.metrics(x.model).keys() == y.rule.metrics(y.model).keys()


@pytest.mark.parametrize("case", ["ma-tf", "mb-tf", "mb-torch"])
def test_a_run_with_the_wrong_data_order_is_caught(case):
    """The comparison can fail: run 1 of the stack shuffles with run 2's seed."""
    a, b = _trainers(case, same_rates=True), _trainers(case, same_rates=True)
    _train_unstacked(a)
    _train_stacked(b, seeds=(0, 2, 2))
    assert _max_rel(a, b) > 1e-4


@pytest.mark.parametrize("case", ["ma-prime", "mb-tf"])
def test_a_run_at_another_rate_is_caught(case):
    """The comparison can fail: the stack steps run 1 at run 0's rates."""
    a, b = _trainers(case), _trainers(case)
    _train_unstacked(a)
    stack = make_stack(b)
    for k in range(len(stack.eta_w)):
        stack.eta_w[k][1] = stack.eta_w[k][0]
    stack.hps[1] = stack.hps[0]
    split = b[0].train_split
    n, bs = len(split), b[0].config["batch_size"]
    for epoch in range(2):
        order = epoch_orders(SEEDS, epoch, n)
        for lo in range(0, n, bs):
            stack.step(*gather(split.x, split.y, order[:, lo:lo + bs]))
    stack.unstack()
    assert _max_rel(a, b) > 1e-4


def _config(rule: str, **options):
    return TrainConfig.from_dict({
        "dataset": {"name": "blobs"}, "model": {"spec": "mlp:12-7-4", "activation": "sigmoid",
                                                "output_activation": "sigmoid"},
        "rule": {"name": rule, **options}, "epochs": 1, "batch_size": 1 if rule == "ghost-mb" else 8})


@pytest.mark.parametrize("rule,options,line", [
    ("ghost-ma", {"solver": "literal"}, "ghost-ma's solver='literal' (the step-by-step oracle) has no stacked step"),
    ("ghost-mb", {"weight_clip": 1.0}, "ghost-mb's weight_clip has no stacked step"),
])
def test_what_the_stack_does_not_cover_is_refused_in_one_line(rule, options, line):
    assert config_reason(_config("ghost-ma")) is None and config_reason(_config("ghost-mb")) is None
    assert config_reason(_config(rule, **options)).startswith(line)


def test_ghost_mb_at_another_batch_size_is_refused():
    cfg = TrainConfig.from_dict({**_config("ghost-mb").to_dict(), "batch_size": 4})
    assert "batch_size 1" in config_reason(cfg)


def test_runs_at_other_ghost_rates_share_a_stack_and_other_options_do_not():
    from bioplausible.experiments.runs import plan_groups

    def job(seed, **options):
        cfg = _config("ghost-ma", **options).to_dict()
        cfg["seed"] = seed
        return Job(cfg, "unused", "ghost-ma", seed)

    jobs = [job(0, eta_w=0.1), job(1, eta_w=0.2, eta_v=0.01), job(0, eta_w=0.1, beta=2.0)]
    assert plan_groups(jobs) == [[0, 1], [2]]


@pytest.mark.parametrize("chunk_bytes", [1, 900])
@pytest.mark.parametrize("case", ["ma-tf", "ma-prime-clipped", "mb-torch"])
def test_a_stack_stepped_in_groups_of_runs_equals_its_runs(case, chunk_bytes, monkeypatch):
    """Large stacks step their Euler loop a group of runs at a time (``chunk_bytes``): groups of
    one run, or of two and one, give the same numbers."""
    from bioplausible.engine.stacked.ghost import StackedGhost

    monkeypatch.setattr(StackedGhost, "chunk_bytes", chunk_bytes)
    a, b = _trainers(case), _trainers(case)
    groups = make_stack(b)._groups(CASES[case][3])
    assert len(groups) == (3 if chunk_bytes == 1 else 2 if CASES[case][3] == 8 else 1)
    _train_unstacked(a)
    _train_stacked(b)
    assert _max_rel(a, b) < 1e-10
