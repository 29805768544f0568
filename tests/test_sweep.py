"""Sweeps (#22): grid x seeds on local processes and Ray, skip/resume/failure, reports of mean ± std."""

from __future__ import annotations

import csv
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from bioplausible.cli import main
from bioplausible.errors import ConfigError, UserError
from bioplausible.experiments.executors import run_state
from bioplausible.experiments.sweep import load_spec, plan_sweep, run_sweep, spec_from_dict

BASE = {"dataset": {"name": "mnist"}, "model": {"spec": "mlp:784-16-10"}, "epochs": 2, "batch_size": 40,
        "probe_every": 3}


def write_sweep(tmp_path: Path, out: Path, epochs: int = 2, **extra) -> Path:
    spec = {"name": "tiny", "config": {**BASE, "epochs": epochs}, "grid": {"rule.name": ["bp", "fa"]},
            "seeds": [0, 1, 2], "out": str(out), **extra}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def finals(out: Path) -> dict[str, float]:
    """Final test accuracy of every run folder, read from its own summary.json."""
    res = {}
    for d in sorted(out.iterdir()):
        if (d / "summary.json").is_file():
            res[d.name] = json.loads((d / "summary.json").read_text())["final"]["test_accuracy"]
    return res


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    from conftest import make_synthetic_mnist

    return make_synthetic_mnist(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def local_sweep(data_root, tmp_path_factory):
    """The 2-config x 3-seed sweep run once with --jobs 2 (shared by the tests below)."""
    tmp = tmp_path_factory.mktemp("local")
    os.environ["BIOPLAUSIBLE_DATA"] = str(data_root)
    out = tmp / "out"
    code = main(["sweep", str(write_sweep(tmp, out)), "--jobs", "2"])
    return code, out


@pytest.fixture
def data_env(data_root, monkeypatch):
    monkeypatch.setenv("BIOPLAUSIBLE_DATA", str(data_root))
    return data_root


def test_spec_errors_are_one_line_config_errors(tmp_path):
    for raw, match in [({"grid": {}}, "exactly one of preset"), ({"preset": "x", "config": {}}, "exactly one"),
                       ({"config": {}, "grid": {"optimizer.lr": 0.1}}, "non-empty lists"),
                       ({"config": {}, "seeds": [0, 0]}, "twice"), ({"config": {}, "sede": [1]}, "unknown key")]:
        with pytest.raises(ConfigError, match=match):
            spec_from_dict(raw)
    with pytest.raises(UserError, match="does not exist"):
        load_spec(tmp_path / "nope.yaml")


def test_labels_and_run_folders(tmp_path):
    jobs, base = plan_sweep(spec_from_dict({"config": BASE, "grid": {"rule.name": ["bp", "fa"],
                                                                     "optimizer.lr": [0.1, 0.01]},
                                            "seeds": [0, 1]}), out=tmp_path)
    assert len(jobs) == 8 and base == tmp_path
    assert {j.label for j in jobs} == {"bp[optimizer.lr=0.1]", "bp[optimizer.lr=0.01]", "fa[optimizer.lr=0.1]",
                                       "fa[optimizer.lr=0.01]"}
    assert {Path(j.run_dir).name for j in jobs if j.label == "fa[optimizer.lr=0.01]"} == {
        "fa[optimizer.lr=0.01]-seed0", "fa[optimizer.lr=0.01]-seed1"}


def test_a_preset_sweep_keeps_the_runs_it_names_with_their_own_seeds(tmp_path):
    """``runs:`` keeps some of a preset's runs: a list at the sweep's seeds, or a mapping to each
    run's own seeds (``null``: the sweep's)."""
    spec = spec_from_dict({"preset": "ghost-mb-500", "scale": "full", "seeds": [0],
                           "runs": {"mb_tf": [0, 1, 2], "bp_equiv": None}})
    jobs, _ = plan_sweep(spec, out=tmp_path)
    assert sorted((j.label, j.seed) for j in jobs) == [("bp_equiv", 0), ("mb_tf", 0), ("mb_tf", 1), ("mb_tf", 2)]
    assert {Path(j.run_dir).name for j in jobs} == {"bp_equiv-seed0", "mb_tf-seed0", "mb_tf-seed1", "mb_tf-seed2"}
    every, _ = plan_sweep(spec_from_dict({"preset": "ghost-mb-500", "scale": "full", "seeds": [0]}), out=tmp_path)
    by_dir = {Path(j.run_dir).name: j.config for j in every}
    assert all(j.config == by_dir[Path(j.run_dir).name] for j in jobs if j.seed == 0)  # the same runs, not others
    listed, _ = plan_sweep(spec_from_dict({"preset": "ghost-mb-500", "scale": "full", "seeds": [3, 4],
                                           "runs": ["mb_fa"]}), out=tmp_path)
    assert sorted((j.label, j.seed) for j in listed) == [("mb_fa", 3), ("mb_fa", 4)]
    with pytest.raises(ConfigError, match="has no run 'mb_xx'"):
        plan_sweep(spec_from_dict({"preset": "ghost-mb-500", "runs": ["mb_xx"]}), out=tmp_path)
    for raw, match in [({"config": BASE, "runs": ["bp"]}, "picks runs of a preset"),
                       ({"preset": "ghost-mb-500", "runs": "mb_tf"}, "runs must be a list"),
                       ({"preset": "ghost-mb-500", "runs": {"mb_tf": [0, 0]}}, "twice")]:
        with pytest.raises(ConfigError, match=match):
            spec_from_dict(raw)


def test_local_sweep_with_two_jobs_and_its_report(local_sweep, data_env, capsys):
    code, out = local_sweep
    assert code == 0
    index = json.loads((out / "sweep.json").read_text())
    assert sorted((r["label"], r["seed"], r["status"]) for r in index["runs"]) == [
        (label, s, "completed") for label in ("bp", "fa") for s in (0, 1, 2)]
    assert main(["report", str(out)]) == 0
    printed = capsys.readouterr().out
    # oracle: mean and sample std of each rule's three summary.json values, computed here
    acc = finals(out)
    for rule in ("bp", "fa"):
        vals = [acc[f"{rule}-seed{s}"] for s in (0, 1, 2)]
        cell = f"{statistics.fmean(vals):.2f} ± {statistics.stdev(vals):.2f}"
        assert f"| {rule} | 3 | {cell} |" in printed
    rows = {r["label"]: r for r in csv.DictReader((out / "results.csv").open())}
    vals = [acc[f"fa-seed{s}"] for s in (0, 1, 2)]
    assert float(rows["fa"]["mean"]) == pytest.approx(statistics.fmean(vals))
    assert float(rows["fa"]["std"]) == pytest.approx(statistics.stdev(vals))
    for png in ("curves.png", "angles.png", "time.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"


def test_hidden_angle_leaves_out_the_exact_output_layer(local_sweep, data_env):
    """FA trains the output layer with the true gradient: only the hidden layer's angle is reported."""
    _, out = local_sweep
    report = json.loads((out / "report.json").read_text())
    fa = report["stats"]["fa"]
    assert fa["exact_layers"] == ["3.weight"]  # mlp:784-16-10: layer 1 hidden, layer 3 output
    # oracle: the hidden layer's angles straight from metrics.jsonl, averaged per run then over seeds
    per_run = []
    for s in (0, 1, 2):
        recs = [json.loads(line) for line in (out / f"fa-seed{s}" / "metrics.jsonl").read_text().splitlines()]
        angles = [r["grad_angle/1.weight"] for r in recs if r.get("kind") == "probe"]
        per_run.append(statistics.fmean(angles))
        assert max(r["grad_angle/3.weight"] for r in recs if r.get("kind") == "probe") < 1e-3
    assert fa["hidden_angle"][0] == pytest.approx(statistics.fmean(per_run))
    assert fa["hidden_angle"][0] > 30  # an FA hidden layer early in training is far from BP
    assert report["stats"]["bp"]["hidden_angle"][0] == 0.0  # every BP layer is exact


def test_relaunch_skips_finished_runs(local_sweep, data_env, capsys):
    _, out = local_sweep
    before = {d.name: (d / "summary.json").stat().st_mtime_ns for d in out.iterdir() if d.is_dir()}
    index = run_sweep(load_spec(out.parent / "sweep.yaml"), jobs=2)
    assert all(r["status"] == "completed" for r in index["runs"])
    after = {d.name: (d / "summary.json").stat().st_mtime_ns for d in out.iterdir() if d.is_dir()}
    assert after == before
    assert "6/6 done (6 skipped)" in capsys.readouterr().err


def test_a_failed_run_is_recorded_and_retried(data_env, tmp_path, monkeypatch, capsys):
    from bioplausible.engine.trainer import Trainer

    original = Trainer.run

    def run(self, resume=False):
        if self.rule.name == "fa" and self.config["seed"] == 1:
            raise RuntimeError("boom in fa seed 1")
        return original(self, resume)

    monkeypatch.setattr(Trainer, "run", run)
    out = tmp_path / "out"
    path = write_sweep(tmp_path, out, epochs=1)
    assert main(["sweep", str(path)]) == 1  # jobs=1 runs in this process, where the patch applies
    assert "1 run(s) failed" in capsys.readouterr().err
    err = json.loads((out / "fa-seed1" / "error.json").read_text())
    assert "boom in fa seed 1" in err["message"] and "RuntimeError" in err["traceback"]
    assert run_state(out / "fa-seed1") == "failed"
    assert [run_state(out / f"{r}-seed{s}") for r in ("bp", "fa") for s in (0, 2)] == ["completed"] * 4
    stamps = {d.name: (d / "summary.json").stat().st_mtime_ns for d in out.iterdir() if d.is_dir()}
    monkeypatch.setattr(Trainer, "run", original)
    assert main(["sweep", str(path)]) == 0
    assert run_state(out / "fa-seed1") == "completed" and not (out / "fa-seed1" / "error.json").exists()
    changed = sorted(d.name for d in out.iterdir() if d.is_dir()
                     and (d / "summary.json").stat().st_mtime_ns != stamps[d.name])
    assert changed == ["fa-seed1"]


def test_a_config_changed_between_launches_is_refused(local_sweep, data_env, tmp_path):
    _, out = local_sweep
    spec = load_spec(out.parent / "sweep.yaml")
    spec.config = {**spec.config, "batch_size": 20}
    (out / "bp-seed0" / "summary.json").rename(out / "bp-seed0" / "summary.keep")
    try:
        with pytest.raises(UserError, match="batch_size"):
            run_sweep(spec)
    finally:
        (out / "bp-seed0" / "summary.keep").rename(out / "bp-seed0" / "summary.json")


def test_finished_runs_made_with_another_config_are_not_reused(local_sweep, data_env, tmp_path):
    """Every run of the first launch finished; a relaunch asking for another learning rate must not
    report those results as its own."""
    _, out = local_sweep
    spec = load_spec(out.parent / "sweep.yaml")
    spec.config = {**spec.config, "optimizer": {**spec.config.get("optimizer", {}), "lr": 0.0123}}
    with pytest.raises(UserError, match="optimizer.lr"):
        run_sweep(spec)


def _lock_holders(out: Path) -> list[int]:
    pids = []
    for lock in out.glob("*/.lock"):
        text = lock.read_text().strip()
        if text.isdigit():
            try:
                os.kill(int(text), 0)
                pids.append(int(text))
            except ProcessLookupError:
                pass
    return pids


def test_sigkill_mid_sweep_then_relaunch_completes_only_the_missing_runs(data_env, tmp_path):
    ref_out, out = tmp_path / "ref", tmp_path / "killed"
    run_sweep(load_spec(write_sweep(tmp_path, ref_out, epochs=4)))  # the reference, in this process
    path = write_sweep(tmp_path, out, epochs=4)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "bioplausible", "sweep", str(path), "--jobs", "2"],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    deadline = time.time() + 120
    while time.time() < deadline:
        states = [run_state(d) for d in out.iterdir() if d.is_dir()] if out.exists() else []
        if states.count("completed") >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    deadline = time.time() + 30
    while _lock_holders(out) and time.time() < deadline:  # the workers die with their parent
        time.sleep(0.1)
    assert _lock_holders(out) == []
    runs = [d for d in out.iterdir() if d.is_dir()]
    states = {d.name: run_state(d) for d in runs}
    finished = {n for n, s in states.items() if s == "completed"}
    assert 2 <= len(finished) < 6, states
    for d in runs:  # nothing half-written passes for finished: a run is finished only with its model
        if d.name in finished:
            assert (d / "model.pt").is_file()
    stamps = {n: (out / n / "summary.json").stat().st_mtime_ns for n in finished}
    result = subprocess.run([sys.executable, "-m", "bioplausible", "sweep", str(path), "--jobs", "2"],
                            check=False, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert f"({len(finished)} skipped)" in result.stderr and "ETA" in result.stderr
    assert {n: (out / n / "summary.json").stat().st_mtime_ns for n in finished} == stamps
    # oracle: an uninterrupted sweep; resumed runs continue from their checkpoint to the same model
    assert finals(out) == finals(ref_out)
    for name in finals(ref_out):
        assert (out / name / "model.pt").read_bytes() == (ref_out / name / "model.pt").read_bytes(), name


_RAY_IN_NETNS = r"""
import sys
import ray
from bioplausible.cli import main

ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
try:
    rc = main(["sweep", sys.argv[1], "--executor", "ray", "--jobs", "2"])
    listening = []
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(name) as fh:
            for line in fh.readlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                if state == "0A":  # LISTEN
                    listening.append(local.split(":")[0])
finally:
    ray.shutdown()
loopback = {"0100007F", "0000000000000000FFFF00000100007F", "00000000000000000000000001000000"}
print("LISTEN", sorted(set(listening)))
sys.exit(rc if rc else (0 if listening and set(listening) <= loopback else 3))
"""


def _netns_available() -> bool:
    try:
        return subprocess.run(["unshare", "-rn", "true"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def test_ray_executor_runs_the_same_sweep(local_sweep, data_env, tmp_path, capsys):
    """The Ray executor gives the local executor's results. Where the kernel allows an unprivileged
    network namespace (``unshare -rn``), Ray runs in one that has only the loopback interface, and
    the test checks that every listening socket is on 127.0.0.1 (Ray 2.60 binds its servers to all
    interfaces of the host otherwise); elsewhere it runs in-process with Ray told 127.0.0.1."""
    ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'bioplausible[sweep]')")
    _, local_out = local_sweep
    out = tmp_path / "ray"
    spec = write_sweep(tmp_path, out)
    if _netns_available():
        cmd = ["unshare", "-rn", "sh", "-c", 'ip link set lo up 2>/dev/null; exec "$0" -c "$1" "$2"',
               sys.executable, _RAY_IN_NETNS, str(spec)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=os.environ.copy())
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        assert "LISTEN" in proc.stdout and "| fa | 3 |" in proc.stdout
    else:
        ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
        try:
            assert main(["sweep", str(spec), "--executor", "ray", "--jobs", "2"]) == 0
        finally:
            ray.shutdown()
        assert "| fa | 3 |" in capsys.readouterr().out
    assert finals(out) == finals(local_out)  # same jobs, same results, wherever they ran


def test_compare_with_seeds_reports_mean_and_std(data_env, tmp_path, capsys):
    out = tmp_path / "cmp"
    args = ["compare", "--rules", "bp,fa", "--dataset", "mnist", "--model", "mlp:784-16-10", "--epochs", "1",
            "--batch-size", "40", "--seeds", "0,1", "--jobs", "2", "--quiet", "--out", str(out),
            "--probe-every", "2"]
    assert main(args) == 0
    text = (out / "report.md").read_text()
    vals = [json.loads((out / f"fa-seed{s}" / "summary.json").read_text())["final"]["test_accuracy"] for s in (0, 1)]
    assert f"| fa | 2 | {statistics.fmean(vals):.2f} ± {statistics.stdev(vals):.2f} |" in text
    assert "| fa | 3.weight |" in text and "exact by construction" in text
