"""BDFA's learned feedback beside DFA's fixed one, over training, from a sweep or reproduce folder.

    python benchmarks/paper_scale/bdfa_alignment.py RUN_FOLDER [--out DIR] [--labels dfa,bdfa]

RUN_FOLDER holds run directories ``<label>-seed<k>`` (a full-scale row of bfa-table1-mnist-1x400,
or the feedback-rate sweep benchmarks/paper_scale/bdfa_feedback_rates.yaml). Writes
``bdfa_alignment.png``: (left) the angle between each rule's hidden-layer update and BP's
gradient per probe (mean ± std over seeds; the output layer of DFA and BDFA gets the true
gradient and is left out), (middle) the norm of that update over the norm of BP's gradient,
(right) test accuracy per epoch; and ``bdfa_alignment.md`` with the
angle at the first and last probe and, for each BDFA run, the first epoch from which its mean
test accuracy stays above DFA's ("never" when it does not overtake DFA). The runs must have
been made with probes (``probe_every`` > 0): without them there is no angle to draw, which it says
in one line (status 2).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

from bioplausible.errors import UserError


def load(folder: Path, labels: list[str] | None) -> dict[str, list]:
    from bioplausible.experiments.report import load_run

    groups: dict[str, list] = {}
    for d in sorted(p for p in folder.iterdir() if p.is_dir() and "-seed" in p.name and (p / "summary.json").is_file()):
        label = d.name.rsplit("-seed", 1)[0]
        if labels and label not in labels:
            continue
        run = load_run(d, label)
        if run.summary.get("status") == "completed":
            groups.setdefault(label, []).append(run)
    if not groups:
        raise UserError(f"{str(folder)!r} has no completed run directories <label>-seed<k>"
                        + (f" for {', '.join(labels)}" if labels else ""))
    return groups


def angle_series(runs: list) -> tuple[list[float], list[list[float]]]:
    """x = epoch of each probe (fractional), one angle series per seed, cut to the shortest."""
    from bioplausible.core.angles import hidden_angle_series

    series = [hidden_angle_series(r.probes) for r in runs]
    if not all(series):
        raise UserError("the runs recorded no probes (probe_every 0): rerun them with probe_every > 0 to see the angle "
                        "of each update to BP's over training")
    n = min(len(s) for s in series)
    steps_per_epoch = max(1, int(runs[0].summary.get("steps", 1)) // max(1, int(runs[0].summary.get("epochs_completed", 1))))
    xs = [step / steps_per_epoch for step, _ in series[0][:n]]
    return xs, [[v for _, v in s[:n]] for s in series]


def norm_ratio_series(runs: list) -> list[list[float]]:
    """Per seed and probe: the hidden layers' update norm over BP's gradient norm (mean over the
    weight layers but the output one), ``update_norm/<layer>.weight / bp_norm/<layer>.weight``."""
    out = []
    for r in runs:
        seq = []
        for rec in r.probes:
            keys = sorted((k for k in rec if k.startswith("update_norm/") and k.endswith(".weight")),
                          key=lambda k: int(k.split("/")[1].split(".")[0]) if k.split("/")[1].split(".")[0].isdigit()
                          else 0)[:-1]
            ratios = [rec[k] / rec["bp_norm/" + k.split("/", 1)[1]] for k in keys
                      if rec.get("bp_norm/" + k.split("/", 1)[1])]
            if ratios:
                seq.append(sum(ratios) / len(ratios))
        out.append(seq)
    n = min(len(s) for s in out)
    return [s[:n] for s in out]


def overtakes(bdfa: list, dfa: list) -> int | None:
    """First epoch from which the mean test accuracy of ``bdfa`` stays above ``dfa``'s; None if never."""
    import numpy as np

    n = min(min(len(r.epochs) for r in bdfa), min(len(r.epochs) for r in dfa))
    a = np.mean([[e["test_accuracy"] for e in r.epochs[:n]] for r in bdfa], axis=0)
    b = np.mean([[e["test_accuracy"] for e in r.epochs[:n]] for r in dfa], axis=0)
    above = a > b
    for i in range(n):
        if above[i:].all():
            return int(bdfa[0].epochs[i]["epoch"])
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder")
    ap.add_argument("--out", help="where to write the figure and table (default: the results folder of the row)")
    ap.add_argument("--labels", help="comma-separated run labels (default: dfa and every bdfa*)")
    args = ap.parse_args(argv)
    folder = Path(args.folder)
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / "paper_scale" / folder.name
    try:
        labels = [x for x in (args.labels or "").split(",") if x] or None
        groups = load(folder, labels)
        if labels is None:
            groups = {k: v for k, v in groups.items() if k == "dfa" or k.startswith("bdfa")}
        if "dfa" not in groups or not any(k.startswith("bdfa") for k in groups):
            raise UserError(f"{str(folder)!r} needs completed dfa and bdfa runs")
        series = {label: angle_series(runs) for label, runs in groups.items()}
    except UserError as exc:
        print(f"bdfa_alignment: {exc}", file=sys.stderr)
        return 2
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, 3, figsize=(17, 4))
    lines = [f"# BDFA vs DFA over training: `{folder.name}`", "",
             ("| run | seeds | angle to BP, first probe (°) | angle to BP, last probe (°) | update / BP norm, first "
             "probe | update / BP norm, last probe | final test acc. (%) | overtakes DFA from epoch |"),
             "|---|---|---|---|---|---|---|---|"]
    for label, (xs, ys) in series.items():
        arr = np.array(ys)
        mean, std = arr.mean(0), arr.std(0, ddof=1) if len(ys) > 1 else np.zeros(arr.shape[1])
        line = axes[0].plot(xs, mean, label=f"{label} (n={len(ys)})")[0]
        axes[0].fill_between(xs, mean - std, mean + std, color=line.get_color(), alpha=0.2)
        runs = groups[label]
        ratio = np.array(norm_ratio_series(runs))
        rmean = ratio.mean(0)
        axes[1].plot(xs[:len(rmean)], rmean[:len(xs)], color=line.get_color(), label=label)
        n = min(len(r.epochs) for r in runs)
        acc = np.array([[e["test_accuracy"] for e in r.epochs[:n]] for r in runs])
        axes[2].plot([e["epoch"] for e in runs[0].epochs[:n]], acc.mean(0), color=line.get_color(), label=label)
        over = "–" if label == "dfa" else (str(overtakes(runs, groups["dfa"])) if overtakes(runs, groups["dfa"]) else "never")
        lines.append(f"| {label} | {len(ys)} | {mean[0]:.1f} ± {std[0]:.1f} | {mean[-1]:.1f} ± {std[-1]:.1f} | "
                     f"{rmean[0]:.2f} | {rmean[-1]:.2f} | {acc[:, -1].mean():.2f} ± {acc[:, -1].std(ddof=1) if len(runs) > 1 else 0:.2f} | {over} |")
    axes[0].set(xlabel="epoch", ylabel="degrees", title="angle of the hidden-layer update to BP's gradient")
    axes[1].set(xlabel="epoch", ylabel="ratio", yscale="log",
                title="hidden-layer update norm / BP's gradient norm (mean over seeds)")
    axes[2].set(xlabel="epoch", ylabel="test accuracy (%)", title="test accuracy (mean over seeds)")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / "bdfa_alignment.png", dpi=100)
    plt.close(fig)
    lines += ["", ("Angle: the probe's angle between the rule's update of the hidden layer(s) and BP's gradient on "
              "the same batch (the output layer, exact by construction, left out); mean ± std over seeds. "
              "Update / BP norm: the norm of the rule's hidden-layer update over the norm of BP's gradient on "
              "the same batch (both before the learning rate), mean over seeds: how large a step the hidden "
              "layer takes, whatever its direction."),
              "", "![alignment](bdfa_alignment.png)", ""]
    (out / "bdfa_alignment.md").write_text("\n".join(lines))
    print(f"{out / 'bdfa_alignment.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
