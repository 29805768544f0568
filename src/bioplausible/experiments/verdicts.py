"""Verdicts against a paper's absolute numbers, and checks that say nothing because every run is at chance.

A preset's ``paper_results`` gives the paper's number per run (``values``) and may give a
tolerance per run (``tolerance``: the paper's seed-to-seed spread where it reports one) and a
``default_tolerance`` for the runs without one (:data:`DEFAULT_TOLERANCE` when absent: half a
point of accuracy). A check ``{type: paper}`` (every run with a paper value) or
``{type: paper, run: X}`` compares ours with the paper at full scale only::

    reproduced (ours − paper = +0.12, tolerance 0.5)
    not reproduced (ours − paper = −1.23, tolerance 0.5)
    ranking only (paper normalisation unknown; ours 512.3, paper 515.3)
    not evaluated at this scale (the paper check applies at full scale only)

``ranking_only: true`` in ``paper_results`` says the paper's numbers cannot be compared in size
(their normalisation is not stated): the paper check then gives ``ranking only`` and the
preset's ranking checks carry the comparison.

A relative check (``max_gap``, ``within``, ``worst``) on an accuracy where every compared run is
within :data:`CHANCE_MARGIN` points of chance (100 / number of classes) is ``not meaningful``:
at chance, "A is not below B" holds by accident. An absolute bound (``min_value``) at chance
is a real failure and stays one.
"""

from __future__ import annotations

import math
from typing import Any

DEFAULT_TOLERANCE = 0.5
CHANCE_MARGIN = 2.0
PAPER_SCALE = "full"

# classes of the built-in single-label datasets (chestmnist is multi-label: no chance level here)
_CLASSES = {"mnist": 10, "fashion-mnist": 10, "fashion_mnist": 10, "cifar10": 10, "svhn": 10,
            "stl10": 10, "pathmnist": 9}
_ACCURACY = {"test_accuracy", "best_test_accuracy", "train_accuracy", "val_accuracy"}

# a check result's "outcome": pass / fail count in the tallies; the others are neither
PASS, FAIL = "pass", "FAIL"
NOT_EVALUATED, NOT_MEANINGFUL, RANKING_ONLY = "not evaluated", "not meaningful", "ranking only"


def chance_level(dataset: dict[str, Any] | None) -> float | None:
    """Chance accuracy (%) of a single-label classification dataset config, else None."""
    if not isinstance(dataset, dict) or dataset.get("task") not in (None, "classification"):
        return None
    name = str(dataset.get("name", "")).lower()
    if name == "cifar100":
        return 100.0 / (20 if dataset.get("label_mode") == "coarse" else 100)
    k = _CLASSES.get(name)
    return None if k is None else 100.0 / k


def at_chance(values: list[float | None], chance: float | None, margin: float = CHANCE_MARGIN) -> bool:
    """Whether every value is measured and within ``margin`` points of ``chance``."""
    if chance is None or not values or any(v is None for v in values):
        return False
    return all(abs(float(v) - chance) <= margin for v in values)


def tolerance_for(paper_results: dict[str, Any], label: str, check: dict[str, Any] | None = None) -> float:
    """The check's ``tol``, else the paper's spread for ``label``, else the preset's default (0.5)."""
    if check and check.get("tol") is not None:
        return float(check["tol"])
    per_run = paper_results.get("tolerance") or {}
    if per_run.get(label) is not None:
        return float(per_run[label])
    return float(paper_results.get("default_tolerance", DEFAULT_TOLERANCE))


def paper_verdict(ours: float | None, paper: float | None, tol: float, ranking_only: bool = False,
                  digits: int = 2) -> tuple[str, str]:
    """``(outcome, text)`` of ours against the paper's number with tolerance ``tol``."""
    if paper is None:
        return NOT_EVALUATED, "the paper gives no number for this run"
    if ours is None or (isinstance(ours, float) and math.isnan(ours)):
        return FAIL, f"not measured (no completed seed; paper {paper:.{digits}f})"
    if ranking_only:
        return RANKING_ONLY, (f"ranking only (paper normalisation unknown; ours {ours:.{digits}f}, "
                              f"paper {paper:.{digits}f})")
    diff = ours - paper
    sign = "−" if diff < 0 else "+"
    body = f"ours − paper = {sign}{abs(diff):.{digits}f}, tolerance {tol:g}"
    if abs(diff) <= tol + 1e-12:
        return PASS, f"reproduced ({body})"
    return FAIL, f"not reproduced ({body})"


def evaluate_paper_check(check: dict[str, Any], paper_results: dict[str, Any],
                         stats: dict[str, dict[str, Any]], scale: str | None,
                         digits: int = 2) -> list[dict[str, Any]]:
    """One result per run the ``paper`` check covers (``run:`` or every run with a paper value)."""
    metric = check.get("metric", paper_results.get("metric", "test_accuracy"))
    values = paper_results.get("values") or {}
    labels = [str(check["run"])] if check.get("run") is not None else [k for k, v in values.items() if v is not None]
    out = []
    for label in labels:
        ref = values.get(label)
        tol = tolerance_for(paper_results, label, check)
        ours = (stats.get(label, {}).get(metric) or (None,))[0]
        if scale not in (None, PAPER_SCALE):
            outcome = NOT_EVALUATED
            text = (f"{metric} of {label} vs paper {ref}: not evaluated at this scale "
                    f"(the paper check applies at {PAPER_SCALE} scale only)")
        else:
            outcome, verdict = paper_verdict(ours, None if ref is None else float(ref), tol,
                                             bool(paper_results.get("ranking_only")), digits)
            text = f"{metric} of {label} vs paper: {verdict}"
        out.append({**check, "run": label, "metric": metric, "paper": ref, "tol": tol, "ours": ours,
                    "outcome": outcome, "passed": outcome == PASS, "text": text})
    return out


def mark(result: dict[str, Any]) -> str:
    """The bracketed word of a check result in a report: pass, FAIL, or why it was not counted."""
    return result.get("outcome") or (PASS if result.get("passed") else FAIL)


def counted(result: dict[str, Any]) -> bool:
    """Whether a check result counts in the pass / fail tallies."""
    return mark(result) in (PASS, FAIL)


__all__ = ["CHANCE_MARGIN", "DEFAULT_TOLERANCE", "PAPER_SCALE", "at_chance", "chance_level", "counted",
           "evaluate_paper_check", "mark", "paper_verdict", "tolerance_for"]
