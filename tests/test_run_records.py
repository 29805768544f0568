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
        run_dir = out / f"{rule}-seed0"  # compare's one layout: <rule>-seed<k>, with or without --seeds
        run = load_run(run_dir)
        # oracle from metrics.jsonl: per probe step, the mean over the weights not exact at that step
        per_step = []
        for p in run.probes:
            w = [v for k, v in p.items() if k.startswith("grad_angle/") and k.endswith("weight")]
            hidden = [v for v in w if v >= EXACT_DEG]
            per_step.append(statistics.fmean(hidden) if hidden else 0.0)
        want = statistics.fmean(per_step)
        table = comparison_rows([run])[0]["hidden_angle"]
        plotted = [v for _, v in hidden_angle_series(run.probes)]  # what curves.png draws
        summary = json.loads((run_dir / "summary.json").read_text())
        agg = aggregate([run_dir])[rule]["grad_angle"][0]
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


class MyModule(__import__("torch").nn.Module):
    """A user's own 784-128-128-10 MLP (236,298 parameters), not mlp:784-500-10."""

    def __init__(self):
        super().__init__()
        from torch import nn

        self.body = nn.Sequential(nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(),
                                  nn.Linear(128, 10))

    def forward(self, x):
        return self.body(x.flatten(1))


def test_fit_records_the_module_and_the_data_that_ran(tmp_path, capsys):
    import torch
    import yaml

    import bioplausible as bp
    from bioplausible.engine.provenance import model_fingerprint

    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(60, 784, generator=g) * 2 - 1, torch.randint(0, 10, (60,), generator=g)
    xt, yt = torch.rand(25, 784, generator=g), torch.randint(0, 10, (25,), generator=g)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=20)
    out = tmp_path / "run"
    model = MyModule()
    bp.fit(model, "fa", loader, (xt, yt), epochs=1, out=out, probe_every=0)
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    summary = json.loads((out / "summary.json").read_text())
    want_params = 784 * 128 + 128 + 128 * 128 + 128 + 128 * 10 + 10
    assert want_params == 118_282 and want_params == sum(p.numel() for p in MyModule().parameters())
    for rec in (cfg["model"], summary["model_info"]):
        assert rec["class"] == "MyModule"
        assert rec["import_path"] == f"{__name__}.MyModule"
        assert rec["parameters"] == want_params
        assert rec["fingerprint"] == model_fingerprint(MyModule())
        assert rec["repr"] == repr(MyModule())
    assert "spec" not in cfg["model"] and "500" not in json.dumps(summary["model"])
    assert summary["parameters"] == want_params
    # the data as given: a DataLoader, with its real sizes; no normalisation invented
    assert cfg["dataset"]["given_as"] == "DataLoader"
    assert "normalize" not in cfg["dataset"] and "subset" not in cfg["dataset"]
    assert summary["data_sizes"] == {"train": 60, "val": None, "test": 25}
    # `report` prints the module, not a spec from the defaults
    assert main(["report", str(out), "--out", str(tmp_path / "rep")]) == 0
    printed = capsys.readouterr().out
    assert f"{__name__}.MyModule ({want_params} parameters" in printed
    assert "train 60, validation none, test 25" in printed and "mlp:784-500-10" not in printed


def test_fingerprint_tells_architectures_apart_but_not_instances():
    from torch import nn

    from bioplausible.engine.provenance import model_fingerprint

    a = model_fingerprint(nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)))
    assert a == model_fingerprint(nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)))
    assert a != model_fingerprint(nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2)))
    assert a != model_fingerprint(nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2)))
    assert a != model_fingerprint(nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).double())


def test_named_dataset_in_fit_records_its_real_options(synthetic_root, tmp_path):
    import yaml

    import bioplausible as bp

    out = tmp_path / "run"
    bp.fit(MyModule(), "bp", "mnist", epochs=1, out=out, probe_every=0,
           config={"dataset": {"subset": 100, "normalize": "unit"}, "progress": False})
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    summary = json.loads((out / "summary.json").read_text())
    assert cfg["dataset"]["given_as"] == "dataset name" and cfg["dataset"]["name"] == "mnist"
    assert cfg["dataset"]["subset"] == 100 and cfg["dataset"]["normalize"] == "unit"
    n_test = len(bp.load_dataset("mnist").test)
    assert summary["data_sizes"] == {"train": 100, "val": None, "test": n_test}


# ----------------------------------------------------------------------------- reports and papers
def _preset_report(scale, n):
    return {"title": "T", "preset": "p", "scale": scale, "seeds": list(range(n)), "paper": "P",
            "paper_results": {"metric": "test_accuracy", "values": {"fa": 97.0}},
            "stats": {"fa": {"test_accuracy": (70.71, 0.0 if n == 1 else 0.5, n), "grad_angle": (40.0, 1.0, n)}},
            "status": {"fa": ["completed"]}, "checks": []}


def test_one_seed_is_printed_without_a_zero_spread():
    from bioplausible.experiments.reproduce import format_report

    text = format_report(_preset_report("full", 1))
    assert "70.71 (n=1)" in text and "± 0.00" not in text
    assert "70.71 ± 0.50 (n=3)" in format_report(_preset_report("full", 3))


def test_quick_scale_is_not_put_against_the_papers_full_length_numbers():
    from bioplausible.experiments.reproduce import format_report
    from bioplausible.experiments.sweep_report import markdown

    quick, full = format_report(_preset_report("quick", 3)), format_report(_preset_report("full", 3))
    assert "| 97.0 | not comparable at quick scale |" in quick and "-26.29" not in quick
    assert "| 97.0 | -26.29 |" in full

    stats = {"n": 3, "status": {"completed": 3}, "test_accuracy": (70.71, 0.5, 3),
             "best_test_accuracy": (71.0, 0.5, 3), "hidden_angle": (40.0, 1.0, 3),
             "epoch_time": (1.0, 0.1, 3)}
    for scale, cell in (("quick", "not comparable at quick scale"), ("full", "-26.29")):
        row = {"label": "fa", "n": 3, "paper": 97.0, "comparable": scale == "full",
               "diff": 70.71 - 97.0 if scale == "full" else None, "status": "completed 3"}
        text = markdown({"metric": "test_accuracy", "paper": {"fa": 97.0}, "stats": {"fa": stats}, "rows": [row]})
        assert f"| 97.00 | {cell} |" in text


def test_a_resumed_run_takes_its_angle_means_from_the_recorded_per_layer_angles(synthetic_root, tmp_path, capsys):
    """The summary's angles derive from the probe lines' per-layer angles: a run resumed over lines
    written when ``grad_angle`` still meant the whole-network mean reports the hidden-layer mean."""
    import json

    from bioplausible.cli import main

    run = tmp_path / "fa"
    args = ["train", "--rule", "fa", "--dataset", "mnist", "--model", "mlp:784-16-12-10", "--batch-size", "40",
            "--probe-every", "5", "--quiet", "--out", str(run)]
    assert main([*args, "--epochs", "1"]) == 0
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    for rec in lines:  # the old meaning: grad_angle was the whole-network mean, no all-layers key
        if rec.get("kind") == "probe":
            rec["grad_angle"] = rec.pop("grad_angle_all_layers")
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    import torch  # and a checkpoint of that time, which carried those whole-network means

    state = torch.load(run / "checkpoint.pt", weights_only=True)
    state["probe_angles"] = [r["grad_angle"] for r in lines if r.get("kind") == "probe"]
    torch.save(state, run / "checkpoint.pt")
    assert main(["train", "--resume", str(run), "--epochs", "2"]) == 0
    probes = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    probes = [r for r in probes if r.get("kind") == "probe"]
    hidden, whole = [], []
    for rec in probes:  # from the definition: weights only; exact (< 1e-3 deg) layers left out
        weights = [v for k, v in rec.items() if k.startswith("grad_angle/") and k.endswith("weight")]
        hidden.append(sum(v for v in weights if v >= 1e-3) / len([v for v in weights if v >= 1e-3]))
        whole.append(sum(weights) / len(weights))
    summary = json.loads((run / "summary.json").read_text())
    assert summary["grad_angle_mean"] == pytest.approx(sum(hidden) / len(hidden), rel=1e-12)
    assert summary["grad_angle_all_layers_mean"] == pytest.approx(sum(whole) / len(whole), rel=1e-12)
    assert abs(summary["grad_angle_mean"] - summary["grad_angle_all_layers_mean"]) > 1.0  # FA's exact top layer
