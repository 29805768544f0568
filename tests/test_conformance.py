"""Every registered rule keeps the rule contract (docs/contract.md), on a model it supports.

The cases are collected from the rule registry, so a new rule is covered the moment it is
registered: it runs in :data:`DEFAULT` (a small sigmoid MLP, summed squared error) unless
:data:`SETTINGS` gives it another small model, loss or options. Each rule, in this order of
the life cycle: prepare and a few steps train; the probe compares it with BP (and BP measures
0° from itself); its state survives ``state_dict``/``load_state_dict`` and ``to(float64)`` and
back; a run stopped after one epoch and resumed ends where an uninterrupted run ends; the plain
model comes back from ``to_plain``; a bad option is one line; two seeds stacked as one model
(``--stack``) equal the two runs apart, or the rule has no stacked step and says so in one line.
"""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from conftest import make_bundle
from torch import nn

import bioplausible as bp
from bioplausible.cli import main
from bioplausible.core.probe import Probe
from bioplausible.core.rule import call_prepare
from bioplausible.engine.task import resolve_loss

DIM, CLASSES = 6, 3

#: the setting every rule runs in unless SETTINGS says otherwise
DEFAULT = {"model": "sigmoid", "loss": "mse_sum", "options": {}, "batch": 8}
#: rules that need another small setting (the model a family supports, its loss, options that keep
#: the case small); keys as in DEFAULT
SETTINGS: dict[str, dict] = {
    "bfa": {"model": "tanh", "loss": "bce_sum"},
    "bdfa": {"model": "tanh", "loss": "bce_sum"},
    "ghost-mb": {"batch": 1},  # the paper's one example per step, circuit state carried over
}


def setting(name: str) -> dict:
    return {**DEFAULT, **SETTINGS.get(name, {})}


def small_model(kind: str) -> nn.Module:
    torch.manual_seed(0)
    act = {"sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "relu": nn.ReLU}[kind]
    return nn.Sequential(nn.Linear(DIM, 5), act(), nn.Linear(5, CLASSES), nn.Sigmoid())


def data():
    return make_bundle(n_train=24, n_test=8, dim=DIM, classes=CLASSES, seed=1)


def config(name: str, **extra) -> dict:
    s = setting(name)
    return {"rule": {"name": name, **s["options"]}, "loss": s["loss"], "optimizer": {"name": "sgd", "lr": 0.01},
            "batch_size": s["batch"], "epochs": 1, "progress": False, **extra}


def states_equal(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and set(a) == set(b) and all(states_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(states_equal(x, y) for x, y in zip(a, b))
    return a == b


RULES = bp.list_rules()


def test_every_registered_rule_is_collected():
    assert set(RULES) == set(bp.list_rules()) and "bp" in RULES and len(RULES) >= 20


def prepared(name: str):
    s = setting(name)
    rule = bp.make(name, **s["options"])
    rule.set_seed(0)
    bundle = data()
    x, y = bundle.train.x[:s["batch"]], bundle.train.y[:s["batch"]]
    model = call_prepare(rule, small_model(s["model"]), x[:2])
    loss = resolve_loss(s["loss"], "multiclass")
    opt = rule.build_optimizer(model, {"name": "sgd", "lr": 0.01})
    return rule, model, opt, loss, x, y


def step(rule, model, opt, loss, x, y):
    res = rule.train_step(model, x, y, loss)
    opt.step()
    rule.after_step(model)
    return res


@pytest.mark.parametrize("name", RULES)
def test_prepare_and_steps_train(name):
    rule, model, opt, loss, x, y = prepared(name)
    before = copy.deepcopy(model.state_dict())
    for _ in range(3):
        res = step(rule, model, opt, loss, x, y)
        assert torch.isfinite(res.loss) and res.output.shape == (x.shape[0], CLASSES)
    moved = [k for k, v in model.state_dict().items() if k in before and not torch.equal(v, before[k])]
    assert moved, f"{name}: three steps changed no weight"
    assert all(torch.isfinite(v).all() for v in model.state_dict().values() if v.is_floating_point())


@pytest.mark.parametrize("name", RULES)
def test_the_probe_compares_with_bp(name):
    rule, model, _opt, loss, x, y = prepared(name)
    probe = Probe(1)
    ref = probe.reference(rule, model, x, y, loss)
    rule.train_step(model, x, y, loss)
    record = probe.compare(rule, model, ref)
    angles = [v for k, v in record.items() if k.startswith("grad_angle")]
    assert angles and all(isinstance(v, float) and math.isfinite(v) for v in angles), record
    if name == "bp":
        assert record["grad_angle"] < 1e-3, record


@pytest.mark.parametrize("name", RULES)
def test_state_dict_round_trip_and_float64(name):
    rule, model, opt, loss, x, y = prepared(name)
    for _ in range(2):
        step(rule, model, opt, loss, x, y)
    state = copy.deepcopy(rule.state_dict())
    again, model2, *_ = prepared(name)
    model2.load_state_dict(model.state_dict())
    again.load_state_dict(state)
    assert states_equal(again.state_dict(), state)
    owned = {k: v.clone() for k, v in rule.owned.state_dict().items()}
    rule.to(dtype=torch.float64)
    assert all(v.dtype == torch.float64 for v in rule.owned.state_dict().values() if v.is_floating_point())
    rule.to(dtype=torch.float32)
    assert states_equal(dict(rule.owned.state_dict()), owned)


@pytest.mark.parametrize("name", RULES)
def test_a_resumed_run_ends_where_an_uninterrupted_one_does(name, tmp_path):
    s = setting(name)
    whole = bp.fit(small_model(s["model"]), name, data(), config=config(name, epochs=2), out=tmp_path / "whole")
    part = tmp_path / "part"
    bp.fit(small_model(s["model"]), name, data(), config=config(name, epochs=1), out=part)
    resumed = bp.fit(small_model(s["model"]), name, data(), config=config(name, epochs=2), out=part, resume=True)
    assert whole.status == resumed.status == "completed"
    assert states_equal(whole.model.state_dict(), resumed.model.state_dict())
    assert states_equal(whole.rule.state_dict(), resumed.rule.state_dict())
    lines = [json.loads(ln) for ln in (part / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines if r["kind"] == "epoch"] == [1, 2]


@pytest.mark.parametrize("name", RULES)
def test_the_plain_model_comes_back(name):
    rule, model, opt, loss, x, y = prepared(name)
    step(rule, model, opt, loss, x, y)
    plain = bp.to_plain(model)
    reference = small_model(setting(name)["model"])
    assert set(plain.state_dict()) == set(reference.state_dict())
    assert not any(type(m).__module__.startswith("bioplausible") for m in plain.modules())
    with torch.no_grad():
        torch.testing.assert_close(plain(x), model(x), rtol=0, atol=0)


@pytest.mark.parametrize("name", RULES)
def test_a_bad_option_is_one_line(name, capsys):
    with pytest.raises(bp.ConfigError) as err:
        bp.make(name, no_such_option=1)
    assert "no_such_option" in str(err.value) and "\n" not in str(err.value)
    code = main(["train", "--rule", name, "--set", "rule.no_such_option=1", "--dataset", "nope-never",
                 "--quiet"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "no_such_option" in lines[0], lines


@pytest.mark.parametrize("name", RULES)
def test_two_seeds_stack_into_what_they_train_apart_or_the_rule_says_why(name):
    """``--stack``: two runs (seeds 0, 1) as one stacked model equal the two runs trained one after
    the other (float64, 1e-10 relative), or the stacking rules refuse them in one line."""
    from test_stacked import _max_rel, _train_stacked, _train_unstacked

    from bioplausible.engine.config import TrainConfig
    from bioplausible.engine.stacked import support
    from bioplausible.experiments.jobs import Job, _build

    s = setting(name)
    bundle = make_bundle(n_train=24, n_test=8, dim=DIM, classes=CLASSES, seed=1, dtype=torch.float64)

    def trainers():
        out = []
        for seed in (0, 1):
            cfg = TrainConfig.from_dict({
                **config(name), "dataset": {"name": "blobs"}, "seed": seed, "dtype": "float64",
                "model": {"spec": f"mlp:{DIM}-5-{CLASSES}", "activation": s["model"], "output_activation": "sigmoid"}})
            out.append(_build(Job(cfg.to_dict(), "unused", name, seed), bundle, cfg, out=None, progress=False))
        return out

    a, b = trainers(), trainers()
    reason = support.config_reason(a[0].config) or support.model_reason(a)
    if reason is not None:
        # a rule with a stacked step stacks in its conformance setting; the others say why
        assert name not in support.STACKED, reason
        assert isinstance(reason, str) and reason and "\n" not in reason
        return
    _train_unstacked(a, epochs=1)
    _train_stacked(b, epochs=1, seeds=(0, 1))
    assert _max_rel(a, b) < 1e-10


@pytest.mark.parametrize("loss", ["setting", "cross_entropy"])
@pytest.mark.parametrize("name", RULES)
def test_a_float32_stack_stays_float32_and_near_its_runs(name, loss):
    """``--stack`` trains in the model's dtype: in float32 every stacked state stays float32 and the
    runs end within float32 rounding of the runs apart, with the rule's own loss and with
    cross-entropy (whose per-example losses node perturbation takes in float64)."""
    from test_stacked import _max_rel, _train_stacked, _train_unstacked

    from bioplausible.engine.config import TrainConfig
    from bioplausible.engine.stacked import support
    from bioplausible.experiments.jobs import Job, _build

    if name not in support.STACKED:
        pytest.skip(f"{name} has no stacked step")
    s = setting(name)
    bundle = make_bundle(n_train=24, n_test=8, dim=DIM, classes=CLASSES, seed=1, dtype=torch.float32)
    loss_name = s["loss"] if loss == "setting" else loss

    def trainers():
        out = []
        for seed in (0, 1):
            cfg = TrainConfig.from_dict({
                **config(name), "loss": loss_name, "dataset": {"name": "blobs"}, "seed": seed,
                "dtype": "float32",
                "model": {"spec": f"mlp:{DIM}-5-{CLASSES}", "activation": s["model"], "output_activation": "sigmoid"}})
            out.append(_build(Job(cfg.to_dict(), "unused", name, seed), bundle, cfg, out=None, progress=False))
        return out

    try:
        a, b = trainers(), trainers()
    except bp.ConfigError as exc:  # the rule does not take this loss at all
        pytest.skip(str(exc))
    reason = support.config_reason(a[0].config) or support.model_reason(a)
    if reason is not None:
        pytest.skip(reason)
    _train_unstacked(a, epochs=1)
    _train_stacked(b, epochs=1, seeds=(0, 1))
    for t in b:
        states = {**t.model.state_dict(), **t.rule.owned.state_dict()}
        assert all(v.dtype == torch.float32 for v in states.values() if v.is_floating_point()), name
    assert _max_rel(a, b) < 1e-4
