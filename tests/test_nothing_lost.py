"""Nothing the user did not name is overwritten, nothing lands outside ``out``, and a relaunch
continues instead of failing (report, reproduce, sweep, resume, tune)."""

from __future__ import annotations

import json
import os
import textwrap

import numpy as np
import pytest

from bioplausible.cli import main

SMALL = ["--dataset", "mnist", "--model", "mlp:784-16-10", "--epochs", "1", "--batch-size", "40", "--quiet"]


def _bytes(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != ".lock"}


def test_report_of_one_compare_run_leaves_the_comparison_report_alone(synthetic_root, tmp_path, capsys):
    cmp = tmp_path / "cmp"
    assert main(["compare", "--rules", "bp,fa", *SMALL, "--out", str(cmp)]) == 0
    before = {f: (cmp / f).read_bytes() for f in ("report.md", "curves.png", "results.csv")}
    assert main(["report", str(cmp / "bp-seed0")]) == 0
    assert {f: (cmp / f).read_bytes() for f in before} == before
    assert "| bp |" in (cmp / "bp-seed0" / "report.md").read_text()  # the one-run report lives in the run
    capsys.readouterr()
    assert main(["report", str(cmp / "bp-seed0"), str(cmp / "fa-seed0")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "already holds report.md" in err and "--out" in err
    assert {f: (cmp / f).read_bytes() for f in before} == before
    assert main(["report", str(cmp / "bp-seed0"), str(cmp / "fa-seed0"), "--out", str(cmp)]) == 0  # named: replaced


PRESET = """\
name: two
title: two rules
paper: none
config: {dataset: {name: mnist}, model: {spec: "mlp:784-16-10"}, epochs: 1, batch_size: 40, progress: false}
runs: {bp: bp, fa: fa}
seeds: [0]
scales: {quick: {}}
"""


def test_reproduce_relaunched_continues_its_out(synthetic_root, tmp_path, capsys):
    (tmp_path / "two.yaml").write_text(PRESET)
    out = tmp_path / "rep"
    args = ["reproduce", str(tmp_path / "two.yaml"), "--out", str(out), "--quiet"]
    assert main(args) == 0
    bp_lines = (out / "bp-seed0" / "metrics.jsonl").read_bytes()
    (out / "fa-seed0" / "summary.json").unlink()  # fa was interrupted before it finished
    (out / "reproduce.json").unlink()
    assert main(args) == 0, capsys.readouterr().err
    assert (out / "bp-seed0" / "metrics.jsonl").read_bytes() == bp_lines  # finished: not run again
    assert json.loads((out / "fa-seed0" / "summary.json").read_text())["status"] == "completed"
    report = json.loads((out / "reproduce.json").read_text())
    assert report["status"] == {"bp": ["completed"], "fa": ["completed"]}
    capsys.readouterr()
    (tmp_path / "other.yaml").write_text(PRESET.replace("name: two", "name: other"))
    assert main(["reproduce", str(tmp_path / "other.yaml"), "--out", str(out), "--quiet"]) == 2
    assert "does not hold a run of preset 'other'" in capsys.readouterr().err


def _npz(path, seed=0, n=60):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.normal(size=(n, 4)).astype(np.float32) + y[:, None]
    np.savez(path, x_train=x, y_train=y, x_test=x[:12], y_test=y[:12])


def test_sweep_grid_values_never_put_a_run_outside_out(tmp_path, monkeypatch):
    from bioplausible.experiments.jobs import run_dir_name

    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    _npz(tmp_path / "x.npz")
    _npz(work / "y.npz", seed=1)
    (work / "sweep.yaml").write_text(textwrap.dedent("""\
        config: {dataset: {name: "npz:y.npz"}, model: {spec: "mlp:4-3"}, epochs: 1, batch_size: 20}
        grid: {dataset.name: ["npz:y.npz", "npz:../../x.npz"]}
        seeds: [0]
        """))
    assert main(["sweep", "sweep.yaml", "--out", "sw"]) == 0
    made = sorted(p.parent for p in tmp_path.rglob("config.yaml"))
    assert len(made) == 2 and all((work / "sw") in p.parents for p in made), made
    name = run_dir_name("bp[dataset.name=npz:../../x.npz]", 0)
    assert "/" not in name and os.sep not in name and not name.startswith(".")
    assert len(run_dir_name("x" * 500, 3).encode()) <= 255


def test_resume_uses_the_recorded_data_file_and_refuses_changed_data(tmp_path, monkeypatch, capsys):
    first, elsewhere = tmp_path / "first", tmp_path / "elsewhere"
    first.mkdir(), elsewhere.mkdir()
    _npz(first / "data.npz", seed=0)
    _npz(elsewhere / "data.npz", seed=5)  # same name, other data
    monkeypatch.chdir(first)
    run = tmp_path / "run"
    assert main(["train", "--rule", "bp", "--dataset", "npz:data.npz", "--model", "mlp:4-3", "--epochs", "1",
                 "--batch-size", "20", "--quiet", "--out", str(run)]) == 0
    assert f"npz:{(first / 'data.npz').resolve()}" in (run / "config.yaml").read_text()
    monkeypatch.chdir(elsewhere)  # a relative name would now find elsewhere/data.npz
    assert main(["train", "--resume", str(run), "--epochs", "2", "--quiet"]) == 0
    _npz(first / "data.npz", seed=9)  # the recorded file is changed under the run
    capsys.readouterr()
    lines = (run / "metrics.jsonl").read_bytes()
    assert main(["train", "--resume", str(run), "--epochs", "3", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "changed since the run started" in err, err
    assert (run / "metrics.jsonl").read_bytes() == lines


def test_tune_twice_into_one_out_is_refused_up_front(synthetic_root, tmp_path, capsys):
    pytest.importorskip("optuna")
    args = ["tune", "--rule", "bp", *SMALL, "--metric", "test_accuracy",
            "--param", "optimizer.lr=loguniform:1e-2:1e-1", "--trials", "1",
            "--out", str(tmp_path / "t")]
    assert main(args) == 0
    before = _bytes(tmp_path / "t")
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "already holds trial-0" in err, err
    assert _bytes(tmp_path / "t") == before
    db = f"sqlite:///{tmp_path / 'study.db'}"  # with a stored study the same command continues it
    assert main(args[:-1] + [str(tmp_path / "t2"), "--storage", db, "--study", "s"]) == 0
    assert main(args[:-1] + [str(tmp_path / "t2"), "--storage", db, "--study", "s"]) == 0
    assert sorted(p.name for p in (tmp_path / "t2").glob("trial-*")) == ["trial-0", "trial-1"]


def test_a_full_disk_while_checkpointing_is_one_line_and_keeps_the_last_checkpoint(synthetic_root, tmp_path,
                                                                                   monkeypatch, capsys):
    import errno

    import torch

    real, calls = torch.save, []

    def save(obj, path, *a, **k):
        calls.append(str(path))
        if str(path).endswith("checkpoint.pt.tmp") and sum(c.endswith("checkpoint.pt.tmp") for c in calls) == 2:
            with open(path, "wb") as f:
                f.write(b"half")  # a partial temporary, as a full disk leaves it
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(obj, path, *a, **k)

    monkeypatch.setattr(torch, "save", save)
    run = tmp_path / "run"
    args = ["train", "--rule", "bp", *SMALL[:4], "--epochs", "3", "--batch-size", "40", "--quiet", "--out", str(run)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "No space left" in err and "epoch 1" in err and "--resume" in err, err
    assert not (run / "checkpoint.pt.tmp").exists()
    assert torch.load(run / "checkpoint.pt", weights_only=True)["epoch"] == 1  # the last good one, intact
    monkeypatch.setattr(torch, "save", real)
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    assert json.loads((run / "summary.json").read_text())["epochs_completed"] == 3


def test_a_full_disk_while_recording_a_sweep_failure_is_one_line(tmp_path, monkeypatch, capsys):
    import errno

    from bioplausible.errors import StorageError
    from bioplausible.experiments import executors
    from bioplausible.experiments.jobs import Job

    def full(path, obj):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(executors, "atomic_write_json", full)
    job = Job({"rule": {"name": "bp"}}, str(tmp_path / "r"), "bp", 0)
    with pytest.raises(StorageError, match="error record cannot be written: No space left.*intact"):
        executors.record_failure(job, RuntimeError("boom"))


def test_generate_out_is_a_folder_or_an_image_file(synthetic_root, tmp_path, capsys):
    run = tmp_path / "bfa"
    assert main(["train", "--rule", "bfa", *SMALL, "--out", str(run)]) == 0
    folder = tmp_path / "pictures"
    folder.mkdir()
    capsys.readouterr()
    assert main(["generate", str(run), "--out", str(folder)]) == 0
    assert capsys.readouterr().out.strip() == str(folder / "generated.png")
    assert (folder / "generated.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (tmp_path / "pictures.png").exists()
    assert main(["generate", str(run), "--out", str(tmp_path / "new" / "grid.svg")]) == 0
    assert (tmp_path / "new" / "grid.svg").read_text().lstrip().startswith("<?xml")


def test_report_ignores_a_damaged_metric_value(synthetic_root, tmp_path, capsys):
    run = tmp_path / "r"
    assert main(["train", "--rule", "bp", *SMALL, "--out", str(run)]) == 0
    lines = (run / "metrics.jsonl").read_text().splitlines()
    lines[0] = lines[0].replace('"train_loss": ', '"train_loss": "oops", "x": ')
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    assert main(["report", str(run)]) == 0
    assert (run / "report.md").is_file() and (run / "curves.png").is_file()


def test_tune_with_no_completed_trial_is_not_a_success(synthetic_root, tmp_path, capsys):
    pytest.importorskip("optuna")
    args = ["tune", "--rule", "bp", *SMALL, "--metric", "test_accuracy", "--trials", "2",
            "--param", "optimizer.lr=loguniform:1e6:1e7", "--out", str(tmp_path / "t"),
            "--write-preset", str(tmp_path / "best.yaml")]
    assert main(args) == 1  # every learning rate diverges: no best configuration exists
    assert "no trial completed" in capsys.readouterr().err
    assert not (tmp_path / "best.yaml").exists()
