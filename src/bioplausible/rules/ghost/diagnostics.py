"""Plots of the ghost-unit diagnostics of a run directory (the paper's Figs 3-5).

* Fig. 3: ``‖V^f_h − W_h‖/‖W_h‖`` and ``‖V^b_h − W^b_h‖/‖W^b_h‖`` per epoch (MA; logged as
  ``rule/vf_error/h``, ``rule/vb_error/h``);
* Fig. 4: the cancellation residual ``‖t_h − c_h‖`` (batch mean) against the Euler step in the
  free and the weakly-clamped phase, for the last diagnosed batch (rule state
  ``diag.trace_free`` / ``diag.trace_clamped`` in ``rule_state.pt``);
* Fig. 5: the relative error ``‖ΔW − (−rate ∂C̃/∂W)‖/‖rate ∂C̃/∂W‖`` of a batch's net update
  per epoch (``rule/update_rel_error/l``) and its angle (``rule/update_angle/l``).

``bioplausible ghost-diagnostics RUN_DIR`` writes ``ghost_diagnostics.png`` into the run dir.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ...core.hooks import Plot, register_plot
from ...errors import UserError


def load_records(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise UserError(f"{run_dir} has no metrics.jsonl; give the directory of a ghost-unit training run")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_ghost_diagnostics(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Draw Figs 3-5 of a ghost-unit run into one PNG; returns its path."""
    from ..._io import pyplot

    plt = pyplot()

    run_dir = Path(run_dir)
    records = [r for r in load_records(run_dir) if r.get("kind", "epoch") == "epoch" and "epoch" in r]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    series: dict[str, list[tuple[int, float]]] = {}
    for r in records:
        for k, v in r.items():
            if k.startswith("rule/") and isinstance(v, (int, float)):
                series.setdefault(k[5:], []).append((r["epoch"], v))
    drew = [False, False, False]
    for key, pts in sorted(series.items()):
        if key.startswith(("vf_error/", "vb_error/")):
            ax, i = axes[0], 0
        elif key.startswith("update_rel_error/"):
            ax, i = axes[2], 2
        else:
            continue
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=key)
        drew[i] = True
    state_path = run_dir / "rule_state.pt"
    if state_path.is_file():
        state = torch.load(state_path, weights_only=True)
        steps = 0
        for phase in ("free", "clamped"):
            trace = state.get(f"diag.trace_{phase}")
            if trace is None or not trace.numel() or float(trace.abs().max()) == 0.0:
                continue
            for h in range(trace.shape[1]):
                xs = range(steps, steps + trace.shape[0])
                axes[1].plot(list(xs), trace[:, h].tolist(), label=f"{phase}, hidden layer {h + 1}")
            steps += trace.shape[0]
            drew[1] = True
    titles = ["Fig. 3: ‖V − W‖/‖W‖ per epoch", "Fig. 4: ‖t − c‖ per Euler step (last diagnosed batch)",
              "Fig. 5: relative error of ΔW vs −rate·∂C/∂W"]
    for ax, title, ok in zip(axes, titles, drew):
        ax.set_title(title, fontsize=9)
        if ok:
            ax.legend(fontsize=7)
            ax.set_yscale("log")
        else:
            ax.text(0.5, 0.5, "not logged in this run", ha="center", va="center", transform=ax.transAxes)
    axes[0].set_xlabel("epoch")
    axes[1].set_xlabel("Euler step (free, then weakly clamped)")
    axes[2].set_xlabel("epoch")
    fig.tight_layout()
    path = Path(out) if out else run_dir / "ghost_diagnostics.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


register_plot(Plot("ghost-diagnostics", "plot a ghost-unit run's Figs 3-5 diagnostics", plot_ghost_diagnostics,
                   out_help="PNG path (default: RUN_DIR/ghost_diagnostics.png)"))
