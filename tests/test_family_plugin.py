"""A rule family defined outside the package: its rule, loss, metric and subcommand are used through
the public API and the command line, with no core file touched.

The family is an installed distribution in a temporary folder: a package ``toyfam`` and a
``toyfam-0.1.dist-info`` whose ``entry_points.txt`` names it in the group
``bioplausible.families`` (what ``pip install`` of a plugin writes).
"""

from __future__ import annotations

import json
import sys
import textwrap

import numpy as np
import pytest
import torch

import bioplausible as bp
from bioplausible import _registry
from bioplausible.cli import main
from bioplausible.core import hooks, losses, metrics
from bioplausible.rules import registry as rules_registry

FAMILY = '''
"""A toy family: sign-SGD (the sign of BP's gradient) with an L1 loss, a metric and a command."""
import torch

from bioplausible.core.hooks import Command, register_command
from bioplausible.core.losses import Loss, dense_targets, register_loss
from bioplausible.core.metrics import Metric, register_metric
from bioplausible.core.rule import Rule, StepResult
from bioplausible.rules.registry import register


@register("toy-sign")
class SignSGD(Rule):
    family = "exact"
    paper = "toy"
    summary = "sign of the BP gradient"
    defaults = {"scale": 1.0}

    def validate(self):
        self.check_number("scale", 0.0, positive=True)

    def train_step(self, model, x, y, loss_fn):
        for p in model.parameters():
            p.grad = None
        out = model(x)
        loss = loss_fn(out, y)
        loss.backward()
        for p in model.parameters():
            p.grad = self.config["scale"] * p.grad.sign()
        return StepResult(loss.detach(), out.detach())

    def metrics(self, model):
        return {"weight_sum": float(sum(p.detach().abs().sum() for p in model.parameters()))}


def _l1(o, t):
    return (o - dense_targets(o, t)).abs().sum() / o.shape[0]


register_loss(Loss("toy_l1", _l1, "(1/N) sum |o - t|", "mean",
                   lambda o, t: (o - dense_targets(o, t)).abs().reshape(o.shape[0], -1).sum(1)))
register_metric(Metric("rule/weight_sum", "min", "sum of |w| after the last epoch", digits=3))


def _hello(args):
    print(f"toy family says hello to {args.who}")
    return 0


register_command(Command("toy-hello", "the toy family's own subcommand",
                         lambda p: p.add_argument("who"), _hello))
'''


@pytest.fixture
def toy_family(tmp_path, monkeypatch):
    site = tmp_path / "site"
    (site / "toyfam").mkdir(parents=True)
    (site / "toyfam" / "__init__.py").write_text(textwrap.dedent(FAMILY))
    info = site / "toyfam-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toyfam\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[bioplausible.families]\ntoy = toyfam\n")
    monkeypatch.syspath_prepend(str(site))
    yield site
    # leave the registries as the other tests expect them
    for registry, name in ((rules_registry.RULES, "toy-sign"), (losses.LOSSES, "toy_l1"),
                           (metrics.METRICS, "rule/weight_sum"), (hooks.COMMANDS, "toy-hello")):
        registry._items.pop(name, None)
    _registry._loaded.discard("toyfam")
    sys.modules.pop("toyfam", None)


def _data(tmp_path):
    g = np.random.default_rng(0)
    x = g.normal(size=(64, 6)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    np.savez(tmp_path / "toy.npz", x_train=x[:48], y_train=y[:48], x_test=x[48:], y_test=y[48:])
    return tmp_path / "toy.npz"


def test_nothing_of_the_toy_family_is_known_before_it_is_installed():
    with pytest.raises(bp.UnknownNameError):
        bp.make("toy-sign")
    with pytest.raises(bp.UnknownNameError):
        bp.get_loss("toy_l1")


def test_an_installed_family_works_through_the_public_api(toy_family):
    rule = bp.make("toy-sign", scale=0.5)
    assert "toy-sign" in bp.list_rules() and "toy_l1" in bp.list_losses()
    loss = bp.get_loss("toy_l1")
    model = torch.nn.Sequential(torch.nn.Linear(3, 2))
    x, y = torch.randn(5, 3), torch.tensor([0, 1, 1, 0, 1])
    before = [p.detach().clone() for p in model.parameters()]
    rule.train_step(model, x, y, loss)
    reference = torch.autograd.grad(loss(model(x), y), [p for p in model.parameters()])
    for p, g in zip(model.parameters(), reference):
        assert torch.equal(p.grad, 0.5 * g.sign())
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert metrics.lower_is_better("rule/weight_sum") and metrics.metric_digits("rule/weight_sum") == 3
    with pytest.raises(bp.ConfigError, match="scale"):
        bp.make("toy-sign", scale=-1.0)


def test_an_installed_family_works_from_the_command_line(toy_family, tmp_path, capsys):
    assert main(["toy-hello", "world"]) == 0
    assert "toy family says hello to world" in capsys.readouterr().out
    data = _data(tmp_path)
    preset = tmp_path / "toy.yaml"
    preset.write_text(textwrap.dedent(f"""\
        name: toy-preset
        config: {{dataset: {{name: "npz:{data}"}}, model: {{spec: "mlp:6-4-2"}}, loss: toy_l1,
                 optimizer: {{name: sgd, lr: 0.1}}, epochs: 1, batch_size: 16, progress: false}}
        runs: {{toy: {{name: toy-sign, scale: 0.01}}, bp: bp}}
        seeds: [0]
        scales: {{full: {{}}}}
        paper_results: {{metric: rule/weight_sum, values: {{toy: null, bp: null}}}}
        checks: [{{type: max_value, metric: rule/weight_sum, run: toy, max: 1000000}}]
        """))
    out = tmp_path / "out"
    code = main(["reproduce", str(preset), "--scale", "full", "--out", str(out), "--quiet", "--strict"])
    text = capsys.readouterr().out
    assert code == 0, text
    assert "rule/weight_sum (lower is better)" in text and "PASS" in text.upper()
    summary = json.loads((out / "toy-seed0" / "summary.json").read_text())
    assert summary["rule"] == "toy-sign" and summary["status"] == "completed"
    assert summary["final"]["rule/weight_sum"] > 0
