"""bioplausible tune (#22): declared ranges, Optuna search, shared storage, best config as a preset."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bioplausible.cli import main
from bioplausible.errors import ConfigError
from bioplausible.experiments.tune import parse_param

pytest.importorskip("optuna", reason="optuna is not installed (pip install 'bioplausible[sweep]')")

# A linear softmax classifier on the synthetic MNIST lookalike, 3 epochs of SGD: the final
# training loss falls with the learning rate until the steps overshoot (measured: the loss is
# smallest near lr 0.56 and the run blows up from lr 1 on), so there is one best lr to find.
BASE = {"dataset": {"name": "mnist"}, "model": {"spec": "mlp:784-16-10"}, "epochs": 3, "batch_size": 40,
        "loss": "cross_entropy", "progress": False}
FACTOR = 10 ** 0.5  # tune must land within half a decade of the grid's best


@pytest.mark.parametrize("text,kind", [("optimizer.lr=loguniform:1e-4:1e-1", "loguniform"),
                                       ("rule.decay=uniform:0:0.001", "uniform"),
                                       ("batch_size=int:16:256:log", "int"),
                                       ("optimizer.name=choice:sgd,adam", "choice")])
def test_parse_param(text, kind):
    p = parse_param(text)
    assert p.kind == kind and p.key == text.split("=")[0]
    if kind == "choice":
        assert p.choices == ["sgd", "adam"]


@pytest.mark.parametrize("text", ["optimizer.lr", "optimizer.lr=loguniform:0:1", "lr=uniform:1:0",
                                  "lr=normal:0:1", "lr=uniform:a:b", "lr=int:1.5:4", "lr=choice:"])
def test_bad_params_are_config_errors(text):
    with pytest.raises(ConfigError):
        parse_param(text)


def _grid_best(tmp_path) -> float:
    """The oracle: the learning rate of least final training loss on a quarter-decade grid."""
    from bioplausible.experiments.jobs import plan, run_job

    losses = {}
    for lr in np.logspace(-3, math.log10(3), 14):
        job = plan({**BASE, "optimizer": {"name": "sgd", "lr": float(lr)}}, out=tmp_path / f"grid-{lr:.4g}")[0]
        s = run_job(job)
        loss = s["final"].get("train_loss") if s["status"] == "completed" else None
        losses[float(lr)] = loss if loss is not None and math.isfinite(loss) else math.inf
    return min(losses, key=losses.get)


def test_tune_finds_the_best_learning_rate_within_a_factor(synthetic_root, tmp_path, capsys):
    best = _grid_best(tmp_path)
    db = tmp_path / "study.db"
    args = ["tune", "--rule", "bp", "--dataset", "mnist", "--model", "mlp:784-16-10", "--epochs", "3",
            "--batch-size", "40", "--loss", "cross_entropy", "--quiet", "--metric", "train_loss",
            "--param", "optimizer.lr=loguniform:1e-3:3", "--trials", "14", "--storage", f"sqlite:///{db}",
            "--study", "lr", "--out", str(tmp_path / "tune"), "--write-preset", str(tmp_path / "tuned.yaml")]
    assert main(args) == 0
    import optuna

    study = optuna.load_study(study_name="lr", storage=f"sqlite:///{db}")
    assert len(study.trials) == 14
    found = study.best_trial.params["optimizer.lr"]
    assert best / FACTOR <= found <= best * FACTOR, (found, best)
    from bioplausible.experiments.presets import get_preset

    preset = get_preset(str(tmp_path / "tuned.yaml"))
    assert preset.config["optimizer"]["lr"] == pytest.approx(found) and list(preset.runs) == ["bp"]
    # a second process joining the same study adds its trials to it
    assert main(args[:-2] + ["--trials", "2", "--sampler", "random"]) == 0
    assert len(optuna.load_study(study_name="lr", storage=f"sqlite:///{db}").trials) == 16
