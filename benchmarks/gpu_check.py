"""On a machine with CUDA: run the CUDA tests and time one epoch of each paper-scale row on the GPU.

    make gpu-check            # or: python benchmarks/gpu_check.py [--budget 540] [--out benchmarks/results]

Writes ``gpu_check.json`` and ``gpu_check.md`` in ``--out``: the device, the CUDA tests' result
(``pytest -k cuda``: the tests that run on CUDA when it is there and are skipped without it),
and per row and run, the seconds of one training epoch on the device at the preset's full-scale
settings, and what the whole row would take at that speed (epochs x seeds, summed over runs).

The rows (:data:`ROWS`) are the presets the paper-scale row files name
(``benchmarks/paper_scale/*.yaml`` with a ``preset:`` key; the two side studies there have
none) and the NP CIFAR CNN presets (paper text and code settings). Where a row file keeps only
some of the preset's runs or sets its seeds (``runs:``, ``seeds:``), the row here times those
runs and projects with those seeds, as the paper-scale launch runs them; otherwise every run of
the preset at its full scale's seeds. Each run's config is the preset's full-scale config but
for the epochs, the device and ``dataset.subset``.

How an epoch is timed: every row trains on a subset of its training images (``Row.subset``,
one epoch of at most a few hundred optimizer steps at the preset's batch size; the subsets
divide the training set evenly) and the time is scaled up to the full training set, which the
table says. Each run trains two epochs on its subset and reports the second: the first pays the
warm-up (CUDA kernels loaded at their first launch, cuBLAS and cuDNN handles and workspaces, the
caching allocator growing), which would otherwise be counted ``scale_up`` times. The
first epoch's time is reported beside it (``first_epoch_s``). The epoch time is the trainer's
``epoch_time``: training steps only, without evaluation or the probes.

Bounded: the whole check stops within ``--budget`` seconds (default 540, under ten minutes with
start-up). The tests get at most :data:`TEST_CAP` seconds, then 8 runs stacked as one model are
timed against the same 8 runs one after another on the device (``benchmarks/bench_stacked.py
--device cuda --quick``, every task of that benchmark, at most :data:`STACK_CAP` seconds). The
rows share what is left: each row, in the order of :data:`ROWS`, runs in one worker process
(``--row JOBFILE``: one CUDA start-up per row) with the cap (time left) / (rows left), so time a
row does not use goes to the rows after it. The worker trains the row's runs one after another
and prints one JSON line per finished run; a run that raises is reported as an error and the
worker goes on. A worker still running at its cap is killed: the runs it finished are reported,
the rest marked "over cap". Rows that cannot start (under :data:`MIN_CAP` seconds left) are
listed run by run as skipped. Without CUDA it prints one line and exits with status 2, writing
nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

TEST_CAP = 150.0     # seconds for `pytest -k cuda`
STACK_CAP = 90.0     # seconds for the stacked-vs-sequential timing (bench_stacked.py --device cuda --quick)
BUDGET = 540.0       # seconds for everything
MIN_CAP = 10.0       # a row worker given less than this is not started (Python, torch and CUDA start-up)
TIMED_EPOCHS = 2     # epochs each run trains on its subset; the last one is reported
TRAIN_SIZES = {"mnist": 60000, "fashion-mnist": 60000, "cifar10": 50000, "cifar100": 50000}
PAPER_SCALE = ROOT / "benchmarks" / "paper_scale"


@dataclass(frozen=True)
class Row:
    preset: str
    subset: int    # training images each run is timed on, scaled up to the full training set


# The paper-scale rows in the order of their row files (rows 1, 2, 4, 5, 7 and the two "as time
# allows"), then the NP CIFAR CNN, then the ghost units (rows 6 and 3): a row's cap is what is
# left divided by the rows left, so the time earlier rows leave goes to the later ones, and the
# ghost rows' epochs on the GPU are the least predictable (MA: 400 Euler steps per batch of 100;
# MB: 140 per example at batch 1, launch-bound). Subsets: at most a few hundred optimizer steps
# per epoch at the preset's batch size, each a whole fraction of the training set.
ROWS = (
    Row("np-fig2-mnist", subset=6000),              # batch 32: 188 steps, 1/10 of 60000
    Row("bfa-table1-mnist-1x400", subset=12500),    # batch 128: 98 steps, 1/4 of 50000
    Row("sal-table1-mnist", subset=20000),          # batch 256: 79 steps, 1/3 of 60000
    Row("np-table2a-autoencoder", subset=3000),     # batch 32: 94 steps, 1/20 of 60000
    Row("np-fig4-fixed-w", subset=3000),            # batch 32: 94 steps, 1/20 of 60000
    Row("bfa-table1-mnist-2x400", subset=12500),    # as time allows; batch 128: 98 steps, 1/4
    Row("sal-table1-fashion", subset=20000),        # as time allows; batch 256: 79 steps, 1/3
    Row("np-table1-cifar10", subset=12500),         # batch 128: 98 steps, 1/4 of 50000
    Row("np-table1-cifar10-code", subset=12500),    # batch 128: 98 steps, 1/4 of 50000
    Row("ghost-ma-500", subset=2200),               # batch 100: 22 steps (8800 Euler steps), 1/25 of 55000
    Row("ghost-mb-500", subset=500),                # batch 1: 500 steps, 1/110 of 55000
)


def train_size(dataset: dict[str, Any]) -> int:
    """Training images of ``dataset`` (a config's dataset section) after its validation split."""
    name = str(dataset["name"]).lower().replace("_", "-")
    if name not in TRAIN_SIZES:
        raise KeyError(f"gpu_check: no training-set size for dataset {dataset['name']!r}; add it to TRAIN_SIZES")
    return TRAIN_SIZES[name] - int(dataset.get("val_size") or 0)


def row_files() -> dict[str, Any]:
    """The paper-scale row files by the preset they name (files without ``preset:`` are side studies)."""
    import yaml

    from bioplausible.experiments.sweep import load_spec

    paths = [p for p in sorted(PAPER_SCALE.glob("*.yaml")) if "preset" in (yaml.safe_load(p.read_text()) or {})]
    files: dict[str, Any] = {}
    for spec in map(load_spec, paths):
        first = files.get(spec.preset)
        if first is None:
            files[spec.preset] = spec
        elif first.runs is not None and spec.runs is not None:
            # a second file of the row trains some of its runs apart (ghost_ma_500_bp.yaml): one
            # row, the runs of both (each at its own file's seeds)
            for label, seeds in spec.runs.items():
                first.runs.setdefault(label, seeds if seeds is not None else spec.seeds)
    return files


def plan_row(row: Row, device: str = "cuda", files: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """One job per run of the row: the preset's full-scale config, :data:`TIMED_EPOCHS` epochs on
    ``row.subset`` training images, on ``device``; the runs and seeds of the row's paper-scale file
    where it names them, otherwise every run of the preset at the full scale's seeds."""
    from bioplausible.experiments.presets import get_preset

    preset = get_preset(row.preset)
    config, seeds = preset.resolved("full")
    spec = (row_files() if files is None else files).get(row.preset)
    seeds = list(spec.seeds if spec is not None and spec.seeds is not None else seeds)
    wanted = {label: seeds for label in preset.runs}
    if spec is not None and spec.runs is not None:
        wanted = {label: list(s if s is not None else seeds) for label, s in spec.runs.items()}
    out = []
    for label, run in preset.runs.items():   # in the preset's order
        if label not in wanted:
            continue
        rule = {k: v for k, v in run.items() if k != "config"}
        cfg = config.updated(run.get("config") or {}).updated({"rule": rule, "seed": wanted[label][0]})
        n_full = train_size(cfg["dataset"])
        update: dict[str, Any] = {"epochs": TIMED_EPOCHS, "device": device, "progress": False,
                                  "dataset": {"subset": row.subset}}
        out.append({"preset": row.preset, "label": label, "config": cfg.updated(update).to_dict(),
                    "full_epochs": int(cfg["epochs"]), "seeds": len(wanted[label]), "n_full": n_full,
                    "subset": row.subset, "scale_up": n_full / row.subset})
    return out


def time_run(job: dict[str, Any], out_dir: str) -> dict[str, Any]:
    """Train ``job`` (its :data:`TIMED_EPOCHS` epochs on its subset); its last epoch's training
    seconds scaled up to the full training set, and the first epoch's beside it."""
    from bioplausible.engine.config import TrainConfig
    from bioplausible.engine.rundir import read_metrics
    from bioplausible.experiments.jobs import Job, run_job

    cfg = TrainConfig.from_dict(job["config"])
    summary = run_job(Job(cfg.to_dict(), out_dir, job["label"], cfg["seed"]), progress=False)
    metrics = Path(out_dir) / "metrics.jsonl"
    times = [float(r["epoch_time"]) for r in (read_metrics(metrics) if metrics.is_file() else [])
             if r.get("kind") == "epoch" and r.get("epoch_time") is not None]
    status = str(summary.get("status"))
    if len(times) < TIMED_EPOCHS and times:   # diverged in a later epoch: the warm-up epoch is all there is
        status += f" (timed on epoch {len(times)} of {TIMED_EPOCHS})"
    last, first = (times[-1], times[0]) if times else (None, None)
    scale = float(job["scale_up"])
    return {"status": status, "epoch_s": None if last is None else last * scale, "measured_s": last,
            "first_epoch_s": None if first is None else first * scale, "first_measured_s": first,
            "epochs_timed": len(times), "test_accuracy": (summary.get("final") or {}).get("test_accuracy")}


def row_worker(jobs: list[dict[str, Any]], out_dir: str,
               train: Callable[[dict[str, Any], str], dict[str, Any]] = time_run,
               emit: Callable[[str], None] | None = None) -> None:
    """Train the row's jobs one after another in this process, one JSON line per finished run
    (flushed at once, so a kill at the cap loses only the run in progress); a run that raises is
    an error line and the next run goes on."""
    emit = emit or (lambda line: print(line, flush=True))
    for i, job in enumerate(jobs):
        t0 = time.monotonic()
        try:
            res = train(job, str(Path(out_dir) / f"{i:02d}-{job['label']}"))
        except Exception as exc:  # noqa: BLE001 - reported in the run's line; the row goes on
            detail = " ".join(str(exc).split())
            res = {"status": f"error: {type(exc).__name__}: {detail}"[:300]}
        emit(json.dumps({"run": i, "label": job["label"], **res, "wall_s": time.monotonic() - t0}, default=str))
        _free_device_memory()


def _free_device_memory() -> None:
    """Between runs: drop the last run's tensors and hand its cached CUDA blocks back."""
    import gc

    gc.collect()
    torch = sys.modules.get("torch")   # a row of fakes (the tests) never imports it
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def _text(out: Any) -> str:
    # TimeoutExpired carries the output read so far as bytes, even for text=True
    return out.decode(errors="replace") if isinstance(out, bytes) else (out or "")


def run_row(argv: list[str], jobs: list[dict[str, Any]], cap: float,
            runner: Callable[..., Any] = subprocess.run) -> list[dict[str, Any]]:
    """Run the row worker ``argv`` for at most ``cap`` seconds; one result per job: the worker's
    line for each run it finished, "over cap" for the rest when it was killed at the cap, or its
    exit status and last error line when it stopped early."""
    t0 = time.monotonic()
    try:
        proc = runner(argv, capture_output=True, text=True, timeout=max(cap, 1.0), cwd=ROOT)
    except subprocess.TimeoutExpired as exc:
        stdout, missing = _text(exc.stdout), f"over cap ({cap:.0f} s)"
    else:
        stdout, err = _text(proc.stdout), _text(proc.stderr).strip().splitlines()
        missing = (f"error (exit {proc.returncode}): {err[-1] if err else 'no output'}"[:300] if proc.returncode
                   else "error: the row worker ended without reporting this run")
    wall = time.monotonic() - t0
    done: dict[int, dict[str, Any]] = {}
    for line in stdout.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue    # the trainer's own prints, or a line cut short by the kill
        if isinstance(rec, dict) and isinstance(rec.get("run"), int) and 0 <= rec["run"] < len(jobs):
            done[rec["run"]] = rec
    return [{**({k: v for k, v in done[i].items() if k != "run"} if i in done else {"status": missing}),
             "row_wall_s": round(wall, 1)} for i in range(len(jobs))]


def schedule(rows: list[list[dict[str, Any]]], budget_left: Callable[[], float],
             run: Callable[[list[dict[str, Any]], float], list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Time every row within its cap, (time left) / (rows left); a row that would get less than
    :data:`MIN_CAP` seconds is not started and its runs are listed as skipped."""
    results = []
    for i, jobs in enumerate(rows):
        cap = budget_left() / (len(rows) - i)
        base = [{k: job[k] for k in ("preset", "label", "full_epochs", "seeds", "subset", "scale_up")}
                for job in jobs]
        if cap < MIN_CAP:
            results += [{**b, "status": "skipped (time budget spent)"} for b in base]
            continue
        results += [{**b, **res, "row_cap_s": round(cap, 1)} for b, res in zip(base, run(jobs, cap))]
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


def _epoch_cell(r: dict[str, Any]) -> str:
    if r.get("epoch_s") is None:
        return "–"
    notes = []
    if r["scale_up"] != 1:
        notes.append(f"scaled from {r['measured_s']:.2f} s on 1/{r['scale_up']:.0f} of the images")
    if r.get("first_epoch_s") is not None:
        notes.append(f"1st epoch {r['first_epoch_s']:.2f}")
    return f"{r['epoch_s']:.2f}" + (f" ({'; '.join(notes)})" if notes else "")


def markdown(report: dict[str, Any]) -> str:
    lines = ["# GPU check", "", (f"`make gpu-check` on {report['device']} (torch {report['torch']}, CUDA "
             f"{report['cuda']}), {report['date']}, commit {report['commit']}."), "",
             f"CUDA tests (`pytest -k cuda`): {report['tests']['summary']}", "",
             (f"One training epoch per run at the preset's full-scale settings on the GPU: each run trains "
             f"{TIMED_EPOCHS} epochs on a subset of its training images in its row's worker process and the last "
             "epoch's training time is scaled up to the full training set (the first epoch, which pays the "
             "warm-up, in brackets after it, scaled alike). The whole row at that speed = epoch × the full "
             "scale's epochs × seeds (the row file's seeds and runs where it names them)."), "",
             "| row | run | s / epoch | full scale | whole run set at this speed | status |", "|---|---|---|---|---|---|"]
    for r in report["runs"]:
        ep = _epoch_cell(r)
        proj = _projection(r)
        lines.append(f"| {r['preset']} | {r['label']} | {ep} | {r['full_epochs']} epochs × {r['seeds']} seeds | "
                     f"{'–' if proj is None else f'{proj / 3600:.2f} h'} | {r.get('status', '')} |")
    stacked = report.get("stacked") or {"status": "not run", "rows": []}
    lines += ["", ("Stacked runs on the device: 8 runs of one rule as one model against the same 8 runs one after "
              "another (`python benchmarks/bench_stacked.py --device cuda --quick`: run-steps per second of "
              f"wall-clock time after synchronising, medians of {stacked.get('reps') or '–'} repetitions): "
              f"{stacked['status']}."), ""]
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
                              timeout=10, check=False).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budget", type=float, default=BUDGET, help="seconds for the whole check (default 540)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--row", help=argparse.SUPPRESS)   # worker: a JSON file of one row's jobs; a JSON line a run
    args = ap.parse_args(argv)
    if args.row:
        job_file = Path(args.row)   # the run folders go beside it, in the parent's temporary folder
        row_worker(json.loads(job_file.read_text()), str(job_file.with_name(job_file.stem + "-runs")))
        return 0
    import torch

    if not torch.cuda.is_available():
        print("gpu-check: no CUDA device here (torch.cuda.is_available() is False); run it on a machine with a GPU",
              file=sys.stderr)
        return 2
    start = time.monotonic()
    files = row_files()
    plans = [plan_row(row, files=files) for row in ROWS]

    def left() -> float:
        return args.budget - (time.monotonic() - start)

    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    try:
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-k", "cuda", "tests"], capture_output=True,
                              text=True, timeout=min(TEST_CAP, left()), cwd=ROOT, env=env, check=False)
        tail = [ln for ln in proc.stdout.splitlines() if ln.strip()]
        tests = {"exit": proc.returncode, "summary": tail[-1] if tail else "no output", "output": proc.stdout[-4000:]}
    except subprocess.TimeoutExpired:
        tests = {"exit": None, "summary": f"over cap ({TEST_CAP:.0f} s)", "output": ""}
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        stacked = run_stacked(min(STACK_CAP, left()), Path(tmp) / "stacked")

        def run(jobs: list[dict[str, Any]], cap: float) -> list[dict[str, Any]]:
            path = Path(tmp) / f"{jobs[0]['preset']}.json"
            path.write_text(json.dumps(jobs))
            return run_row([sys.executable, str(Path(__file__).resolve()), "--row", str(path)], jobs, cap)

        results = schedule(plans, left, run)
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
