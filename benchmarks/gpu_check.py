"""On a machine with CUDA: run the CUDA tests and time one epoch of each paper-scale row on the GPU.

    make gpu-check            # or: python benchmarks/gpu_check.py [--budget 540] [--out benchmarks/results]

Writes ``gpu_check.json`` and ``gpu_check.md`` in ``--out``: the device, the CUDA tests' result
(``pytest -k cuda``: the tests that run on CUDA when it is there and are skipped without it),
and per row (the presets run at full scale: :data:`ROWS`) and run, the seconds of one training
epoch on the device at the preset's full-scale settings, and what the whole row would take at
that speed (epochs x seeds, summed over runs). Rows whose epoch is long (ghost units MB at
batch 1) are timed on a subset of the training images and scaled to the full training set, which
the table says.

Bounded: the whole check stops within ``--budget`` seconds (default 540, under ten minutes with
start-up): the tests get at most :data:`TEST_CAP` seconds, each run its share of its row's cap
(:data:`ROW_CAP`), each in its own process killed at its cap ("over cap" in the table), and the
runs left when the budget is spent are listed as skipped. Between the tests and the rows it times
8 runs stacked as one model against the same 8 runs one after another on the device
(``benchmarks/bench_stacked.py --device cuda --quick``, every task of that benchmark, at most
:data:`STACK_CAP` seconds). Without CUDA it prints one line and exits with status 2, writing nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

TEST_CAP = 150.0     # seconds for `pytest -k cuda`
STACK_CAP = 90.0     # seconds for the stacked-vs-sequential timing (bench_stacked.py --device cuda --quick)
ROW_CAP = 85.0       # seconds per row, shared by its runs
BUDGET = 540.0       # seconds for everything
TRAIN_SIZES = {"mnist": 60000, "fashion-mnist": 60000, "cifar10": 50000, "cifar100": 50000}


@dataclass(frozen=True)
class Row:
    preset: str
    subset: int | None = None    # time on this many training images and scale up (batch-1 rows)


# the rows run at full scale (benchmarks/paper_scale/) and the NP CIFAR CNN, paper text and code settings
ROWS = (Row("np-fig2-mnist"), Row("bfa-table1-mnist-1x400"), Row("ghost-mb-500", subset=1000),
        Row("np-table1-cifar10"), Row("np-table1-cifar10-code"))


def plan_row(row: Row, device: str = "cuda") -> list[dict[str, Any]]:
    """One job per run of the row's preset: its full-scale config, one epoch, on ``device``."""
    from bioplausible.experiments.presets import get_preset

    preset = get_preset(row.preset)
    config, seeds = preset.resolved("full")
    out = []
    for label, run in preset.runs.items():
        rule = {k: v for k, v in run.items() if k != "config"}
        cfg = config.updated(run.get("config") or {}).updated({"rule": rule, "seed": seeds[0]})
        full_epochs = int(cfg["epochs"])
        data = dict(cfg["dataset"])
        n_full = TRAIN_SIZES.get(str(data["name"]), 0) - int(data.get("val_size") or 0)
        update: dict[str, Any] = {"epochs": 1, "device": device, "progress": False}
        if row.subset:
            update["dataset"] = {"subset": row.subset}
        out.append({"preset": row.preset, "label": label, "config": cfg.updated(update).to_dict(),
                    "full_epochs": full_epochs, "seeds": len(seeds), "n_full": n_full,
                    "scale_up": (n_full / row.subset) if row.subset else 1.0})
    return out


def one_epoch(job: dict[str, Any], out_dir: str) -> dict[str, Any]:
    """Train ``job`` for its one epoch; the epoch's training seconds (scaled up for a subset)."""
    from bioplausible.engine.config import TrainConfig
    from bioplausible.experiments.jobs import Job, run_job

    cfg = TrainConfig.from_dict(job["config"])
    summary = run_job(Job(cfg.to_dict(), out_dir, job["label"], cfg["seed"]), progress=False)
    epoch = (summary.get("final") or {}).get("epoch_time") or summary.get("mean_epoch_time")
    return {"status": summary.get("status"), "epoch_s": None if epoch is None else float(epoch) * job["scale_up"],
            "measured_s": epoch, "test_accuracy": (summary.get("final") or {}).get("test_accuracy")}


def run_capped(argv: list[str], cap: float, runner: Callable[..., Any] = subprocess.run) -> dict[str, Any]:
    """Run ``argv`` for at most ``cap`` seconds; its last stdout line as JSON, or why there is none."""
    t0 = time.monotonic()
    try:
        proc = runner(argv, capture_output=True, text=True, timeout=max(cap, 1.0), cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"status": f"over cap ({cap:.0f} s)", "wall_s": time.monotonic() - t0}
    wall = time.monotonic() - t0
    lines = [ln for ln in (proc.stdout or "").splitlines() if ln.strip()]
    if proc.returncode == 0 and lines:
        try:
            return {**json.loads(lines[-1]), "wall_s": wall}
        except ValueError:
            pass
    err = (proc.stderr or proc.stdout or "").strip().splitlines()
    return {"status": f"error (exit {proc.returncode}): {err[-1] if err else 'no output'}"[:300], "wall_s": wall}


def schedule(rows: list[list[dict[str, Any]]], budget_left: Callable[[], float],
             run: Callable[[dict[str, Any], float], dict[str, Any]], row_cap: float = ROW_CAP) -> list[dict[str, Any]]:
    """Time every job within its row's cap and the overall budget; later jobs are skipped when it is spent."""
    results = []
    for jobs in rows:
        row_left = row_cap
        for i, job in enumerate(jobs):
            share = row_left / (len(jobs) - i)
            cap = min(share, budget_left())
            base = {k: job[k] for k in ("preset", "label", "full_epochs", "seeds", "scale_up")}
            if cap < 5.0:
                results.append({**base, "status": "skipped (time budget spent)"})
                continue
            t0 = time.monotonic()
            res = run(job, cap)
            row_left = max(0.0, row_left - (time.monotonic() - t0))
            results.append({**base, **res})
    return results


def run_stacked(cap: float, out_dir: Path, runner: Callable[..., Any] = subprocess.run) -> dict[str, Any]:
    """Stacked vs sequential on the device within ``cap`` seconds: one row per task and rule of
    ``bench_stacked.py --device cuda --quick`` (its results file in ``out_dir``), or why there is none."""
    if cap < 5.0:
        return {"status": "skipped (time budget spent)", "rows": []}
    argv = [sys.executable, str(ROOT / "benchmarks" / "bench_stacked.py"), "--device", "cuda", "--quick",
            "--out", str(out_dir)]
    t0 = time.monotonic()
    try:
        proc = runner(argv, capture_output=True, text=True, timeout=cap, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"status": f"over cap ({cap:.0f} s)", "rows": [], "wall_s": time.monotonic() - t0}
    wall = time.monotonic() - t0
    path = Path(out_dir) / "stacked_speed_quick.json"
    if proc.returncode != 0 or not path.exists():
        err = (proc.stderr or proc.stdout or "").strip().splitlines()
        return {"status": f"error (exit {proc.returncode}): {err[-1] if err else 'no output'}"[:300], "rows": [],
                "wall_s": wall}
    result = json.loads(path.read_text())
    rows = [{"task": t["title"], "rule": rule, "steps_per_run": t["steps_per_run"],
             "sequential": r["run_steps_per_s_wall"]["sequential"], "stacked": r["run_steps_per_s_wall"]["stacked"],
             "speedup": r["speedup_wall"]}
            for t in result["tasks"] for rule, r in t["rules"].items()]
    return {"status": "ok", "runs": result.get("runs"), "reps": result.get("reps"), "rows": rows, "wall_s": wall}


def _projection(r: dict[str, Any]) -> float | None:
    return r["epoch_s"] * r["full_epochs"] * r["seeds"] if r.get("epoch_s") is not None else None


def markdown(report: dict[str, Any]) -> str:
    lines = ["# GPU check", "", f"`make gpu-check` on {report['device']} (torch {report['torch']}, CUDA "
             f"{report['cuda']}), {report['date']}, commit {report['commit']}.", "",
             f"CUDA tests (`pytest -k cuda`): {report['tests']['summary']}", "",
             "One training epoch per run at the preset's full-scale settings on the GPU (the first epoch of a "
             "fresh process, so it includes CUDA start-up); the whole row at that speed = epoch × the full "
             "scale's epochs × seeds.", "",
             "| row | run | s / epoch | full scale | whole run set at this speed | status |", "|---|---|---|---|---|---|"]
    for r in report["runs"]:
        ep = "–" if r.get("epoch_s") is None else f"{r['epoch_s']:.2f}" + (
            f" (scaled from {r['measured_s']:.2f} s on 1/{r['scale_up']:.0f} of the images)" if r["scale_up"] != 1 else "")
        proj = _projection(r)
        lines.append(f"| {r['preset']} | {r['label']} | {ep} | {r['full_epochs']} epochs × {r['seeds']} seeds | "
                     f"{'–' if proj is None else f'{proj / 3600:.2f} h'} | {r.get('status', '')} |")
    stacked = report.get("stacked") or {"status": "not run", "rows": []}
    lines += ["", "Stacked runs on the device: 8 runs of one rule as one model against the same 8 runs one after "
              "another (`python benchmarks/bench_stacked.py --device cuda --quick`: run-steps per second of "
              f"wall-clock time after synchronising, medians of {stacked.get('reps') or '–'} repetitions): "
              f"{stacked['status']}.", ""]
    if stacked["rows"]:
        lines += ["| net, batch | rule | steps per run | sequential run-steps/s | stacked run-steps/s | speed-up |",
                  "|---|---|---:|---:|---:|---:|"]
        lines += [f"| {r['task']} | {r['rule']} | {r['steps_per_run']} | {r['sequential']:.0f} | {r['stacked']:.0f} | "
                  f"{r['speedup']:.2f}× |" for r in stacked["rows"]]
    lines += ["", f"Total time of this check: {report['total_s']:.0f} s (budget {report['budget_s']:.0f} s)."]
    return "\n".join(lines) + "\n"


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT,
                              timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budget", type=float, default=BUDGET, help="seconds for the whole check (default 540)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--one", help=argparse.SUPPRESS)   # worker: a JSON job file; prints one JSON line
    args = ap.parse_args(argv)
    if args.one:
        job = json.loads(Path(args.one).read_text())
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            print(json.dumps(one_epoch(job, str(Path(tmp) / "run"))))
        return 0
    import torch

    if not torch.cuda.is_available():
        print("gpu-check: no CUDA device here (torch.cuda.is_available() is False); run it on a machine with a GPU",
              file=sys.stderr)
        return 2
    start = time.monotonic()

    def left() -> float:
        return args.budget - (time.monotonic() - start)

    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    try:
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-k", "cuda", "tests"], capture_output=True,
                              text=True, timeout=min(TEST_CAP, left()), cwd=ROOT, env=env)
        tail = [ln for ln in proc.stdout.splitlines() if ln.strip()]
        tests = {"exit": proc.returncode, "summary": tail[-1] if tail else "no output", "output": proc.stdout[-4000:]}
    except subprocess.TimeoutExpired:
        tests = {"exit": None, "summary": f"over cap ({TEST_CAP:.0f} s)", "output": ""}
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        stacked = run_stacked(min(STACK_CAP, left()), Path(tmp) / "stacked")

        def run(job: dict[str, Any], cap: float) -> dict[str, Any]:
            path = Path(tmp) / f"{job['preset']}-{job['label']}.json"
            path.write_text(json.dumps(job))
            return run_capped([sys.executable, str(Path(__file__).resolve()), "--one", str(path)], cap)

        results = schedule([plan_row(row) for row in ROWS], left, run)
    report = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "cuda": torch.version.cuda,
              "python": platform.python_version(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "commit": _commit(), "tests": tests, "runs": results, "stacked": stacked, "budget_s": args.budget,
              "total_s": time.monotonic() - start}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (out / "gpu_check.md").write_text(markdown(report))
    print(f"gpu-check: {out / 'gpu_check.md'}; tests: {tests['summary']}")
    return 0 if tests["exit"] in (0, 5) else 1


if __name__ == "__main__":
    sys.exit(main())
