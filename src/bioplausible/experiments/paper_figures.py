"""Paper figures drawn from any run, compare, sweep or reproduce folder: ``bioplausible figure NAME FOLDER``.

* ``np-fig2`` — Fig. 2 of Lansdell, Prakash & Kording 2020 from runs of the rules ``np``, ``fa``
  and ``bp`` (e.g. ``bioplausible reproduce np-fig2-mnist``): (A) relative error ‖W − B‖/‖W‖,
  (B) the angle between the rule's ΔW and BP's gradient with NP's signal angle ∠(ẽB, ẽW)
  dashed, (C) sign congruence, per learned layer over training, (D) test error per epoch; and
  the checks at the last probe (NP below FA in relative error and angle, above in sign
  congruence; NP within 1.5 points of BP's test accuracy).
* ``np-fig4`` — Fig. 4's panels (fixed W: relative error of the top and lower layer for a noise
  sweep, of the top layer for a width sweep; sign congruence) from the probes of
  ``bioplausible reproduce np-fig4-fixed-w`` runs (labels ``noise-*`` and ``width-*``).
* ``np-autoencoder`` — Fig. 3B/C from ``bioplausible reproduce np-table2a-autoencoder`` runs:
  the 2-D codes of 2000 test images coloured by digit, and reconstructions of 8 test images.

Runs are found by what they recorded (``summary.json``: the rule, the run label, the seed), not
by folder names, so grid folders such as ``np[epochs=1]-seed0`` work; the lowest seed of each
label is drawn. Each figure writes ``<out>/<name>.<format>`` and ``<out>/<name>.json``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import UserError
from .figures import check_format, legend_outside, rule_color
from .merged_report import find_runs
from .report import RunRecord, load_run


def _runs(folder: str | os.PathLike) -> list[RunRecord]:
    return [load_run(p) for p in find_runs([folder])]


def _first_by(runs: list[RunRecord], key: Callable[[RunRecord], str]) -> dict[str, RunRecord]:
    """The lowest-seed completed run per key."""
    chosen: dict[str, RunRecord] = {}
    for run in sorted(runs, key=lambda r: ((r.config or {}).get("seed", 0), str(r.path))):
        if run.summary.get("status") == "completed":
            chosen.setdefault(key(run), run)
    return chosen


def np_fig2(folder: str | os.PathLike, out: Path, fmt: str = "png") -> dict[str, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_rule = _first_by(_runs(folder), lambda r: str(r.summary.get("rule")))
    missing = [r for r in ("np", "fa", "bp") if r not in by_rule]
    if missing:
        raise UserError(f"figure np-fig2 needs completed runs of the rules np, fa and bp in {str(folder)!r}; "
                        f"missing: {', '.join(missing)} (run `bioplausible reproduce np-fig2-mnist`)")
    data = {label: (run.probes, run.epochs) for label, run in by_rule.items() if label in ("np", "fa", "bp")}
    np_probe = data["np"][0]
    if not np_probe or not data["fa"][0]:
        raise UserError("figure np-fig2 needs probe records (probe_every > 0) in the np and fa runs")
    layers = sorted({k.split("/", 1)[1] for k in np_probe[-1] if k.startswith("relative_error/")})
    angled = sorted({k.split("/", 1)[1] for k in np_probe[-1]
                     if k.startswith("grad_angle/") and k.endswith(".weight")})
    # the weights whose error came through learned feedback (not the output layer's exact one)
    angled = [k for k in angled if any(abs(p.get(f"grad_angle/{k}", 0.0)) > 0.1 for p in data["fa"][0])]
    fig, ax = plt.subplots(1, 4, figsize=(20, 4))
    styles = ["-", "--", ":"]
    final: dict[str, dict[str, float]] = {}
    panels = [(ax[0], "relative_error", layers), (ax[2], "sign_congruence", layers), (ax[1], "grad_angle", angled)]
    for label in ("np", "fa"):
        probes = data[label][0]
        steps = [p["step"] for p in probes]
        final[label] = {}
        for a, key, names in panels:
            for j, layer in enumerate(names):
                name = f"{key}/{layer}"
                vals = [p.get(name) for p in probes]
                if key == "sign_congruence":
                    vals = [100 * v if v is not None else None for v in vals]
                a.plot(steps, vals, styles[j % 3], color=rule_color(label), label=f"{label} {layer}")
                final[label][name] = vals[-1]
        if label == "np":
            for j, layer in enumerate(layers):
                sig = [p.get(f"signal_angle/{layer}") for p in probes]
                ax[1].plot(steps, sig, styles[j % 3], color="tab:purple", alpha=0.6,
                           label=f"np ∠(ẽB, ẽW) at the input of {layer}")
    for label in ("np", "fa", "bp"):
        epochs = data[label][1]
        ax[3].plot([e["epoch"] for e in epochs], [100 - e["test_accuracy"] for e in epochs],
                   color=rule_color(label), marker="o", label=label)
    for a, title in zip(ax, ("(A) relative error ‖W−B‖/‖W‖", "(B) angle of ΔW to BP's gradient (°)",
                             "(C) sign congruence (%)", "(D) test error (%)")):
        a.set_title(title, fontsize=10)
        a.set_xlabel("epoch" if "test" in title else "step")
        a.grid(alpha=0.3)
        legend_outside(a) if a is ax[3] else (a.legend(fontsize=6) if a.get_legend_handles_labels()[0] else None)
    checks = []
    for key, names, better in (("relative_error", layers, "lower"), ("grad_angle", angled, "lower"),
                               ("sign_congruence", layers, "higher")):
        for layer in names:
            name = f"{key}/{layer}"
            a_, b_ = final["np"].get(name), final["fa"].get(name)
            if a_ is None or b_ is None:
                continue
            checks.append({"metric": name, "np": a_, "fa": b_, "want": f"np {better}",
                           "passed": a_ < b_ if better == "lower" else a_ > b_})
    test = {label: data[label][1][-1]["test_accuracy"] for label in data}
    checks.append({"metric": "test_accuracy", "np": test["np"], "bp": test["bp"],
                   "want": "np within 1.5 of bp", "passed": test["bp"] - test["np"] <= 1.5})
    path = _save(fig, out / f"np-fig2.{fmt}")
    return {"figure": str(path), "runs": {k: str(v.path) for k, v in by_rule.items() if k in data},
            "layers": layers, "final": final, "test_accuracy": test, "checks": checks}


def np_fig4(folder: str | os.PathLike, out: Path, fmt: str = "png") -> dict[str, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_label = _first_by(_runs(folder), lambda r: r.label)
    if not any(label.startswith(("noise-", "width-")) for label in by_label):
        raise UserError(f"figure np-fig4 needs the noise-* and width-* runs of `bioplausible reproduce "
                        f"np-fig4-fixed-w` in {str(folder)!r}")
    fig, ax = plt.subplots(1, 4, figsize=(22, 4))
    final: dict[str, dict[str, float]] = {}
    for label, run in by_label.items():
        probes = [p for p in run.probes if any(k.startswith("relative_error/") for k in p)]
        if not probes:
            continue
        layers = sorted({k.split("/", 1)[1] for k in probes[-1] if k.startswith("relative_error/")},
                        key=lambda k: (len(k), k))
        steps = [p["step"] for p in probes]
        top, low = layers[-1], layers[0]
        final[label] = {f"relative_error/{k}": probes[-1][f"relative_error/{k}"] for k in layers}
        final[label].update({f"sign_congruence/{k}": probes[-1].get(f"sign_congruence/{k}") for k in layers})
        if label.startswith("noise-"):
            ax[0].plot(steps, [p[f"relative_error/{top}"] for p in probes], label=label)
            ax[1].plot(steps, [p[f"relative_error/{low}"] for p in probes], label=label)
            ax[3].plot(steps, [100 * (p.get(f"sign_congruence/{low}") or 0) for p in probes],
                       label=f"{label} layer {low}")
        else:
            ax[2].plot(steps, [p[f"relative_error/{top}"] for p in probes], label=label)
    for a, title in zip(ax, ("(A) top layer ‖W−B‖/‖W‖, noise sweep", "(A') lower layer, noise sweep",
                             "(D) top layer, width sweep, c_h=0.01", "(C) sign congruence of the lower layer (%)")):
        a.set_title(title, fontsize=10)
        a.set_xlabel("step")
        if a is not ax[3] and a.get_lines():
            a.set_yscale("log")
        a.grid(alpha=0.3)
        legend_outside(a)
    path = _save(fig, out / f"np-fig4.{fmt}")
    return {"figure": str(path), "final": final}


def np_autoencoder(folder: str | os.PathLike, out: Path, fmt: str = "png") -> dict[str, Any]:
    import matplotlib
    import torch
    from torch import nn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..data import load_dataset
    from ..engine.config import TrainConfig
    from ..models import build_model

    runs = {label: run for label, run in _first_by(_runs(folder), lambda r: r.label).items()
            if (run.path / "model.pt").is_file()}
    if not runs:
        raise UserError(f"figure np-autoencoder needs completed runs with model.pt in {str(folder)!r} (run "
                        f"`bioplausible reproduce np-table2a-autoencoder`)")
    first = TrainConfig.from_dict(next(iter(runs.values())).config, recommended=False)
    data = load_dataset(first["dataset"]["name"], normalize="unit", flatten=True, val_size=0, task="reconstruction",
                        root=first["dataset"]["root"])
    x, labels = data.test.x[:2000], data.test.labels[:2000]
    results = {}
    for label, run in runs.items():
        config = TrainConfig.from_dict(run.config, recommended=False)
        model = build_model(config["model"]["spec"], input_shape=tuple(x.shape[1:]), num_classes=x[0].numel(),
                            **config.model_options())
        model.load_state_dict(torch.load(run.path / "model.pt", map_location="cpu", weights_only=True))
        model.eval()
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        seen: list[Any] = []
        handle = min(linears, key=lambda m: m.out_features).register_forward_hook(
            lambda _m, _i, o, seen=seen: seen.append(o))
        with torch.no_grad():
            output = model(x)
        handle.remove()
        results[label] = (seen[0], output, float((run.summary.get("final") or {}).get("test_loss", float("nan"))))
    n = len(results)
    cols = min(n, 6)
    rows = -(-n // cols)
    fig, ax = plt.subplots(rows, cols, figsize=(3 * cols, 3 * rows), squeeze=False)
    for a in ax.flat:
        a.set_xticks([])
        a.set_yticks([])
    sc = None
    for a, (label, (codes, _, loss)) in zip(ax.flat, results.items()):
        sc = a.scatter(codes[:, 0], codes[:, 1], c=labels, cmap="tab10", s=2, vmin=-0.5, vmax=9.5)
        a.set_title(f"{label}\ntest loss {loss:.1f}", fontsize=8)
    fig.colorbar(sc, ax=ax.ravel().tolist(), ticks=range(10), label="digit", shrink=0.6)
    codes_path = _save(fig, out / f"np-autoencoder-codes.{fmt}")
    fig, ax = plt.subplots(n + 1, 8, figsize=(8, n + 1), squeeze=False)
    for j in range(8):
        ax[0, j].imshow(x[j].reshape(28, 28), cmap="gray", vmin=0, vmax=1)
    ax[0, 0].set_ylabel("input", fontsize=6, rotation=0, labelpad=30)
    for i, (label, (_, output, _)) in enumerate(results.items(), start=1):
        for j in range(8):
            ax[i, j].imshow(output[j].reshape(28, 28), cmap="gray", vmin=0, vmax=1)
        ax[i, 0].set_ylabel(label, fontsize=6, rotation=0, labelpad=30)
    for a in ax.flat:
        a.set_xticks([])
        a.set_yticks([])
    recon_path = _save(fig, out / f"np-autoencoder-reconstructions.{fmt}")
    return {"figure": [str(codes_path), str(recon_path)],
            "runs": {label: {"run": str(run.path), "test_loss": results[label][2]} for label, run in runs.items()}}


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=200, bbox_inches="tight")
    plt.close(fig)
    return path


FIGURES: dict[str, Callable[..., dict[str, Any]]] = {
    "np-fig2": np_fig2, "np-fig4": np_fig4, "np-autoencoder": np_autoencoder}


def draw(name: str, folder: str | os.PathLike, out: str | os.PathLike | None = None, fmt: str = "png") -> dict[str, Any]:
    """Draw figure ``name`` from the runs in ``folder`` into ``out`` (default ``folder``)."""
    if name not in FIGURES:
        import difflib

        close = difflib.get_close_matches(name, list(FIGURES), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise UserError(f"unknown figure {name!r}.{hint} Known: {', '.join(FIGURES)}")
    fmt = check_format(fmt)
    target = Path(out) if out is not None else Path(folder)
    result = FIGURES[name](folder, target, fmt)
    (target / f"{name}.json").write_text(json.dumps(result, indent=2, default=str))
    return result
