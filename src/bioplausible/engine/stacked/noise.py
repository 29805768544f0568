"""Per-run Gaussian draws for stacked runs: each run's noise from its own generator, in the order
the unstacked rule draws it (node perturbation's ξ, the noise controls' activity noise)."""

from __future__ import annotations

import torch


def draw_noise(generators: list, shapes: list[tuple[int, ...]], device, dtype) -> list[torch.Tensor]:
    """ξ ~ N(0, I) of every shape in ``shapes`` for every run, ``(R, *shape)`` each, run ``r``'s from
    ``generators[r]`` in the order of ``shapes`` — what ``torch.randn(shape, generator=g)`` draws
    one shape after another.

    When every shape but the last has a multiple of 16 elements and the last at least 16, a
    run's shapes are drawn by one ``normal_`` call on one buffer: torch's CPU normal kernel fills
    uniforms in order and turns them into normals in blocks of 16 (with a fresh block for an
    incomplete tail; fewer than 16 take another path), so the buffer holds the same numbers as
    the separate draws (``test_one_noise_draw_equals_separate_draws`` checks it in float32 and
    float64). Otherwise, and on other devices, one call per shape.
    """
    R = len(generators)
    sizes = [int(torch.Size(s).numel()) for s in shapes]
    one_call = (torch.device(device).type == "cpu" and all(n % 16 == 0 for n in sizes[:-1])
                and sizes[-1] >= 16)
    if one_call:
        flat = torch.empty(R, sum(sizes), device=device, dtype=dtype)
        for r, gen in enumerate(generators):
            flat[r].normal_(generator=gen)
        return [part.view(R, *shape) for part, shape in zip(flat.split(sizes, dim=1), shapes)]
    xis = [torch.empty(R, *shape, device=device, dtype=dtype) for shape in shapes]
    for r, gen in enumerate(generators):
        for xi in xis:
            xi[r].normal_(generator=gen)
    return xis


__all__ = ["draw_noise"]
