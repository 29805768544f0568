"""Shared figure conventions: one colour per rule in every figure, legends beside the axes,
and PNG (200 dpi), PDF or SVG output."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import UserError

FORMATS = ("png", "pdf", "svg")

# 24 distinguishable colours (tab10, then the darker/lighter tab20 partners, then extras)
_PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
            "#bcbd22", "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94",
            "#f7b6d2", "#c7c7c7", "#dbdb8d", "#9edae5", "#393b79", "#637939", "#8c6d31", "#843c39"]
_ORDER = ["bp", "fa", "dfa", "kp", "wm", "np", "usf", "brsf", "frsf", "sal", "ar", "bfa", "bdfa",
          "ghost-ma", "ghost-ma-prime", "ghost-mb", "np-dfa", "sg", "sg-dfa", "matched", "bp-noise",
          "fa-noise", "matched-noise", "dae"]


def check_format(fmt: str) -> str:
    fmt = str(fmt).lower().lstrip(".")
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt!r}: use one of {', '.join(FORMATS)}")
    return fmt


def rule_color(label: str) -> str:
    """The colour of a rule (a run label ``fa[optimizer.lr=0.1]`` or ``fa (seed 0)`` takes its
    rule's): the same in every figure and every report."""
    rule = str(label).split("[", 1)[0].split(" ", 1)[0].strip().lower()
    if rule in _ORDER:
        return _PALETTE[_ORDER.index(rule)]
    import zlib

    return _PALETTE[zlib.crc32(rule.encode()) % len(_PALETTE)]  # an unknown name: stable too


def legend_outside(ax: Any) -> None:
    """The legend to the right of the axes, never over the data."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, frameon=False)


def save(fig: Any, axes: list[Any], path: str | Path, title: str = "") -> Path:
    """Grid, legends outside, title; written in the format of ``path``'s suffix (PNG at 200 dpi).

    Panels side by side share one legend, right of the last panel; a panel whose lines are not
    all in it gets its own legend below it."""
    import matplotlib.pyplot as plt

    with_lines = [ax for ax in axes if ax.get_legend_handles_labels()[0]]
    shown = set(with_lines[-1].get_legend_handles_labels()[1]) if with_lines else set()
    for ax in axes:
        ax.grid(alpha=0.3)
        if with_lines and ax is with_lines[-1]:
            legend_outside(ax)
        elif ax in with_lines and not set(ax.get_legend_handles_labels()[1]) <= shown:
            ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.15), frameon=False, ncol=2)
    if title:
        fig.suptitle(title)
    out = Path(path)
    check_format(out.suffix)
    fig.savefig(out, dpi=200, bbox_inches="tight")
    plt.close(fig)
    return out
