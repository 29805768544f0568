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

from ...core.hooks import Plot, register_plot
from ...errors import UserError


def load_records(run_dir: Path) -> list[dict]:
    """The run's metric records; a torn or damaged line (a run killed while writing) is skipped."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise UserError(f"{run_dir} has no metrics.jsonl; give the directory of a ghost-unit training run")
    records = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def _check_ghost_run(run_dir: Path) -> None:
    """A run of another rule has none of these diagnostics: one line, not empty panels."""
    import yaml

    name: object = None
    summary = run_dir / "summary.json"  # the rule that trained (fit() with a rule object keeps it here)
    if summary.is_file():
        try:
            name = json.loads(summary.read_text()).get("rule")
        except (ValueError, OSError, AttributeError):
            name = None
    path = run_dir / "config.yaml"
    if name is None and path.is_file():
        try:
            cfg = yaml.safe_load(path.read_text())
        except (yaml.YAMLError, UnicodeDecodeError, OSError):
            raise UserError(f"{str(path)!r} cannot be read as YAML; give the directory of a ghost-unit run") from None
        rule = (cfg.get("rule") or {}) if isinstance(cfg, dict) else {}
        name = rule.get("name") if isinstance(rule, dict) else rule
    if name is None:
        return
    if not (isinstance(name, str) and name.startswith("ghost")):
        raise UserError(f"{str(run_dir)!r} is a run of rule {name!r}; ghost-diagnostics draws the diagnostics "
                        f"of the ghost-unit rules (ghost-ma, ghost-ma-prime, ghost-mb)")


def plot_ghost_diagnostics(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Draw Figs 3-5 of a ghost-unit run into one PNG; returns its path."""
    from ..._io import pyplot

    plt = pyplot()

    from ...core.image_out import image_path, save_figure
    from ...core.state_files import load_tensor_dict

    run_dir = Path(run_dir)
    _check_ghost_run(run_dir)
    path = image_path(out, run_dir, "ghost_diagnostics.png")  # checked before anything is drawn
    records = [r for r in load_records(run_dir) if r.get("kind", "epoch") == "epoch"
               and isinstance(r.get("epoch"), (int, float))]
    state_path = run_dir / "rule_state.pt"
    state = load_tensor_dict(state_path, "rule state") if state_path.is_file() else {}
    for phase in ("free", "clamped"):
        trace = state.get(f"diag.trace_{phase}")
        if trace is not None and trace.ndim != 2:
            raise UserError(f"rule state {str(state_path)!r}: diag.trace_{phase} has shape {tuple(trace.shape)}, "
                            f"not (steps, hidden layers); the file is damaged or from another run")
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
    if state:
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
    try:
        save_figure(fig, path, dpi=110)
    finally:
        plt.close(fig)
    return path


register_plot(Plot("ghost-diagnostics", "plot a ghost-unit run's Figs 3-5 diagnostics", plot_ghost_diagnostics,
                   out_help="PNG path (default: RUN_DIR/ghost_diagnostics.png)"))
