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

Check types: ``within`` (|a − b| ≤ max), ``max_gap`` (run a at most ``max`` below run b, i.e.
m_b − m_a ≤ max), ``min_value`` (a run's metric at least ``min``), ``max_value`` (at most ``max``),
``within_paper`` (|ours − paper| ≤ ``tol``) and ``worst`` (every run in ``runs`` is worse than
every other run of the preset, by more than ``margin``, default 0).

Metrics: those of the last epoch's record (``test_accuracy``, ``test_loss``, ...), the best test
accuracy, the mean probe angle ``grad_angle``, and the feedback's ``relative_error_top`` /
``relative_error_mean`` (‖W − B‖_F/‖W‖_F of the top pair / the mean over pairs after the last
epoch, :func:`bioplausible.core.probe.feedback_errors`).

Direction: losses (``test_loss``, ``train_loss``), ``grad_angle`` and ``relative_error_*`` are lower-is-better
(:func:`lower_is_better`); ``worst`` uses it (a check may override it with
``lower_is_better: true|false``). ``max_gap``, ``within`` and the min/max bounds are plain
arithmetic: "FA's loss is at least BP's" is ``{type: max_gap, metric: test_loss, runs: [fa, bp],
max: 0}`` (bp − fa ≤ 0). "ours − paper" in reports is ours minus the paper's value either way.

``bioplausible reproduce NAME --scale quick`` trains every run with every seed and prints the
mean ± std beside the paper's values.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from ..engine.config import TrainConfig, _merge, yaml_load
from ..errors import ConfigError, UnknownNameError, UserError

_METRICS = {"test_accuracy", "best_test_accuracy", "train_accuracy", "test_loss", "train_loss",
            "val_accuracy", "test_auc", "grad_angle", "relative_error_top", "relative_error_mean"}


def lower_is_better(metric: str) -> bool:
    """Whether a smaller value of ``metric`` is the better one (losses, angles, feedback errors)."""
    return metric.endswith("_loss") or metric == "grad_angle" or metric.startswith("relative_error")


def metric_digits(metric: str) -> int:
    """Decimals to print ``metric`` with: 4 for the feedback's relative errors (fractions), else 2."""
    return 4 if metric.startswith("relative_error") else 2


def check_metrics(preset: Preset) -> list[str]:
    """The metrics the preset's checks compare (the paper metric when a check names none)."""
    default = preset.paper_results.get("metric", "test_accuracy")
    return sorted({str(c.get("metric", default)) for c in preset.checks})


def metric_label(metric: str) -> str:
    """``metric`` as a table header, saying so when lower is better."""
    return f"{metric} (lower is better)" if lower_is_better(metric) else metric


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
    folder = resources.files(__package__)
    return sorted((f for f in folder.iterdir() if f.name.endswith(".yaml")), key=lambda f: f.name)


_CHECK_FIELDS = {"max_gap": ("runs", "max"), "within": ("runs", "max"), "min_value": ("run", "min"),
                 "max_value": ("run", "max"), "within_paper": ("run", "tol"), "worst": ("runs", "margin")}


def _parse(text: str, source: str) -> Preset:
    """A preset from YAML text; every malformed part is a ConfigError naming it, before any run."""
    import yaml

    try:
        raw = yaml_load(text) or {}
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0] if str(exc) else "invalid YAML"
        raise ConfigError(f"preset {source} is not valid YAML: {first}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"preset {source} must be a mapping with name, config and runs")
    required = ("name", "config", "runs")
    missing = [k for k in required if k not in raw]
    if missing:
        raise ConfigError(f"preset {source} lacks {', '.join(missing)}")
    known = {"name", "title", "paper", "config", "runs", "seeds", "scales", "paper_results", "checks"}
    extra = sorted(set(raw) - known)
    if extra:
        raise ConfigError(f"preset {source} has unknown key {extra[0]!r}")
    for key, kind in (("config", dict), ("runs", dict), ("scales", dict), ("paper_results", dict),
                      ("checks", list), ("seeds", list)):
        if raw.get(key) is not None and not isinstance(raw[key], kind):
            raise ConfigError(f"preset {source}: {key} must be a {'mapping' if kind is dict else 'list'}, "
                              f"got {raw[key]!r}")
    if not raw["runs"]:
        raise ConfigError(f"preset {source}: runs is empty")
    runs = {}
    for k, v in raw["runs"].items():
        if not isinstance(v, (dict, str)):
            raise ConfigError(f"preset {source}: run {k!r} must be a rule name or a mapping with name:")
        runs[str(k)] = dict(v) if isinstance(v, dict) else {"name": v}
    for label, rule in runs.items():
        if not isinstance(rule.get("name"), str):
            raise ConfigError(f"preset {source}: run {label!r} needs a rule name")
        if rule.get("config") is not None and not isinstance(rule["config"], dict):
            raise ConfigError(f"preset {source}: run {label!r}: config must be a mapping")
    from .jobs import check_seeds

    seeds = check_seeds(raw.get("seeds", [0]), f"preset {source}: seeds")
    scales = dict(raw.get("scales") or {"full": {}})
    for scale, over in scales.items():
        if over is not None and not isinstance(over, dict):
            raise ConfigError(f"preset {source}: scale {scale!r} must be a mapping of overrides")
        if over and "seeds" in over:
            check_seeds(over["seeds"] if isinstance(over["seeds"], list) else [over["seeds"]],
                        f"preset {source}: scales.{scale}.seeds")
    for i, check in enumerate(raw.get("checks") or []):
        if not isinstance(check, dict) or check.get("type") not in _CHECK_FIELDS:
            kind = check.get("type") if isinstance(check, dict) else check
            raise ConfigError(f"preset {source}: unknown check type {kind!r}; "
                              f"use {', '.join(_CHECK_FIELDS)}")
        run_key, bound = _CHECK_FIELDS[check["type"]]
        named = check.get(run_key)
        named = named if run_key == "runs" else [named]
        worst = check["type"] == "worst"
        count_ok = (1 <= len(named) < len(runs)) if worst and isinstance(named, list) else (
            isinstance(named, list) and len(named) == (2 if run_key == "runs" else 1))
        if not (isinstance(named, list) and count_ok and all(str(r) in runs for r in named)):
            want = ("some but not all runs" if worst else "two runs" if run_key == "runs" else "a run")
            raise ConfigError(f"preset {source}: check {i + 1} ({check['type']}): {run_key} must name "
                              f"{want} of this preset, got {named!r}")
        if worst and not isinstance(check.get("lower_is_better", True), bool):
            raise ConfigError(f"preset {source}: check {i + 1} (worst): lower_is_better must be true or false")
        value = check.get(bound, 0.0 if worst else None)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"preset {source}: check {i + 1} ({check['type']}) needs a number {bound}:")
        only = check.get("scales")
        if only is not None and not (isinstance(only, list) and only and all(str(x) in (raw.get("scales") or
                                                                                  {"full": {}}) for x in only)):
            raise ConfigError(f"preset {source}: check {i + 1} ({check['type']}): scales must list scales of "
                              f"this preset, got {only!r}")
        if "metric" in check and check["metric"] not in _METRICS:
            raise ConfigError(f"preset {source}: check {i + 1}: unknown metric {check['metric']!r}; "
                              f"use {', '.join(sorted(_METRICS))}")
    metric = (raw.get("paper_results") or {}).get("metric")
    if metric is not None and metric not in _METRICS:
        raise ConfigError(f"preset {source}: paper_results.metric {metric!r} is not one of "
                          f"{', '.join(sorted(_METRICS))}")
    return Preset(name=str(raw["name"]), title=str(raw.get("title", raw["name"])),
                  paper=str(raw.get("paper", "")), config=raw["config"], runs=runs, seeds=seeds,
                  scales=scales, paper_results=dict(raw.get("paper_results") or {}),
                  checks=list(raw.get("checks") or []), source=source)


_CACHE: dict[str, Any] = {}


def _all() -> dict[str, Preset]:
    """The built-in presets, parsed once per process (again only when a file changed)."""
    files = _preset_files()
    texts = [(f.name, f.read_text()) for f in files]  # reading 40 small files is cheap; parsing is not
    key = json.dumps(texts)
    if _CACHE.get("key") != key:
        out: dict[str, Preset] = {}
        for name, text in texts:
            p = _parse(text, name)
            out[p.name] = p
        _CACHE.clear()
        _CACHE.update(key=key, presets=out)
    return _CACHE["presets"]


def list_presets() -> list[str]:
    return sorted(_all())


def get_preset(name: str) -> Preset:
    """A built-in preset by name, or a preset YAML file by path (``my_experiment.yaml``)."""
    if str(name).endswith((".yaml", ".yml")):
        path = Path(name)
        if not path.is_file():
            raise UnknownNameError(f"preset file {str(path)!r} does not exist")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise ConfigError(f"preset file {str(path)!r} is not a text (YAML) file") from None
        return _parse(text, str(path))
    presets = _all()
    if name not in presets:
        import difflib

        close = difflib.get_close_matches(name, list(presets), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise UnknownNameError(f"unknown preset {name!r}.{hint} See `bioplausible list presets`")
    return copy.deepcopy(presets[name])  # the cached one stays as parsed


def evaluate_checks(preset: Preset, stats: dict[str, dict[str, Any]],
                    scale: str | None = None) -> list[dict[str, Any]]:
    """Evaluate the preset's checks on per-run statistics ``{label: {metric: (mean, std[, n])}}``.

    A check with ``scales: [...]`` applies only at those scales (e.g. an accuracy the paper reaches
    after many epochs, checked at ``full`` but not after a quick run's one epoch); at ``scale``
    outside its list it is left out.
    """
    results = []
    for check in preset.checks:
        if scale is not None and check.get("scales") is not None and scale not in check["scales"]:
            continue
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
                text = f"{metric}: {b} − {a} = {gap:+.{metric_digits(metric)}f} ({bound} {check['max']})"
        elif kind in ("min_value", "max_value"):
            label = check["run"]
            m = stats.get(label, {}).get(metric, (None, None))[0]
            if m is not None:
                low = kind == "min_value"
                ok = m >= float(check["min"]) if low else m <= float(check["max"])
                text = (f"{metric} of {label} = {m:.{metric_digits(metric)}f} "
                        f"(at {'least' if low else 'most'} {check['min' if low else 'max']})")
        elif kind == "worst":
            ok, text = _worst(check, metric, stats)
        elif kind == "within_paper":
            label = check["run"]
            m = stats.get(label, {}).get(metric, (None, None))[0]
            ref = (preset.paper_results.get("values") or {}).get(label)
            if m is not None and ref is not None:
                ok = abs(m - ref) <= float(check["tol"])
                text = f"{metric} of {label} = {m:.{metric_digits(metric)}f} vs paper {ref} (within {check['tol']})"
        results.append({**check, "passed": bool(ok), "text": text or "not measured"})
    return results


def _worst(check: dict[str, Any], metric: str, stats: dict[str, dict[str, Any]]) -> tuple[bool, str]:
    """Every run in ``check['runs']`` worse than every other measured run by more than the margin."""
    lower = bool(check.get("lower_is_better", lower_is_better(metric)))
    margin = float(check.get("margin", 0.0))
    values = {label: st.get(metric, (None, None))[0] for label, st in stats.items()}
    named = [str(r) for r in check["runs"]]
    if any(values.get(r) is None for r in named):
        return False, ""
    others = {k: v for k, v in values.items() if k not in named and v is not None}
    if not others:
        return False, ""
    if lower:  # worst = highest: the lowest named value must exceed the highest other one
        best_named = min(named, key=lambda r: values[r])
        worst_other = max(others, key=lambda r: others[r])
        gap = values[best_named] - others[worst_other]
    else:
        best_named = max(named, key=lambda r: values[r])
        worst_other = min(others, key=lambda r: others[r])
        gap = others[worst_other] - values[best_named]
    direction = "lower" if lower else "higher"
    text = (f"{metric} ({direction} is better): {', '.join(named)} worst of all {len(others) + len(named)} runs — "
            f"the best of them, {best_named} = {values[best_named]:.2f}, vs the worst other, {worst_other} = "
            f"{others[worst_other]:.2f} (gap {gap:+.2f}, more than {margin:g} needed)")
    return gap > margin, text


def run_preset(name: str, scale: str = "quick", out: str | Path | None = None,
               progress: bool = True, seeds: list[int] | None = None, workers: int = 1,
               overrides: list[str] | None = None) -> dict[str, Any]:
    """Train every run of preset ``name`` at ``scale`` with every seed; write and return a report.

    ``overrides``: ``KEY=VALUE`` (or ``RULE:KEY=VALUE``) settings applied to every run, last
    (``reproduce --epochs 3 --set dataset.subset=5000``).

    ``workers > 1`` runs the jobs in that many worker processes (one torch thread each).

    ``plan`` + ``run_job`` per job + ``aggregate`` + the report; every job is checked (configs,
    rules, model, data, ``out``) before the first one trains.
    """
    from .jobs import aggregate, check_jobs, plan, run_jobs, statuses

    preset = get_preset(name)
    out_dir = Path(out or Path("runs") / f"reproduce-{preset.name}-{scale}-{time.strftime('%Y%m%d-%H%M%S')}")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise UserError(f"output directory {str(out_dir)!r} already exists; choose another --out")
    jobs = plan(preset, scale, seeds=seeds, out=out_dir, overrides=overrides)
    check_jobs(jobs)
    summaries = run_jobs(jobs, workers=workers, progress=progress)
    metrics = sorted({preset.paper_results.get("metric", "test_accuracy"), "test_accuracy",
                      "best_test_accuracy", "grad_angle", *check_metrics(preset)})
    stats = aggregate(summaries, metrics)
    checks = evaluate_checks(preset, stats, scale)
    config, _ = preset.resolved(scale)
    report = {"preset": preset.name, "title": preset.title, "paper": preset.paper, "scale": scale,
              "seeds": sorted({j.seed for j in jobs}, key=[j.seed for j in jobs].index),
              "config": config.updated({}, overrides).to_dict() if overrides else config.to_dict(),
              "overrides": list(overrides or []), "stats": stats, "status": statuses(summaries),
              "paper_results": preset.paper_results, "checks": checks,
              "runs": [{"label": j.label, "dir": j.run_dir, "seed": j.seed} for j in jobs]}
    (out_dir / "reproduce.json").write_text(json.dumps(report, indent=2, default=str))
    (out_dir / "reproduce.md").write_text(format_report(report) + "\n")
    from .report import load_run, plot_curves

    plot_curves([load_run(j.run_dir, f"{j.label} (seed {j.seed})") for j in jobs],
                out_dir / "curves.png", preset.title)
    report["out_dir"] = str(out_dir)
    return report


def format_report(report: dict[str, Any]) -> str:
    metric = report["paper_results"].get("metric", "test_accuracy")
    values = report["paper_results"].get("values") or {}
    lines = [f"# {report['title']}", "", f"Preset `{report['preset']}`, scale `{report['scale']}`, "
             f"seeds {report['seeds']}. Paper: {report['paper']}.", "",
             f"| run | ours: {metric_label(metric)}, mean ± std | paper | ours − paper | angle to BP (°) | status |",
             "|---|---|---|---|---|---|"]
    for label, st in report["stats"].items():
        m, s = tuple(st.get(metric, (None, None)))[:2]
        ang = next(iter(st.get("grad_angle", (None, None))))
        d = metric_digits(metric)
        ours = "–" if m is None else f"{m:.{d}f} ± {s:.{d}f}"
        paper = values.get(label)
        diff = "–" if m is None or paper is None else f"{m - paper:+.{d}f}"
        lines.append(f"| {label} | {ours} | {'–' if paper is None else paper} | {diff} | "
                     f"{'–' if ang is None else f'{ang:.1f}'} | {', '.join(report['status'][label])} |")
    for label, paper in values.items():
        if label not in report["stats"] and paper is not None:
            lines.append(f"| {label} | not run (rule not in this preset) | {paper} | – | – | – |")
    note = report["paper_results"].get("note")
    if note:
        lines += ["", f"Paper values: {note}"]
    if report["checks"]:
        lines += ["", "Checks:"]
        lines += [f"- [{'pass' if c['passed'] else 'FAIL'}] {c['text']}" for c in report["checks"]]
    return "\n".join(lines)


__all__ = ["Preset", "check_metrics", "evaluate_checks", "format_report", "get_preset", "list_presets",
           "lower_is_better", "metric_digits", "metric_label", "run_preset"]
