"""Stacked runs give the per-seed numbers of separate runs: the same `compare` with and without `--stack`.

    BIOPLAUSIBLE_DATA=/work/shared/datasets python benchmarks/stacked_equality.py
    python benchmarks/stacked_equality.py --rules bp,fa --subset 500 --epochs 1   # smaller

Runs ``bioplausible compare --rules RULES --seeds 0,1,2 --dtype float64`` on a subset of MNIST
(``--model``; then the ghost-unit rules, ``--ghost-rules``, on their own recommended network and
batch size) twice, once one run after another and once with ``--stack``, in temporary folders, and compares
every run's final test accuracy, test loss and training loss (``summary.json``). Writes
``benchmarks/results/stacked_equality.{json,md}`` with the per-run numbers, the largest relative
difference and the wall time of both commands; exits 1 when a number differs by more than
``--tol`` (relative) or a run is missing.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import write_results

RESULTS = Path(__file__).resolve().parent / "results"
RULES = "bp,fa,usf,kp,wm,dfa,np,sg,bfa,bdfa,ar,sal"
GHOST_RULES = "ghost-ma,ghost-ma-prime,ghost-mb"
KEYS = ("test_accuracy", "test_loss", "train_loss")


def compare_args(args: argparse.Namespace, rules: str, model: str | None) -> list[str]:
    return ["compare", "--rules", rules, "--seeds", "0,1,2", "--dtype", "float64",
            "--epochs", str(args.epochs), *(["--model", model] if model else []),
            "--set", f"dataset.subset={args.subset}", "--quiet"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rules", default=RULES)
    ap.add_argument("--subset", type=int, default=1000, help="MNIST training images (default 1000)")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--model", default="mlp:784-64-10")
    ap.add_argument("--ghost-rules", default=GHOST_RULES, help="run on their recommended network ('' : none)")
    ap.add_argument("--tol", type=float, default=1e-10)
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)
    exe = shutil.which("bioplausible") or str(Path(sys.executable).with_name("bioplausible"))
    passes = [(args.rules, args.model)] + ([(args.ghost_rules, None)] if args.ghost_rules else [])
    commands = ["bioplausible " + " ".join(compare_args(args, r, m)) + " [--stack]" for r, m in passes]
    from bioplausible.experiments.reproduce import git_commit

    commit = git_commit()  # read before anything is written
    rows, walls, missing, worst = [], {"separate": 0.0, "stacked": 0.0}, [], 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for i, (rules, model) in enumerate(passes):
            folders = {}
            for how, extra in (("separate", []), ("stacked", ["--stack"])):
                folder = Path(tmp) / f"{how}{i}"
                t0 = time.perf_counter()
                subprocess.run([exe, *compare_args(args, rules, model), *extra, "--out", str(folder)], check=True)
                walls[how] += time.perf_counter() - t0
                folders[how] = folder
            for run in sorted(p.name for p in folders["separate"].iterdir() if (p / "summary.json").exists()):
                other = folders["stacked"] / run / "summary.json"
                if not other.exists():
                    missing.append(run)
                    continue
                a = json.loads((folders["separate"] / run / "summary.json").read_text())["final"]
                b = json.loads(other.read_text())["final"]
                diff = max(abs(a[k] - b[k]) / max(abs(a[k]), 1e-300) for k in KEYS)
                worst = max(worst, diff)
                rows.append({"run": run, **{f"{k}_separate": a[k] for k in KEYS},
                             **{f"{k}_stacked": b[k] for k in KEYS}, "max_rel_diff": diff})
    ok = not missing and bool(rows) and worst <= args.tol
    command = "python benchmarks/stacked_equality.py" + (" " + " ".join(argv or sys.argv[1:])).rstrip()
    result = {"command": command, "compare": commands,
              "rows": rows, "missing": missing, "max_rel_diff": worst, "tol": args.tol, "ok": ok,
              "wall_s": walls, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "commit": commit}
    md = ["# Stacked runs equal separate runs", "",
          f"Command: `{command}` at commit {commit} ({result['date']}): " + "; ".join(f"`{c}`" for c in commands)
          + ", each once without and once with `--stack`; final test accuracy, test loss and training loss of "
          "every run.", "",
          f"Largest relative difference: {worst:.2e} (tolerance {args.tol:.0e}) over {len(rows)} runs"
          + (f"; missing with --stack: {', '.join(missing)}" if missing else "") + f". Wall time: separate "
          f"{walls['separate']:.1f} s, stacked {walls['stacked']:.1f} s.", "",
          "| run | test acc. separate | test acc. stacked | test loss separate | test loss stacked | max rel. diff |",
          "|---|---:|---:|---:|---:|---:|"]
    md += [f"| {r['run']} | {r['test_accuracy_separate']:.2f} | {r['test_accuracy_stacked']:.2f} | "
           f"{r['test_loss_separate']:.12f} | {r['test_loss_stacked']:.12f} | {r['max_rel_diff']:.1e} |" for r in rows]
    write_results(Path(args.out), "stacked_equality", result, "\n".join(md))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
