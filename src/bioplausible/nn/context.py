"""A switch that makes every feedback layer and DFA tap backpropagate exactly.

Inside ``with exact_backward():`` feedback layers use ``Wᵀ`` instead of their feedback tensor
and DFA taps pass gradients through unchanged, so autograd computes the true BP gradient of a
converted model. The probe uses it to compare a rule's update with BP on the same batch.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

_state = threading.local()


def exact_backward_enabled() -> bool:
    """True inside :func:`exact_backward` (checked when a layer's forward runs)."""
    return getattr(_state, "depth", 0) > 0


@contextmanager
def exact_backward() -> Iterator[None]:
    """Context manager: inside it every converted layer backpropagates exactly (``Wᵀδ``).

    Layers converted by :func:`bioplausible.convert` check it when their forward pass runs, so a
    forward and backward pass inside ``with bp.exact_backward():`` give BP's gradient of the
    converted model (this is how the probe obtains its reference). Nesting is allowed.
    """
    _state.depth = getattr(_state, "depth", 0) + 1
    try:
        yield
    finally:
        _state.depth -= 1
