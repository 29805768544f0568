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
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import UserError
from .report import RunRecord, load_run, report_folder
from .report_grid import (
    HEADER_KEYS,
    IGNORED,
    _flat,
    _sort_key,
    grid_of,
    header,
    pivot_markdown,
    plot_grid,
    settings_of,
)


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


# ----------------------------------------------------------------------------- report
REPORT_FILES = ("report.md", "results.csv", "curves.png", "comparison.json")


def default_report_dir(paths: Sequence[str | os.PathLike]) -> Path:
    """Where a report of ``paths`` goes without ``out``: one folder's report goes inside it; several
    folders' into their common folder, unless that already holds a report (a ``compare`` folder),
    which is never replaced without ``out`` naming it."""
    if len(paths) == 1:
        return Path(paths[0])
    common = Path(os.path.commonpath([str(Path(p).resolve()) for p in paths]))
    there = [f for f in REPORT_FILES if (common / f).exists()]
    if there:
        raise UserError(f"{str(common)!r} already holds {there[0]} (written by compare or an earlier report); "
                        f"pass --out DIR to write this report elsewhere (or --out {str(common)!r} to replace it)")
    return common


def write_merged_report(paths: list[str | os.PathLike], out: str | os.PathLike | None = None,
                        title: str = "Comparison", fmt: str = "png") -> dict[str, Any]:
    """Write the merged report of ``paths`` into ``out`` (default: :func:`default_report_dir`,
    which never replaces a report it was not asked to)."""
    from .sweep_report import layer_markdown, markdown, plot, tables, write_csv, write_layers_csv

    dirs = find_runs(paths)
    runs = [load_run(d) for d in dirs]
    folder = report_folder(out if out else default_report_dir(paths))
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
