"""Search over SAL's reconstructed variants (the options of ``sal``) and rates, at a quick scale.

The paper's equations are not available (the text we have lost them), so the rules of ``sal`` are a reconstruction; this script
looks for the configuration that comes closest to the paper's claim (Table 1: SAL ≥ KP and ≥ SGD)
on the Table 1 network (in-200-200-200-10, ReLU, batch 256, MSE on one-hot targets, plain SGD).
Selection is on a validation split held out from the training set; test accuracy is reported.

Stages (each keeps the best of the previous one):

1. structure: sign s × qr_term × top × qr_init × b_init × downstream, at lr 0.1, Q/R ratio 0.1, γ 1e-3
   (``qr_init`` zero, small random (scale 0.1) or identity; ``b_init`` random normal or zero);
2. rates: the best structures × overall lr × Q/R:W ratio × γ (B:W = 1);
3. the remaining flags (read, timing, output_error) on the best configuration;
4. the finalists and the baselines (SGD = BP, FA, KP, each at its best lr) on MNIST and
   Fashion-MNIST, same subset and epochs.

    BIOPLAUSIBLE_DATA=/work/shared/datasets OMP_NUM_THREADS=1 python benchmarks/sal_search.py

Results: ``benchmarks/results/sal_search.{json,md}``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import platform
import time
from pathlib import Path

import torch

import bioplausible as bp
from bioplausible.data import load_dataset

RESULTS = Path(__file__).resolve().parent / "results"
SPEC = "mlp:784-200-200-200-10"


def run(data, rule: str, lr: float, epochs: int, seed: int = 0, **options) -> dict:
    torch.manual_seed(seed)
    model = bp.build_model(SPEC, input_shape=(784,), num_classes=10, activation="relu")
    cfg = {"progress": False, "rule": {"name": rule, **options}, "seed": seed}
    start = time.perf_counter()
    res = bp.fit(model, rule, data, config=cfg, epochs=epochs, lr=lr, loss="mse_batchmean",
                 batch_size=256, seed=seed)
    last = res.history[-1] if res.history and res.status == "completed" else {}
    return {"rule": rule, "lr": lr, "options": options, "status": res.status,
            "val": last.get("val_accuracy", 0.0), "test": last.get("test_accuracy", 0.0),
            "qr_misalignment": last.get("rule/qr_misalignment"),
            "seconds": round(time.perf_counter() - start, 2)}


def show(r: dict) -> str:
    opts = ", ".join(f"{k}={v}" for k, v in r["options"].items())
    return f"{r['rule']} lr={r['lr']} {opts}: val {r['val']:.2f} test {r['test']:.2f} ({r['status']})"


def best(rows: list[dict], k: int) -> list[dict]:
    return sorted(rows, key=lambda r: -r["val"])[:k]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subset", type=int, default=10000)
    ap.add_argument("--val", type=int, default=2000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--keep", type=int, default=3, help="structures carried into stage 2")
    ap.add_argument("--out", default=str(RESULTS / "sal_search"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    log: dict = {"args": vars(args), "stages": {}, "machine": platform.processor() or platform.machine()}
    data = {ds: load_dataset(ds, flatten=True, subset=args.subset, val_size=args.val)
            for ds in ("mnist", "fashion_mnist")}
    t0 = time.time()

    def stage(name: str, configs: list[tuple[float, dict]], ds: str = "mnist") -> list[dict]:
        rows = []
        for lr, opts in configs:
            r = run(data[ds], "sal", lr, args.epochs, **opts)
            r["dataset"] = ds
            rows.append(r)
            print(f"[{name} {time.time() - t0:5.0f}s] {show(r)}", flush=True)
        log["stages"][name] = rows
        return rows

    base = {"rates": {"W": 1, "B": 1, "Q": 0.1, "R": 0.1}, "decay": 1e-3}
    structures = []
    for s, term, top, qinit, binit, down in itertools.product(
            (1, -1), ("activity", "potential"), ("fixed", "plastic"), ("zero", "random", "identity"),
            ("normal", "zero"), ("identity", "relu_jacobian")):
        opts = {"sign": s, "qr_term": term, "top": top, "qr_init": qinit, "b_init": binit,
                "downstream": down, **base}
        structures.append((0.1, opts))
    s1 = stage("1-structure", structures)

    s2_cfgs = []
    for r in best(s1, args.keep):
        for lr, ratio, gamma in itertools.product((0.03, 0.1, 0.3), (0.01, 0.1, 1.0), (1e-4, 1e-2)):
            opts = {**r["options"], "rates": {"W": 1, "B": 1, "Q": ratio, "R": ratio}, "decay": gamma}
            s2_cfgs.append((lr, opts))
    s2 = stage("2-rates", s2_cfgs)

    s3_cfgs = []
    for r in best(s2, 1):
        for read, timing, err in itertools.product(("after", "before"), ("simultaneous", "feedback_first"),
                                                   ("loss", "cross_entropy")):
            s3_cfgs.append((r["lr"], {**r["options"], "read": read, "timing": timing, "output_error": err}))
    s3 = stage("3-flags", s3_cfgs)

    finalists = best(s2 + s3, 3)
    final = []
    for ds in ("mnist", "fashion_mnist"):
        for rule in ("bp", "fa", "kp"):
            rows = [run(data[ds], rule, lr, args.epochs) for lr in (0.03, 0.1, 0.3)]
            for r in rows:
                r["dataset"] = ds
            top = best(rows, 1)[0]
            final.append(top)
            print(f"[final {ds}] {show(top)}", flush=True)
        for f in finalists:
            r = run(data[ds], "sal", f["lr"], args.epochs, **f["options"])
            r["dataset"] = ds
            final.append(r)
            print(f"[final {ds}] {show(r)}", flush=True)
    log["stages"]["4-final"] = final
    log["total_seconds"] = round(time.time() - t0, 1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(log, indent=1, default=str))
    out.with_suffix(".md").write_text(markdown(log))


def markdown(log: dict) -> str:
    a = log["args"]
    lines = [(f"# SAL search (quick scale: {a['subset']} training images, {a['val']} held out for "
              f"validation, {a['epochs']} epochs, batch 256, MSE, plain SGD; selection on validation "
              "accuracy)"), "",
             ("The rules are a reconstruction (see the `sal` rule's documentation); every row is one seed. "
              f"Total {log.get('total_seconds', 0):.0f} s on one thread."), ""]
    for name, rows in log["stages"].items():
        lines += [f"## Stage {name} ({len(rows)} runs, best 12 by validation accuracy)", "",
                  "| dataset | rule | lr | options | val % | test % | status |", "|---|---|---|---|---|---|---|"]
        shown = rows if name == "4-final" else best(rows, 12)
        for r in shown:
            opts = ", ".join(f"{k}={v}" for k, v in r["options"].items())
            lines.append(f"| {r.get('dataset', 'mnist')} | {r['rule']} | {r['lr']} | {opts} | "
                         f"{r['val']:.2f} | {r['test']:.2f} | {r['status']} |")
        if name != "4-final":
            div = sum(r["status"] != "completed" for r in rows)
            vals = [r["val"] for r in rows if r["status"] == "completed" and not math.isnan(r["val"])]
            median = sorted(vals)[len(vals) // 2] if vals else float("nan")
            lines += ["", f"{div} of {len(rows)} diverged; median validation accuracy of the rest {median:.2f}."]
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
