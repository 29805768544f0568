"""SAL from random connectivity (Liao et al. 2024, §2, Lemma 1, Theorem 1): self-assembly curves,
stability probes and an equal-budget tuning table against SGD (BP), FA, WM and KP.

Setting (CPU scale, stated in every output): MNIST, a 784-100-100-10 ReLU MLP, MSE on one-hot
targets (``mse_batchmean``), plain SGD, batch 64; the first 10,000 training images to train,
the last 5,000 training images as the validation split (selection only), the full 10,000-image
test set for the reported numbers. One thread.

    # long runs from random init, curves + Gram images (rule options as JSON)
    python benchmarks/sal_assembly.py curves --tag paper --seeds 0,1 --steps 30000 --probe-every 1000 \\
        --grid '[["identity c5", {"setting":"paper","connections":5}, 0.003]]'
    # short stability probes (one process, sequential): a JSON list of [label, options, lr]
    python benchmarks/sal_assembly.py probe --tag NAME --steps 6000 --probe-every 1000 --grid '[...]'
    # the equal-budget tuning table: every method gets the same lrs, steps, split and seed
    python benchmarks/sal_assembly.py tune --tag mnist --steps 10000 --probe-every 2500 \\
        --lrs 0.0003,0.003,0.03,0.3 --sal-opts '{"setting": "paper", "connections": 5}'
    # redraw a figure from its json
    python benchmarks/sal_assembly.py replot --tag curves_paper

Results: ``benchmarks/results/sal/*.json`` (every probe row), ``*.png`` (curves), ``*.md`` (tables).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import torch

import bioplausible as bp
from bioplausible.core.losses import get_loss
from bioplausible.core.probe import Probe
from bioplausible.data import load_dataset
from bioplausible.rules.sal.sal_paper import bilinear_coupling

OUT = Path(__file__).resolve().parent / "results" / "sal"
SPEC = "mlp:784-100-100-10"
BATCH = 64
TRAIN, VAL = 10_000, 5_000


def load() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    b = load_dataset("mnist", flatten=True, val_size=VAL)
    return {"train": (b.train.x[:TRAIN], b.train.y[:TRAIN]), "val": (b.val.x, b.val.y),
            "test": (b.test.x, b.test.y)}


@torch.no_grad()
def accuracy(model, x, y) -> float:
    return 100.0 * float((model(x).argmax(1) == y).double().mean())


def qr_gap(rule) -> float:
    """max over layers of ‖Q_k − R_kᵀ‖_F (Lemma 1: shrinks by exactly (1 − η_Q γ) per step)."""
    gaps = [float((q.detach().double() - rule.tensors[n.replace("Q", "R")].detach().double().t()).norm())
            for n, q in rule.tensors.items() if n.startswith("Q.")]
    return max(gaps) if gaps else float("nan")


def train(data, name: str, opts: dict, lr: float, steps: int, seed: int = 0,
          probe_every: int = 500, gram: Path | None = None) -> dict:
    """Plain SGD loop (the trainer's: train_step fills .grad, the optimizer steps); probes every
    ``probe_every`` steps log val accuracy, mean train loss, BP angle and the rule's metrics."""
    torch.manual_seed(seed)
    model = bp.build_model(SPEC, input_shape=(784,), num_classes=10, activation="relu")
    rule = bp.make(name, **opts)
    rule.set_seed(seed)
    model = rule.prepare(model)
    opt = rule.build_optimizer(model, {"name": "sgd", "lr": lr})
    loss_fn = get_loss("mse_batchmean")
    probe = Probe(probe_every)
    x, y = data["train"]
    gen = torch.Generator().manual_seed(seed)
    eta_q = rule.group_lr("Q", 1) if name == "sal" and "Q" in rule.config["plastic"] else None
    gamma = rule.config.get("decay") if name == "sal" else None
    gap0 = qr_gap(rule) if name == "sal" else None
    rows, losses, status, t0 = [], [], "completed", time.process_time()
    if gram is not None:
        from bioplausible.rules.sal.sal_diag import gram_images
        gram_images(rule, model, gram.with_name(gram.stem + "_init.png"))
    step = 0
    while step < steps:
        perm = torch.randperm(x.shape[0], generator=gen)
        for i in range(0, x.shape[0] - BATCH + 1, BATCH):
            idx = perm[i:i + BATCH]
            xb, yb = x[idx], y[idx]
            step += 1
            probing = probe.due(step) or step == 1
            if probing:
                ref = probe.reference(rule, model, xb, yb, loss_fn)
            opt.zero_grad(set_to_none=True)
            res = rule.train_step(model, xb, yb, loss_fn)
            if probing:
                rec = probe.compare(rule, model, ref)
            opt.step()
            rule.after_step(model)
            loss = float(res.loss)
            losses.append(loss)
            if not math.isfinite(loss) or loss > 1e6:
                status = f"diverged at step {step}"
                break
            if probing:
                row = {"step": step, "loss": sum(losses) / len(losses),
                       "val_accuracy": accuracy(model, *data["val"]),
                       **{k: v for k, v in rec.items() if isinstance(v, (int, float))
                          and not k.startswith(("update_norm", "bp_norm", "erank"))}}
                if gap0 is not None:
                    row.update(bilinear_coupling(rule, model, xb, yb, loss_fn))
                    row["qr_gap"] = qr_gap(rule)
                    row["qr_gap_lemma1"] = gap0 * (1 - eta_q * gamma) ** (step - 1) if eta_q else None
                rows.append(row)
                losses = []
            if step >= steps:
                break
        if status != "completed":
            break
    out = {"rule": name, "opts": opts, "lr": lr, "steps": steps, "seed": seed, "status": status,
           "gamma": gamma,
           "eta_gamma_steps": (eta_q * gamma * steps) if eta_q and gamma else None,
           "val_accuracy": accuracy(model, *data["val"]) if status == "completed" else 0.0,
           "test_accuracy": accuracy(model, *data["test"]) if status == "completed" else 0.0,
           "peak_val": max((r["val_accuracy"] for r in rows), default=0.0),
           "cpu_seconds": round(time.process_time() - t0, 1), "rows": rows}
    if gram is not None and status == "completed":
        from bioplausible.rules.sal.sal_diag import gram_images
        gram_images(rule, model, gram)
    return out


def plot(runs: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("qr_misalignment", "‖Q − Rᵀ‖/‖Q‖ (max over layers)", True),
              ("qr_gap", "‖Q − Rᵀ‖ (solid) vs Lemma 1 (dashed)", True),
              ("bwd_angle", "∠(Q_k B_k R_{k+1}, W_kᵀ) (deg, max)", False),
              ("bwd_relerr", "‖B R − R Wᵀ‖/‖R Wᵀ‖ (max)", True),
              ("grad_angle", "∠(ΔW, BP gradient) (deg, mean)", False),
              ("m_lambda_min", "λ_min(RᵀR) (min over layers)", True),
              ("coupling", "σ_max(Σ h_k g_{k+1}ᵀ) (solid) vs γ (dotted)", True),
              ("val_accuracy", "validation accuracy (%)", False),
              ("loss", "train loss (mean since last probe)", True)]
    fig, axes = plt.subplots(3, 3, figsize=(16, 11))
    for ax, (key, label, log) in zip(axes.flat, panels):
        for run in runs:
            pts = [(r["step"], r[key]) for r in run["rows"] if r.get(key) is not None]
            if not pts:
                continue
            line, = ax.plot(*zip(*pts), label=run.get("label", ""))
            if key == "coupling" and run["rule"] == "sal":
                ax.axhline(run["gamma"], ls=":", color=line.get_color())
            if key == "qr_gap":
                lem = [(r["step"], r["qr_gap_lemma1"]) for r in run["rows"] if r.get("qr_gap_lemma1")]
                if lem:
                    ax.plot(*zip(*lem), "--", color=line.get_color())
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("SGD step", fontsize=8)
        if log:
            ax.set_yscale("log")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def save(obj, stem: str) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{stem}.json").write_text(json.dumps(obj, indent=1))


def summary(r: dict) -> str:
    last = r["rows"][-1] if r["rows"] else {}
    f = lambda k, fmt="{:.3g}": fmt.format(last[k]) if last.get(k) is not None else "–"
    return (f"| {r.get('label', r['rule'])} | {r['lr']} | {r['status']} | {r['val_accuracy']:.2f} | "
            f"{r['test_accuracy']:.2f} | {r['peak_val']:.2f} | {f('qr_misalignment')} | "
            f"{f('bwd_angle', '{:.1f}')} | {f('grad_angle', '{:.1f}')} | {f('m_lambda_min')} | "
            f"{r['cpu_seconds']} |")


HEADER = ("| run | lr | status | val % | test % | peak val % | ‖Q−Rᵀ‖/‖Q‖ | ∠(QBR, Wᵀ) | ∠(ΔW, BP) | "
          "λ_min(RᵀR) | CPU s |\n|---|---|---|---|---|---|---|---|---|---|---|")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=["curves", "probe", "tune", "replot"])
    ap.add_argument("--tag", default="run")
    ap.add_argument("--steps", type=int, default=30000)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--lrs", default="0.003,0.01,0.03,0.1")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--probe-every", type=int, default=500)
    ap.add_argument("--opts", default="{}", help="rule options as JSON (curves)")
    ap.add_argument("--grid", default="", help="JSON list of [label, options, lr] (probe; curves)")
    ap.add_argument("--methods", default="bp,fa,wm,kp,sal")
    ap.add_argument("--sal-opts", default='{"setting": "paper", "connections": 5}')
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.mode == "replot":  # redraw OUT/<tag>.png from OUT/<tag>.json (no training)
        saved = json.loads((OUT / f"{args.tag}.json").read_text())
        plot(saved["runs"], OUT / f"{args.tag}.png", f"SAL self-assembly: {args.tag} — {saved['scale']}")
        return
    data = load()
    seeds = [int(s) for s in args.seeds.split(",")]
    scale = (f"MNIST {TRAIN} train / {VAL} val (held out of the training set) / 10,000 test, "
             f"{SPEC}, ReLU, mse_batchmean, SGD, batch {BATCH}, {args.steps} steps, one thread, "
             f"{platform.machine()}")
    if args.mode in ("curves", "probe"):
        grid = json.loads(args.grid) if args.grid else [[args.tag, json.loads(args.opts), args.lr]]
        runs = []
        for label, opts, lr in grid:
            for seed in seeds:
                gram = (OUT / f"gram_{args.tag}_{label.replace(' ', '_')}_s{seed}.png"
                        if args.mode == "curves" else None)
                r = train(data, "sal", opts, lr, args.steps, seed, args.probe_every, gram)
                r["label"] = f"{label} s{seed}"
                runs.append(r)
                print(HEADER.splitlines()[0] if len(runs) == 1 else "", summary(r), flush=True)
        save({"scale": scale, "argv": vars(args), "runs": runs}, f"{args.mode}_{args.tag}")
        plot(runs, OUT / f"{args.mode}_{args.tag}.png", f"SAL self-assembly: {args.tag} — {scale}")
        md = [f"# SAL {args.mode}: {args.tag}", "", f"Scale: {scale}.", "", HEADER]
        md += [summary(r) for r in runs]
        (OUT / f"{args.mode}_{args.tag}.md").write_text("\n".join(md) + "\n")
        return
    # tune: the same lrs, steps, split and seed for every method; select on validation
    lrs = [float(v) for v in args.lrs.split(",")]
    opts = {"sal": json.loads(args.sal_opts)}
    runs = []
    for method in args.methods.split(","):
        for lr in lrs:
            r = train(data, method, opts.get(method, {}), lr, args.steps, seeds[0], args.probe_every)
            r["label"] = method
            runs.append(r)
            print(summary(r), flush=True)
            save({"scale": scale, "argv": vars(args), "runs": runs}, f"tune_{args.tag}")
    md = [f"# Equal-budget tuning table ({args.tag})", "", f"Scale: {scale}.",
          (f"Every method: the learning rates {lrs} ({len(lrs)} configurations), seed {seeds[0]}; "
          "the configuration is chosen on the validation split, the test accuracy is the chosen "
          "configuration's."), "", "## Chosen configuration per method", "",
          "| method | chosen lr | val % | test % | configurations tried |", "|---|---|---|---|---|"]
    for method in args.methods.split(","):
        mine = [r for r in runs if r["rule"] == method]
        best = max(mine, key=lambda r: r["val_accuracy"])
        md.append(f"| {method} | {best['lr']} | {best['val_accuracy']:.2f} | {best['test_accuracy']:.2f} "
                  f"| {len(mine)} |")
    md += ["", "## Every configuration", "", HEADER] + [summary(r) for r in runs]
    (OUT / f"tune_{args.tag}.md").write_text("\n".join(md) + "\n")


if __name__ == "__main__":
    main()
