"""Short learning-rate scan of DFA on LeNet-5 / CIFAR-10, with and without the conv-tap scaling.

The ``fb-lenet-cifar10`` preset's setting at its quick scale (10k training images, 1 epoch, SGD
momentum 0.9, cosine schedule, batch 64, cross-entropy, seed 0), for ``dfa`` with
``conv_scale="sqrt_positions"`` (the default) and ``"none"`` (the unscaled draw), and BP at the
preset's lr for reference. Each run is one ``bioplausible train`` command (listed in the output).
It picks the preset's DFA rate; it is not a result about DFA's final accuracy.

    BIOPLAUSIBLE_DATA=/work/shared/datasets python benchmarks/dfa_lenet_lr.py

Writes ``benchmarks/results/dfa_lenet_lr.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
BASE = ("--dataset cifar10 --model lenet --loss cross_entropy --optimizer sgd --epochs 1 --batch-size 64 "
        "--seed 0 --set optimizer.momentum=0.9 --set schedule.name=cosine --set dataset.subset=10000 "
        "--probe-every 0 --quiet")


def run(rule: str, lr: float, extra: str, out: Path) -> dict:
    cmd = f"bioplausible train --rule {rule} --lr {lr} {BASE}{extra}"
    args = [sys.executable, "-m", "bioplausible", *cmd.split()[1:], "--out", str(out)]
    proc = subprocess.run(args, capture_output=True, text=True, check=False,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    row: dict = {"command": cmd, "rule": rule, "lr": lr, "options": extra.strip()}
    lines = (out / "metrics.jsonl").read_text().splitlines() if (out / "metrics.jsonl").exists() else []
    epochs = [json.loads(s) for s in lines if '"kind": "epoch"' in s]
    if epochs:
        row.update(test_accuracy=epochs[-1]["test_accuracy"], train_loss=epochs[-1]["train_loss"])
    else:
        row.update(test_accuracy=None, train_loss=None,
                   error=(proc.stderr.strip().splitlines() or ["no epoch finished"])[-1])
    print(f"{cmd}: {row.get('test_accuracy')} {row.get('error', '')}", flush=True)
    return row


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lrs", default="0.001,0.005,0.0075,0.01,0.015,0.02")
    args = parser.parse_args()
    lrs = [float(v) for v in args.lrs.split(",")]
    load_before = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        rows.append(run("bp", 0.02, "", Path(tmp) / "bp"))
        for scale in ("sqrt_positions", "none"):
            for lr in lrs:
                rows.append(run("dfa", lr, f" --set rule.conv_scale={scale}", Path(tmp) / f"{scale}-{lr}"))
    load = {"before": load_before, "after": os.getloadavg()}
    lines = ["# DFA on LeNet-5 / CIFAR-10: a short learning-rate scan", "",
             (f"Command: `python benchmarks/dfa_lenet_lr.py --lrs {args.lrs}`; load average before "
              f"{tuple(round(v, 2) for v in load['before'])}, after {tuple(round(v, 2) for v in load['after'])}."),
             ("The `fb-lenet-cifar10` quick setting: 10k CIFAR-10 training images (test: the first "
              "1666), 1 epoch, SGD momentum 0.9, cosine schedule, batch 64, seed 0. One seed, one epoch: "
              "a rate scan, not an accuracy result."), "",
             "| rule | conv_scale | lr | test accuracy (%) | final train loss |", "|---|---|---:|---:|---:|"]
    for r in rows:
        acc = f"{r['test_accuracy']:.2f}" if r["test_accuracy"] is not None else "diverged"
        loss = f"{r['train_loss']:.4g}" if r["train_loss"] is not None else "—"
        scale = r["options"].split("=")[-1] if r["options"] else "—"
        lines.append(f"| {r['rule']} | {scale} | {r['lr']:g} | {acc} | {loss} |")
    lines += ["", "Each row is `<command> --out DIR`:", ""] + [f"- `{r['command']}`" for r in rows]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "dfa_lenet_lr.json").write_text(json.dumps({"load_average": load, "runs": rows}, indent=2))
    (RESULTS / "dfa_lenet_lr.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
