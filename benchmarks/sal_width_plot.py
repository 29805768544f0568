"""Plot SAL's test accuracy against the downstream width from a width-sweep preset report.

    bioplausible reproduce sal-fig2-width-cifar10 --scale quick --out /tmp/w
    python benchmarks/sal_width_plot.py /tmp/w/reproduce.json benchmarks/results/presets/sal_fig2_width_quick.png

Runs labelled ``sal_w<k>`` give the points (width k × the upstream width); a run labelled
``sgd`` is drawn as a horizontal reference line.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def main(argv: list[str]) -> int:
    report = json.loads(Path(argv[0]).read_text())
    out = Path(argv[1]) if len(argv) > 1 else Path(argv[0]).with_name("width_sweep.png")
    stats = report["stats"]
    points = sorted((int(k.split("_w")[1]), v["test_accuracy"]) for k, v in stats.items() if k.startswith("sal_w"))
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    xs = [w for w, _ in points]
    ys = [m if m is not None else float("nan") for _, (m, _) in points]
    es = [s or 0.0 for _, (_, s) in points]
    ax.errorbar(xs, ys, yerr=es, marker="o", label="SAL (reconstruction)")
    if "sgd" in stats and stats["sgd"]["test_accuracy"][0] is not None:
        ax.axhline(stats["sgd"]["test_accuracy"][0], color="gray", ls="--", label="SGD (BP)")
    ax.set_xscale("log", base=2)
    ax.set_xticks(xs, [f"{w}×" for w in xs])
    ax.set_xlabel("downstream width / upstream width")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{report['preset']} ({report['scale']})", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
