"""The command line as a new user meets it: main jobs work, mistakes give one line and exit 2."""

from __future__ import annotations

import json

import pytest

from bioplausible.cli import main

TRAIN = ["train", "--rule", "bp", "--dataset", "mnist", "--model", "mlp:784-32-10",
         "--epochs", "1", "--batch-size", "40", "--lr", "0.1", "--quiet"]


def _one_line_error(capsys, needle):
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("bioplausible: error:") and needle in err, err


def test_list(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for word in ("bp", "mnist", "cifar10", "mlp", "lenet", "mse_sum", "presets"):
        assert word in out


def test_train_writes_a_run(synthetic_root, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(TRAIN + ["--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs_completed"] == 1
    assert "completed: test accuracy" in capsys.readouterr().out


def test_resume_extends_a_run(synthetic_root, tmp_path):
    out = tmp_path / "run"
    assert main(TRAIN + ["--out", str(out)]) == 0
    assert main(["train", "--resume", str(out), "--epochs", "2"]) == 0
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines if x["kind"] == "epoch"] == [1, 2]


@pytest.mark.parametrize("args,needle", [
    (["--rule", "fee"], "unknown rule 'fee'"),
    (["--set", "optimizer.lr=abc"], "optimizer.lr must be a number"),
    (["--set", "optimiser.lr=0.1"], "unknown config key 'optimiser'"),
    (["--model", "mlp:700-10"], "takes 700 inputs"),
    (["--optimizer", "sgdd"], "unknown optimizer"),
    (["--dataset", "mnistt"], "unknown dataset"),
])
def test_user_errors_one_line_exit_2_no_run_dir(synthetic_root, tmp_path, capsys, args, needle):
    out = tmp_path / "run"
    assert main(TRAIN + ["--out", str(out)] + args) == 2
    _one_line_error(capsys, needle)
    assert not out.exists()


def test_missing_data_dir(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("BIOPLAUSIBLE_DATA", str(tmp_path / "nowhere"))
    out = tmp_path / "run"
    assert main(TRAIN + ["--out", str(out)] + ["--set", "dataset.download=false"]) == 2
    _one_line_error(capsys, "BIOPLAUSIBLE_DATA")
    assert not out.exists()


def test_corrupt_idx_file(synthetic_root, tmp_path, capsys):
    import gzip

    f = synthetic_root / "mnist" / "train-images-idx3-ubyte.gz"
    f.write_bytes(gzip.compress(gzip.decompress(f.read_bytes())[:-100]))  # truncated payload
    assert main(TRAIN + ["--out", str(tmp_path / "run")]) == 2
    _one_line_error(capsys, "train-images-idx3-ubyte")


def test_argparse_errors_are_one_line_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--epochs", "three"])
    assert exc.value.code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_compare_writes_report_and_plot(synthetic_root, tmp_path, capsys):
    out = tmp_path / "cmp"
    args = ["compare", "--rules", "bp", "--dataset", "mnist", "--model", "mlp:784-32-10",
            "--epochs", "2", "--batch-size", "40", "--quiet", "--out", str(out), "--probe-every", "2"]
    assert main(args) == 0
    report = (out / "report.md").read_text()
    assert "| bp | 1 |" in report and "completed 1 |" in report  # one seed, the same layout as --seeds
    assert (out / "curves.png").stat().st_size > 1000
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    capsys.readouterr()
    assert main(["report", str(out / "bp-seed0"), "--out", str(tmp_path / "rep")]) == 0
    assert (tmp_path / "rep" / "report.md").exists()


def test_reproduce_a_preset_file(synthetic_root, tmp_path, capsys):
    preset = tmp_path / "tiny.yaml"
    preset.write_text("""
name: tiny
title: Tiny preset
paper: none
config:
  dataset: {name: mnist}
  model: {spec: "mlp:784-16-10"}
  epochs: 3
  batch_size: 40
runs: {bp: {name: bp}}
seeds: [0, 1, 2]
scales: {quick: {epochs: 1, seeds: [0, 1]}, full: {}}
paper_results: {metric: test_accuracy, values: {bp: 99.0}, note: made up}
checks:
  - {type: min_value, run: bp, metric: test_accuracy, min: 30.0}
  - {type: min_value, run: bp, metric: test_accuracy, min: 100.5}
""")
    out = tmp_path / "rep"
    assert main(["reproduce", str(preset), "--scale", "quick", "--out", str(out), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "| bp |" in text and "99.0" in text
    # chance is 10 %: the first check passes only if training worked; no accuracy reaches 100.5 %
    assert "[pass] test_accuracy of bp" in text and "(at least 30.0)" in text
    assert "[FAIL] test_accuracy of bp" in text and "(at least 100.5)" in text
    assert main(["reproduce", str(preset), "--scale", "quick", "--out", str(tmp_path / "strict"),
                 "--quiet", "--strict"]) == 1
    rep = json.loads((out / "reproduce.json").read_text())
    assert rep["seeds"] == [0, 1] and sorted(p.name for p in out.iterdir() if p.is_dir()) == ["bp-seed0", "bp-seed1"]
    assert main(["reproduce", str(preset), "--scale", "huge"]) == 2


def test_relax_diagnostic_writes_numbers_and_plot(synthetic_root, tmp_path, capsys):
    out = tmp_path / "relax"
    assert main(["relax-diagnostic", "--eta-x", "0.1,0.5", "--steps", "10", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "error reduction per hidden layer" in text and "larger eta_x no slower: yes" in text
    data = json.loads((out / "convergence.json").read_text())
    assert data["measurements"] and (out / "convergence.png").read_bytes()[:4] == b"\x89PNG"
