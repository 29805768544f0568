"""The rule contract as the trainer drives it (docs/contract.md): hooks, owned state, groups,
self-applied updates, phases and the like-for-like probe.

Each trainer hook has a test that fails when the trainer stops calling it: after_step (a
counting rule and WM's mirror), load_state_dict on resume (owned counter, brSF's streams),
set_seed (FA's B per seed), rule.metrics in the probe.
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_bundle
from torch import nn

import bioplausible as bp
from bioplausible.core.probe import Probe
from bioplausible.core.rule import Rule
from bioplausible.engine.config import TrainConfig
from bioplausible.engine.trainer import Trainer
from bioplausible.errors import ConfigError
from bioplausible.nn import feedback_layers


def _model(seed=0, dim=20, classes=4):
    torch.manual_seed(seed)
    return bp.build_model(f"mlp:{dim}-16-{classes}", activation="tanh")


def _cfg(**kw):
    base = {"epochs": 2, "batch_size": 64, "optimizer": {"name": "sgd", "lr": 0.1},
            "progress": False, "loss": "cross_entropy"}
    base.update(kw)
    return TrainConfig.from_dict(base)


class Spy(Rule):
    """BP plus: a step counter it owns, an owned trainable tensor, after_step and metric spies."""

    name = "spy"
    defaults: dict = {}

    def prepare(self, model, example=None):
        self.after_calls = 0
        self.example_shape = None if example is None else tuple(example.shape)
        self.own_buffer("steps", torch.zeros((), dtype=torch.int64))
        self.own("extra.0", torch.ones(3), group="extra", layer=0)
        return model

    def train_step(self, model, x, y, loss_fn):
        res = super().train_step(model, x, y, loss_fn)
        self.owned.steps += 1
        extra = self.owned.get("extra.0")
        extra.grad = torch.full_like(extra, 0.5)
        return res

    def after_step(self, model):
        self.after_calls += 1

    def metrics(self, model):
        return {"spy_metric": 42.0}


# --------------------------------------------------------------------- trainer hooks
def test_trainer_calls_after_step_once_per_step_and_passes_an_example():
    data = make_bundle()
    rule = Spy()
    result = Trainer(_model(), rule, data, _cfg()).run()
    assert rule.after_calls == result.summary["steps"] == 8
    assert rule.example_shape == (2, 20)


def test_weight_mirror_phase_runs_under_the_trainer():
    data = make_bundle()
    model = _model()
    rule = bp.make("wm", mirror_lr=0.1, mirror_decay=0.1)
    trainer = Trainer(model, rule, data, _cfg(epochs=1))
    layer = dict(feedback_layers(trainer.model))["3"]
    before = layer.feedback.detach().clone()
    trainer.run()
    # only mirror steps change B (it is outside the optimizer); 4 steps moved it towards W
    angle_before = bp.core.probe.tensor_angle(layer.weight, before)
    assert bp.core.probe.tensor_angle(layer.weight, layer.feedback) < angle_before - 5.0


def test_resume_restores_owned_state_and_optimizer_of_owned_tensors(tmp_path):
    data = make_bundle()
    cfg = _cfg(epochs=4, optimizer={"name": "sgd", "lr": 0.1, "momentum": 0.9})
    full_rule = Spy()
    Trainer(_model(), full_rule, data, cfg, out=tmp_path / "a").run()
    Trainer(_model(), Spy(), data, cfg.updated({"epochs": 2}), out=tmp_path / "b").run()
    resumed = Spy()
    Trainer(_model(seed=3), resumed, data, cfg, out=tmp_path / "b").run(resume=True)
    assert int(resumed.owned.steps) == int(full_rule.owned.steps) == 16
    assert torch.equal(resumed.owned.get("extra.0"), full_rule.owned.get("extra.0"))
    saved = torch.load(tmp_path / "b" / "rule_state.pt", weights_only=True)
    assert set(saved) == {"steps", "extra.0"} and int(saved["steps"]) == 16


def test_resume_restores_the_rules_random_streams(tmp_path):
    """brSF redraws its magnitudes from the rule's streams every batch: without the rule's
    state on resume the redraws restart and the resumed model differs."""
    data = make_bundle()
    cfg = _cfg(epochs=4)
    full = Trainer(_model(), "brsf", data, cfg, out=tmp_path / "a").run()
    Trainer(_model(), "brsf", data, cfg.updated({"epochs": 2}), out=tmp_path / "b").run()
    resumed = Trainer(_model(), "brsf", data, cfg, out=tmp_path / "b").run(resume=True)
    for (k, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), k


def test_the_seed_reaches_the_rule():
    data = make_bundle()

    def feedback(seed):
        t = Trainer(_model(), "fa", data, _cfg(epochs=1, seed=seed))
        return dict(feedback_layers(t.model))["3"].feedback.detach().clone()

    assert torch.equal(feedback(0), feedback(0))
    assert not torch.equal(feedback(0), feedback(1))


def test_probe_records_carry_the_rules_metrics(tmp_path):
    data = make_bundle()
    Trainer(_model(), Spy(), data, _cfg(epochs=1, probe_every=2), out=tmp_path / "r").run()
    probes = [json.loads(ln) for ln in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()
              if '"probe"' in ln]
    assert len(probes) == 2 and all(p["spy_metric"] == 42.0 for p in probes)


def test_loggers_see_every_record():
    data = make_bundle()
    trainer = Trainer(_model(), "bp", data, _cfg(epochs=2, probe_every=4))

    class Collect:
        records: list = []

        def log(self, record):
            self.records.append(record["kind"])

    trainer.loggers.append(Collect())
    trainer.run()
    assert Collect.records == ["probe", "epoch", "probe", "epoch"]


# ---------------------------------------------------------------- like-for-like probe
def _bp_probe_angles(model, data, **cfg):
    rule = bp.make("bp")
    trainer = Trainer(model, rule, data, _cfg(epochs=1, probe_every=1, batch_size=32, **cfg))
    angles = []
    trainer.loggers.append(type("L", (), {"log": lambda self, r: angles.append(r)})())
    trainer.run()
    return [r for r in angles if r["kind"] == "probe"]


def test_bp_with_dropout_measures_zero_angle():
    data = make_bundle()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 4))
    records = _bp_probe_angles(model, data)
    assert len(records) == 8
    assert max(r["grad_angle"] for r in records) < 1e-3


def test_bp_with_batchnorm_measures_zero_angle_and_updates_running_stats_once():
    g = torch.Generator().manual_seed(0)
    from bioplausible.data import DataBundle, DatasetInfo, Split

    x = torch.randn(64, 2, 6, 6, generator=g)
    y = torch.randint(0, 3, (64,), generator=g)
    data = DataBundle(Split(x, y), Split(x[:16], y[:16]), None,
                      DatasetInfo("imgs", (2, 6, 6), 3, "multiclass"))

    def net():
        torch.manual_seed(1)
        return nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                             nn.Linear(64, 3))

    records = _bp_probe_angles(net(), data)
    assert max(r["grad_angle"] for r in records) < 1e-3
    # one probed step and one plain step from the same state leave the same running statistics
    batch = (x[:16], y[:16])
    a, b = net(), net()
    loss = bp.get_loss("cross_entropy")
    rule = bp.make("bp")
    probe = Probe(1)
    ref = probe.reference(rule, a, *batch, loss)
    rule.train_step(a, *batch, loss)
    probe.compare(rule, a, ref)
    rule.train_step(b, *batch, loss)
    assert torch.equal(a[1].running_mean, b[1].running_mean)
    assert int(a[1].num_batches_tracked) == 1


def test_probe_refuses_a_missing_update():
    class Lazy(Rule):
        name = "lazy"
        defaults: dict = {}

        def train_step(self, model, x, y, loss_fn):
            res = super().train_step(model, x, y, loss_fn)
            model[1].weight.grad = None
            return res

    model, data = _model(), make_bundle()
    rule, probe, loss = Lazy(), Probe(1), bp.get_loss("cross_entropy")
    x, y = data.train.x[:8], data.train.y[:8]
    ref = probe.reference(rule, model, x, y, loss)
    rule.train_step(model, x, y, loss)
    with pytest.raises(bp.core.probe.ProbeError, match="1.weight"):
        probe.compare(rule, model, ref)


# ---------------------------------------------------------------- groups and updates
def test_per_layer_group_options_reach_one_layer():
    data = make_bundle()
    model = _model()
    w0, w1 = model[1].weight.detach().clone(), model[3].weight.detach().clone()
    cfg = _cfg(epochs=1, optimizer={"name": "sgd", "lr": 0.1, "groups": {"forward.1": {"lr": 0.0}}})
    trainer = Trainer(model, "bp", data, cfg)
    trainer.run()
    assert not torch.equal(model[1].weight, w0)
    assert torch.equal(model[3].weight, w1)  # layer 1 (the second Linear) at lr 0
    names = [g["name"] for g in trainer.optimizer.param_groups]
    assert names == ["forward", "forward.1"]
    with pytest.raises(ConfigError, match="no layer '7'"):
        bp.make("bp").param_groups(_model(), 0.1, {"forward.7": {"lr": 0.1}})


class SelfSGD(Rule):
    """BP whose forward update the rule applies itself: W ← W − lr·∂L/∂W inside the step."""

    name = "self-sgd"
    defaults: dict = {}
    updates_forward = True

    def train_step(self, model, x, y, loss_fn):
        res = super().train_step(model, x, y, loss_fn)
        with torch.no_grad():
            for i, m in enumerate(mm for mm in model if isinstance(mm, nn.Linear)):
                for p in (m.weight, m.bias):
                    p.sub_(p.grad, alpha=self.group_lr("forward", i))
                    p.grad = None
        return res


def test_self_applied_forward_updates_equal_sgd_and_the_probe_sees_the_net_change(tmp_path):
    data = make_bundle()
    plain = Trainer(_model(), "bp", data, _cfg()).run()
    rule = SelfSGD()
    mine = Trainer(_model(), rule, data, _cfg(probe_every=1), out=tmp_path / "s").run()
    for a, b in zip(plain.model.parameters(), mine.model.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    probes = [json.loads(ln) for ln in (tmp_path / "s" / "metrics.jsonl").read_text().splitlines()
              if '"probe"' in ln]
    assert probes and max(p["grad_angle"] for p in probes) < 1e-2


def test_optimizer_options_that_cannot_apply_to_self_applied_updates_are_refused():
    with pytest.raises(ConfigError, match="momentum"):
        SelfSGD().build_optimizer(_model(), {"name": "sgd", "lr": 0.1, "momentum": 0.9})
    opt = SelfSGD().build_optimizer(_model(), {"name": "sgd", "lr": 0.1, "momentum": 0.0})
    assert all(not g["params"] for g in opt.param_groups)


def test_group_lr_follows_the_schedule():
    data = make_bundle()
    rule = SelfSGD()
    cfg = _cfg(epochs=2, schedule={"name": "step", "step_size": 1, "gamma": 0.5})
    trainer = Trainer(_model(), rule, data, cfg)
    assert rule.group_lr("forward") == pytest.approx(0.1)
    trainer.run()
    assert rule.group_lr("forward") == pytest.approx(0.025)


class TwoPhase(Rule):
    """Phase 0 trains W by BP; phase 1 sets an owned tensor's .grad from W *after* phase 0."""

    name = "two-phase"
    defaults: dict = {}
    phases = (("forward",), ("shadow",))

    def prepare(self, model, example=None):
        self.own("shadow", torch.zeros_like(model[1].weight), group="shadow")
        return model

    def train_step(self, model, x, y, loss_fn):
        res = super().train_step(model, x, y, loss_fn)
        self.step_phase(0)
        shadow = self.owned.get("shadow")
        shadow.grad = shadow.detach() - model[1].weight.detach()  # lr 1: shadow ← W
        return res


def test_phases_step_in_order_within_a_batch():
    data = make_bundle()
    rule = TwoPhase()
    cfg = _cfg(epochs=1, optimizer={"name": "sgd", "lr": 0.1, "groups": {"shadow": {"lr": 1.0}}})
    trainer = Trainer(_model(), rule, data, cfg)
    trainer.run()
    # the shadow copied W as it was after the forward phase of the last batch: W itself
    torch.testing.assert_close(rule.owned.get("shadow"), trainer.model[1].weight, rtol=0, atol=1e-7)
    assert len(trainer.optimizer.state_dict()["phases"]) == 2


def test_probe_and_epoch_records_get_their_own_hook(tmp_path):
    """The probe calls probe_metrics right after a step; the trainer calls epoch_metrics after the
    epoch's last step. A rule tells the two moments apart by the hook, not by a flag."""

    class TwoHooks(bp.rules.BP):
        def probe_metrics(self, model):
            return {"when": 1.0}

        def epoch_metrics(self, model):
            return {"when": 2.0}

    Trainer(_model(), TwoHooks(), make_bundle(), _cfg(epochs=1, probe_every=2), out=tmp_path / "r").run()
    records = [json.loads(ln) for ln in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert {r["when"] for r in records if r["kind"] == "probe"} == {1.0}
    assert [r["rule/when"] for r in records if r["kind"] == "epoch"] == [2.0]
