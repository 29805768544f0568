"""What the task of a dataset means for a run: its default loss, its accuracy, its output size.

Tasks: ``multiclass`` (class indices or one-hot targets), ``multilabel`` (a 0/1 vector per
example, accuracy per label) and ``reconstruction`` (the target is the input: no accuracy).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..core.losses import Loss, get_loss
from ..errors import ConfigError

#: losses that compare class scores with a class: meaningless when the target is the input
CLASSIFICATION_LOSSES = ("cross_entropy",)


def resolve_loss(name: str, task: str) -> Loss:
    """``auto`` is cross-entropy for single-label data, sigmoid BCE for multi-label data and
    ``mse_batchmean`` (squared error summed over the outputs, batch mean) for reconstruction."""
    if name == "auto":
        name = {"multilabel": "bce", "reconstruction": "mse_batchmean"}.get(task, "cross_entropy")
    loss = get_loss(name)
    if task == "reconstruction" and loss.name in CLASSIFICATION_LOSSES:
        raise ConfigError(f"loss {loss.name!r} is a classification loss but the task is reconstruction "
                          f"(targets = inputs); use mse_sum, mse_batchmean, mse_half_sum, mse or bce")
    if task == "multilabel" and loss.name == "cross_entropy":
        raise ConfigError("this dataset is multi-label: use --loss bce (per-label sigmoid) or an mse loss")
    return loss


def accuracy_counts(output: torch.Tensor, y: torch.Tensor, task: str) -> torch.Tensor:
    if task == "multilabel":
        return ((output > 0) == (y > 0.5)).to(torch.float64).mean(dim=1).sum()
    if y.dim() > 1:  # one-hot targets
        y = y.argmax(dim=1)
    return (output.argmax(dim=1) == y).sum()


def correct_counter(task: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None:
    """The per-batch correct count for ``task`` (class-index targets in three ops); ``None``
    for reconstruction, which has no accuracy."""
    if task == "reconstruction":
        return None
    if task == "multilabel":
        return lambda output, y: accuracy_counts(output, y, task)

    def count(output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if y.dim() > 1:
            y = y.argmax(dim=1)
        return torch.eq(output.argmax(dim=1), y).sum()

    return count


@torch.no_grad()
def check_reconstruction_output(model: nn.Module, example: torch.Tensor) -> None:
    """A model trained to reconstruct its input must output as many numbers as the input has."""
    was_training = model.training
    model.eval()  # no dropout, no training-time noise: only the shape is wanted
    try:
        out = model(example)
    finally:
        model.train(was_training)
    want = example[0].numel()
    got = out[0].numel() if out.dim() > 0 and out.shape[0] == example.shape[0] else -1
    if got != want:
        raise ConfigError(f"the task is reconstruction (targets = inputs) but the model outputs "
                          f"{tuple(out.shape[1:])} per example for inputs of {want} numbers; give it "
                          f"{want} outputs (e.g. model autoencoder or mlp:...-{want})")


__all__ = ["CLASSIFICATION_LOSSES", "accuracy_counts", "check_reconstruction_output", "correct_counter",
           "resolve_loss"]
