"""Metrics for multi-label targets (ChestMNIST), in pure torch."""

from __future__ import annotations

import math

import torch


def _rank_auc(scores: torch.Tensor, positive: torch.Tensor) -> float | None:
    """ROC AUC of one label by the Mann-Whitney rank statistic (ties get average ranks).

    AUC = (sum of the ranks of the positives - P(P+1)/2) / (P N), with ranks 1..P+N in
    ascending score order. ``None`` when the label has only one class.
    """
    n_pos = int(positive.sum())
    n_neg = positive.numel() - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    _, inverse, counts = torch.unique(scores, sorted=True, return_inverse=True, return_counts=True)
    counts = counts.to(torch.float64)
    average_rank = counts.cumsum(0) - (counts - 1) / 2  # mean of the ranks a tie group spans
    rank_sum = float(average_rank[inverse][positive].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def multilabel_metrics(logits: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """Mean per-label accuracy and mean per-label ROC AUC of ``logits`` (N, K) vs 0/1 targets.

    * ``accuracy``: a label is predicted present when sigmoid(logit) > 0.5 (logit > 0); the
      accuracy of each label over the N examples is averaged over the K labels (MedMNIST's
      definition for multi-label tasks), as a fraction in [0, 1].
    * ``auc``: the rank-based ROC AUC of each label, averaged over the labels that have both
      classes among the targets (others are skipped); NaN when no label qualifies.
    """
    logits = torch.as_tensor(logits).detach().to("cpu", torch.float64)
    targets = torch.as_tensor(targets).detach().to("cpu")
    if logits.shape != targets.shape or logits.dim() != 2:
        raise ValueError(
            f"logits and targets must both be (N, K); got {tuple(logits.shape)} and "
            f"{tuple(targets.shape)}"
        )
    positive = targets > 0.5
    accuracy = ((logits > 0) == positive).to(torch.float64).mean(0).mean()
    aucs = [_rank_auc(logits[:, k], positive[:, k]) for k in range(logits.shape[1])]
    aucs = [a for a in aucs if a is not None]
    return {
        "accuracy": float(accuracy),
        "auc": sum(aucs) / len(aucs) if aucs else math.nan,
    }
