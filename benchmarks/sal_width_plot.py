"""Plot SAL's test accuracy against the downstream width from a width-sweep preset report.

    bioplausible reproduce sal-fig2-width-cifar10 --scale quick --out /tmp/w
    python benchmarks/sal_width_plot.py /tmp/w/reproduce.json benchmarks/results/presets/sal_fig2_width_quick.png

Runs labelled ``sal_c<c>`` give the points (c × the forward stream's connections, the paper's
axis; older reports with ``sal_w<k>``, width k, still plot); a run labelled ``sgd`` is drawn as a
horizontal reference line.
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
    prefix = "sal_c" if any(k.startswith("sal_c") for k in stats) else "sal_w"
    points = sorted((int(k[len(prefix):]), v["test_accuracy"]) for k, v in stats.items() if k.startswith(prefix))
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    xs = [w for w, _ in points]
    ys = [m if m is not None else float("nan") for _, (m, _) in points]
    es = [s or 0.0 for _, (_, s) in points]
    ax.errorbar(xs, ys, yerr=es, marker="o", label="SAL (reconstruction)")
    if "sgd" in stats and stats["sgd"]["test_accuracy"][0] is not None:
        ax.axhline(stats["sgd"]["test_accuracy"][0], color="gray", ls="--", label="SGD (BP)")
    ax.set_xscale("log", base=2)
    ax.set_xticks(xs, [f"{w}×" for w in xs])
    ax.set_xlabel("backprojection / forward connections" if prefix == "sal_c"
                  else "downstream width / upstream width")
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
