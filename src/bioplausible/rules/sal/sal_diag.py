"""Diagnostics of the SAL circuit (paper Fig. 3): alignment of the inter-stream
matrices, definiteness of the matrix learning rate and effective ranks, plus Gram-image PNGs."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from ...core.image_out import save_figure
from ...core.rule import Rule


def effective_rank(x: torch.Tensor) -> float:
    """Roy & Vetterli's effective rank ``exp(H(σ/Σσ))`` of a matrix (0 for the zero matrix)."""
    s = torch.linalg.svdvals(x.detach().double())
    total = s.sum()
    if total <= 0:
        return 0.0
    p = s / total
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def qr_misalignment(q: torch.Tensor, r: torch.Tensor) -> float:
    """``‖Q − Rᵀ‖_F / ‖Q‖_F`` (0 when both are zero; Lemma 1 drives it to 0)."""
    q64, r64 = q.detach().double(), r.detach().double()
    diff, norm = (q64 - r64.t()).norm(), q64.norm()
    if norm == 0:
        return 0.0 if diff == 0 else math.inf
    return float(diff / norm)


def qr_lambda_min(q: torch.Tensor, r: torch.Tensor) -> float:
    """Smallest eigenvalue of ``(QR + (QR)ᵀ)/2``: > 0 means the matrix learning rate is PD."""
    m = q.detach().double() @ r.detach().double()
    return float(torch.linalg.eigvalsh((m + m.t()) / 2)[0])


def sal_metrics(rule: Rule, model: nn.Module) -> dict[str, float]:
    out: dict[str, float] = {}
    layers = rule._layout(model).layers
    mis, lam = [], []
    for name, t in sorted(rule.tensors.items()):
        kind, k = name.split(".")
        out[f"erank/{name}"] = effective_rank(t)
        if kind == "Q":
            r = rule.tensors[f"R.{k}"]
            mis.append(qr_misalignment(t, r))
            lam.append(qr_lambda_min(t, r))
            out[f"qr_misalignment/{k}"], out[f"qr_lambda_min/{k}"] = mis[-1], lam[-1]
    for l, (lin, _) in enumerate(layers):
        out[f"erank/W.{l}"] = effective_rank(lin.weight)
    if mis:
        out["qr_misalignment"] = max(mis)
        out["qr_lambda_min"] = min(lam)
    from .sal_paper import assembly_metrics

    out.update(assembly_metrics(rule, model))
    return out


def gram_images(rule: Rule, model: nn.Module, path: str | Path) -> Path:
    """Save the Gram matrices ``XᵀX`` of every learned matrix (W, B, Q, R per layer) as one PNG."""
    from ..._io import pyplot

    plt = pyplot()

    mats = [(f"W.{l}", lin.weight) for l, (lin, _) in enumerate(rule._layout(model).layers)]
    mats += sorted(rule.tensors.items())
    cols = 4
    rows = math.ceil(len(mats) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (name, x) in zip(axes.flat, mats):
        x = x.detach().double().cpu()
        gram = (x.t() @ x).numpy()
        ax.imshow(gram, cmap="RdBu_r", vmin=-abs(gram).max() or -1, vmax=abs(gram).max() or 1)
        ax.set_title(f"{name}ᵀ{name}  erank {effective_rank(x):.1f}", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        return save_figure(fig, path, dpi=80)  # a full disk is one line
    finally:
        plt.close(fig)


__all__ = ["effective_rank", "gram_images", "qr_lambda_min", "qr_misalignment", "sal_metrics"]
