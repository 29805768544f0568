"""Reports of a sweep folder: mean ± std over seeds (Markdown, CSV) and plots with ±std bands.

``bioplausible report SWEEP_DIR`` reads ``sweep.json`` and each run directory it lists, and
writes ``report.md``, ``results.csv``, ``layers.csv``, ``report.json``, ``curves.png`` (test
accuracy and training loss per epoch), ``angles.png`` (hidden-layer angle to BP per step) and
``time.png`` (test accuracy against training time). Means and stds are over the runs that
completed; the status column counts the others. When the sweep comes from a preset, the paper's
value and ours − paper stand beside each cell (a grid label ``fa[optimizer.lr=0.01]`` is compared
with the paper's ``fa``).
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections import Counter
from pathlib import Path
from typing import Any

from ..core.angles import EXACT_DEG, exact_layers, hidden_angle, hidden_angle_series, layer_angles
from ..core.metrics import metric_value
from ..errors import UserError
from .jobs import mean_std
from .report import RunRecord, load_run
from .report_grid import _fmt
from .sweep import read_index


def _num(value: Any, digits: int = 2) -> str:
    """``digits < 0``: a signed number with ``-digits`` decimals (a difference)."""
    if value is None:
        return "–"
    return f"{value:+.{-digits}f}" if digits < 0 else f"{value:.{digits}f}"


def collect(base: str | os.PathLike) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]:
    """The index and, per label, its runs: ``{"seed", "status", "run": RunRecord | None}``."""
    p = Path(base)
    index = read_index(p)
    groups: dict[str, list[dict[str, Any]]] = {label: [] for label in index.get("labels", [])}
    for entry in index["runs"]:
        run = None
        if entry["status"] not in ("new", "partial"):
            try:
                run = load_run(p / entry["dir"], entry["label"])
            except UserError:
                run = None
        groups.setdefault(entry["label"], []).append({"seed": entry["seed"], "status": entry["status"], "run": run})
    return index, groups


def paper_values(index: dict[str, Any]) -> tuple[str, dict[str, float]]:
    """The metric the paper reports and its values by run label (empty without a preset)."""
    name = index.get("preset")
    if not name:
        return "test_accuracy", {}
    from .presets import get_preset

    try:
        preset = get_preset(name)
    except UserError:
        return "test_accuracy", {}
    results = preset.paper_results or {}
    values = {k: float(v) for k, v in (results.get("values") or {}).items() if v is not None}
    return str(results.get("metric", "test_accuracy")), values


def _metric(run: RunRecord, metric: str) -> float | None:
    return metric_value(run.summary, metric)


def label_stats(runs: list[dict[str, Any]], metric: str) -> dict[str, Any]:
    done = [r["run"] for r in runs if r["status"] == "completed" and r["run"] is not None]
    layer: dict[str, list[float]] = {}
    exact: set[str] = set()
    for run in done:
        for name, value in layer_angles(run.probes).items():
            layer.setdefault(name, []).append(value)
        exact |= set(exact_layers(run.probes))
    return {
        "n": len(done), "status": dict(Counter(r["status"] for r in runs)),
        metric: mean_std(_metric(r, metric) for r in done),
        "best_test_accuracy": mean_std(r.summary.get("best_test_accuracy") for r in done),
        "hidden_angle": mean_std(hidden_angle(r.probes) for r in done),
        # the same hidden-layer angle (bioplausible.core.angles), from the records rather than
        # summary.json so that runs written before the definition was unified agree too
        "grad_angle": mean_std(hidden_angle(r.probes) for r in done),
        "epoch_time": mean_std(r.summary.get("mean_epoch_time") for r in done),
        "layers": {name: mean_std(v) for name, v in layer.items()}, "exact_layers": sorted(exact),
    }


def _paper_for(label: str, values: dict[str, float]) -> float | None:
    return values.get(label, values.get(label.split("[", 1)[0]))


def tables(index: dict[str, Any], groups: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    from .presets import comparable_to_paper

    metric, values = paper_values(index)
    # ours − paper only where the runs are as long as the paper's (a quick run is not a replication)
    comparable = comparable_to_paper(index.get("scale"))
    stats = {label: label_stats(runs, metric) for label, runs in groups.items()}
    rows = []
    for label, st in stats.items():
        m = st[metric]
        paper = _paper_for(label, values)
        rows.append({"label": label, "n": st["n"], "metric": metric, "mean": m[0], "std": m[1],
                     "paper": paper, "comparable": comparable,
                     "diff": (m[0] - paper) if (comparable and m[0] is not None and paper is not None) else None,
                     "best_mean": st["best_test_accuracy"][0], "best_std": st["best_test_accuracy"][1],
                     "hidden_angle_mean": st["hidden_angle"][0], "hidden_angle_std": st["hidden_angle"][1],
                     "epoch_time_mean": st["epoch_time"][0], "epoch_time_std": st["epoch_time"][1],
                     "status": ", ".join(f"{k} {v}" for k, v in sorted(st["status"].items()))})
    return {"metric": metric, "paper": values, "stats": stats, "rows": rows}


def markdown(t: dict[str, Any]) -> str:
    metric, has_paper = t["metric"], bool(t["paper"])
    from .presets import NOT_COMPARABLE, metric_digits, metric_label

    d = metric_digits(metric)
    head = f"| run | seeds | {metric_label(metric)} (mean ± std) |" + (" paper | ours − paper |" if has_paper else "")
    head += " best test acc. | hidden-layer angle to BP (°) | s/epoch | runs |"
    cols = head.count("|") - 1
    lines = [head, "|" + "---|" * cols]
    for r, st in zip(t["rows"], t["stats"].values()):
        cells = [r["label"], str(r["n"]), _fmt(st[metric], d)]
        if has_paper:
            cells += [_num(r["paper"], d), _num(r["diff"], -d) if r["diff"] is not None else
                      ("–" if r["paper"] is None or r["comparable"] else NOT_COMPARABLE)]
        cells += [_fmt(st["best_test_accuracy"]), _fmt(st["hidden_angle"], 1), _fmt(st["epoch_time"]), r["status"]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def layer_markdown(t: dict[str, Any]) -> str:
    lines = ["| run | layer | angle to BP (°, mean ± std over seeds) | exact by construction |", "|---|---|---|---|"]
    for label, st in t["stats"].items():
        for name, ms in st["layers"].items():
            lines.append(f"| {label} | {name} | {_fmt(ms, 2)} | {'yes' if name in st['exact_layers'] else 'no'} |")
    return "\n".join(lines) if len(lines) > 2 else ""


def write_csv(t: dict[str, Any], path: Path) -> None:
    keys = ["label", "n", "metric", "mean", "std", "paper", "diff", "best_mean", "best_std",
            "hidden_angle_mean", "hidden_angle_std", "epoch_time_mean", "epoch_time_std", "status"]
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        for r in t["rows"]:
            w.writerow({k: r[k] for k in keys})


def write_layers_csv(t: dict[str, Any], path: Path) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["label", "layer", "angle_mean", "angle_std", "n", "exact"])
        for label, st in t["stats"].items():
            for name, (m, s, n) in st["layers"].items():
                w.writerow([label, name, m, s, n, name in st["exact_layers"]])


def _band(ax: Any, xs: list[float], runs: list[list[float]], label: str) -> None:
    import numpy as np

    n = min(len(r) for r in runs)
    if n == 0:
        return
    arr = np.array([r[:n] for r in runs], dtype=float)
    mean, std = arr.mean(0), arr.std(0, ddof=1) if len(runs) > 1 else np.zeros(n)
    from .figures import rule_color

    line = ax.plot(xs[:n], mean, marker="o", markersize=3, label=f"{label} (n={len(runs)})",
                   color=rule_color(label), linestyle=_style(label))[0]
    ax.fill_between(xs[:n], mean - std, mean + std, color=line.get_color(), alpha=0.2)


def _style(label: str) -> str:
    """Runs of one rule share its colour; a grid point or setting (``fa[...]``) gets its own dash."""
    if "[" not in label:
        return "-"
    import zlib

    return ("--", ":", "-.", (0, (5, 1)), (0, (3, 1, 1, 1)))[zlib.crc32(label.encode()) % 5]


def plot(groups: dict[str, list[dict[str, Any]]], out: Path, title: str = "", fmt: str = "png") -> dict[str, Path]:
    """``curves``, ``angles`` and ``time`` figures (``fmt``: png, pdf or svg) with mean ± std bands over seeds."""
    from .._io import pyplot

    plt = pyplot()

    done = {label: [r["run"] for r in runs if r["status"] == "completed" and r["run"] is not None]
            for label, runs in groups.items()}
    # a reconstruction task has no accuracy: its curves show the test loss instead
    key = "test_accuracy" if any("test_accuracy" in e for rs in done.values() for r in rs for e in r.epochs) \
        else "test_loss"
    name = "test accuracy (%)" if key == "test_accuracy" else "test loss"
    paths = {}
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for label, runs in done.items():
        if runs:
            xs = [e["epoch"] for e in runs[0].epochs]
            _band(axes[0], xs, [[e.get(key, float("nan")) for e in r.epochs] for r in runs], label)
            _band(axes[1], xs, [[e.get("train_loss", float("nan")) for e in r.epochs] for r in runs], label)
    from matplotlib.ticker import MaxNLocator

    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].set(xlabel="epoch", ylabel=name, title=f"{name.split(' (')[0]} (mean ± std)")
    losses = [e.get("train_loss") for runs in done.values() for r in runs for e in r.epochs]
    positive = any(isinstance(v, (int, float)) and v > 0 and math.isfinite(v) for v in losses)
    axes[1].set(xlabel="epoch", ylabel="training loss", title="training loss (mean ± std)",
                yscale="log" if positive else "linear")  # a log axis needs one positive value
    paths["curves"] = _save(fig, axes, out / f"curves.{fmt}", title)

    fig, axes = plt.subplots(1, 1, figsize=(7, 4))
    for label, runs in done.items():
        series = [hidden_angle_series(r.probes) for r in runs if r.probes]
        if series and all(series):
            _band(axes, [s for s, _ in series[0]], [[v for _, v in s] for s in series], label)
    axes.set(xlabel="step", ylabel="degrees", title="angle to the BP gradient, hidden layers (mean ± std)")
    paths["angles"] = _save(fig, [axes], out / f"angles.{fmt}", title)

    fig, axes = plt.subplots(1, 1, figsize=(7, 4))
    for label, runs in done.items():
        if runs:
            import numpy as np

            times = np.mean([np.cumsum([e.get("epoch_time", 0.0) for e in r.epochs]) for r in runs
                             if len(r.epochs) == len(runs[0].epochs)], axis=0)
            _band(axes, list(times), [[e.get(key, float("nan")) for e in r.epochs] for r in runs], label)
    axes.set(xlabel="training time (s, mean over seeds)", ylabel=name,
             title=f"{name.split(' (')[0]} against time (one point per epoch)")
    paths["time"] = _save(fig, [axes], out / f"time.{fmt}", title)
    return paths


def _save(fig: Any, axes: list[Any], path: Path, title: str) -> Path:
    from .figures import save

    return save(fig, axes, path, title)


def write_sweep_report(base: str | os.PathLike, out: str | os.PathLike | None = None,
                       title: str | None = None, fmt: str = "png") -> dict[str, Any]:
    """Write the report files of sweep folder ``base`` into ``out`` (default: ``base``)."""
    index, groups = collect(base)
    folder = Path(out) if out else Path(base)
    folder.mkdir(parents=True, exist_ok=True)
    t = tables(index, groups)
    title = title or f"Sweep {index.get('name', '')}"
    figs = plot(groups, folder, title, fmt=fmt)
    seeds = index.get("seeds", [])
    md = [f"# {title}", "", f"{len(index['runs'])} runs, seeds {seeds}"
          + (f", preset `{index['preset']}` at scale `{index.get('scale')}`" if index.get("preset") else "") + ".",
          "", markdown(t), "",
          ("Mean ± sample std over the seeds that completed (n = seeds). Hidden-layer angle: mean over "
          "probe steps of the angle between the rule's update and BP's gradient, averaged over the weight "
          f"layers that are not exact; a layer is exact when its angle stayed below {EXACT_DEG:g}° at every "
          "probe (e.g. the output layer of FA, DFA, KP, WM and sign symmetry, which get the true gradient "
          "by construction). s/epoch: training time only."), ""]
    layers = layer_markdown(t)
    if layers:
        md += ["Per-layer angles:", "", layers, ""]
    from .report_grid import grid_of, pivot_markdown, plot_grid

    grid = grid_of(groups)
    if grid is not None:
        md += [f"Grid over `{grid[0]}` ({t['metric']}, mean ± std):", "", pivot_markdown(grid, t["stats"], t["metric"]), ""]
        figs["grid"] = plot_grid(grid, t["stats"], t["metric"], folder / f"grid.{fmt}", title)
    done = [r["run"] for runs in groups.values() for r in runs if r["run"] is not None]
    if done:
        from .report_grid import header

        md[2:2] = [*header(done), ""]
    md += [f"![{name}]({p.name})" for name, p in figs.items()] + [""]
    failed = [(label, r) for label, runs in groups.items() for r in runs if r["status"] not in ("completed",)]
    for label, r in failed:
        msg = (r["run"].summary.get("message", "") if r["run"] is not None else "")
        md.append(f"- `{label}` seed {r['seed']}: {r['status']}" + (f": {msg}" if msg else ""))
    (folder / "report.md").write_text("\n".join(md) + "\n")
    write_csv(t, folder / "results.csv")
    write_layers_csv(t, folder / "layers.csv")
    (folder / "report.json").write_text(json.dumps({k: t[k] for k in ("metric", "paper", "rows", "stats")},
                                                   indent=2, default=str))
    return {"report": folder / "report.md", "csv": folder / "results.csv", "tables": t, **figs}
