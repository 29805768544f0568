"""benchmarks/gpu_check.py without a GPU: the row list, the caps and the budget, the one-epoch worker."""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

import pytest
import torch

from bioplausible.experiments.presets import get_preset

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def gc():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = mod      # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def test_without_cuda_one_line_and_status_2(gc, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gc.main(["--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no CUDA" in err
    assert not (tmp_path / "r").exists()


def test_rows_are_the_paper_scale_rows_and_the_np_cifar_cnn(gc):
    names = [row.preset for row in gc.ROWS]
    assert names[:3] == ["np-fig2-mnist", "bfa-table1-mnist-1x400", "ghost-mb-500"]
    assert "np-table1-cifar10" in names
    for row in gc.ROWS:
        preset = get_preset(row.preset)
        jobs = gc.plan_row(row)
        assert [j["label"] for j in jobs] == list(preset.runs)
        full, seeds = preset.resolved("full")
        for job in jobs:
            assert job["config"]["epochs"] == 1 and job["config"]["device"] == "cuda"
            assert job["full_epochs"] == full["epochs"] and job["seeds"] == len(seeds)
            # everything but the epochs, the device and (batch-1 rows) the subset is the full scale's
            assert job["config"]["batch_size"] == full["batch_size"]
            assert job["config"]["model"] == (full.updated(preset.runs[job["label"]].get("config") or {}))["model"]
    ghost = gc.plan_row(next(r for r in gc.ROWS if r.preset == "ghost-mb-500"))
    assert ghost[0]["config"]["dataset"]["subset"] == 1000 and ghost[0]["scale_up"] == 55000 / 1000


def test_a_run_past_its_cap_is_killed(gc):
    t0 = time.monotonic()
    res = gc.run_capped([sys.executable, "-c", "import time; time.sleep(30)"], cap=1.0)
    assert res["status"] == "over cap (1 s)" and time.monotonic() - t0 < 10
    ok = gc.run_capped([sys.executable, "-c", "print('{\"status\": \"completed\", \"epoch_s\": 1.5}')"], cap=20)
    assert ok["status"] == "completed" and ok["epoch_s"] == 1.5
    bad = gc.run_capped([sys.executable, "-c", "raise SystemExit('boom')"], cap=20)
    assert bad["status"].startswith("error (exit 1): boom")


def test_schedule_shares_the_row_cap_and_stops_at_the_budget(gc):
    job = {"preset": "p", "label": "x", "full_epochs": 10, "seeds": 2, "scale_up": 1.0}
    caps = []
    out = gc.schedule([[dict(job, label=str(i)) for i in range(4)]], lambda: 1000.0,
                      lambda j, cap: caps.append(cap) or {"status": "completed", "epoch_s": 1.0}, row_cap=100.0)
    assert caps[0] == pytest.approx(25.0) and all(c <= 100.0 for c in caps)
    assert [r["status"] for r in out] == ["completed"] * 4
    caps.clear()
    gc.schedule([[job]], lambda: 12.0, lambda j, cap: caps.append(cap) or {"status": "completed"}, row_cap=100.0)
    assert caps == [12.0]                      # the overall budget caps a run below its row's share
    spent = gc.schedule([[job, job]], lambda: 2.0, lambda j, cap: pytest.fail("ran past the budget"))
    assert [r["status"] for r in spent] == ["skipped (time budget spent)"] * 2


def test_one_epoch_worker_times_a_real_epoch_on_cpu(gc, synthetic_root, tmp_path):
    job = gc.plan_row(gc.Row("np-fig2-mnist", subset=200), device="cpu")[0]
    res = gc.one_epoch(job, str(tmp_path / "run"))
    assert res["status"] == "completed" and res["measured_s"] > 0
    assert res["epoch_s"] == pytest.approx(res["measured_s"] * 60000 / 200)
    report = {"device": "cpu", "torch": "t", "cuda": None, "date": "d", "commit": "c", "budget_s": 540,
              "total_s": 3.0, "tests": {"summary": "2 passed"}, "runs": [{**job, **res}]}
    md = gc.markdown(report)
    assert "| np-fig2-mnist | bp |" in md and "50 epochs × 5 seeds" in md and "scaled from" in md


def test_the_stacked_timing_reads_the_benchmark_file_and_reports_failures_in_one_line(gc, tmp_path):
    import json
    import subprocess

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
