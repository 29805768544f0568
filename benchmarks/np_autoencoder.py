"""Fig. 3 / Table 2a of Lansdell, Prakash & Kording 2020: the MNIST autoencoder, seven methods.

784-W-2-W-784 (tanh, identity, tanh, relu; ``autoencoder`` model, W = 200 as the paper says, the
authors' code builds 50: ``--width 50``), summed squared reconstruction error (``mse_sum``),
batch 32, targets = inputs. Methods, with and without noise as in Table 2a: BP with SGD and with
Adam, FA, the DAE (input noise σ = 0.3), NP (the perturbation is its noise), SG (no noise) and
"matched" (KP without decay). "Noise" is Gaussian activation noise of std c_h* = 0.02 on every
hidden layer in training passes (``add_activation_noise``).

Rates (spec §5.3, from the authors' configs where given): W lr 1e-4 (SGD) for BP, FA, DAE, NP
and SG; B lr 8e-6 for NP, 1e-6 for SG (our choice); Adam lr 1.41e-4; matched lr 1.99e-4.
Reported: test reconstruction loss per example (Σ over the 784 pixels; the paper's
normalisation is not stated, so only the ranking is compared), the 2-D codes of the test set
and reconstructions as PNGs. Check: FA is the worst method, as in Table 2a.

    BIOPLAUSIBLE_DATA=/work/shared/datasets python benchmarks/np_autoencoder.py --epochs 1 --tag quick

Writes ``benchmarks/results/np_table2a_<tag>.{json,md}``, ``np_fig3_<tag>_codes.png`` and
``np_fig3_<tag>_reconstructions.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

import bioplausible as bp
from bioplausible.rules.nodepert.controls import add_activation_noise

RESULTS = Path(__file__).resolve().parent / "results"
PAPER = {"bp_sgd": (536.8, 609.8), "bp_adam": (522.3, 533.3), "fa": (768.2, 759.1), "dae": (539.8, None),
         "np": (515.3, None), "sg": (None, 521.6), "matched": (629.9, 615.0)}
# label: (rule, options, optimizer, noise)
METHODS = {
    "bp_sgd+noise": ("bp", {}, {"name": "sgd", "lr": 1e-4}, True),
    "bp_sgd": ("bp", {}, {"name": "sgd", "lr": 1e-4}, False),
    "bp_adam+noise": ("bp", {}, {"name": "adam", "lr": 1.41e-4}, True),
    "bp_adam": ("bp", {}, {"name": "adam", "lr": 1.41e-4}, False),
    "fa+noise": ("fa", {}, {"name": "sgd", "lr": 1e-4}, True),
    "fa": ("fa", {}, {"name": "sgd", "lr": 1e-4}, False),
    "dae+noise": ("dae", {"input_noise": 0.3}, {"name": "sgd", "lr": 1e-4}, False),
    "np+noise": ("np", {"c_h": 0.02}, {"name": "sgd", "lr": 1e-4, "groups": {"feedback": {"lr": 8e-6}}}, False),
    "sg": ("sg", {}, {"name": "sgd", "lr": 1e-4, "groups": {"feedback": {"lr": 1e-6}}}, False),
    "matched+noise": ("matched", {}, {"name": "sgd", "lr": 1.99e-4}, True),
    "matched": ("matched", {}, {"name": "sgd", "lr": 1.99e-4}, False),
}


def train(label: str, width: int, epochs: int, x, xt, seed: int = 0) -> dict:
    name, options, optimizer, noise = METHODS[label]
    torch.manual_seed(seed)
    model = bp.build_model(f"autoencoder:{width}")
    rule = bp.make(name, **options)
    rule.set_seed(seed)
    model = rule.prepare(model, example=x[:2])
    if noise:
        add_activation_noise(rule, model, std=0.02)
    opt = rule.build_optimizer(model, optimizer)
    loss = bp.get_loss("mse_sum")
    g = torch.Generator().manual_seed(seed + 1)
    start = time.time()
    for _ in range(epochs):
        order = torch.randperm(x.shape[0], generator=g)
        for i in range(0, x.shape[0] - 31, 32):
            xb = x[order[i:i + 32]]
            rule.train_step(model, xb, xb, loss)
            opt.step()
            rule.after_step(model)
    model.eval()
    with torch.no_grad():
        out = model(xt)
        test = float(((out - xt) ** 2).sum() / xt.shape[0])
        codes = xt
        for module in list(model)[:5]:  # Flatten, Linear, tanh, Linear, identity: the 2-D code
            codes = module(codes)
    return {"test_loss": test, "seconds": time.time() - start, "codes": codes, "recon": out[:8]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--width", type=int, default=200)
    parser.add_argument("--tag", default="quick")
    parser.add_argument("--train-size", type=int, default=None, help="first N training images only")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    data = bp.load_dataset("mnist", flatten=True, normalize="unit", val_size=0)
    x, xt, yt = data.train.x[:args.train_size], data.test.x, data.test.y
    load = os.getloadavg()
    results = {}
    for label in args.methods.split(","):
        results[label] = train(label, args.width, args.epochs, x, xt)
        print(f"{label}: test loss {results[label]['test_loss']:.1f} ({results[label]['seconds']:.0f} s)",
              flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(results)
    fig, ax = plt.subplots(1, n, figsize=(3 * n, 3))
    for a, (label, r) in zip(ax, results.items()):
        c = r["codes"][:2000]
        a.scatter(c[:, 0], c[:, 1], c=yt[:2000], cmap="tab10", s=2)
        a.set_title(f"{label}\n{r['test_loss']:.1f}", fontsize=8)
        a.set_xticks([])
        a.set_yticks([])
    fig.tight_layout()
    fig.savefig(out / f"np_fig3_{args.tag}_codes.png", dpi=100)
    fig, ax = plt.subplots(n + 1, 8, figsize=(8, n + 1))
    for j in range(8):
        ax[0, j].imshow(xt[j].reshape(28, 28), cmap="gray")
    for i, (label, r) in enumerate(results.items(), start=1):
        for j in range(8):
            ax[i, j].imshow(r["recon"][j].reshape(28, 28), cmap="gray")
        ax[i, 0].set_ylabel(label, fontsize=6, rotation=0, labelpad=30)
    for a in ax.flat:
        a.set_xticks([])
        a.set_yticks([])
    fig.savefig(out / f"np_fig3_{args.tag}_reconstructions.png", dpi=100)
    table = {k: {"test_loss": v["test_loss"], "seconds": v["seconds"]} for k, v in results.items()}
    fa_rows = [v["test_loss"] for k, v in table.items() if k.startswith("fa")]
    others = [v["test_loss"] for k, v in table.items() if not k.startswith("fa")]
    check = {"text": "FA (with and without noise) has the highest test loss",
             "passed": bool(fa_rows and others and min(fa_rows) > max(others))}
    command = "python benchmarks/np_autoencoder.py " + " ".join(argv or sys.argv[1:])
    about = (f"Command: `{command}`; {args.epochs} epoch(s), one seed, batch 32; load average before "
             f"{load}, after {os.getloadavg()}.")
    lines = [f"# Table 2a / Fig. 3: MNIST autoencoder 784-{args.width}-2-{args.width}-784, {args.tag}", "",
             about, "",
             "| method | ours: test loss per example (Σ pixels) | paper (noise / no noise) |", "|---|---:|---|"]
    for label, row in table.items():
        base = label.split("+")[0]
        paper = PAPER.get(base, (None, None))
        ref = paper[0] if label.endswith("+noise") else paper[1]
        lines.append(f"| {label} | {row['test_loss']:.1f} | {ref if ref is not None else '–'} |")
    lines += ["", f"Check: {check['text']}: {'pass' if check['passed'] else 'FAIL'}", "",
              f"Codes: `np_fig3_{args.tag}_codes.png`; reconstructions: `np_fig3_{args.tag}_reconstructions.png`."]
    (out / f"np_table2a_{args.tag}.json").write_text(json.dumps(
        {"table": table, "check": check, "epochs": args.epochs, "width": args.width, "command": command,
         "load_average_before": load}, indent=2))
    (out / f"np_table2a_{args.tag}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
