"""``bioplausible report PATH...``: one report over any mix of run, compare, sweep and reproduce folders.

Every run directory (a folder with ``summary.json``) under the given paths is read; runs are
grouped by (rule, configuration): two runs belong together when their configs are equal apart
from the seed and where the files live. A group's label is its run label (the rule, or a sweep's
``fa[optimizer.lr=0.01]``), extended by the settings that tell two groups of one rule apart
(``fa[epochs=3]``). The report (``report.md``, ``results.csv``, ``layers.csv``, ``report.json``
and the figures) gives mean ± std over the seeds of each group with a seed count, and a header
with the settings every run shares. A grid (labels ``rule[key=value]`` over one key) is also
pivoted into a rule × value table and drawn as accuracy against the value (``grid.<format>``).
"""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Any

from ..errors import UserError
from .report import RunRecord, load_run

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


def find_runs(paths: list[str | os.PathLike]) -> list[Path]:
    """Every run directory at or below ``paths`` (a run folder, or a study folder holding runs)."""
    found: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if not p.exists():
            raise UserError(f"{str(p)!r} does not exist; pass run, compare, sweep or reproduce folders")
        if (p / "summary.json").is_file():
            found.append(p)
            continue
        inner = sorted({s.parent for s in p.glob("*/summary.json")} | {s.parent for s in p.glob("*/*/summary.json")})
        if not inner:
            raise UserError(f"{str(p)!r} is not a run directory (no summary.json) and holds none; pass "
                            f"folders written by train, compare, sweep or reproduce")
        found.extend(inner)
    seen: set[Path] = set()
    unique = []
    for p in found:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique


def _base_label(run: RunRecord) -> str:
    return str(run.label)


def group_runs(runs: list[RunRecord]) -> dict[str, list[dict[str, Any]]]:
    """``{label: [{"seed", "status", "run"}]}`` grouped by (run label, configuration)."""
    keyed: dict[tuple[str, str], list[RunRecord]] = {}
    configs: dict[tuple[str, str], dict[str, Any]] = {}
    for run in runs:
        flat = {k: v for k, v in _flat(run.config).items() if k not in IGNORED}
        key = (_base_label(run), json.dumps(flat, sort_keys=True, default=str))
        keyed.setdefault(key, []).append(run)
        configs[key] = flat
    labels: dict[tuple[str, str], str] = {}
    by_label: dict[str, list[tuple[str, str]]] = {}
    for key in keyed:
        by_label.setdefault(key[0], []).append(key)
    for label, keys in by_label.items():
        if len(keys) == 1:
            labels[keys[0]] = label
            continue
        differ = sorted(k for k in set().union(*(configs[x] for x in keys))
                        if len({json.dumps(configs[x].get(k), default=str) for x in keys}) > 1)
        for x in keys:
            extra = ",".join(f"{k}={configs[x].get(k)}" for k in differ)
            labels[x] = (f"{label[:-1]},{extra}]" if label.endswith("]") else f"{label}[{extra}]")
    groups: dict[str, list[dict[str, Any]]] = {}
    for key, members in keyed.items():
        groups[labels[key]] = [{"seed": (r.config or {}).get("seed", (r.summary.get("job") or {}).get("seed")),
                                "status": r.summary.get("status"), "run": r} for r in members]
    return groups


def header(runs: list[RunRecord]) -> list[str]:
    """``dataset mnist; model ...`` for the settings all runs share, and which ones vary."""
    common, varying = [], []
    for name, key in HEADER_KEYS:
        values = {json.dumps(_flat(r.config).get(key), default=str) for r in runs}
        if len(values) == 1:
            value = _flat(runs[0].config).get(key)
            if value is not None:
                common.append(f"{name} `{value}`")
        else:
            varying.append(name)
    sizes = {(r.summary.get("data") or {}).get("train") for r in runs} - {None}
    if len(sizes) == 1:
        common.append(f"{sizes.pop()} training examples")
    tests = {(r.summary.get("data") or {}).get("test") for r in runs} - {None}
    if len(tests) == 1:
        common.append(f"{tests.pop()} test examples")
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
        from ..engine.config import yaml_load

        try:
            value = yaml_load(v)
        except Exception:  # noqa: BLE001 - a value that is not YAML stays text
            value = v
        table.setdefault(rule, {})[value] = label
    return (key, table) if key is not None else None


def _sort_key(v: Any) -> tuple[int, Any]:
    return (0, v) if isinstance(v, (int, float)) and not isinstance(v, bool) else (1, str(v))


def pivot_markdown(grid: tuple[str, dict[str, dict[Any, str]]], stats: dict[str, Any], metric: str) -> str:
    from .sweep_report import _fmt

    key, table = grid
    values = sorted({v for row in table.values() for v in row}, key=_sort_key)
    lines = [f"| rule \\ {key} | " + " | ".join(str(v) for v in values) + " |", "|" + "---|" * (len(values) + 1)]
    for rule, row in table.items():
        cells = [(_fmt(stats[row[v]][metric]) + f" (n={stats[row[v]]['n']})") if v in row else "–" for v in values]
        lines.append(f"| {rule} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_grid(grid: tuple[str, dict[str, dict[Any, str]]], stats: dict[str, Any], metric: str,
              path: Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .figures import rule_color, save

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


# ----------------------------------------------------------------------------- report
def write_merged_report(paths: list[str | os.PathLike], out: str | os.PathLike | None = None,
                        title: str = "Comparison", fmt: str = "png") -> dict[str, Any]:
    """Write the merged report of ``paths`` into ``out`` (default: the first path, or its parent
    for a single run directory)."""
    from .sweep_report import (layer_markdown, markdown, plot, tables, write_csv, write_layers_csv)

    dirs = find_runs(paths)
    runs = [load_run(d) for d in dirs]
    first = Path(paths[0])
    folder = Path(out) if out else (first.parent if (first / "summary.json").is_file() else first)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot write the report into {str(folder)!r}: {exc.strerror}; give a folder with --out") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"cannot write the report into {str(folder)!r}: not writable; give a folder with --out")
    groups = group_runs(runs)
    presets = {(r.summary.get("job") or {}).get("preset") for r in runs}
    index = {"preset": presets.pop() if len(presets) == 1 else None}
    t = tables(index, groups)
    figs = plot(groups, folder, title, fmt=fmt)
    varying = [name for name, key in HEADER_KEYS
               if len({json.dumps(_flat(r.config).get(key), default=str) for r in runs}) > 1]
    seeds = sorted({g["seed"] for gs in groups.values() for g in gs if g["seed"] is not None})
    md = [f"# {title}", "", *header(runs), "",
          f"{len(runs)} runs from {len(paths)} folder(s), {len(groups)} (rule, configuration) groups, seeds {seeds}.",
          "", markdown(t), ""]
    if varying:
        md += ["| run | settings |", "|---|---|"]
        md += [f"| {label} | {settings_of(g, varying)} |" for label, g in groups.items()] + [""]
    md += [("Mean ± sample std over the seeds that completed (seeds = how many). Hidden-layer angle: "
            "mean over probe steps of the angle between the rule's update and BP's gradient, over the "
            "weight layers that are not exact. s/epoch: training time only."), ""]
    grid = grid_of(groups)
    if grid is not None:
        md += [f"Grid over `{grid[0]}` ({t['metric']}, mean ± std):", "", pivot_markdown(grid, t["stats"], t["metric"]), ""]
        figs["grid"] = plot_grid(grid, t["stats"], t["metric"], folder / f"grid.{fmt}", title)
    layers = layer_markdown(t)
    if layers:
        md += ["Per-layer angles:", "", layers, ""]
    md += [f"![{name}]({p.name})" for name, p in figs.items()] + [""]
    for label, rs in groups.items():
        for r in rs:
            if r["status"] != "completed":
                msg = r["run"].summary.get("message", "")
                md.append(f"- `{label}` seed {r['seed']}: {r['status']}" + (f": {msg}" if msg else ""))
    (folder / "report.md").write_text("\n".join(md) + "\n")
    write_csv(t, folder / "results.csv")
    write_layers_csv(t, folder / "layers.csv")
    if grid is not None:
        with (folder / "grid.csv").open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["rule", grid[0], "mean", "std", "n"])
            for rule, row in grid[1].items():
                for v, label in sorted(row.items(), key=lambda kv: _sort_key(kv[0])):
                    m = t["stats"][label][t["metric"]]
                    w.writerow([rule, v, m[0], m[1], m[2]])
    (folder / "report.json").write_text(json.dumps({k: t[k] for k in ("metric", "paper", "rows", "stats")},
                                                   indent=2, default=str))
    return {"report": folder / "report.md", "csv": folder / "results.csv", "tables": t, **figs}
