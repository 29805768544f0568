"""The weight-mirror update of one layer (Akrout et al. 2019, "Deep learning without weight
transport", §3).

In mirror mode the layer's input units fire zero-mean noise ``ξ ~ N(0, σ²)`` (a batch of ``m``
samples), the output units respond linearly ``y = W ξ`` (no bias, no nonlinearity), and the
feedback synapses learn by a Hebbian product with decay. In W's layout::

    B ← (1 − λ) B + η · (yᵀ ξ) / (m σ² P)

``P`` is the number of output positions per sample (1 for Linear). The normalisation makes
``E[yᵀξ / (mσ²P)] = W`` exactly, so ``E[ΔB] = η W − λ B`` and B relaxes to ``(η/λ) W``
(proportional to W, i.e. ``B_l ∝ W_lᵀ`` in the notation of docs/notation.md) with time constant ``1/λ`` mirror steps.

For Conv2d the noise images have the layer's last input size plus its padding and are
convolved without padding, so every output position sees noise at all kernel taps and the
expectation above holds exactly; ``yᵀξ`` is the convolution weight gradient
(:func:`torch.nn.grad.conv2d_weight`). Per-layer-type behaviour is a ``singledispatch``.
"""

from __future__ import annotations

from functools import singledispatch

import torch
import torch.nn.functional as F
from torch.nn.grad import conv2d_weight

from .layers import FeedbackConv2d, FeedbackLinear


def _buffer(cache: dict | None, key, shape, like: torch.Tensor) -> torch.Tensor:
    if cache is None:
        return torch.empty(shape, device=like.device, dtype=like.dtype)
    buf = cache.get(key)
    if buf is None or buf.shape != torch.Size(shape) or buf.device != like.device \
            or buf.dtype != like.dtype:
        buf = cache[key] = torch.empty(shape, device=like.device, dtype=like.dtype)
    return buf


@singledispatch
def mirror_update(layer, *, lr: float, decay: float, noise_std: float, batch: int,
                  generator: torch.Generator | None = None, cache: dict | None = None) -> None:
    """One mirror step on ``layer.feedback`` in place (see the module docstring)."""
    raise TypeError(f"no weight-mirror update for {type(layer).__name__}")


@mirror_update.register
def _(layer: FeedbackLinear, *, lr, decay, noise_std, batch, generator=None, cache=None) -> None:
    w, b = layer.weight.detach(), layer.checked_feedback()
    with torch.no_grad():
        xi = _buffer(cache, (id(layer), "xi"), (batch, w.shape[1]), w)
        xi.normal_(0.0, noise_std, generator=generator)
        y = _buffer(cache, (id(layer), "y"), (batch, w.shape[0]), w)
        torch.mm(xi, w.t(), out=y)
        b.addmm_(y.t(), xi, beta=1.0 - decay, alpha=lr / (batch * noise_std ** 2))


@mirror_update.register
def _(layer: FeedbackConv2d, *, lr, decay, noise_std, batch, generator=None, cache=None) -> None:
    w, b = layer.weight.detach(), layer.checked_feedback()
    kh, kw = (d * (k - 1) + 1 for d, k in zip(layer.dilation, layer.kernel_size))
    if layer.input_hw is not None:
        pw0, pw1, ph0, ph1 = layer.pre_pad or (layer.conv_padding[1], layer.conv_padding[1],
                                                layer.conv_padding[0], layer.conv_padding[0])
        h, wd = layer.input_hw[0] + ph0 + ph1, layer.input_hw[1] + pw0 + pw1
    else:  # no input seen yet: one receptive field per noise sample
        h, wd = kh, kw
    with torch.no_grad():
        xi = _buffer(cache, (id(layer), "xi"), (batch, layer.in_channels, max(h, kh), max(wd, kw)), w)
        xi.normal_(0.0, noise_std, generator=generator)
        y = F.conv2d(xi, w, None, layer.stride, 0, layer.dilation, layer.groups)
        hebb = conv2d_weight(xi, w.shape, y, layer.stride, 0, layer.dilation, layer.groups)
        positions = y.shape[2] * y.shape[3]
        b.mul_(1.0 - decay).add_(hebb, alpha=lr / (batch * positions * noise_std ** 2))


__all__ = ["mirror_update"]
