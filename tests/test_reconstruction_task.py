"""The reconstruction task (targets = inputs) and checks on a lower-is-better metric (issue 14, Table 2a)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import bioplausible as bp
from bioplausible.data import Split, as_bundle, load_dataset
from bioplausible.data.reconstruction import ReconstructionSplit, output_size
from bioplausible.errors import ConfigError
from bioplausible.experiments.presets import _parse, evaluate_checks, lower_is_better


def _tensors(n: int = 96, shape=(1, 4, 4), seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand((n, *shape), generator=g), torch.randint(0, 3, (n,), generator=g)


# ------------------------------------------------------------------ the task's targets
def test_targets_are_the_flattened_inputs_and_labels_follow_the_same_shuffle():
    x, labels = _tensors()
    bundle = as_bundle((x, labels), (x[:32], labels[:32]), task="reconstruction")
    assert bundle.info.task == "reconstruction" and output_size(bundle.info) == 16
    assert bundle.info.num_classes == 3  # the label classes stay known (latent scatter colours)
    split = bundle.train
    assert isinstance(split, ReconstructionSplit) and torch.equal(split.labels, labels)
    seen = []
    for xb, yb in split.batches(10, shuffle=True, generator=torch.Generator().manual_seed(5)):
        assert yb.shape == (xb.shape[0], 16)
        assert torch.equal(yb, xb.reshape(xb.shape[0], -1))
        seen.append(xb)
    # the same permutation as a plain split with the same generator: x rows and labels stay paired
    plain = [xb for xb, _ in Split(x, labels).batches(10, shuffle=True, generator=torch.Generator().manual_seed(5))]
    assert all(torch.equal(a, b) for a, b in zip(seen, plain)) and len(seen) == len(plain) == 10
    moved = split.to(dtype=torch.float64)
    assert moved.x.dtype == torch.float64 and torch.equal(moved.y, moved.x.reshape(len(x), -1))


def test_load_dataset_task_reconstruction(synthetic_root):
    plain = load_dataset("mnist", normalize="unit")
    rec = load_dataset("mnist", normalize="unit", task="reconstruction")
    assert rec.info.task == "reconstruction" and plain.info.task == "multiclass"
    assert torch.equal(rec.test.y, plain.test.x.reshape(len(plain.test), -1))
    assert torch.equal(rec.test.labels, plain.test.y)
    assert load_dataset("mnist", task="multiclass").info.task == "multiclass"  # the native task: unchanged
    with pytest.raises(ConfigError, match="task 'regression' is not known"):
        load_dataset("mnist", task="regression")


# ------------------------------------------------------------------ the loss the trainer reports
def test_reported_loss_is_the_reconstruction_error_and_there_is_no_accuracy():
    x, labels = _tensors(80, (12,))
    xt, lt = _tensors(30, (12,), seed=1)
    data = as_bundle((x, labels), (xt, lt), task="reconstruction")
    torch.manual_seed(0)
    model = bp.build_model("mlp:12-5-12", activation="tanh")
    result = bp.fit(model, "bp", data, loss="mse_sum", epochs=2, batch_size=16, lr=0.01)
    record = result.history[-1]
    assert "test_accuracy" not in record and "train_accuracy" not in record
    assert result.summary["best_test_accuracy"] is None
    # independent: float64 loop over examples of Σ_pixels (o − x)², averaged over the test set
    with torch.no_grad():
        out = result.model(xt).double().numpy()
    ref = np.mean([np.sum((out[i] - xt[i].double().numpy()) ** 2) for i in range(len(xt))])
    assert record["test_loss"] == pytest.approx(ref, rel=1e-5)
    # the same through evaluate() with a mean convention: (1/units) of the sum
    mean = bp.evaluate(result.model, data.test, "mse", task="reconstruction")
    assert set(mean) == {"loss"} and mean["loss"] == pytest.approx(ref / 12, rel=1e-5)


def test_auto_loss_on_reconstruction_is_the_summed_squared_error():
    from bioplausible.engine.task import resolve_loss

    assert resolve_loss("auto", "reconstruction").name == "mse_batchmean"
    assert resolve_loss("auto", "multiclass").name == "cross_entropy"


# ------------------------------------------------------------------ bad input
def test_classification_loss_on_reconstruction_is_one_line():
    x, labels = _tensors(40, (12,))
    data = as_bundle((x, labels), task="reconstruction")
    with pytest.raises(ConfigError, match="classification loss but the task is reconstruction") as err:
        bp.fit(bp.build_model("mlp:12-5-12"), "bp", data, loss="cross_entropy", epochs=1)
    assert "\n" not in str(err.value)


def test_model_output_size_must_equal_input_size():
    x, labels = _tensors(40, (12,))
    data = as_bundle((x, labels), task="reconstruction")
    with pytest.raises(ConfigError, match=r"outputs \(3,\) per example for inputs of 12 numbers") as err:
        bp.fit(bp.build_model("mlp:12-5-3"), "bp", data, loss="mse_sum", epochs=1)
    assert "\n" not in str(err.value)


def test_config_model_spec_is_sized_for_the_input(synthetic_root, tmp_path):
    from bioplausible.experiments.jobs import check_jobs, plan

    base = {"dataset": {"name": "mnist", "flatten": True, "task": "reconstruction"}, "loss": "mse_sum",
            "epochs": 1, "progress": False}
    good = plan({**base, "model": {"spec": "autoencoder:8"}}, out=tmp_path / "a")
    check_jobs(good)  # 784-8-2-8-784 for 784 inputs
    bad = plan({**base, "model": {"spec": "mlp:784-8-10"}}, out=tmp_path / "b")
    with pytest.raises(ConfigError, match="has 10 outputs but the task has 784"):
        check_jobs(bad)


# ------------------------------------------------------------------ checks on a lower-is-better metric
PRESET = """
name: tiny-ae
config: {dataset: {name: mnist, task: reconstruction}, model: {spec: autoencoder:8}, loss: mse_sum}
runs: {bp: bp, fa: fa, fa-noise: fa-noise, np: np}
paper_results: {metric: test_loss, values: {bp: 536.8, fa: 759.1}}
checks:
  - {type: worst, metric: test_loss, runs: [fa, fa-noise]}
  - {type: max_gap, metric: test_loss, runs: [fa, bp], max: 0}
"""


def _stats(**values):
    return {k: {"test_loss": (v, 0.0, 1)} for k, v in values.items()}


def test_worst_check_on_a_loss_passes_when_fa_is_highest_and_fails_otherwise():
    preset = _parse(PRESET, "tiny")
    assert lower_is_better("test_loss") and not lower_is_better("test_accuracy")
    ok = evaluate_checks(preset, _stats(bp=44.0, fa=52.5, **{"fa-noise": 52.7}, np=44.9))
    assert [c["passed"] for c in ok] == [True, True]
    assert "lower is better" in ok[0]["text"]
    # wrong ordering: FA has the *lowest* loss (as if lower were worse) -> both fail
    flipped = evaluate_checks(preset, _stats(bp=52.5, fa=44.0, **{"fa-noise": 44.1}, np=50.0))
    assert [c["passed"] for c in flipped] == [False, False]
    # one FA run is worst but the other is beaten by np -> worst fails, max_gap (fa vs bp) still passes
    mixed = evaluate_checks(preset, _stats(bp=44.0, fa=52.5, **{"fa-noise": 48.0}, np=49.0))
    assert [c["passed"] for c in mixed] == [False, True]
    # a missing run is "not measured", not a pass
    assert evaluate_checks(preset, _stats(bp=44.0, np=45.0))[0]["passed"] is False


def test_worst_check_on_accuracy_means_lowest():
    text = PRESET.replace("metric: test_loss, runs: [fa, fa-noise]", "metric: test_accuracy, runs: [fa]")
    preset = _parse(text, "tiny")
    stats = {k: {"test_accuracy": (v, 0.0, 1)} for k, v in {"bp": 98.0, "fa": 90.0, "fa-noise": 91.0,
                                                                 "np": 97.0}.items()}
    assert evaluate_checks(preset, stats)[0]["passed"] is True
    stats = {**stats, "fa": {"test_accuracy": (99.0, 0.0, 1)}}  # FA now the best: not the worst
    assert evaluate_checks(preset, stats)[0]["passed"] is False


def test_best_check_passes_only_when_every_named_run_beats_every_other():
    """``best`` mirrors ``worst``: on a loss the named runs must be the lowest, on an accuracy the highest."""
    text = PRESET.replace("{type: worst, metric: test_loss, runs: [fa, fa-noise]}", "{type: best, metric: test_loss, runs: [np]}")
    preset = _parse(text, "tiny")
    ok = evaluate_checks(preset, _stats(bp=44.0, fa=52.5, **{"fa-noise": 52.7}, np=43.0))
    assert ok[0]["passed"] is True and "np best of all 4 runs" in ok[0]["text"] and "gap +1.00" in ok[0]["text"]
    # the paper's NP-best claim against BP just below it: fails, by how much
    lost = evaluate_checks(preset, _stats(bp=31.0, fa=51.5, **{"fa-noise": 49.7}, np=33.0))
    assert lost[0]["passed"] is False and "the best other, bp = 31.00 (gap -2.00" in lost[0]["text"]
    two = _parse(text.replace("runs: [np]", "runs: [np, bp]"), "tiny")
    # both named runs must beat every other: np does, bp does not (fa-noise is better than bp)
    assert evaluate_checks(two, _stats(bp=50.0, fa=52.5, **{"fa-noise": 49.0}, np=43.0))[0]["passed"] is False
    assert evaluate_checks(two, _stats(bp=45.0, fa=52.5, **{"fa-noise": 49.0}, np=43.0))[0]["passed"] is True
    acc = _parse(text.replace("metric: test_loss, runs: [np]", "metric: test_accuracy, runs: [np]"), "tiny")
    stats = {k: {"test_accuracy": (v, 0.0, 1)} for k, v in {"bp": 97.0, "fa": 90.0, "fa-noise": 91.0, "np": 98.0}.items()}
    assert evaluate_checks(acc, stats)[0]["passed"] is True
    stats["bp"] = {"test_accuracy": (98.5, 0.0, 1)}
    assert evaluate_checks(acc, stats)[0]["passed"] is False


@pytest.mark.parametrize("check, message", [
    ("{type: worst, metric: test_loss, runs: [bp, fa, fa-noise, np]}", "some but not all runs"),
    ("{type: worst, metric: test_loss, runs: [nobody]}", "some but not all runs"),
    ("{type: worst, metric: test_loss, runs: [fa], lower_is_better: maybe}", "true or false"),
    ("{type: max_value, metric: test_loss, run: fa}", "needs a number max"),
    ("{type: best, metric: test_loss, runs: [bp, fa, fa-noise, np]}", "some but not all runs"),
])
def test_bad_checks_are_one_line(check, message):
    text = PRESET.replace("  - {type: max_gap, metric: test_loss, runs: [fa, bp], max: 0}", f"  - {check}")
    with pytest.raises(ConfigError, match=message):
        _parse(text, "tiny")


def test_the_builtin_preset_declares_table_2a():
    preset = bp.get_preset("np-table2a-autoencoder")
    config, _ = preset.resolved("quick")
    assert config["dataset"]["task"] == "reconstruction" and preset.paper_results["metric"] == "test_loss"
    assert len(preset.runs) == 11 and set(preset.paper_results["values"]) == set(preset.runs)
    assert preset.checks[0]["type"] == "worst" and set(preset.checks[0]["runs"]) == {"fa", "fa-noise"}


def test_reproduce_writes_losses_beside_the_paper(synthetic_root, tmp_path, monkeypatch):
    from bioplausible.experiments import presets as experiments

    text = PRESET.replace("autoencoder:8", "autoencoder:4").replace(
        "loss: mse_sum}", "loss: mse_sum, optimizer: {name: sgd, lr: 0.001}, epochs: 1, batch_size: 32}")
    (tmp_path / "tiny-ae.yaml").write_text(text)
    monkeypatch.setattr(experiments, "_preset_files", lambda: [tmp_path / "tiny-ae.yaml"])
    from bioplausible.experiments.reproduce import run_preset

    report = run_preset("tiny-ae", scale="full", out=tmp_path / "out", progress=False)
    md = (tmp_path / "out" / "reproduce.md").read_text()
    assert "test_loss (lower is better)" in md and "ours − paper" in md
    m = report["stats"]["fa"]["test_loss"][0]
    assert f"| fa | {m:.2f} (n=1) | 759.1 | {m - 759.1:+.2f} |" in md  # one seed: no ± 0.00


# ------------------------------------------------------------------ matched with activation noise (Table 2a row)
def test_matched_noise_perturbs_training_passes_only():
    torch.manual_seed(0)
    base = bp.build_model("mlp:6-5-4-6", activation="tanh")
    x = torch.randn(8, 6)
    noisy_rule, plain_rule = bp.make("matched-noise", c_h=0.5), bp.make("matched")
    noisy_rule.set_seed(0)
    noisy, plain = noisy_rule.prepare(base, example=x[:2]), plain_rule.prepare(base, example=x[:2])
    noisy.eval()
    plain.eval()
    assert torch.equal(noisy(x), plain(x))  # evaluation: no noise
    noisy.train()
    plain.train()
    assert not torch.allclose(noisy(x), plain(x))  # training pass: hidden activities perturbed
    with pytest.raises(ConfigError, match="c_h must be a positive number"):
        bp.make("matched-noise", c_h=0.0)
