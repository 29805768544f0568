"""Built-in presets are valid data: configs resolve at every scale and every run's rule exists."""

from __future__ import annotations

import pytest

import bioplausible as bp
from bioplausible.cli import main
from bioplausible.experiments.presets import evaluate_checks, get_preset, list_presets


@pytest.mark.parametrize("name", list_presets())
def test_preset_resolves_at_every_scale(name):
    preset = get_preset(name)
    assert {"quick", "full"} <= set(preset.scales)
    for scale in preset.scales:
        config, seeds = preset.resolved(scale)
        assert seeds and config["epochs"] >= 1
    for run in preset.runs.values():
        bp.make(run["name"], **{k: v for k, v in run.items() if k not in ("name", "config")})
        for scale in preset.scales:
            preset.resolved(scale)[0].updated(run.get("config") or {})
    quick, _ = preset.resolved("quick")
    full, _ = preset.resolved("full")
    assert quick["epochs"] <= full["epochs"]


def test_checks_follow_their_definitions():
    preset = get_preset("fb-mnist-sigmoid")
    stats = {"bp": {"test_accuracy": (98.0, 0.0)}, "kp": {"test_accuracy": (97.6, 0.0)},
             "wm": {"test_accuracy": (97.4, 0.0)}, "fa": {"test_accuracy": (96.6, 0.0)}}
    passed = [c["passed"] for c in evaluate_checks(preset, stats)]
    assert passed == [True, False, True]  # kp 0.4 below, wm 0.6 below (> 0.5), fa 1.4 below


def test_np_cifar_checks_encode_the_issue_ranking_bp_np_dfa():
    preset = get_preset("np-table1-cifar10")

    def passed(bp_, np_, dfa):
        stats = {"bp": {"test_accuracy": (bp_, 0.0)}, "np": {"test_accuracy": (np_, 0.0)},
                 "dfa": {"test_accuracy": (dfa, 0.0)}, "sg": {"test_accuracy": (50.0, 0.0)}}
        return [c["passed"] for c in evaluate_checks(preset, stats) if c["type"] != "paper"]
    assert passed(70.0, 65.0, 60.0) == [True, True]
    assert passed(60.0, 65.0, 55.0) == [False, True]  # NP above BP breaks BP >= NP
    assert passed(70.0, 55.0, 60.0) == [True, False]  # DFA above NP breaks NP >= DFA


def test_a_check_limited_to_scales_is_left_out_elsewhere():
    from bioplausible.experiments.presets import _parse

    text = """
name: scaled-checks
title: t
paper: p
config: {dataset: {name: mnist}, model: {spec: "mlp:784-10"}}
runs: {a: {name: bp}, b: {name: fa}}
scales: {quick: {epochs: 1}, full: {}}
checks:
  - {type: min_value, metric: test_accuracy, run: a, min: 97.0, scales: [full]}
  - {type: max_gap, metric: test_accuracy, runs: [b, a], max: 1.0}
"""
    preset = _parse(text, "test")
    stats = {"a": {"test_accuracy": (90.0, 0.0)}, "b": {"test_accuracy": (89.5, 0.0)}}
    quick = evaluate_checks(preset, stats, "quick")
    assert [c["type"] for c in quick] == ["max_gap"] and quick[0]["passed"]
    full = evaluate_checks(preset, stats, "full")
    assert [c["passed"] for c in full] == [False, True]  # 90 < 97 counts at full
    assert len(evaluate_checks(preset, stats)) == 2        # no scale given: every check
    with pytest.raises(bp.ConfigError, match="scales must list"):
        _parse(text.replace("scales: [full]", "scales: [medium]"), "test")


@pytest.mark.parametrize("name", ["sal-table1-svhn", "sal-table1-stl10", "np-table1-cifar100"])
def test_presets_needing_absent_data_fail_with_the_missing_data_line(name, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("BIOPLAUSIBLE_DATA", str(tmp_path / "empty"))
    monkeypatch.setenv("BIOPLAUSIBLE_MIRROR", "http://127.0.0.1:9")  # nothing listens: no network used
    out = tmp_path / "out"
    assert main(["reproduce", name, "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not found" in err
    assert not out.exists()
