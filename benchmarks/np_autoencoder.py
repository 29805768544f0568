"""Fig. 3B/C of Lansdell, Prakash & Kording 2020 from the runs of preset ``np-table2a-autoencoder``.

The training and Table 2a itself are the preset (``bioplausible reproduce np-table2a-autoencoder
--scale quick --out RUN_DIR``: 11 runs, the paper's numbers beside ours and the check "FA is the
worst method"). This script reads that run directory — each run's ``config.yaml`` and trained
``model.pt`` — and draws, for one seed of every run:

* the 2-D codes (the output of the bottleneck layer, identity activation) of the first 2000
  test images, coloured by their digit label (``split.labels`` of the reconstruction task);
* the reconstructions of the first 8 test images under the originals.

    BIOPLAUSIBLE_DATA=/work/shared/datasets python benchmarks/np_autoencoder.py RUN_DIR --tag quick_seed0

Writes ``<out>/np-table2a-autoencoder_<tag>_codes.png`` and ``..._reconstructions.png`` (out:
``benchmarks/results/presets`` by default) and a JSON naming the runs drawn with their test loss.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import torch
from torch import nn

RESULTS = Path(__file__).resolve().parent / "results" / "presets"
PRESET = "np-table2a-autoencoder"


def runs_of(run_dir: Path, seed: int | None) -> dict[str, Path]:
    """``{label: run directory}`` of the completed runs, one seed each (``seed`` or the lowest)."""
    found: dict[str, list[tuple[int, Path]]] = {}
    for path in sorted(run_dir.iterdir()):
        m = re.fullmatch(r"(.+)-seed(\d+)", path.name)
        if m and (path / "model.pt").is_file() and (path / "config.yaml").is_file():
            found.setdefault(m.group(1), []).append((int(m.group(2)), path))
    order = list(found)
    index = run_dir / "reproduce.json"  # the preset's order of runs, when the folder has it
    if index.is_file():
        listed = [r["label"] for r in json.loads(index.read_text()).get("runs", [])]
        order = sorted(found, key=lambda k: listed.index(k) if k in listed else len(listed))
    chosen = {}
    for label in order:
        items = found[label]
        items = [it for it in items if seed is None or it[0] == seed]
        if items:
            chosen[label] = min(items)[1]
    if not chosen:
        raise SystemExit(f"{run_dir}: no completed run (a LABEL-seedN folder with model.pt); run the preset first")
    return chosen


def codes_and_outputs(run: Path, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
    """The trained model of ``run``: bottleneck codes and outputs on ``x``, and its test loss."""
    from bioplausible.engine.config import load_config
    from bioplausible.models import build_model

    config = load_config(run / "config.yaml")
    model = build_model(config["model"]["spec"], input_shape=tuple(x.shape[1:]), num_classes=x[0].numel(),
                        **config.model_options())
    model.load_state_dict(torch.load(run / "model.pt", map_location="cpu", weights_only=True))
    model.eval()
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    code_layer = min(linears, key=lambda m: m.out_features)  # the bottleneck (2 units)
    seen: list[torch.Tensor] = []
    handle = code_layer.register_forward_hook(lambda _m, _i, out: seen.append(out))
    with torch.no_grad():
        out = model(x)
    handle.remove()
    summary = json.loads((run / "summary.json").read_text())
    return seen[0], out, float((summary.get("final") or {}).get("test_loss", float("nan")))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="the --out folder of `bioplausible reproduce np-table2a-autoencoder`")
    parser.add_argument("--seed", type=int, default=None, help="which seed to draw (default: the lowest)")
    parser.add_argument("--tag", default="quick_seed0")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    import bioplausible as bp

    data = bp.load_dataset("mnist", normalize="unit", flatten=True, val_size=0, task="reconstruction")
    x, labels = data.test.x[:2000], data.test.labels[:2000]
    results = {label: codes_and_outputs(path, x) for label, path in runs_of(args.run_dir, args.seed).items()}
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    args.out.mkdir(parents=True, exist_ok=True)
    n = len(results)
    cols = min(n, 6)
    rows = -(-n // cols)
    fig, ax = plt.subplots(rows, cols, figsize=(3 * cols, 3 * rows), squeeze=False)
    for a in ax.flat:
        a.set_xticks([])
        a.set_yticks([])
    for a, (label, (codes, _, loss)) in zip(ax.flat, results.items()):
        sc = a.scatter(codes[:, 0], codes[:, 1], c=labels, cmap="tab10", s=2, vmin=-0.5, vmax=9.5)
        a.set_title(f"{label}\ntest loss {loss:.1f}", fontsize=8)
    fig.colorbar(sc, ax=ax.ravel().tolist(), ticks=range(10), label="digit", shrink=0.6)
    codes_png = args.out / f"{PRESET}_{args.tag}_codes.png"
    fig.savefig(codes_png, dpi=90)
    fig, ax = plt.subplots(n + 1, 8, figsize=(8, n + 1), squeeze=False)
    for j in range(8):
        ax[0, j].imshow(x[j].reshape(28, 28), cmap="gray", vmin=0, vmax=1)
    ax[0, 0].set_ylabel("input", fontsize=6, rotation=0, labelpad=30)
    for i, (label, (_, out, _)) in enumerate(results.items(), start=1):
        for j in range(8):
            ax[i, j].imshow(out[j].reshape(28, 28), cmap="gray", vmin=0, vmax=1)
        ax[i, 0].set_ylabel(label, fontsize=6, rotation=0, labelpad=30)
    for a in ax.flat:
        a.set_xticks([])
        a.set_yticks([])
    recon_png = args.out / f"{PRESET}_{args.tag}_reconstructions.png"
    fig.savefig(recon_png, dpi=90)
    drawn = {label: {"run": str(path), "test_loss": results[label][2]}
             for label, path in runs_of(args.run_dir, args.seed).items()}
    (args.out / f"{PRESET}_{args.tag}_figures.json").write_text(json.dumps(drawn, indent=2))
    print(f"{codes_png}\n{recon_png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
