"""The papers' experiments as presets: data (YAML files in this folder), not code.

A preset names a training config, the runs to compare (a label and a rule with its
hyperparameters), the seeds, per-scale overrides (``quick`` for minutes on a laptop, ``full``
as in the paper), the numbers the paper reports and checks that compare ours with them::

    name: ar-fig2-mnist
    title: ...
    paper: ...
    config: {dataset: {...}, model: {...}, loss: ..., optimizer: {...}, epochs: 50, batch_size: 64}
    runs: {bp: {name: bp}, ar: {name: ar, relax_steps: 100}}   # a run may add `config:` overrides
    seeds: [0, 1, 2, 3, 4]
    scales: {quick: {epochs: 2, seeds: [0]}, full: {}}
    paper_results: {metric: test_accuracy, values: {bp: 98.0, ar: null}, note: ...}
    checks: [{type: within, metric: test_accuracy, runs: [ar, bp], max: 0.3}]

Check types: ``within`` (|a − b| ≤ max), ``max_gap`` (run a at most ``max`` below run b),
``min_value`` (a run's metric at least ``min``), ``within_paper`` (|ours − paper| ≤ ``tol``).

``bioplausible reproduce NAME --scale quick`` trains every run with every seed and prints the
mean ± std beside the paper's values.
"""

from __future__ import annotations

import copy
import json
import statistics
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from ..config import TrainConfig, _merge, yaml_load
from ..errors import ConfigError, UnknownNameError

_METRICS = {"test_accuracy", "best_test_accuracy", "train_accuracy", "test_loss", "train_loss",
            "val_accuracy", "test_auc", "grad_angle"}


@dataclass
class Preset:
    name: str
    title: str
    paper: str
    config: dict[str, Any]
    runs: dict[str, dict[str, Any]]
    seeds: list[int]
    scales: dict[str, dict[str, Any]]
    paper_results: dict[str, Any] = field(default_factory=dict)
    checks: list[dict[str, Any]] = field(default_factory=list)
    source: str = ""

    def resolved(self, scale: str) -> tuple[TrainConfig, list[int]]:
        """The validated config and seeds at ``scale``."""
        if scale not in self.scales:
            raise ConfigError(f"preset {self.name!r} has no scale {scale!r}; choose from {', '.join(self.scales)}")
        over = copy.deepcopy(self.scales[scale] or {})
        seeds = [int(s) for s in over.pop("seeds", self.seeds)]
        return TrainConfig.from_dict(_merge(self.config, over)), seeds


def _preset_files() -> list[Any]:
    folder = resources.files(__name__)
    return sorted((f for f in folder.iterdir() if f.name.endswith(".yaml")), key=lambda f: f.name)


def _parse(text: str, source: str) -> Preset:
    raw = yaml_load(text) or {}
    required = ("name", "config", "runs")
    missing = [k for k in required if k not in raw]
    if missing:
        raise ConfigError(f"preset {source} lacks {', '.join(missing)}")
    known = {"name", "title", "paper", "config", "runs", "seeds", "scales", "paper_results", "checks"}
    extra = sorted(set(raw) - known)
    if extra:
        raise ConfigError(f"preset {source} has unknown key {extra[0]!r}")
    runs = {str(k): (dict(v) if isinstance(v, dict) else {"name": str(v)}) for k, v in raw["runs"].items()}
    for label, rule in runs.items():
        if "name" not in rule:
            raise ConfigError(f"preset {source}: run {label!r} needs a rule name")
    for check in raw.get("checks") or []:
        if check.get("type") not in ("max_gap", "within", "min_value", "within_paper"):
            raise ConfigError(f"preset {source}: unknown check type {check.get('type')!r}")
    return Preset(name=raw["name"], title=raw.get("title", raw["name"]), paper=raw.get("paper", ""),
                  config=raw["config"], runs=runs, seeds=list(raw.get("seeds", [0])),
                  scales=dict(raw.get("scales") or {"full": {}}),
                  paper_results=dict(raw.get("paper_results") or {}),
                  checks=list(raw.get("checks") or []), source=source)


def _all() -> dict[str, Preset]:
    out: dict[str, Preset] = {}
    for f in _preset_files():
        p = _parse(f.read_text(), f.name)
        out[p.name] = p
    return out


def list_presets() -> list[str]:
    return sorted(_all())


def get_preset(name: str) -> Preset:
    """A built-in preset by name, or a preset YAML file by path (``my_experiment.yaml``)."""
    if str(name).endswith((".yaml", ".yml")):
        path = Path(name)
        if not path.is_file():
            raise UnknownNameError(f"preset file {str(path)!r} does not exist")
        return _parse(path.read_text(), str(path))
    presets = _all()
    if name not in presets:
        import difflib

        close = difflib.get_close_matches(name, list(presets), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise UnknownNameError(f"unknown preset {name!r}.{hint} See `bioplausible list presets`")
    return presets[name]


def _metric(summary: dict[str, Any], metric: str) -> float | None:
    if metric == "best_test_accuracy":
        return summary.get("best_test_accuracy")
    if metric == "grad_angle":
        return summary.get("grad_angle_mean")
    return (summary.get("final") or {}).get(metric)


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    vals = [v for v in values if v is not None]
    if not vals:
        return None, None
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def evaluate_checks(preset: Preset, stats: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Evaluate the preset's checks on per-run statistics ``{label: {metric: (mean, std)}}``."""
    results = []
    for check in preset.checks:
        metric = check.get("metric", preset.paper_results.get("metric", "test_accuracy"))
        kind = check["type"]
        ok, text = False, ""
        if kind in ("max_gap", "within"):
            # max_gap: run a is at most `max` below run b; within: |a − b| <= max
            a, b = check["runs"]
            ma, mb = stats.get(a, {}).get(metric, (None, None))[0], stats.get(b, {}).get(metric, (None, None))[0]
            if ma is not None and mb is not None:
                gap = mb - ma
                ok = (abs(gap) if kind == "within" else gap) <= float(check["max"])
                bound = f"|{b} − {a}| at most" if kind == "within" else "at most"
                text = f"{metric}: {b} − {a} = {gap:+.2f} ({bound} {check['max']})"
        elif kind == "min_value":
            label = check["run"]
            m = stats.get(label, {}).get(metric, (None, None))[0]
            if m is not None:
                ok = m >= float(check["min"])
                text = f"{metric} of {label} = {m:.2f} (at least {check['min']})"
        elif kind == "within_paper":
            label = check["run"]
            m = stats.get(label, {}).get(metric, (None, None))[0]
            ref = (preset.paper_results.get("values") or {}).get(label)
            if m is not None and ref is not None:
                ok = abs(m - ref) <= float(check["tol"])
                text = f"{metric} of {label} = {m:.2f} vs paper {ref} (within {check['tol']})"
        results.append({**check, "passed": bool(ok), "text": text or "not measured"})
    return results


def run_preset(name: str, scale: str = "quick", out: str | Path | None = None,
               progress: bool = True, seeds: list[int] | None = None) -> dict[str, Any]:
    """Train every run of preset ``name`` at ``scale`` with every seed; write and return a report."""
    from ..data import load_dataset
    from ..models import build_model
    from ..train import Trainer

    preset = get_preset(name)
    config, preset_seeds = preset.resolved(scale)
    seeds = seeds or preset_seeds
    ds = config["dataset"]
    data = load_dataset(ds["name"], **{k: v for k, v in config.dataset_options().items() if v is not None})
    # Validate every run's rule and the model before any training starts or anything is written.
    from ..registry import make

    for run in preset.runs.values():
        make(run["name"], **{k: v for k, v in run.items() if k not in ("name", "config")})
        config.updated(run.get("config") or {})  # a run's own config overrides must be valid too
    build_model(config["model"]["spec"], input_shape=data.info.input_shape,
                num_classes=data.info.num_classes, **config.model_options())
    out_dir = Path(out or Path("runs") / f"reproduce-{preset.name}-{scale}-{time.strftime('%Y%m%d-%H%M%S')}")
    summaries: dict[str, list[dict[str, Any]]] = {}
    run_dirs: list[tuple[str, Path]] = []
    for label, run in preset.runs.items():
        rule = {k: v for k, v in run.items() if k != "config"}
        for seed in seeds:
            cfg = config.updated(run.get("config") or {}).updated(
                {"rule": rule, "seed": seed, "progress": progress})
            import torch

            torch.manual_seed(seed)
            model = build_model(cfg["model"]["spec"], input_shape=data.info.input_shape,
                                num_classes=data.info.num_classes, **cfg.model_options())
            run_dir = out_dir / f"{label}-seed{seed}"
            result = Trainer(model, rule["name"], data, cfg, out=run_dir, progress=progress).run()
            summaries.setdefault(label, []).append(result.summary)
            run_dirs.append((label, run_dir))
    metrics = sorted({preset.paper_results.get("metric", "test_accuracy"), "test_accuracy",
                      "best_test_accuracy", "grad_angle"})
    stats = {label: {m: _mean_std([_metric(s, m) for s in sums]) for m in metrics}
             for label, sums in summaries.items()}
    statuses = {label: sorted({s["status"] for s in sums}) for label, sums in summaries.items()}
    checks = evaluate_checks(preset, stats)
    report = {"preset": preset.name, "title": preset.title, "paper": preset.paper, "scale": scale,
              "seeds": seeds, "config": config.to_dict(), "stats": stats, "status": statuses,
              "paper_results": preset.paper_results, "checks": checks,
              "runs": [{"label": lb, "dir": str(d)} for lb, d in run_dirs]}
    (out_dir / "reproduce.json").write_text(json.dumps(report, indent=2, default=str))
    (out_dir / "reproduce.md").write_text(format_report(report) + "\n")
    from ..report import load_run, plot_curves

    plot_curves([load_run(d, f"{lb} (seed {d.name.rsplit('seed', 1)[-1]})") for lb, d in run_dirs],
                out_dir / "curves.png", preset.title)
    report["out_dir"] = str(out_dir)
    return report


def format_report(report: dict[str, Any]) -> str:
    metric = report["paper_results"].get("metric", "test_accuracy")
    values = report["paper_results"].get("values") or {}
    lines = [f"# {report['title']}", "", f"Preset `{report['preset']}`, scale `{report['scale']}`, "
             f"seeds {report['seeds']}. Paper: {report['paper']}.", "",
             f"| run | ours: {metric} (mean ± std) | paper | angle to BP (°) | status |",
             "|---|---|---|---|---|"]
    for label, st in report["stats"].items():
        m, s = st.get(metric, (None, None))
        ang = st.get("grad_angle", (None, None))[0]
        ours = "–" if m is None else f"{m:.2f} ± {s:.2f}"
        paper = values.get(label)
        lines.append(f"| {label} | {ours} | {'–' if paper is None else paper} | "
                     f"{'–' if ang is None else f'{ang:.1f}'} | {', '.join(report['status'][label])} |")
    for label, paper in values.items():
        if label not in report["stats"] and paper is not None:
            lines.append(f"| {label} | not run (rule not in this preset) | {paper} | – | – |")
    note = report["paper_results"].get("note")
    if note:
        lines += ["", f"Paper values: {note}"]
    if report["checks"]:
        lines += ["", "Checks:"]
        lines += [f"- [{'pass' if c['passed'] else 'FAIL'}] {c['text']}" for c in report["checks"]]
    return "\n".join(lines)


__all__ = ["Preset", "evaluate_checks", "format_report", "get_preset", "list_presets", "run_preset"]
