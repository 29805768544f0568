"""The reconstruction task: targets are the inputs themselves (autoencoders).

``load_dataset(name, task="reconstruction")`` (config: ``dataset: {name: mnist, task:
reconstruction}``) turns every split into a :class:`ReconstructionSplit`: its batches are
``(x, x.reshape(len(x), -1))`` — the target is the *flattened* input, a view of the same batch,
so no second copy of the data is held or gathered — and the class labels are kept in
``split.labels`` (for a latent-space scatter coloured by digit, say). ``info.task`` becomes
``"reconstruction"``; ``info.num_classes`` still counts the label classes, and
:func:`output_size` gives the number of outputs a model needs (the flattened input size).

On this task the trainer reports the reconstruction loss (``test_loss``, in the loss's own
convention per example, lower is better) and no accuracy.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import torch

from ..errors import ConfigError
from .core import DataBundle, Split

TASK = "reconstruction"


class ReconstructionSplit(Split):
    """A split whose target is its input: ``y`` is ``x`` flattened to ``(N, D)``; ``labels`` kept."""

    def __init__(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> None:
        if labels is not None and len(labels) != len(x):
            raise ValueError(f"ReconstructionSplit has {len(x)} inputs but {len(labels)} labels")
        self.x = x
        self.y = x.reshape(x.shape[0], -1)
        self.labels = labels

    def to(self, device=None, dtype: torch.dtype | None = None) -> ReconstructionSplit:
        labels = None if self.labels is None else self.labels.to(device=device)
        return ReconstructionSplit(self.x.to(device=device, dtype=dtype), labels)

    def batches(self, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None,
                drop_last: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches (and the shuffle) of :meth:`Split.batches`, target = the input batch flattened
        (a view: one gather per batch, not two)."""
        if int(batch_size) < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
        n, bs = len(self), int(batch_size)
        stop = (n // bs) * bs if drop_last else n
        perm = torch.randperm(n, generator=generator) if shuffle else None
        if perm is not None and self.x.device.type != "cpu":
            perm = perm.to(self.x.device)
        for i in range(0, stop, bs):
            xb = self.x[i : i + bs] if perm is None else self.x.index_select(0, perm[i : i + bs])
            yield xb, xb.reshape(xb.shape[0], -1)


def as_reconstruction(bundle: Any) -> DataBundle:
    """``bundle`` with every split's target replaced by its (flattened) input; labels kept."""
    def convert(split: Any) -> Any:
        if split is None or isinstance(split, ReconstructionSplit):
            return split
        if not isinstance(split, Split):
            raise ConfigError("task 'reconstruction' needs in-memory tensors (a dataset name, tensors or a "
                              "DataBundle), not a DataLoader")
        return ReconstructionSplit(split.x, split.y)

    return DataBundle(train=convert(bundle.train), test=convert(bundle.test),
                      val=convert(getattr(bundle, "val", None)), info=replace(bundle.info, task=TASK))


def output_size(info: Any) -> int:
    """Outputs a model needs on ``info``'s task: the flattened input size for reconstruction,
    else the number of classes."""
    if getattr(info, "task", None) != TASK:
        return int(info.num_classes)
    n = 1
    for d in info.input_shape:
        n *= int(d)
    return n


def check_task(task: Any, native: str) -> bool:
    """Whether ``task`` asks for reconstruction; ConfigError for anything but the data's own task."""
    if task is None or task == "auto" or task == native:
        return False
    if task == TASK:
        return True
    raise ConfigError(f"dataset task {task!r} is not known; use 'reconstruction' (targets = inputs) or leave it "
                      f"out for the dataset's own task ({native!r})")


__all__ = ["TASK", "ReconstructionSplit", "as_reconstruction", "check_task", "output_size"]
