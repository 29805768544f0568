"""Convergence of activation relaxation to the backprop gradients (paper Fig. 1a/1b).

For one batch, the hidden layers of an MLP relax by the literal Euler loop (eq 5); after
every iteration ``k`` we record, per layer ``l``, the mean squared error

    MSE_l(k) = mean_{batch, units} (x_l(k) − ∂loss/∂h_l)²

to the gradient that autograd computes on the same model and batch, for several ``η_x``.
``k = 0`` is the relaxation's starting point, the stored forward activations.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...core.image_out import save_figure
from ...core.losses import get_loss
from ...errors import DataError
from ...nn.mlp import _apply, mlp_layout
from ..registry import make

PAPER_MODEL = "mlp:784-300-300-100-10,activation=relu,init=normal:0.05"


def _autograd_hidden_gradients(model: nn.Module, x, y, loss_fn) -> list[torch.Tensor]:
    """∂loss/∂h_l for the hidden layers, by plain autograd through the model's modules."""
    layout = mlp_layout(model)
    with torch.enable_grad():
        h = x
        for m in layout.prefix:
            h = m(h)
        hs = []
        for lin, acts in layout.layers:
            h = _apply(acts, lin(h))
            hs.append(h)
        loss = loss_fn(h, y)
        grads = torch.autograd.grad(loss, hs[:-1])
    return [g.detach() for g in grads]


def _record(curves: list[list[float]], truth: Sequence[torch.Tensor], _k: int,
            hidden: Sequence[torch.Tensor]) -> None:
    for curve, h, g in zip(curves, hidden, truth):
        curve.append(float((h - g).pow(2).mean()))


def _iters_to(curve: Sequence[float], factor: float) -> int | None:
    goal = curve[0] / factor
    return next((k for k, v in enumerate(curve) if v <= goal), None)


def relaxation_convergence(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: Any = "mse_sum",
                           eta_xs: Sequence[float] = (0.05, 0.1, 0.2, 0.5), steps: int = 100,
                           sweep: str = "gauss_seidel", **rule_options: Any) -> dict[str, Any]:
    """Per-layer MSE between the relaxed activities and autograd's gradients vs iteration.

    Returns a JSON-ready dict: ``layers`` (names), ``iterations`` (0..steps) and ``runs``,
    one per ``η_x`` with ``mse[layer][k]``, the ``fold_reduction`` ``MSE(0)/MSE(steps)`` and
    ``iters_to_100x`` (first ``k`` with a 100-fold reduction, ``None`` if never) and
    ``final_relative_rms_error`` ``sqrt(MSE(steps) / mean(grad²))``. Extra
    ``rule_options`` go to ``make("ar", ...)`` (e.g. ``backward_weights``).
    """
    loss_fn = get_loss(loss_fn) if isinstance(loss_fn, str) else loss_fn
    truth = _autograd_hidden_gradients(model, x, y, loss_fn)
    sizes = [int(g.shape[-1]) for g in truth]
    result: dict[str, Any] = {
        "sweep": sweep, "steps": int(steps), "batch_size": int(x.shape[0]),
        "dtype": str(truth[0].dtype).replace("torch.", "") if truth else None,
        "layers": [f"hidden {i + 1} ({n} units)" for i, n in enumerate(sizes)],
        "gradient_mean_square": [float(g.pow(2).mean()) for g in truth],
        "iterations": list(range(int(steps) + 1)),
        "runs": {},
    }
    for eta in eta_xs:
        rule = make("ar", eta_x=float(eta), relax_steps=int(steps), sweep=sweep, solver="loop",
                    **rule_options)
        rule.prepare(model)
        chain = rule.forward_chain(model, x, y, loss_fn)
        curves = [[float((h - g).pow(2).mean())] for h, g in zip(chain.forward[1:-1], truth)]
        rule.relax(chain, callback=functools.partial(_record, curves, truth))
        result["runs"][f"{float(eta):g}"] = {
            "eta_x": float(eta),
            "mse": curves,
            "fold_reduction": [c[0] / c[-1] if c[-1] > 0 else math.inf for c in curves],
            "iters_to_100x": [_iters_to(c, 100.0) for c in curves],
            "final_relative_rms_error": [math.sqrt(c[-1] / ms) if ms > 0 else math.nan
                                         for c, ms in zip(curves, result["gradient_mean_square"])],
        }
    return result


def convergence_checks(result: dict[str, Any], eta: float = 0.1, factor: float = 100.0) -> dict[str, Any]:
    """The Fig. 1 claims: every layer's MSE falls ``factor``-fold within the run at ``eta``,
    and larger ``η_x`` reaches that reduction no later (per layer)."""
    runs = sorted(result["runs"].values(), key=lambda r: r["eta_x"])
    at = min(runs, key=lambda r: abs(r["eta_x"] - eta))
    folds = at["fold_reduction"]
    monotone = True
    for layer in range(len(result["layers"])):
        its = [r["iters_to_100x"][layer] for r in runs]
        its = [math.inf if v is None else v for v in its]
        monotone &= all(b <= a for a, b in itertools.pairwise(its))
    return {"eta_x": at["eta_x"], "fold_reduction": folds,
            "every_layer_at_least": factor, "passed": all(f >= factor for f in folds),
            "larger_eta_no_slower": bool(monotone)}


def plot_relaxation_convergence(result: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write a PNG like the paper's Fig. 1: (a) per-layer MSE at η_x ≈ 0.1, (b) the MSE
    averaged over layers for each η_x. ``result`` is one :func:`relaxation_convergence`
    dict or ``{"measurements": [{"label": ..., "result": ...}, ...]}`` (one row each)."""
    from ..._io import pyplot

    plt = pyplot()

    rows = result.get("measurements") or [{"label": "", "result": result}]
    fig, axes = plt.subplots(len(rows), 2, figsize=(11, 3.8 * len(rows)), squeeze=False)
    for (ax_a, ax_b), row in zip(axes, rows):
        res, label = row["result"], row.get("label", "")
        its = res["iterations"]
        runs = sorted(res["runs"].values(), key=lambda r: r["eta_x"])
        ref = min(runs, key=lambda r: abs(r["eta_x"] - 0.1))
        for name, curve in zip(res["layers"], ref["mse"]):
            ax_a.semilogy(its, [max(v, 1e-300) for v in curve], label=name)
        ax_a.set_title(f"(a) per layer, η_x = {ref['eta_x']:g}  {label}".strip())
        for run in runs:
            mean = [sum(c[k] for c in run["mse"]) / len(run["mse"]) for k in range(len(its))]
            ax_b.semilogy(its, [max(v, 1e-300) for v in mean], label=f"η_x = {run['eta_x']:g}")
        ax_b.set_title(f"(b) mean over layers, by η_x  {label}".strip())
        for ax in (ax_a, ax_b):
            ax.set_xlabel(f"relaxation iteration ({res['sweep']})")
            ax.set_ylabel("MSE to autograd gradient")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        return save_figure(fig, path, dpi=120)  # a full disk is one line
    finally:
        plt.close(fig)


def run_relaxation_diagnostic(out_dir: str | os.PathLike, dataset: str = "mnist", *,
                              root: str | os.PathLike | None = None,
                              eta_xs: Sequence[float] = (0.05, 0.1, 0.2, 0.5), steps: int = 100,
                              sweep: str = "gauss_seidel", batch_size: int = 64, seed: int = 0,
                              train_steps: int = 500, lr: float = 5e-4,
                              dtype: str = "float64") -> dict[str, Any]:
    """The paper's Fig. 1 on real data: write ``convergence.json`` and ``convergence.png``.

    Builds the paper's MLP (784-300-300-100-10, ReLU, N(0, 0.05²) weights, seed ``seed``),
    takes one batch of ``batch_size`` training images (``normalize="unit"``) and measures the
    convergence at initialisation and, if ``train_steps > 0``, again after that many SGD steps
    of AR training (``mse_sum``, learning rate ``lr``, batches of ``batch_size``), because the
    paper's figure is of a network in training. Returns the JSON dict.
    """
    from ...models import build_model

    try:
        from ...data import load_dataset
        data = load_dataset(dataset, root, normalize="unit", flatten=True)
    except (ImportError, AttributeError) as exc:
        raise DataError(f"the relaxation diagnostic needs bioplausible.load_dataset: {exc}") from None
    torch_dtype = getattr(torch, dtype)
    torch.manual_seed(seed)
    model = build_model(PAPER_MODEL).to(torch_dtype)
    gen = torch.Generator().manual_seed(seed)
    train = data.train
    n_train = int(train.x.shape[0])
    idx = torch.randperm(n_train, generator=gen)
    x = train.x[idx[:batch_size]].to(torch_dtype)
    y = train.y[idx[:batch_size]]
    loss_fn = get_loss("mse_sum")
    measurements = [{"label": "at initialisation", "train_steps": 0,
                     "result": relaxation_convergence(model, x, y, loss_fn, eta_xs, steps, sweep)}]
    if train_steps > 0:
        rule = make("ar")
        rule.set_seed(seed)
        model = rule.prepare(model)
        opt = torch.optim.SGD(rule.param_groups(model, lr=lr))
        for i in range(int(train_steps)):
            j = idx[(batch_size * (i + 1) + torch.arange(batch_size)) % n_train]  # after the probe batch
            rule.train_step(model, train.x[j].to(torch_dtype), train.y[j], loss_fn)
            opt.step()
        measurements.append({
            "label": f"after {int(train_steps)} AR training steps", "train_steps": int(train_steps),
            "result": relaxation_convergence(model, x, y, loss_fn, eta_xs, steps, sweep)})
    for m in measurements:
        m["checks"] = convergence_checks(m["result"])
    out = {
        "dataset": dataset, "model": PAPER_MODEL, "loss": "mse_sum", "seed": seed,
        "batch_size": batch_size, "sweep": sweep, "dtype": dtype, "lr": lr,
        "measurements": measurements,
    }
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "convergence.json").write_text(json.dumps(out, indent=1))
    plot_relaxation_convergence(out, out_dir / "convergence.png")
    return out
