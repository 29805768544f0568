"""The job API: plan -> picklable jobs, run_job writes one run directory, aggregate over seeds."""

from __future__ import annotations

import json
import os
import pickle
import signal
import statistics
import subprocess
import sys
import textwrap

import pytest
import torch

from bioplausible.cli import main
from bioplausible.engine.rundir import run_lock
from bioplausible.engine.trainer import Trainer
from bioplausible.errors import ConfigError, UserError
from bioplausible.experiments.jobs import Job, aggregate, check_jobs, plan, run_job
from bioplausible.experiments.seeds import parse_seeds

PRESET = """
name: tiny
title: Tiny preset
paper: none
config:
  dataset: {name: mnist}
  model: {spec: "mlp:784-16-10"}
  epochs: 3
  batch_size: 40
runs: {bp: {name: bp}, fa: {name: fa, config: {optimizer: {lr: 0.05}}}}
seeds: [0, 1, 2]
scales: {quick: {epochs: 1, seeds: [0, 1]}, full: {}}
"""

BASE = {"dataset": {"name": "mnist"}, "model": {"spec": "mlp:784-16-10"}, "epochs": 1,
        "batch_size": 40, "progress": False}


@pytest.fixture
def preset_file(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(PRESET)
    return path


def test_plan_a_preset_gives_one_picklable_job_per_run_and_seed(preset_file, tmp_path):
    jobs = plan(str(preset_file), "quick", out=tmp_path / "out")
    assert [(j.label, j.seed) for j in jobs] == [("bp", 0), ("bp", 1), ("fa", 0), ("fa", 1)]
    assert [os.path.basename(j.run_dir) for j in jobs] == ["bp-seed0", "bp-seed1", "fa-seed0", "fa-seed1"]
    fa = jobs[2]
    assert fa.config["rule"] == {"name": "fa"} and fa.config["optimizer"]["lr"] == 0.05
    assert fa.config["epochs"] == 1 and fa.config["seed"] == 0 and fa.preset == "tiny" and fa.scale == "quick"
    assert pickle.loads(pickle.dumps(jobs)) == jobs
    assert not (tmp_path / "out").exists()  # planning writes nothing


def test_plan_a_config_with_seeds_and_a_grid(tmp_path):
    jobs = plan(BASE, seeds=[3, 4], grid={"optimizer.lr": [0.1, 0.01], "batch_size": [20]}, out=tmp_path)
    assert len(jobs) == 4
    assert {(j.config["optimizer"]["lr"], j.config["batch_size"], j.seed) for j in jobs} == {
        (0.1, 20, 3), (0.1, 20, 4), (0.01, 20, 3), (0.01, 20, 4)}
    assert len({j.run_dir for j in jobs}) == 4 and all(j.label.startswith("bp[") for j in jobs)
    single = plan(BASE, out=tmp_path / "one")
    assert len(single) == 1 and single[0].run_dir == str(tmp_path / "one")


@pytest.mark.parametrize("seeds", [[-1], [2**32], [0, 0], ["a"], [1.5], [True], []])
def test_bad_seeds_are_refused(seeds):
    with pytest.raises(ConfigError):
        plan(BASE, seeds=seeds)


@pytest.mark.parametrize("text", ["1,a", "", "1,,2", "-3", "0,0", "99999999999"])
def test_parse_seeds_rejects_malformed_lists(text):
    with pytest.raises(ConfigError):
        parse_seeds(text)


def test_run_job_and_aggregate(synthetic_root, tmp_path):
    jobs = plan(BASE, seeds=[0, 1, 2], out=tmp_path / "runs")
    summaries = [run_job(j) for j in jobs]
    for job, s in zip(jobs, summaries):
        on_disk = json.loads((tmp_path / "runs" / f"bp-seed{job.seed}" / "summary.json").read_text())
        assert on_disk["job"] == {"label": "bp", "seed": job.seed, "preset": None, "scale": None}
        assert s["status"] == "completed"
    accs = [s["final"]["test_accuracy"] for s in summaries]
    expected = (statistics.fmean(accs), statistics.stdev(accs), 3)
    from_dirs = aggregate([j.run_dir for j in jobs])
    from_summaries = aggregate(summaries)
    assert from_dirs["bp"]["test_accuracy"] == pytest.approx(expected)
    assert from_summaries["bp"]["test_accuracy"] == pytest.approx(expected)
    assert from_dirs["bp"]["grad_angle"] == (None, None, 0)  # probe off: nothing to average


def _spy(monkeypatch):
    """Record the process-wide settings while Trainer.run trains."""
    seen = {}
    original = Trainer.run

    def run(self, resume=False):
        seen["deterministic"] = torch.are_deterministic_algorithms_enabled()
        seen["threads"] = torch.get_num_threads()
        seen["flush"] = float(torch.tensor([1e-320], dtype=torch.float64)[0]) == 0.0
        return original(self, resume)

    monkeypatch.setattr(Trainer, "run", run)
    return seen


def test_train_applies_deterministic_and_restores_it(synthetic_root, tmp_path, monkeypatch):
    seen = _spy(monkeypatch)
    args = ["train", "--rule", "bp", "--dataset", "mnist", "--model", "mlp:784-16-10", "--epochs", "1", "--quiet",
            "--set", "deterministic=true"]
    assert main(args + ["--out", str(tmp_path / "a")]) == 0
    assert seen["deterministic"] is True and not torch.are_deterministic_algorithms_enabled()


def test_deterministic_train_twice_gives_bit_identical_models(synthetic_root, tmp_path):
    args = ["train", "--rule", "fa", "--dataset", "mnist", "--model", "mlp:784-16-10", "--epochs", "2",
            "--batch-size", "30", "--quiet", "--set", "deterministic=true"]
    assert main(args + ["--out", str(tmp_path / "a")]) == 0
    assert main(args + ["--out", str(tmp_path / "b")]) == 0
    a, b = (tmp_path / "a" / "model.pt").read_bytes(), (tmp_path / "b" / "model.pt").read_bytes()
    assert a == b


def test_flush_denormal_is_applied_only_when_asked(synthetic_root, tmp_path, monkeypatch):
    seen = _spy(monkeypatch)
    run_job(plan({**BASE, "flush_denormal": True}, out=tmp_path / "on")[0])
    assert seen["flush"] is True
    assert float(torch.tensor([1e-320], dtype=torch.float64)[0]) != 0.0  # restored afterwards
    run_job(plan(BASE, out=tmp_path / "off")[0])
    assert seen["flush"] is False


def test_threads_env_and_worker_default(synthetic_root, tmp_path, monkeypatch):
    seen = _spy(monkeypatch)
    before = torch.get_num_threads()
    monkeypatch.setenv("BIOPLAUSIBLE_THREADS", "2")
    run_job(plan(BASE, out=tmp_path / "a")[0], worker=True)
    assert seen["threads"] == 2 and torch.get_num_threads() == before
    monkeypatch.delenv("BIOPLAUSIBLE_THREADS")
    torch.set_num_threads(2)
    try:
        run_job(plan(BASE, out=tmp_path / "b")[0], worker=True)
        assert seen["threads"] == 1
    finally:
        torch.set_num_threads(before)
    monkeypatch.setenv("BIOPLAUSIBLE_THREADS", "many")
    with pytest.raises(ConfigError, match="BIOPLAUSIBLE_THREADS"):
        run_job(plan(BASE, out=tmp_path / "c")[0])
    assert not (tmp_path / "c").exists()


def test_a_second_writer_is_refused(synthetic_root, tmp_path, capsys):
    job = plan(BASE, out=tmp_path / "run")[0]
    (tmp_path / "run").mkdir()
    with run_lock(tmp_path / "run"):
        with pytest.raises(UserError, match="being written by another run"):
            run_job(job)
        assert main(["train", "--resume", str(tmp_path / "run")]) == 2
    assert run_job(job)["status"] == "completed"  # released: the next writer goes ahead


def test_a_killed_writer_leaves_no_stuck_lock(synthetic_root, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    code = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from bioplausible.engine.rundir import run_lock
        with run_lock(Path({str(run_dir)!r})):
            print("locked", flush=True)
            time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(UserError, match=str(proc.pid)):
            run_job(plan(BASE, out=run_dir)[0])
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert run_job(plan(BASE, out=run_dir)[0])["status"] == "completed"


def test_check_jobs_finds_an_incompatible_rule_before_anything_runs(synthetic_root, tmp_path):
    jobs = [plan({**BASE, "rule": {"name": r}, "model": {"spec": "lenet"}}, out=tmp_path / r)[0]
            for r in ("bp", "ar")]
    with pytest.raises(UserError, match="ar"):
        check_jobs(jobs)
    assert not (tmp_path / "bp").exists() and not (tmp_path / "ar").exists()


def test_job_is_plain_data():
    job = Job({"epochs": 1}, "runs/x", "bp", 0)
    assert pickle.loads(pickle.dumps(job)) == job


def test_train_and_compare_without_out_write_under_runs(synthetic_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["--dataset", "mnist", "--model", "mlp:784-16-10", "--epochs", "1", "--quiet"]
    assert main(["train", "--rule", "bp"] + args) == 0
    assert main(["compare", "--rules", "bp"] + args) == 0
    made = sorted(p.name.split("-")[0] for p in (tmp_path / "runs").iterdir())
    assert made == ["compare", "train"]


def test_worker_processes_give_the_same_runs_as_one_process(synthetic_root, preset_file, tmp_path, capsys):
    """Jobs are plain data: run in spawned workers they train exactly what this process trains."""
    assert main(["reproduce", str(preset_file), "--out", str(tmp_path / "seq"), "--quiet"]) == 0
    assert main(["reproduce", str(preset_file), "--out", str(tmp_path / "par"), "--quiet", "--workers", "2"]) == 0
    seq = json.loads((tmp_path / "seq" / "reproduce.json").read_text())
    par = json.loads((tmp_path / "par" / "reproduce.json").read_text())
    assert seq["stats"] == par["stats"] and len(seq["runs"]) == 4
    for run in ("bp-seed0", "bp-seed1", "fa-seed0", "fa-seed1"):
        assert (tmp_path / "seq" / run / "model.pt").read_bytes() == (tmp_path / "par" / run / "model.pt").read_bytes()
