"""Library BP epoch vs the loop a user would write by hand, same process, round-robin.

Both sides train the same 784-1000-10 sigmoid MLP on the same in-memory MNIST with SGD,
cross-entropy and batch 100, one thread. The library side is ``Trainer.train_epoch`` (what
``bioplausible train`` runs, minus the per-epoch evaluation, which the hand loop does not do);
the hand side is ``nn.Sequential`` + ``loss.backward()`` + ``optim.SGD`` over a permutation.

    python benchmarks/bench_bp.py [--reps 5] [--quick]
    python benchmarks/bench_bp.py --batch-size 1 --hidden 20 --examples 5000   # per-step overhead

Writes ``benchmarks/results/bp_vs_hand.json`` and ``.md`` (``bp_vs_hand_batch1.*`` for batch 1,
where the trainer's per-step bookkeeping, not arithmetic, decides the ratio; target ≤ 1.15).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import bioplausible as bp
from bioplausible.engine.config import TrainConfig
from bioplausible.engine.trainer import Trainer

RESULTS = Path(__file__).resolve().parent / "results"


def load(quick: bool):
    try:
        data = bp.load_dataset("mnist", flatten=True, download=False)
        source = "MNIST (real)"
    except bp.DataError as exc:
        print(f"real MNIST unavailable ({exc}); using random tensors of MNIST shape")
        from bioplausible.data import DataBundle, DatasetInfo, Split

        g = torch.Generator().manual_seed(0)
        data = DataBundle(Split(torch.randn(60000, 784, generator=g), torch.randint(0, 10, (60000,), generator=g)),
                          Split(torch.randn(1000, 784), torch.randint(0, 10, (1000,))), None,
                          DatasetInfo("random", (784,), 10, "multiclass"))
        source = "random tensors"
    if quick:
        from bioplausible.data import Split

        data.train = Split(data.train.x[:6000], data.train.y[:6000])
    return data, source


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="a tenth of an epoch per repetition")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--hidden", type=int, default=1000)
    ap.add_argument("--examples", type=int, default=0, help="use only the first N training examples")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data, source = load(args.quick)
    if args.examples:
        from bioplausible.data import Split

        data.train = Split(data.train.x[:args.examples], data.train.y[:args.examples])
    bs, hidden = args.batch_size, args.hidden
    spec = f"mlp:784-{hidden}-10"
    x_all, y_all = data.train.x, data.train.y
    n = x_all.shape[0]

    torch.manual_seed(0)
    cfg = TrainConfig.from_dict({"model": {"spec": spec, "activation": "sigmoid"},
                                 "loss": "cross_entropy", "optimizer": {"name": "sgd", "lr": 0.1},
                                 "batch_size": bs, "progress": False, "epochs": 10 ** 6})
    lib_model = bp.build_model(spec, activation="sigmoid")
    trainer = Trainer(lib_model, "bp", data, cfg)

    torch.manual_seed(0)
    hand = nn.Sequential(nn.Linear(784, hidden), nn.Sigmoid(), nn.Linear(hidden, 10))
    opt = torch.optim.SGD(hand.parameters(), lr=0.1)

    def hand_epoch() -> float:
        start = time.perf_counter()
        perm = torch.randperm(n)
        for i in range(0, n, bs):
            idx = perm[i:i + bs]
            opt.zero_grad()
            loss = F.cross_entropy(hand(x_all[idx]), y_all[idx])
            loss.backward()
            opt.step()
        return time.perf_counter() - start

    def lib_epoch() -> float:
        return trainer.train_epoch()["epoch_time"]

    hand_epoch(), lib_epoch()  # warm-up
    times: dict[str, list[float]] = {"hand": [], "library": []}
    for _ in range(args.reps):
        times["hand"].append(hand_epoch())
        times["library"].append(lib_epoch())
    med = {k: statistics.median(v) for k, v in times.items()}
    ratios = [a / b for a, b in zip(times["library"], times["hand"])]
    result = {
        "benchmark": "bp_vs_hand", "model": f"{spec} sigmoid", "batch_size": bs,
        "examples_per_epoch": n, "data": source, "threads": torch.get_num_threads(),
        "reps": args.reps, "median_seconds": med, "ratio_library_over_hand": med["library"] / med["hand"],
        "ratio_per_rep": ratios, "ratio_of_medians_target": 1.15 if bs == 1 else 1.05,
        "load_average": list(__import__("os").getloadavg()),
        "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
        "date": time.strftime("%Y-%m-%d"),
    }
    RESULTS.mkdir(exist_ok=True)
    suffix = ("_quick" if args.quick else "") + ("_batch1" if bs == 1 else "")
    (RESULTS / f"bp_vs_hand{suffix}.json").write_text(json.dumps(result, indent=2))
    flags = f" --batch-size {bs} --hidden {hidden}" if (bs, hidden) != (100, 1000) else ""
    flags += f" --examples {args.examples}" if args.examples else ""
    md = ("# Library BP vs a hand-written loop\n\n"
          f"`python benchmarks/bench_bp.py --reps {args.reps}{' --quick' if args.quick else ''}{flags}` — "
          f"{source} ({n} examples), {spec[4:]} sigmoid MLP, batch {bs}, SGD, "
          f"{torch.get_num_threads()} thread(s), torch {torch.__version__}, {result['date']}, "
          f"load average {result['load_average'][0]:.1f}.\n\n"
          "| loop | median s/epoch | ratio to hand loop |\n|---|---|---|\n"
          f"| hand-written (`nn.Sequential`, `loss.backward()`, `optim.SGD`) | {med['hand']:.3f} | 1.00 |\n"
          f"| library (`Trainer.train_epoch`, rule `bp`, its default fused SGD) | {med['library']:.3f} | "
          f"{result['ratio_library_over_hand']:.3f} |\n\n"
          f"Per-repetition ratios: {', '.join(f'{r:.3f}' for r in ratios)}. "
          f"Target ≤ {result['ratio_of_medians_target']}.\n")
    (RESULTS / f"bp_vs_hand{suffix}.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
