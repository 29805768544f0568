"""Scaffolding shared by the benchmark scripts: MNIST with a random fallback, round-robin timing."""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

import bioplausible as bp


def load_mnist(n: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    """MNIST's flattened training set, or ``n`` random images when it cannot be loaded (reported)."""
    try:
        data = bp.load_dataset("mnist", flatten=True)
        return data.train.x.contiguous(), data.train.y.long(), "real"
    except Exception as exc:  # noqa: BLE001 - any failure falls back to random data, reported
        gen = torch.Generator().manual_seed(0)
        return (torch.rand(n, 784, generator=gen), torch.randint(0, 10, (n,), generator=gen),
                f"random ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})")


def round_robin(names: Sequence[str], time_one: Callable[[str, bool], float], reps: int,
                baseline: str = "bp", limits: dict[str, float] | None = None) -> dict[str, dict[str, Any]]:
    """Time every contender once per repetition, in turn, after one warm-up pass each.

    ``time_one(name, warmup)`` returns seconds. Rows hold the median, every repetition, the ratio
    of the median to ``baseline``'s and, where ``limits`` names one, whether the ratio is within it.
    """
    for name in names:
        time_one(name, True)
    times: dict[str, list[float]] = {name: [] for name in names}
    for rep in range(reps):
        for name in names:
            times[name].append(time_one(name, False))
        print(f"rep {rep + 1}/{reps}: " + ", ".join(f"{n} {times[n][-1]:.2f}s" for n in names), flush=True)
    base = statistics.median(times[baseline])
    rows = {}
    for name in names:
        med = statistics.median(times[name])
        limit = (limits or {}).get(name)
        rows[name] = {"median_s": med, "times_s": times[name], "ratio": med / base, "limit": limit,
                      "ok": (med / base <= limit) if limit else None}
    return rows


def write_results(out: Path, stem: str, result: dict[str, Any], md: str) -> None:
    """``OUT/STEM.json`` (the numbers) and ``OUT/STEM.md`` (the table), and the table on stdout."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2))
    (out / f"{stem}.md").write_text(md + "\n")
    print(md)

