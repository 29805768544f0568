"""Training-set augmentation for image batches: random crop with zero padding and horizontal flip.

The standard CIFAR augmentation of He, Zhang, Ren & Sun 2016 (§4.2: "4 pixels are padded on each
side, and a 32×32 crop is randomly sampled from the padded image or its horizontal flip"), as the
config option ``dataset.augment``:

* ``none`` (or ``null``/``false``): no augmentation (the default);
* ``crop_flip`` (or ``true``): pad 4, random crop, random horizontal flip with probability ½;
* ``crop``, ``flip``: only one of the two;
* a mapping ``{crop: P, flip: true|false}``: padding ``P`` pixels (0 = no crop).

It is applied per training batch, on tensors already on the model's device, never to the
evaluation splits. The padding is a black pixel of the raw image (0 before normalisation: the
value ``-mean/std`` per channel for standardised data), as ``RandomCrop(32, padding=4)`` before
normalisation does. The random offsets and flips are drawn on the CPU from a generator the trainer
seeds with the run's seed and the epoch, so a run is reproducible on any device and a resumed run
draws the same augmentations as an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import ConfigError

NAMES = ("none", "crop_flip", "crop", "flip")
DEFAULT_PAD = 4


@dataclass(frozen=True)
class Augment:
    """Random crop after ``pad`` pixels of padding (0: no crop) and random horizontal flip."""

    pad: int = DEFAULT_PAD
    flip: bool = True

    @property
    def active(self) -> bool:
        return self.pad > 0 or self.flip

    def __call__(self, x: torch.Tensor, generator: torch.Generator,
                 fill: Sequence[float] | None = None) -> torch.Tensor:
        """Augment a batch ``x`` of shape ``(N, C, H, W)``; returns a new tensor.

        ``fill``: per-channel padding value (default 0). The draws (two offsets and one flip per
        image) come from ``generator`` on the CPU.
        """
        if x.dim() != 4:
            raise ConfigError(f"dataset.augment needs image batches (N, C, H, W), got shape "
                              f"{tuple(x.shape)}; do not flatten the dataset")
        n, c, h, w = x.shape
        p = int(self.pad)
        offsets = torch.randint(0, 2 * p + 1, (n, 2), generator=generator)
        flips = torch.rand(n, generator=generator) < 0.5 if self.flip else torch.zeros(n, dtype=torch.bool)
        if p:
            padded = F.pad(x, (p, p, p, p))
            if fill is not None and any(float(v) != 0.0 for v in fill):
                border = torch.ones(1, 1, h + 2 * p, w + 2 * p, dtype=torch.bool, device=x.device)
                border[..., p:p + h, p:p + w] = False
                value = torch.as_tensor(list(fill), dtype=x.dtype, device=x.device).view(1, c, 1, 1)
                padded = torch.where(border, value, padded)
        else:
            padded = x
        rows = offsets[:, :1] + torch.arange(h)                    # (N, H)
        cols = torch.arange(w).expand(n, w)
        cols = torch.where(flips[:, None], w - 1 - cols, cols) + offsets[:, 1:]   # (N, W)
        dev = x.device
        idx_n = torch.arange(n, device=dev).view(n, 1, 1)
        out = padded[idx_n, :, rows.to(dev).view(n, h, 1), cols.to(dev).view(n, 1, w)]  # (N, H, W, C)
        return out.permute(0, 3, 1, 2).contiguous()


def parse_augment(value: Any) -> Augment | None:
    """The :class:`Augment` a ``dataset.augment`` value asks for, or ``None`` for no augmentation.

    Raises :class:`~bioplausible.errors.ConfigError` (one line) for anything else.
    """
    if value is None or value is False:
        return None
    if value is True:
        return Augment()
    if isinstance(value, str):
        key = value.strip().lower()
        if key not in NAMES:
            raise ConfigError(f"dataset.augment must be one of {', '.join(NAMES)} or a mapping "
                              f"{{crop: PAD, flip: true|false}}, got {value!r}")
        if key == "none":
            return None
        return Augment(pad=DEFAULT_PAD if "crop" in key else 0, flip="flip" in key)
    if isinstance(value, dict):
        unknown = sorted(set(value) - {"crop", "flip"})
        if unknown:
            raise ConfigError(f"dataset.augment has no option {unknown[0]!r}; accepted: crop, flip")
        pad = value.get("crop", DEFAULT_PAD)
        flip = value.get("flip", True)
        if isinstance(pad, bool) or not isinstance(pad, int) or pad < 0:
            raise ConfigError(f"dataset.augment.crop must be the padding in pixels, an integer >= 0, got {pad!r}")
        if not isinstance(flip, bool):
            raise ConfigError(f"dataset.augment.flip must be true or false, got {flip!r}")
        aug = Augment(pad=pad, flip=flip)
        return aug if aug.active else None
    raise ConfigError(f"dataset.augment must be one of {', '.join(NAMES)} or a mapping "
                      f"{{crop: PAD, flip: true|false}}, got {value!r}")


def pad_fill(info: Any) -> list[float] | None:
    """Per-channel value of a black pixel after the dataset's normalisation (``None``: 0)."""
    mean, std = getattr(info, "mean", None), getattr(info, "std", None)
    if mean is None or std is None:
        return None
    return [-float(m) / max(float(s), 1e-8) for m, s in zip(mean, std)]


__all__ = ["NAMES", "Augment", "pad_fill", "parse_augment"]
