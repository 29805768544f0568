"""What a run reports is what ran: one hidden-layer angle everywhere, the model and data a
Python run really used, and evaluation on the whole test split."""

from __future__ import annotations

import json
import statistics

import pytest

from bioplausible.cli import main
from bioplausible.core.angles import EXACT_DEG, hidden_angle_series
from bioplausible.experiments.jobs import aggregate
from bioplausible.experiments.report import comparison_rows, load_run


def test_one_hidden_angle_in_table_plot_summary_and_aggregate(synthetic_root, tmp_path, capsys):
    out = tmp_path / "cmp"
    args = ["compare", "--rules", "bp,fa", "--dataset", "mnist", "--model", "mlp:784-16-10",
            "--epochs", "1", "--batch-size", "40", "--quiet", "--out", str(out), "--probe-every", "1"]
    assert main(args) == 0
    capsys.readouterr()
    for rule in ("fa", "bp"):
        run = load_run(out / rule)
        # oracle from metrics.jsonl: per probe step, the mean over the weights not exact at that step
        per_step = []
        for p in run.probes:
            w = [v for k, v in p.items() if k.startswith("grad_angle/") and k.endswith("weight")]
            hidden = [v for v in w if v >= EXACT_DEG]
            per_step.append(statistics.fmean(hidden) if hidden else 0.0)
        want = statistics.fmean(per_step)
        table = comparison_rows([run])[0]["hidden_angle"]
        plotted = [v for _, v in hidden_angle_series(run.probes)]  # what curves.png draws
        summary = json.loads((out / rule / "summary.json").read_text())
        agg = aggregate([out / rule])[rule]["grad_angle"][0]
        for got in (table, statistics.fmean(plotted), summary["grad_angle_mean"], agg,
                    statistics.fmean(p["grad_angle"] for p in run.probes)):
            assert got == pytest.approx(want, rel=1e-12, abs=1e-12)
        if rule == "fa":  # one hidden layer + an exact output layer: the whole-network mean is half
            assert want > 30
            assert summary["grad_angle_all_layers_mean"] == pytest.approx(
                statistics.fmean(statistics.fmean([p["grad_angle/1.weight"], p["grad_angle/3.weight"]])
                                 for p in run.probes))
            assert summary["grad_angle_all_layers_mean"] < 0.6 * want
        else:
            assert want == 0.0
