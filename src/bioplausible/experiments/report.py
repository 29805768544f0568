"""Tables, Markdown reports and learning-curve plots regenerated from run directories.

Everything here reads only what a run wrote (``config.yaml``, ``metrics.jsonl``,
``summary.json``), so ``bioplausible report RUN_DIR...`` rebuilds a comparison at any time.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..core.angles import EXACT_DEG, exact_layers, hidden_angle, hidden_angle_series, layer_angles
from ..engine.rundir import read_metrics
from ..errors import UserError


@dataclass
class RunRecord:
    path: Path
    label: str
    config: dict[str, Any]
    epochs: list[dict[str, Any]]
    probes: list[dict[str, Any]]
    summary: dict[str, Any]


SUMMARY_NUMBERS = ("epochs_completed", "epochs", "steps", "best_test_accuracy", "mean_epoch_time",
                   "grad_angle_mean", "total_time", "parameters")
_TEXT_FIELDS = ("kind", "event", "message")


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _numbers(rec: dict[str, Any]) -> dict[str, Any]:
    """A metrics record with only numeric values (and its kind/event/message): a damaged value
    (a string where a number belongs) is left out, as a missing measurement."""
    return {k: v for k, v in rec.items() if _is_number(v) or (k in _TEXT_FIELDS and isinstance(v, str))}


def _check_summary(summary: dict[str, Any], path: Path) -> None:
    """The fields a report reads have their types; a damaged summary.json is one UserError line."""
    def bad(key: str, value: Any) -> UserError:
        return UserError(f"{str(path)!r}: {key} is {value!r:.60}, not what a run writes; the run directory is "
                         f"damaged: rerun or --resume it")

    if not isinstance(summary.get("status"), str):
        raise bad("status", summary.get("status"))
    for key in SUMMARY_NUMBERS:
        if summary.get(key) is not None and not _is_number(summary[key]):
            raise bad(key, summary[key])
    final = summary.get("final")
    if final is not None and not isinstance(final, dict):
        raise bad("final", final)
    for key, value in (final or {}).items():
        if value is not None and not _is_number(value) and not (key in _TEXT_FIELDS and isinstance(value, str)):
            raise bad(f"final.{key}", value)
    if summary.get("job") is not None and not isinstance(summary["job"], dict):
        raise bad("job", summary["job"])


def load_run(path: str | os.PathLike, label: str | None = None) -> RunRecord:
    p = Path(path)
    if not (p / "summary.json").is_file():
        raise UserError(f"{str(p)!r} is not a run directory (no summary.json); pass directories written by train/compare")
    try:
        summary = json.loads((p / "summary.json").read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{str(p / 'summary.json')!r} cannot be read ({type(exc).__name__}); the run was "
                        f"interrupted while writing it or the file is damaged: rerun or --resume it") from None
    if not isinstance(summary, dict):
        raise UserError(f"{str(p / 'summary.json')!r} is not a run summary; the run directory is damaged")
    _check_summary(summary, p / "summary.json")
    try:
        config = yaml.safe_load((p / "config.yaml").read_text()) if (p / "config.yaml").exists() else {}
    except (OSError, ValueError, yaml.YAMLError):
        raise UserError(f"{str(p / 'config.yaml')!r} cannot be read as YAML; the run directory is damaged") from None
    epochs, probes = [], []
    if (p / "metrics.jsonl").exists():
        for rec in read_metrics(p / "metrics.jsonl"):
            rec = _numbers(rec)
            if rec.get("kind") == "epoch" and _is_number(rec.get("epoch")):
                epochs.append(rec)
            elif rec.get("kind") == "probe" and _is_number(rec.get("step")):
                probes.append(rec)
    job_label = (summary.get("job") or {}).get("label")
    return RunRecord(p, label or job_label or summary.get("rule", p.name), config if isinstance(config, dict) else {},
                     epochs, probes, summary)


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def run_model(run: RunRecord) -> str:
    """The model a run trained: its spec, or (runs started from Python) the module's import path
    with its parameter count and structural fingerprint."""
    m = run.config.get("model") or {}
    if m.get("spec"):
        return str(m["spec"])
    info = run.summary.get("model_info") or m
    if info.get("import_path"):
        return (f"{info['import_path']} ({info.get('parameters', '?')} parameters, "
                f"fingerprint {info.get('fingerprint', '?')})")
    return str(run.summary.get("model", "?"))


def sizes_text(run: RunRecord) -> str:
    """"train N, validation N, test N" from the run's summary ("sizes not recorded" for old runs)."""
    sizes = run.summary.get("data_sizes")
    if not sizes:
        return "split sizes not recorded"
    return ", ".join(f"{label} {'none' if sizes.get(key) is None else sizes[key]}"
                     for key, label in (("train", "train"), ("val", "validation"), ("test", "test")))


def comparison_rows(runs: Sequence[RunRecord]) -> list[dict[str, Any]]:
    """One row per run: final/best test accuracy, mean gradient angle to BP, time per epoch."""
    bp_time = next((r.summary.get("mean_epoch_time") for r in runs if r.summary.get("rule") == "bp"), None)
    rows = []
    for r in runs:
        final = r.summary.get("final") or {}
        t = r.summary.get("mean_epoch_time")
        rows.append({
            "rule": r.label,
            "status": r.summary.get("status"),
            "epochs": r.summary.get("epochs_completed"),
            "test_accuracy": final.get("test_accuracy"),
            "best_test_accuracy": r.summary.get("best_test_accuracy"),
            "train_loss": final.get("train_loss"),
            "hidden_angle": hidden_angle(r.probes),
            "all_layers_angle": r.summary.get("grad_angle_all_layers_mean"),
            "layer_angles": layer_angles(r.probes),
            "exact_layers": exact_layers(r.probes),
            "epoch_time": t,
            "time_vs_bp": (t / bp_time) if (t and bp_time) else None,
        })
    return rows


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    head = ("| rule | status | epochs | test acc. (%) | best (%) | train loss | "
            "hidden-layer angle to BP (°) | s/epoch | time vs BP |")
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        lines.append(
            f"| {r['rule']} | {r['status']} | {r['epochs']} | {_fmt(r['test_accuracy'])} | "
            f"{_fmt(r['best_test_accuracy'])} | {_fmt(r['train_loss'], 4)} | {_fmt(r['hidden_angle'], 1)} | "
            f"{_fmt(r['epoch_time'])} | {_fmt(r['time_vs_bp'])} |")
    return "\n".join(lines)


def layer_lines(rows: Sequence[dict[str, Any]]) -> list[str]:
    """A per-layer angle table (Markdown lines), empty when nothing was probed."""
    lines = ["| rule | layer | angle to BP (°) | exact by construction |", "|---|---|---|---|"]
    for r in rows:
        for name, angle in (r.get("layer_angles") or {}).items():
            lines.append(f"| {r['rule']} | {name} | {angle:.2f} | {'yes' if name in r['exact_layers'] else 'no'} |")
    return lines + [""] if len(lines) > 2 else []


def plot_curves(runs: Sequence[RunRecord], path: str | os.PathLike, title: str = "") -> Path:
    """Test accuracy and training loss per epoch, one line per run, as a PNG."""
    from .._io import pyplot

    plt = pyplot()

    fig, axes = plt.subplots(1, 3 if any(r.probes for r in runs) else 2, figsize=(13, 4))
    # a reconstruction task has no accuracy: the first panel shows the test loss instead
    key = "test_accuracy" if any("test_accuracy" in e for r in runs for e in r.epochs) else "test_loss"
    from .figures import rule_color, save

    for r in runs:
        ep = [e["epoch"] for e in r.epochs]
        style = {"color": rule_color(r.label), "label": r.label}
        axes[0].plot(ep, [e.get(key) for e in r.epochs], marker="o", **style)
        axes[1].plot(ep, [e.get("train_loss") for e in r.epochs], marker="o", **style)
        if len(axes) > 2 and r.probes:
            series = hidden_angle_series(r.probes)  # the table's hidden-layer angle, per step
            axes[2].plot([s for s, _ in series], [v for _, v in series], **style)
    if key == "test_accuracy":
        axes[0].set(xlabel="epoch", ylabel="test accuracy (%)", title="test accuracy")
    else:
        axes[0].set(xlabel="epoch", ylabel="test loss", title="test loss (lower is better)")
    losses = [e.get("train_loss") for r in runs for e in r.epochs]
    positive = any(isinstance(v, (int, float)) and v > 0 and math.isfinite(v) for v in losses)
    axes[1].set(xlabel="epoch", ylabel="training loss", title="training loss",
                yscale="log" if positive else "linear")  # a log axis needs one positive value
    if len(axes) > 2:
        axes[2].set(xlabel="step", ylabel="degrees", title="angle to the BP gradient, hidden layers")
    for ax in axes[:-1]:  # one legend, beside the last panel
        ax.grid(alpha=0.3)
    return save(fig, [axes[-1]], path, title)


def report_folder(path: str | os.PathLike) -> Path:
    """``path`` created if needed and writable, or a one-line UserError."""
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot write the report into {str(out)!r}: {exc.strerror}; give a folder with --out") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise UserError(f"cannot write the report into {str(out)!r}: not writable; give a folder with --out")
    return out


def write_report(runs: Sequence[RunRecord], out_dir: str | os.PathLike, title: str = "Comparison") -> dict[str, Path]:
    """Write ``report.md``, ``curves.png`` and ``comparison.json`` into ``out_dir``."""
    out = report_folder(out_dir)
    rows = comparison_rows(runs)
    png = plot_curves(runs, out / "curves.png", title)
    cfg = runs[0].config if runs else {}
    ds = (cfg.get("dataset") or {}).get("name", "?")
    model = run_model(runs[0]) if runs else "?"
    md = [f"# {title}", "",
          (f"Dataset `{ds}`, model `{model}`, loss `{cfg.get('loss', '?')}`, optimizer "
          f"`{(cfg.get('optimizer') or {}).get('name', '?')}` (lr {(cfg.get('optimizer') or {}).get('lr', '?')}), "
          f"batch {cfg.get('batch_size', '?')}, seed {cfg.get('seed', '?')}; {sizes_text(runs[0]) if runs else ''}."),
          *[f"- `{r.label}`: model `{run_model(r)}`, {sizes_text(r)}" for r in runs[1:]
            if (run_model(r), sizes_text(r)) != (model, sizes_text(runs[0]))], "",
          markdown_table(rows), "",
          ("Hidden-layer angle to BP: mean over probe steps of the angle between the rule's weight "
          "update and the true BP gradient on the same batch, averaged over the weight layers that are "
          f"not exact at that step (angle at least {EXACT_DEG:g}°; the output layer of FA, DFA, KP, WM and "
          "sign symmetry is exact by construction; per layer below). The same number is the plot's, "
          "`summary.json`'s `grad_angle_mean` and `aggregate`'s `grad_angle`. s/epoch: training time "
          "only (no evaluation, no probe measurements)."), "",
          *layer_lines(rows),
          "![learning curves](curves.png)", ""]
    for r in runs:
        if r.summary.get("status") != "completed":
            md.append(f"- `{r.label}`: {r.summary.get('status')}: {r.summary.get('message', '')}")
    (out / "report.md").write_text("\n".join(md) + "\n")
    (out / "comparison.json").write_text(json.dumps(rows, indent=2, default=str))
    return {"report": out / "report.md", "plot": png, "json": out / "comparison.json"}
