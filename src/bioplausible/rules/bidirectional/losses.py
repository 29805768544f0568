"""The bidirectional family's loss: ``bce_sum``, the BFA/BDFA authors' summed sigmoid BCE.

Σ_n Σ_k BCE(σ(o), t), whose gradient with respect to the logits is σ(o) − t per example (no 1/N):
the scale the authors' learning rates are for.
"""

from __future__ import annotations

import torch.nn.functional as F

from ...core.losses import Loss, dense_targets, register_loss


def _bce_sum_samples(o, t):
    per = F.binary_cross_entropy_with_logits(o, dense_targets(o, t), reduction="none")
    return per.reshape(o.shape[0], -1).sum(1)


def _bce_sum(o, t):
    return F.binary_cross_entropy_with_logits(o, dense_targets(o, t), reduction="sum")


BCE_SUM = register_loss(Loss("bce_sum", _bce_sum, "sum over batch and units of sigmoid binary cross-entropy",
                             "sum", _bce_sum_samples))
