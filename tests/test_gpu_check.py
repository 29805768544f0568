"""benchmarks/gpu_check.py without a GPU: the row list, the caps and the budget, the row worker."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from bioplausible.experiments.presets import get_preset

ROOT = Path(__file__).resolve().parents[1]
GPU_CHECK = ROOT / "benchmarks" / "gpu_check.py"
SIDE_STUDIES = {"bdfa_feedback_rates.yaml", "ghost_ma_500_reduction.yaml"}   # paper_scale files that are no row


@pytest.fixture(scope="module")
def gc():
    spec = importlib.util.spec_from_file_location("gpu_check", GPU_CHECK)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = mod      # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def paper_scale_rows() -> dict[str, dict]:
    """The row files' contents by the preset they name, read here without gpu_check's help."""
    rows = {}
    for path in sorted((ROOT / "benchmarks" / "paper_scale").glob("*.yaml")):
        raw = yaml.safe_load(path.read_text()) or {}
        if path.name not in SIDE_STUDIES and raw.get("preset"):
            first = rows.setdefault(raw["preset"], raw)
            if first is not raw:  # a second file of the row (its runs trained apart): one row, both files' runs
                first["runs"] = list(first["runs"]) + [r for r in raw["runs"] if r not in first["runs"]]
    return rows


def test_without_cuda_one_line_and_status_2(gc, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gc.main(["--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no CUDA" in err
    assert not (tmp_path / "r").exists()


def test_rows_are_every_paper_scale_row_and_the_np_cifar_cnn(gc):
    names = [row.preset for row in gc.ROWS]
    rows = paper_scale_rows()
    assert len(rows) >= 9 and "ghost-ma-500" in rows and "sal-table1-fashion" in rows
    missing = sorted(set(rows) - set(names))
    assert not missing, f"paper-scale rows without a GPU timing row in gpu_check.ROWS: {missing}"
    assert set(names) == set(rows) | {"np-table1-cifar10", "np-table1-cifar10-code"}
    assert len(names) == len(set(names))


def test_each_job_is_the_full_scale_config_but_epochs_device_and_subset(gc):
    rows = paper_scale_rows()
    for row in gc.ROWS:
        preset = get_preset(row.preset)
        full, seeds = preset.resolved("full")
        file = rows.get(row.preset, {})
        jobs = gc.plan_row(row)
        runs = file.get("runs")
        want = list(runs) if runs is not None else list(preset.runs)
        assert [j["label"] for j in jobs] == [label for label in preset.runs if label in want], row.preset
        for job in jobs:
            run = preset.runs[job["label"]]
            run_seeds = (runs.get(job["label"]) if isinstance(runs, dict) else None) or file.get("seeds") or seeds
            expected = full.updated(run.get("config") or {}).updated(
                {"rule": {k: v for k, v in run.items() if k != "config"}, "seed": run_seeds[0]}).to_dict()
            got = json.loads(json.dumps(job["config"]))
            assert (got["epochs"], got["device"], got["dataset"]["subset"]) == (2, "cuda", row.subset)
            for key, value in (("epochs", expected["epochs"]), ("device", expected["device"]),
                               ("progress", expected["progress"])):
                got[key] = value
            got["dataset"]["subset"] = expected["dataset"]["subset"]
            assert got == json.loads(json.dumps(expected)), (row.preset, job["label"])
            assert job["full_epochs"] == full["epochs"] and job["seeds"] == len(run_seeds)
            # the subset is a whole fraction of the training set, an epoch at most a few hundred steps
            assert job["n_full"] % row.subset == 0 and job["scale_up"] == job["n_full"] / row.subset
            assert -(-row.subset // full["batch_size"]) <= 500, row.preset
    by_name = {row.preset: row for row in gc.ROWS}
    ghost = gc.plan_row(by_name["ghost-mb-500"])
    assert ghost[0]["config"]["batch_size"] == 1 and ghost[0]["scale_up"] == 55000 / 500
    assert {j["label"]: j["seeds"] for j in ghost} == {"mb_tf": 3, "mb_fa": 1, "bp_equiv": 1}
    assert [j["label"] for j in gc.plan_row(by_name["ghost-ma-500"])] == ["ma_tf_sum", "bp_equiv_sum", "bp_sum_lr0.01"]
    assert gc.plan_row(by_name["sal-table1-fashion"])[0]["n_full"] == 60000   # fashion_mnist is fashion-mnist
    assert all(j["seeds"] == 5 for j in gc.plan_row(by_name["np-table1-cifar10"]))   # no row file: the preset's


def _fake_row_script(tmp_path: Path, crash: bool = False) -> Path:
    """A row worker whose runs are fakes: run 1 raises, run 3 hangs (or, ``crash``, the process dies)."""
    script = tmp_path / "fake_row.py"
    script.write_text(f"""
import importlib.util, json, os, sys, time
spec = importlib.util.spec_from_file_location("gpu_check", {str(GPU_CHECK)!r})
gc = importlib.util.module_from_spec(spec); sys.modules["gpu_check"] = gc; spec.loader.exec_module(gc)

def train(job, out_dir):
    if job["label"] == "b":
        raise RuntimeError("CUDA error: an illegal memory access")
    if job["label"] == "d":
        if {crash!r}:
            print("Fatal Python error: Segmentation fault", file=sys.stderr, flush=True); os._exit(139)
        time.sleep(60)
    return {{"status": "completed", "epoch_s": 2.0, "measured_s": 0.5}}

gc.row_worker(json.loads(open(sys.argv[1]).read()), {str(tmp_path / "runs")!r}, train=train)
""")
    return script


def _jobs(labels: str) -> list[dict]:
    return [{"preset": "p", "label": label, "full_epochs": 10, "seeds": 2, "subset": 100, "scale_up": 4.0}
            for label in labels]


def test_a_row_worker_killed_at_its_cap_reports_the_runs_it_finished(gc, tmp_path, monkeypatch):
    monkeypatch.delenv("PYTHONUNBUFFERED", raising=False)   # stdout to a pipe is block-buffered, as under make
    jobs = _jobs("abcde")
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    argv = [sys.executable, str(_fake_row_script(tmp_path)), str(tmp_path / "jobs.json")]
    t0 = time.monotonic()
    res = gc.run_row(argv, jobs, cap=4.0)
    assert time.monotonic() - t0 < 15
    assert [r["status"] for r in res] == ["completed", "error: RuntimeError: CUDA error: an illegal memory access",
                                          "completed", "over cap (4 s)", "over cap (4 s)"]
    assert res[0]["epoch_s"] == 2.0 and res[0]["label"] == "a" and "epoch_s" not in res[3]


def test_a_row_worker_that_dies_marks_its_unfinished_runs_with_its_exit_and_last_error(gc, tmp_path):
    jobs = _jobs("abcde")
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    argv = [sys.executable, str(_fake_row_script(tmp_path, crash=True)), str(tmp_path / "jobs.json")]
    res = gc.run_row(argv, jobs, cap=30.0)
    assert [r["status"] for r in res][:3] == ["completed", res[1]["status"], "completed"]
    assert res[1]["status"].startswith("error: RuntimeError")
    assert [r["status"] for r in res[3:]] == ["error (exit 139): Fatal Python error: Segmentation fault"] * 2


def test_an_erroring_run_does_not_stop_the_row(gc, tmp_path):
    lines = []

    def train(job, out_dir):
        if job["label"] == "b":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory.\nTried to allocate 2 GiB")
        return {"status": "completed", "epoch_s": 1.0}

    gc.row_worker(_jobs("abc"), str(tmp_path), train=train, emit=lines.append)
    recs = [json.loads(line) for line in lines]
    assert [(r["run"], r["label"], r["status"]) for r in recs] == [
        (0, "a", "completed"), (1, "b", "error: OutOfMemoryError: CUDA out of memory. Tried to allocate 2 GiB"),
        (2, "c", "completed")]


def test_run_row_reads_a_complete_row_and_ignores_other_output(gc):
    jobs = _jobs("ab")
    out = "[bp] epoch 1/2 ...\n" + "\n".join(json.dumps({"run": i, "label": j["label"], "status": "completed",
                                                          "epoch_s": 1.0 + i}) for i, j in enumerate(jobs))
    res = gc.run_row(["worker"], jobs, 30, runner=lambda argv, **kw: subprocess.CompletedProcess(argv, 0, out, ""))
    assert [(r["label"], r["epoch_s"]) for r in res] == [("a", 1.0), ("b", 2.0)]

    def slow(argv, **kw):   # subprocess.run's TimeoutExpired carries the output so far, as bytes
        raise subprocess.TimeoutExpired(argv, kw["timeout"], output=(out.rsplit("\n", 1)[0] + '\n{"run": 1, "la').encode())

    assert [r["status"] for r in gc.run_row(["worker"], jobs, 30, runner=slow)] == ["completed", "over cap (30 s)"]


def test_schedule_gives_each_row_the_time_left_over_the_rows_left(gc):
    clock = {"now": 0.0}
    caps = []

    def run(jobs, cap):   # each row uses 10 s, or its whole cap
        caps.append(cap)
        clock["now"] += min(10.0, cap)
        return [{"status": "completed", "epoch_s": 1.0} for _ in jobs]

    rows = [_jobs("ab"), _jobs("c"), _jobs("de"), _jobs("f")]
    out = gc.schedule(rows, lambda: 100.0 - clock["now"], run)
    assert caps == pytest.approx([25.0, 30.0, 40.0, 70.0])   # time a row leaves goes to the rows after it
    assert [r["label"] for r in out] == list("abcdef") and {r["status"] for r in out} == {"completed"}
    assert out[0]["row_cap_s"] == 25.0 and out[0]["subset"] == 100
    caps.clear()
    clock["now"] = 0.0

    def overrun(jobs, cap):   # killed at its cap, 2 s more to stop and report
        caps.append(cap)
        clock["now"] += cap + 2.0
        return [{"status": f"over cap ({cap:.0f} s)"} for _ in jobs]

    out = gc.schedule(rows, lambda: 36.0 - clock["now"], overrun)   # 36 / 4 = 9 s: under MIN_CAP, not started
    assert gc.MIN_CAP == 10.0 and caps == pytest.approx([12.0, 11.0])    # 36 / 3, then (36 - 14) / 2; 9 s left
    assert [r["status"] for r in out] == ["skipped (time budget spent)"] * 2 + ["over cap (12 s)"] + [
        "over cap (11 s)"] * 2 + ["skipped (time budget spent)"]
    spent = gc.schedule([_jobs("ab")], lambda: 2.0, lambda jobs, cap: pytest.fail("ran past the budget"))
    assert [r["status"] for r in spent] == ["skipped (time budget spent)"] * 2


def test_time_run_reports_the_second_epoch_scaled_up_on_cpu(gc, synthetic_root, tmp_path):
    job = gc.plan_row(gc.Row("np-fig2-mnist", subset=200), device="cpu")[0]
    res = gc.time_run(job, str(tmp_path / "run"))
    assert res["status"] == "completed" and res["epochs_timed"] == 2 and res["measured_s"] > 0
    assert res["epoch_s"] == pytest.approx(res["measured_s"] * 60000 / 200)
    assert res["first_epoch_s"] == pytest.approx(res["first_measured_s"] * 60000 / 200)
    epochs = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    times = {r["epoch"]: r["epoch_time"] for r in epochs if r.get("kind") == "epoch"}
    assert (res["first_measured_s"], res["measured_s"]) == (times[1], times[2])   # the second epoch is the figure
    report = {"device": "cpu", "torch": "t", "cuda": None, "date": "d", "commit": "c", "budget_s": 540,
              "total_s": 3.0, "tests": {"summary": "2 passed"}, "runs": [{**job, **res}]}
    md = gc.markdown(report)
    assert "| np-fig2-mnist | bp |" in md and "50 epochs × 5 seeds" in md and "on 1/300 of the images" in md
    assert "1st epoch" in md


def test_a_real_row_worker_on_cpu(gc, real_data_root, tmp_path):
    """The worker process as main starts it (``--row``), on a tiny real row: every run reported."""
    jobs = gc.plan_row(gc.Row("np-fig2-mnist", subset=64), device="cpu")
    (tmp_path / "row.json").write_text(json.dumps(jobs))
    res = gc.run_row([sys.executable, str(GPU_CHECK), "--row", str(tmp_path / "row.json")], jobs, cap=300)
    assert [(r["label"], r["status"]) for r in res] == [("bp", "completed"), ("fa", "completed"), ("np", "completed")]
    assert all(r["epochs_timed"] == 2 and r["epoch_s"] == pytest.approx(r["measured_s"] * 60000 / 64) for r in res)
    assert sorted(p.name for p in (tmp_path / "row-runs").iterdir()) == ["00-bp", "01-fa", "02-np"]


def test_the_stacked_timing_reads_the_benchmark_file_and_reports_failures_in_one_line(gc, tmp_path):
    def fake(argv, **kw):   # bench_stacked.py: its results file in --out
        assert argv[argv.index("--device") + 1] == "cuda" and "--quick" in argv and kw["timeout"] == 30
        out = Path(argv[argv.index("--out") + 1])
        out.mkdir(parents=True)
        rules = {"bp": {"run_steps_per_s_wall": {"sequential": 100.0, "stacked": 450.0}, "speedup_wall": 4.5}}
        (out / "stacked_speed_quick.json").write_text(json.dumps(
            {"runs": 8, "reps": 2, "tasks": [{"title": "net A", "steps_per_run": 20, "rules": rules}]}))
        return subprocess.CompletedProcess(argv, 0, "", "")

    res = gc.run_stacked(30, tmp_path / "s", runner=fake)
    assert res["status"] == "ok" and res["rows"] == [
        {"task": "net A", "rule": "bp", "steps_per_run": 20, "sequential": 100.0, "stacked": 450.0, "speedup": 4.5}]
    report = {"device": "GPU", "torch": "t", "cuda": "c", "date": "d", "commit": "x", "tests": {"summary": "ok"},
              "runs": [], "stacked": res, "budget_s": 540, "total_s": 1}
    assert "| net A | bp | 20 | 100 | 450 | 4.50× |" in gc.markdown(report)

    def slow(argv, **kw):
        raise subprocess.TimeoutExpired(argv, kw["timeout"])

    assert gc.run_stacked(30, tmp_path / "t", runner=slow)["status"] == "over cap (30 s)"
    failed = gc.run_stacked(30, tmp_path / "u", runner=lambda argv, **kw: subprocess.CompletedProcess(
        argv, 1, "", "Traceback\nRuntimeError: CUDA out of memory"))
    assert failed["status"] == "error (exit 1): RuntimeError: CUDA out of memory" and failed["rows"] == []
    assert gc.run_stacked(3, tmp_path / "v", runner=fake)["status"] == "skipped (time budget spent)"
