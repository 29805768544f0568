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
``within_paper`` (|ours − paper| ≤ ``tol``), ``worst`` (every run in ``runs`` is worse than
every other run of the preset, by more than ``margin``, default 0), ``best`` (every run in ``runs``
is better than every other run, by more than ``margin``), and ``paper`` (ours against
the paper's number, with the paper's spread or a default tolerance, at full scale only; its
verdicts and the "not meaningful" outcome of relative checks at chance: :mod:`bioplausible.experiments.verdicts`).

Metrics: those of the last epoch's record (``test_accuracy``, ``test_loss``, ...), the best test
accuracy, the mean hidden-layer angle to BP ``grad_angle`` (:mod:`bioplausible.core.angles`), and the feedback's ``relative_error_top`` /
``relative_error_mean`` (‖W − B‖_F/‖W‖_F of the top pair / the mean over pairs after the last
epoch, :func:`bioplausible.core.probe.feedback_errors`).

Direction: losses (``test_loss``, ``train_loss``), ``grad_angle`` and ``relative_error_*`` are lower-is-better
(the metric table, :mod:`bioplausible.core.metrics`); ``worst`` and ``best`` use it (a check may override it with
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
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from .._io import yaml_load
from ..core.metrics import METRICS, is_metric, lower_is_better, metric_digits
from ..engine.config import TrainConfig, _merge
from ..errors import ConfigError, UnknownNameError
from .seeds import check_seeds

#: The only scale whose runs are as long as the papers' (quick runs fewer epochs, often on a subset).
PAPER_SCALE = "full"
NOT_COMPARABLE = "not comparable at quick scale"


def comparable_to_paper(scale: str | None) -> bool:
    """Whether ``ours − paper`` means anything: only at the full (paper-length) scale."""
    return scale == PAPER_SCALE


def mean_std_text(mean: float | None, std: float | None, n: int | None, digits: int) -> str:
    """``"97.12 ± 0.08 (n=3)"``; one value is ``"70.71 (n=1)"`` (no spread to show)."""
    if mean is None:
        return "–"
    if n is not None and n <= 1:
        return f"{mean:.{digits}f} (n={n})"
    spread = f" ± {std:.{digits}f}" if std is not None else ""
    return f"{mean:.{digits}f}{spread}" + (f" (n={n})" if n is not None else "")


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
    from_file: bool = False  # read from a user's YAML file (not shipped): imports need trust_imports

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
                 "max_value": ("run", "max"), "within_paper": ("run", "tol"), "worst": ("runs", "margin"),
                 "best": ("runs", "margin")}


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
    seeds = check_seeds(raw.get("seeds", [0]), f"preset {source}: seeds")
    scales = dict(raw.get("scales") or {"full": {}})
    for scale, over in scales.items():
        if over is not None and not isinstance(over, dict):
            raise ConfigError(f"preset {source}: scale {scale!r} must be a mapping of overrides")
        if over and "seeds" in over:
            check_seeds(over["seeds"] if isinstance(over["seeds"], list) else [over["seeds"]],
                        f"preset {source}: scales.{scale}.seeds")
    _check_paper_results(raw.get("paper_results") or {}, runs, source)
    for i, check in enumerate(raw.get("checks") or []):
        if isinstance(check, dict) and check.get("type") == "paper":
            _check_paper_check(check, i, runs, raw.get("paper_results") or {}, source)
            continue
        if not isinstance(check, dict) or check.get("type") not in _CHECK_FIELDS:
            kind = check.get("type") if isinstance(check, dict) else check
            raise ConfigError(f"preset {source}: unknown check type {kind!r}; "
                              f"use {', '.join(_CHECK_FIELDS)}, paper")
        run_key, bound = _CHECK_FIELDS[check["type"]]
        named = check.get(run_key)
        named = named if run_key == "runs" else [named]
        worst = check["type"] in ("worst", "best")  # some runs ranked against all the others
        count_ok = (1 <= len(named) < len(runs)) if worst and isinstance(named, list) else (
            isinstance(named, list) and len(named) == (2 if run_key == "runs" else 1))
        if not (isinstance(named, list) and count_ok and all(str(r) in runs for r in named)):
            want = ("some but not all runs" if worst else "two runs" if run_key == "runs" else "a run")
            raise ConfigError(f"preset {source}: check {i + 1} ({check['type']}): {run_key} must name "
                              f"{want} of this preset, got {named!r}")
        if worst and not isinstance(check.get("lower_is_better", True), bool):
            raise ConfigError(f"preset {source}: check {i + 1} ({check['type']}): lower_is_better must be true "
                              f"or false")
        value = check.get(bound, 0.0 if worst else None)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"preset {source}: check {i + 1} ({check['type']}) needs a number {bound}:")
        only = check.get("scales")
        if only is not None and not (isinstance(only, list) and only and all(str(x) in (raw.get("scales") or
                                                                                  {"full": {}}) for x in only)):
            raise ConfigError(f"preset {source}: check {i + 1} ({check['type']}): scales must list scales of "
                              f"this preset, got {only!r}")
        if "metric" in check and not is_metric(check["metric"]):
            raise ConfigError(f"preset {source}: check {i + 1}: unknown metric {check['metric']!r}; "
                              f"use {', '.join(METRICS.names())}")
    metric = (raw.get("paper_results") or {}).get("metric")
    if metric is not None and not is_metric(metric):
        raise ConfigError(f"preset {source}: paper_results.metric {metric!r} is not one of "
                          f"{', '.join(METRICS.names())}")
    return Preset(name=str(raw["name"]), title=str(raw.get("title", raw["name"])),
                  paper=str(raw.get("paper", "")), config=raw["config"], runs=runs, seeds=seeds,
                  scales=scales, paper_results=dict(raw.get("paper_results") or {}),
                  checks=list(raw.get("checks") or []), source=source)


def _number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def _check_paper_results(results: dict[str, Any], runs: dict[str, Any], source: str) -> None:
    """``tolerance`` (per run, non-negative), ``default_tolerance`` and ``ranking_only`` are well formed."""
    tol = results.get("tolerance")
    if tol is not None:
        if not isinstance(tol, dict):
            raise ConfigError(f"preset {source}: paper_results.tolerance must map run labels to numbers")
        for label, value in tol.items():
            if not (_number(value) and value >= 0):
                raise ConfigError(f"preset {source}: paper_results.tolerance.{label} must be a number >= 0")
    if "default_tolerance" in results and not (_number(results["default_tolerance"])
                                               and results["default_tolerance"] >= 0):
        raise ConfigError(f"preset {source}: paper_results.default_tolerance must be a number >= 0")
    if not isinstance(results.get("ranking_only", False), bool):
        raise ConfigError(f"preset {source}: paper_results.ranking_only must be true or false")


def _check_paper_check(check: dict[str, Any], i: int, runs: dict[str, Any], results: dict[str, Any],
                       source: str) -> None:
    """A ``paper`` check names a run with a paper value (or none: every such run); ``tol`` >= 0."""
    values = results.get("values") or {}
    run = check.get("run")
    if run is not None and (str(run) not in runs or values.get(str(run)) is None):
        raise ConfigError(f"preset {source}: check {i + 1} (paper): run must name a run of this preset "
                          f"with a value in paper_results.values, got {run!r}")
    if run is None and not any(v is not None for k, v in values.items() if k in runs):
        raise ConfigError(f"preset {source}: check {i + 1} (paper): paper_results.values has no number "
                          f"for a run of this preset")
    if "tol" in check and not (_number(check["tol"]) and check["tol"] >= 0):
        raise ConfigError(f"preset {source}: check {i + 1} (paper) needs a number tol >= 0")
    if "scales" in check:
        raise ConfigError(f"preset {source}: check {i + 1} (paper) applies at full scale only; drop scales:")
    if "metric" in check and not is_metric(check["metric"]):
        raise ConfigError(f"preset {source}: check {i + 1}: unknown metric {check['metric']!r}; "
                          f"use {', '.join(METRICS.names())}")
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
    """Names of the registered presets (the YAML files of this package), sorted."""
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
        preset = _parse(text, str(path))
        preset.from_file = True
        return preset
    presets = _all()
    if name not in presets:
        import difflib

        close = difflib.get_close_matches(name, list(presets), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise UnknownNameError(f"unknown preset {name!r}.{hint} See `bioplausible list presets`")
    return copy.deepcopy(presets[name])  # the cached one stays as parsed


def check_runs(check: dict[str, Any]) -> list[str]:
    """The runs a check names: its ``runs`` pair or its ``run`` (none for the rankings over every
    run, ``worst`` / ``best``, and for a ``paper`` check over every run with a value)."""
    if check["type"] not in ("worst", "best") and check.get("runs") is not None:
        return [str(r) for r in check["runs"]]
    return [str(check["run"])] if check.get("run") is not None else []


def evaluate_checks(preset: Preset, stats: dict[str, dict[str, Any]],
                    scale: str | None = None) -> list[dict[str, Any]]:
    """Evaluate the preset's checks on per-run statistics ``{label: {metric: (mean, std[, n])}}``.

    A check with ``scales: [...]`` applies only at those scales (e.g. an accuracy the paper reaches
    after many epochs, checked at ``full`` but not after a quick run's one epoch); at ``scale``
    outside its list it is left out.
    """
    from .verdicts import NOT_MEANINGFUL, at_chance, chance_level, evaluate_paper_check

    results = []
    chance = chance_level(preset.config.get("dataset"))
    for check in preset.checks:
        if scale is not None and check.get("scales") is not None and scale not in check["scales"]:
            continue
        metric = check.get("metric", preset.paper_results.get("metric", "test_accuracy"))
        kind = check["type"]
        if kind == "paper":
            results += evaluate_paper_check(check, preset.paper_results, stats, scale, metric_digits(metric))
            continue
        if kind in ("max_gap", "within", "worst", "best") and metric.endswith("accuracy"):
            named = [str(r) for r in check["runs"]] if kind not in ("worst", "best") else list(stats)
            values = [(stats.get(r, {}).get(metric) or (None,))[0] for r in named]
            if at_chance(values, chance):
                shown = ", ".join(f"{r} {v:.2f}" for r, v in zip(named, values))
                results.append({**check, "passed": False, "outcome": NOT_MEANINGFUL,
                                "text": f"{kind} on {metric}: not meaningful, every compared run is at chance "
                                        f"({chance:.0f} %): {shown}"})
                continue
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
        elif kind in ("worst", "best"):
            ok, text = _ranked(check, metric, stats, best=kind == "best")
        elif kind == "within_paper":
            label = check["run"]
            m = stats.get(label, {}).get(metric, (None, None))[0]
            ref = (preset.paper_results.get("values") or {}).get(label)
            if m is not None and ref is not None:
                ok = abs(m - ref) <= float(check["tol"])
                text = f"{metric} of {label} = {m:.{metric_digits(metric)}f} vs paper {ref} (within {check['tol']})"
        results.append({**check, "passed": bool(ok), "text": text or "not measured"})
    return results


def _ranked(check: dict[str, Any], metric: str, stats: dict[str, dict[str, Any]],
            best: bool = False) -> tuple[bool, str]:
    """``worst``: every run in ``check['runs']`` worse than every other measured run by more than
    the margin; ``best``: every one of them better than every other."""
    lower = bool(check.get("lower_is_better", lower_is_better(metric)))
    margin = float(check.get("margin", 0.0))
    values = {label: st.get(metric, (None, None))[0] for label, st in stats.items()}
    named = [str(r) for r in check["runs"]]
    if any(values.get(r) is None for r in named):
        return False, ""
    others = {k: v for k, v in values.items() if k not in named and v is not None}
    if not others:
        return False, ""
    # the "better" direction of the metric; sign(a − b) > 0 when a is better than b
    better = (lambda a, b: b - a) if lower else (lambda a, b: a - b)
    if best:  # the worst named run must beat the best other one
        edge = min(named, key=lambda r: better(values[r], 0.0))
        rival = max(others, key=lambda r: better(others[r], 0.0))
        gap = better(values[edge], others[rival])
        what, edge_is, rival_is = "best", "the worst of them", "the best other"
    else:  # the best named run must be worse than the worst other one
        edge = max(named, key=lambda r: better(values[r], 0.0))
        rival = min(others, key=lambda r: better(others[r], 0.0))
        gap = better(others[rival], values[edge])
        what, edge_is, rival_is = "worst", "the best of them", "the worst other"
    direction = "lower" if lower else "higher"
    text = (f"{metric} ({direction} is better): {', '.join(named)} {what} of all {len(others) + len(named)} runs — "
            f"{edge_is}, {edge} = {values[edge]:.2f}, vs {rival_is}, {rival} = "
            f"{others[rival]:.2f} (gap {gap:+.2f}, more than {margin:g} needed)")
    return gap > margin, text


PLAN_FILE = "reproduce-plan.json"


__all__ = ["NOT_COMPARABLE", "PAPER_SCALE", "PLAN_FILE", "Preset", "check_metrics", "comparable_to_paper", "evaluate_checks",
           "get_preset", "list_presets", "lower_is_better", "mean_std_text", "metric_digits", "metric_label"]
