"""Settings headers and rule x value grids of a report: shared by the sweep report
(:mod:`bioplausible.experiments.sweep_report`) and the merged report over many folders
(:mod:`bioplausible.experiments.merged_report`)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from .report import RunRecord


def _fmt(ms: tuple, digits: int = 2) -> str:
    """``(mean, std, n)`` as ``mean ± std`` (``mean`` alone for one value; ``–`` for none)."""
    mean, std = ms[0], ms[1]
    if mean is None:
        return "–"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if ms[2] > 1 else f"{mean:.{digits}f}"


#: config keys that do not change what a run computes (where files live, how it prints)
IGNORED = {"seed", "out", "progress", "dataset.root", "logger", "checkpoint_every", "device",
           "probe_every", "eval_batch_size"}
HEADER_KEYS = (("dataset", "dataset.name"), ("model", "model.spec"), ("optimizer", "optimizer.name"),
               ("rate", "optimizer.lr"), ("epochs", "epochs"), ("batch", "batch_size"),
               ("training subset", "dataset.subset"), ("validation", "dataset.val_size"))


def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): node}


def header(runs: list[RunRecord]) -> list[str]:
    """``dataset mnist; model ...`` for the settings all runs share, and which ones vary."""
    from .report import run_model, sizes_text

    common, varying = [], []
    for name, key in HEADER_KEYS:
        if name == "model":  # a spec, or the module a Python run trained (import path, parameters)
            models = {run_model(r) for r in runs}
            if len(models) == 1:
                common.append(f"model `{models.pop()}`")
            else:
                varying.append(name)
            continue
        values = {json.dumps(_flat(r.config).get(key), default=str) for r in runs}
        if len(values) == 1:
            value = _flat(runs[0].config).get(key)
            if value is not None:
                common.append(f"{name} `{value}`")
        else:
            varying.append(name)
    sizes = {sizes_text(r) for r in runs if r.summary.get("data_sizes")}
    if len(sizes) == 1:
        common.append(f"examples: {sizes.pop()}")
    lines = ["Settings: " + ", ".join(common) + "."]
    if varying:
        lines.append("Differ between runs (see the settings column): " + ", ".join(varying) + ".")
    return lines


def settings_of(group: list[dict[str, Any]], varying: list[str]) -> str:
    keys = dict(HEADER_KEYS)
    run = group[0]["run"]
    return ", ".join(f"{name}={_flat(run.config).get(keys[name])}" for name in varying)


# ----------------------------------------------------------------------------- grids
def grid_of(groups: dict[str, list[dict[str, Any]]]) -> tuple[str, dict[str, dict[Any, str]]] | None:
    """``(key, {rule: {value: label}})`` when the labels are ``rule[key=value]`` over one key."""
    key = None
    table: dict[str, dict[Any, str]] = {}
    for label in groups:
        if "[" not in label or not label.endswith("]"):
            return None
        rule, _, rest = label[:-1].partition("[")
        parts = rest.split(",")
        if len(parts) != 1 or "=" not in parts[0]:
            return None
        k, _, v = parts[0].partition("=")
        if key not in (None, k):
            return None
        key = k
        from .._io import yaml_load

        try:
            value = yaml_load(v)
        except Exception:  # noqa: BLE001 - a value that is not YAML stays text
            value = v
        table.setdefault(rule, {})[value] = label
    return (key, table) if key is not None else None


def _sort_key(v: Any) -> tuple[int, Any]:
    return (0, v) if isinstance(v, (int, float)) and not isinstance(v, bool) else (1, str(v))


def pivot_markdown(grid: tuple[str, dict[str, dict[Any, str]]], stats: dict[str, Any], metric: str) -> str:
    key, table = grid
    values = sorted({v for row in table.values() for v in row}, key=_sort_key)
    lines = [f"| rule \\ {key} | " + " | ".join(str(v) for v in values) + " |", "|" + "---|" * (len(values) + 1)]
    for rule, row in table.items():
        cells = [(_fmt(stats[row[v]][metric]) + f" (n={stats[row[v]]['n']})") if v in row else "–" for v in values]
        lines.append(f"| {rule} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_grid(grid: tuple[str, dict[str, dict[Any, str]]], stats: dict[str, Any], metric: str,
              path: Path, title: str = "") -> Path:
    from .._io import pyplot
    from .figures import rule_color, save

    plt = pyplot()

    key, table = grid
    fig, ax = plt.subplots(figsize=(6.5, 4))
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for row in table.values() for v in row)
    for rule, row in table.items():
        values = sorted(row, key=_sort_key)
        xs = values if numeric else [str(v) for v in values]
        ms = [stats[row[v]][metric] for v in values]
        mean = [m[0] if m[0] is not None else math.nan for m in ms]
        std = [m[1] or 0.0 for m in ms]
        ax.errorbar(xs, mean, yerr=std, marker="o", capsize=3, color=rule_color(rule), label=rule)
    if numeric:
        flat = [v for row in table.values() for v in row]
        if min(flat) > 0 and max(flat) / min(flat) >= 10:
            ax.set_xscale("log")
    ax.set(xlabel=key, ylabel=metric.replace("_", " ") + (" (%)" if "accuracy" in metric else ""),
           title=f"{metric.replace('_', ' ')} against {key} (mean ± std over seeds)")
    return save(fig, [ax], path, title)
