"""The feedback's relative error as a run metric (relative_error_top / _mean) and the Fig. 4 preset.

Oracles: ‖W − B‖_F/‖W‖_F written out entry by entry in plain Python over the model's layers,
the top layer found by its shape (the output layer), and the direction of the metric (lower is
better) through the preset checks.
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import make_bundle

import bioplausible as bp
from bioplausible.core.probe import feedback_errors
from bioplausible.engine.config import TrainConfig
from bioplausible.engine.trainer import Trainer
from bioplausible.experiments import presets as experiments


def _by_hand(w: torch.Tensor, b: torch.Tensor) -> float:
    """‖W − B‖_F / ‖W‖_F entry by entry, in Python floats."""
    wl, bl = w.detach().double().flatten().tolist(), b.detach().double().flatten().tolist()
    return math.sqrt(sum((x - y) ** 2 for x, y in zip(wl, bl))) / math.sqrt(sum(x * x for x in wl))


def _linears(model: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for m in model.modules() if isinstance(getattr(m, "weight", None), torch.Tensor)
            and m.weight.dim() == 2]


def _feedback(layer: torch.nn.Module) -> torch.Tensor:
    fb = getattr(layer, "effective_feedback", None)
    return fb() if callable(fb) else layer.feedback


@pytest.mark.parametrize("name", ["np", "fa"])
def test_feedback_errors_match_an_independent_computation(name):
    torch.manual_seed(0)
    model = bp.build_model("mlp:6-5-4-3", activation="sigmoid").double()
    rule = bp.make(name)
    model = rule.prepare(model, example=torch.randn(2, 6, dtype=torch.float64))
    layers = _linears(model)
    assert [tuple(m.weight.shape) for m in layers] == [(5, 6), (4, 5), (3, 4)]
    with torch.no_grad():  # B = W + a different perturbation per layer, so every layer's error differs
        for k, m in enumerate(layers):
            fb = _feedback(m)
            if fb is not None:
                fb.copy_(m.weight + (0.2 + 0.3 * k) * torch.randn_like(m.weight))
    out = feedback_errors(rule, model)
    errors = [_by_hand(m.weight, _feedback(m)) for m in layers]
    top = next(m for m in layers if m.weight.shape[0] == 3)  # the output layer, by its shape
    assert out["relative_error_top"] == pytest.approx(_by_hand(top.weight, _feedback(top)), rel=1e-12)
    # np's feedback pairs start at the second layer (the first layer's B carries no error); fa
    # reports every layer's B
    used = errors[1:] if name == "np" else errors
    assert out["relative_error_mean"] == pytest.approx(sum(used) / len(used), rel=1e-12)
    assert len({round(e, 6) for e in errors}) == 3


@pytest.mark.parametrize("name", ["bp", "dfa"])
def test_rules_without_w_shaped_feedback_have_no_feedback_error(name):
    model = bp.build_model("mlp:6-5-3")
    rule = bp.make(name)
    model = rule.prepare(model, example=torch.randn(2, 6))
    assert feedback_errors(rule, model) == {}


def test_the_trainer_records_the_error_after_the_last_step_with_w_frozen():
    cfg = TrainConfig.from_dict({"epochs": 2, "batch_size": 32, "progress": False, "loss": "mse_half_sum",
                                 "probe_every": 0, "optimizer": {"name": "sgd", "lr": 1.0,
                                                                 "groups": {"forward": {"lr": 0.0}}}})
    torch.manual_seed(0)
    model = bp.build_model("mlp:20-8-6-4", activation="sigmoid", init="xavier")
    before = [m.weight.detach().clone() for m in _linears(model)]
    result = Trainer(model, bp.make("np", c_h=0.01, solver="ridge", gamma=0.1), make_bundle(), cfg).run()
    layers = _linears(result.model)
    for w0, m in zip(before, layers):
        assert torch.equal(w0, m.weight)  # forward lr 0 freezes W
    top = layers[-1]
    want = _by_hand(top.weight, top.feedback)
    assert result.summary["final"]["relative_error_top"] == pytest.approx(want, rel=1e-12)
    assert result.summary["final"]["relative_error_mean"] == pytest.approx(
        (_by_hand(layers[1].weight, layers[1].feedback) + want) / 2, rel=1e-12)
    first = result.history[0]["relative_error_top"]
    assert first != result.history[-1]["relative_error_top"]  # measured again after every epoch
    assert 0 < want < 1  # ridge has learned the top B towards W (from a random B, error ≈ √2)


def test_relative_error_is_lower_is_better_in_checks():
    for metric in ("relative_error_top", "relative_error_mean"):
        assert experiments.lower_is_better(metric)
        assert experiments.metric_label(metric).endswith("(lower is better)")
    preset = experiments._parse("""
name: t
config: {dataset: {name: mnist}, model: {spec: "mlp:784-10"}}
runs: {a: np, b: fa, c: bp}
checks:
  - {type: max_value, metric: relative_error_top, run: a, max: 0.05}
  - {type: worst, metric: relative_error_top, runs: [b]}
""", "t.yaml")
    good = {"a": {"relative_error_top": (0.04, 0.0, 1)}, "b": {"relative_error_top": (1.2, 0.0, 1)},
            "c": {"relative_error_top": (0.3, 0.0, 1)}}
    assert [c["passed"] for c in experiments.evaluate_checks(preset, good)] == [True, True]
    assert "relative_error_top of a = 0.0400 (at most 0.05)" in experiments.evaluate_checks(preset, good)[0]["text"]
    bad = {"a": {"relative_error_top": (0.06, 0.0, 1)}, "b": {"relative_error_top": (0.1, 0.0, 1)},
           "c": {"relative_error_top": (0.3, 0.0, 1)}}
    assert [c["passed"] for c in experiments.evaluate_checks(preset, bad)] == [False, False]


TINY = """
name: tiny-fixed-w
title: Tiny fixed W
paper: "Nobody 2024"
config:
  dataset: {name: mnist}
  model: {spec: "mlp:784-8-6-10", activation: sigmoid, init: xavier}
  loss: mse_half_sum
  optimizer: {name: sgd, lr: 1.0, groups: {forward: {lr: 0.0}}}
  epochs: 1
  batch_size: 40
runs:
  small: {name: np, c_h: 0.001, solver: ridge, gamma: 0.1}
  large: {name: np, c_h: 0.1, solver: ridge, gamma: 0.1}
seeds: [0]
scales: {quick: {}}
paper_results: {metric: test_accuracy, values: {small: null}}
checks:
  - {type: max_value, metric: relative_error_top, run: small, max: 10}
  - {type: max_value, metric: relative_error_top, run: large, max: 0.0}
"""


def test_reproduce_reports_and_checks_a_metric_other_than_the_papers(synthetic_root, tmp_path, monkeypatch):
    import json

    folder = tmp_path / "presets"
    folder.mkdir()
    (folder / "tiny.yaml").write_text(TINY)
    monkeypatch.setattr(experiments, "_preset_files", lambda: sorted(folder.glob("*.yaml")))
    from bioplausible.experiments.reproduce import run_preset

    report = run_preset("tiny-fixed-w", "quick", out=tmp_path / "one", progress=False)
    value = {label: json.loads((tmp_path / "one" / f"{label}-seed0" / "summary.json").read_text())
             ["final"]["relative_error_top"] for label in ("small", "large")}
    assert [c["passed"] for c in report["checks"]] == [True, False]
    assert f"relative_error_top of small = {value['small']:.4f} (at most 10)" in report["checks"][0]["text"]
    assert f"relative_error_top of large = {value['large']:.4f} (at most 0.0)" in report["checks"][1]["text"]
    from bioplausible.cli import main

    md = tmp_path / "REPRODUCTION.md"
    assert main(["reproduce", "--all", "--scale", "quick", "--out", str(tmp_path / "all"),
                 "--markdown", str(md)]) == 0
    text = md.read_text()
    assert "[pass] relative_error_top of small" in text and "[FAIL] relative_error_top of large" in text


def test_the_fig4_preset_freezes_w_probes_at_the_end_and_checks_the_smallest_noise():
    preset = experiments.get_preset("np-fig4-fixed-w")
    assert preset.paper_results["metric"] == "relative_error_top"
    check, paper = preset.checks
    assert (check["type"], check["metric"], check["max"]) == ("max_value", "relative_error_top", 0.05)
    assert paper == {"type": "paper"} and preset.paper_results["default_tolerance"] == 0.01
    noise = {label: run["c_h"] for label, run in preset.runs.items() if label.startswith("noise-")}
    assert check["run"] == min(noise, key=noise.get)
    for scale in preset.scales:
        config, _ = preset.resolved(scale)
        steps = 60_000 // config["batch_size"] * config["epochs"]  # MNIST's 60k training images
        assert config["probe_every"] > 0 and steps % config["probe_every"] == 0
        for label, run in preset.runs.items():
            cfg = config.updated(run.get("config") or {})
            assert run["name"] == "np" and run["solver"] == "ridge" and run["gamma"] == 0.1
            assert cfg["optimizer"]["groups"]["forward"]["lr"] == 0.0
            assert (cfg["model"]["activation"], cfg["model"]["init"], cfg["loss"]) == (
                "sigmoid", "xavier", "mse_half_sum")
            assert cfg["batch_size"] == 32
            if label.startswith("noise-"):
                assert float(label.split("-", 1)[1]) == run["c_h"]
                assert cfg["model"]["spec"] == "mlp:784-50-20-10"
            else:
                assert run["c_h"] == 0.01
                assert cfg["model"]["spec"] == f"mlp:784-{label.split('-', 1)[1]}-50-10"
