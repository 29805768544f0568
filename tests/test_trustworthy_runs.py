"""Runs that can be trusted (#16): exact resume, honest metrics, every dtype trains, compare's status."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from bioplausible.cli import main
from bioplausible.engine.trainer import evaluate, fit

TRAIN = ["train", "--rule", "fa", "--dataset", "mnist", "--model", "mlp:784-16-10", "--batch-size", "30",
         "--quiet", "--probe-every", "3"]
TIMING = ("epoch_time", "probe_time", "samples_per_s", "eval_time", "time")


def _metrics(run_dir):
    """metrics.jsonl without wall-clock fields."""
    out = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        out.append({k: v for k, v in rec.items() if not any(t in k for t in TIMING)})
    return out


def _model(run_dir):
    return torch.load(run_dir / "model.pt", weights_only=True)


def _same_models(a, b):
    ma, mb = _model(a), _model(b)
    return ma.keys() == mb.keys() and all(torch.equal(ma[k], mb[k]) for k in ma)


@pytest.fixture
def reference(synthetic_root, tmp_path):
    """An uninterrupted two-epoch run."""
    ref = tmp_path / "ref"
    assert main(TRAIN + ["--epochs", "2", "--out", str(ref)]) == 0
    return ref


def test_resume_after_a_kill_mid_epoch_equals_an_uninterrupted_run(reference, tmp_path):
    run = tmp_path / "run"
    assert main(TRAIN + ["--epochs", "2", "--out", str(run)]) == 0
    # What a kill during epoch 2 leaves: the epoch-1 checkpoint, and metric lines of epoch 2
    # written after it, the last one torn.
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    ref_ckpt_epoch1 = tmp_path / "one"
    assert main(TRAIN + ["--epochs", "1", "--out", str(ref_ckpt_epoch1)]) == 0
    shutil.copy(ref_ckpt_epoch1 / "checkpoint.pt", run / "checkpoint.pt")
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text("\n".join(lines[:-1]) + "\n" + lines[-1][: len(lines[-1]) // 2])
    (run / "model.pt").unlink()
    assert state["epoch"] == 2
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    assert _metrics(run) == _metrics(reference)
    assert _same_models(run, reference)


def test_resume_after_a_kill_before_the_first_checkpoint_keeps_no_stale_lines(reference, tmp_path):
    run = tmp_path / "run"
    assert main(TRAIN + ["--epochs", "2", "--out", str(run)]) == 0
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text("\n".join(lines[:3]) + "\n")  # probe lines of epoch 1
    for name in ("checkpoint.pt", "model.pt", "summary.json"):
        (run / name).unlink()
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    assert _metrics(run) == _metrics(reference)
    assert _same_models(run, reference)


def test_resume_of_a_finished_run_without_its_checkpoint_does_not_double_the_metrics(reference, tmp_path):
    run = tmp_path / "run"
    assert main(TRAIN + ["--epochs", "2", "--out", str(run)]) == 0
    (run / "checkpoint.pt").unlink()
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    assert _metrics(run) == _metrics(reference)


def test_resume_extending_epochs_equals_the_longer_run(reference, tmp_path):
    run = tmp_path / "run"
    assert main(TRAIN + ["--epochs", "1", "--out", str(run)]) == 0
    assert main(["train", "--resume", str(run), "--epochs", "2", "--quiet"]) == 0
    assert _metrics(run) == _metrics(reference)
    assert _same_models(run, reference)


def test_report_reads_a_run_with_a_torn_last_line(reference, tmp_path, capsys):
    text = (reference / "metrics.jsonl").read_text()
    (reference / "metrics.jsonl").write_text(text + '{"kind": "probe", "epo')
    assert main(["report", str(reference), "--out", str(tmp_path / "rep")]) == 0
    report = (tmp_path / "rep" / "report.md").read_text()
    assert "| fa | 1 |" in report and "completed 1 |" in report and "epochs `2`" in report


def test_a_refused_resume_leaves_the_run_untouched(reference, capsys):
    before = {p.name: p.read_bytes() for p in reference.iterdir() if p.is_file() and p.name != ".lock"}
    assert main(["train", "--resume", str(reference), "--set", "optimizer.lr=0.5"]) == 2
    assert "cannot change optimizer.lr" in capsys.readouterr().err
    after = {p.name: p.read_bytes() for p in reference.iterdir() if p.is_file() and p.name != ".lock"}
    assert after == before


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_every_accepted_dtype_trains(dtype, optimizer):
    from conftest import make_bundle

    torch.manual_seed(0)
    data = make_bundle(n_train=256, n_test=64)
    model = torch.nn.Sequential(torch.nn.Linear(20, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    start = evaluate(model, data.train, "cross_entropy")["loss"]
    lr = 0.05 if optimizer == "sgd" else 0.01
    result = fit(model, "bp", data, epochs=2, batch_size=32, lr=lr, optimizer=optimizer, dtype=dtype,
                 loss="cross_entropy")
    end = evaluate(result.model, data.train.to(dtype=result.model[0].weight.dtype), "cross_entropy")["loss"]
    assert result.model[0].weight.dtype == getattr(torch, dtype)
    assert end < 0.3 * start, (start, end)  # separable blobs: a working optimizer gets far below chance


def test_compare_exits_nonzero_when_every_rule_diverged(synthetic_root, tmp_path, capsys):
    out = tmp_path / "cmp"
    args = ["compare", "--rules", "bp,fa", "--dataset", "mnist", "--model", "mlp:784-16-10", "--epochs", "1",
            "--quiet", "--out", str(out), "--set", "divergence_threshold=1e-6"]
    assert main(args) == 1
    assert "no rule completed" in capsys.readouterr().err
    assert "diverged" in (out / "report.md").read_text()


def test_reproduce_refuses_a_non_empty_out(synthetic_root, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["reproduce", "fb-mnist-sigmoid", "--out", str(out), "--quiet"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("rule", ["fa", "kp"])
def test_feedback_rules_train_in_half_precision(dtype, rule):
    from conftest import make_bundle

    torch.manual_seed(0)
    data = make_bundle(n_train=256, n_test=64)
    model = torch.nn.Sequential(torch.nn.Linear(20, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    start = evaluate(model, data.train, "cross_entropy")["loss"]
    result = fit(model, rule, data, epochs=3, batch_size=32, lr=0.05, dtype=dtype, loss="cross_entropy")
    assert result.status == "completed"
    end = evaluate(result.model, data.train.to(dtype=getattr(torch, dtype)), "cross_entropy")["loss"]
    assert end < 0.8 * start, (start, end)
