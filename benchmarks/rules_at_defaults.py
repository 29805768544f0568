"""Every registered rule at its own defaults on MNIST: one epoch on the first 2,000 training images
(the full 10,000-image test set), seed 0, one thread — the check that each rule learns without
hand-tuning. Writes benchmarks/results/rules_at_defaults.{json,md}.

    python benchmarks/rules_at_defaults.py [--subset 2000] [--epochs 1]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import write_results

import bioplausible as bp


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subset", type=int, default=2000)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for rule in bp.list_rules():
            run = Path(tmp) / rule
            cmd = [sys.executable, "-m", "bioplausible", "train", "--rule", rule, "--dataset", "mnist",
                   "--set", f"dataset.subset={args.subset}", "--epochs", str(args.epochs), "--quiet",
                   "--out", str(run)]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            summary = json.loads((run / "summary.json").read_text()) if (run / "summary.json").is_file() else {}
            final = summary.get("final") or {}
            rows.append({"rule": rule, "status": summary.get("status") or f"exit {proc.returncode}",
                         "test_accuracy": final.get("test_accuracy"),
                         "wall_s": summary.get("total_time"), "error": proc.stderr.strip().splitlines()[-1:] if proc.returncode else []})
            print(rule, rows[-1]["status"], rows[-1]["test_accuracy"], flush=True)
    command = "python benchmarks/rules_at_defaults.py" + (" " + " ".join(argv or sys.argv[1:])).rstrip()
    result = {"command": command, "subset": args.subset, "epochs": args.epochs, "rows": rows}
    lines = [f"# Every rule at its defaults: MNIST, {args.epochs} epoch(s) on {args.subset} training images",
             "", (f"`{command}` — seed 0, one thread, the full 10,000-image test set; chance is 10 %. Each run is "
             "`bioplausible train --rule RULE --dataset mnist --set dataset.subset=N --epochs E`, so the rule "
             "chooses its own batch size, network and rates where it declares them."), "",
             "| rule | status | test accuracy (%) | wall time (s; the 2 cores were shared) |", "|---|---|---|---|"]
    for r in rows:
        acc = "–" if r["test_accuracy"] is None else f"{r['test_accuracy']:.2f}"
        t = "–" if r["wall_s"] is None else f"{r['wall_s']:.1f}"
        lines.append(f"| {r['rule']} | {r['status']} | {acc} | {t} |")
    write_results(Path(args.out), "rules_at_defaults", result, "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
