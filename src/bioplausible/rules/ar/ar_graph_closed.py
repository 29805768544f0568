"""Closed form of K activation-relaxation steps on a DAG (graph mode's default solver).

Notation of :mod:`.ar_graph`: relaxed nodes ``i`` in topological order, forward values ``h_i``,
the clamped top ``x_top = e``, and the transposed-Jacobian coupling
``(Mx)_i = Σ_{j ∈ Chi(i)} J_jiᵀ x_j`` with ``J_ji = ∂f_j/∂x_i`` frozen at the forward pass.
With ``x*`` the fixed point (``x*_top = e``, ``x* = M x*`` elsewhere) and ``ε = x − x*`` (zero on
the top), one step is

    Jacobi:        ε(k+1) = ((1−η) I + η M) ε(k)
    Gauss-Seidel:  ε(k+1) = (1−η) ε(k) + η M ε(k+1)      (children first, so (I − ηM)⁻¹)

and, since ``M`` is nilpotent (``M^P = 0`` beyond the longest path ``P``),

    x(K) = x* + Σ_{m=0}^{P} c_m M^m (h − x*),
    c_m = C(K, m) (1−η)^{K−m} η^m              (Jacobi, binomial weights)
    c_m = (1−η)^K C(K+m−1, m) η^m              (Gauss-Seidel, negative binomial)

The ``x*`` terms fold away: with ``β_s = 1 − Σ_{m<s} c_m`` the vectors
``q_i[s] = Σ_{m ≥ 0} c_{m+s} (M^m h)_i + β-weighted paths from the top`` obey

    q_i[s] = c_s h_i + Σ_{j ∈ Chi(i)} J_jiᵀ q_j[s+1],     q_top[s] = β_s e,     x_i(K) = q_i[0]

i.e. a node reached from node ``j`` by paths of length ``m`` gets ``c_m`` times the path's
Jacobian product of ``h_j``, and ``β_m`` times that of ``e`` from the top. For a chain this is
the MLP path's ``a_ls`` (``a_ls = c_{s−l}``, ``a_lL = β_{L−l}``), so both scalars come from
:func:`~.ar_relax.relaxation_coefficients` (the same float64 recursion as the MLP path).

Evaluation, one reverse-topological pass: node ``k`` gathers from its children either *raw*
vectors (a path product of some ``h_j`` or ``e`` with the path length ``m`` as its key: the
coefficient for a node ``t`` further down is ``c_{m+t}`` or ``β_{m+t}``; vectors with the same
key from different children are summed) or *combined* vectors ``q_k[t]``, one per distance
``t`` at which some relaxed node lies below ``k``. It sends to its parents whichever set is
smaller (raw vectors are combined on the spot, in one small matrix product, when that is
cheaper, as the MLP path does). Each sent vector costs one local VJP of node ``k``, so the
total is ``Σ_k min(#raw_k, #distances_k)`` VJPs — for a chain of ``L`` nodes about ``L²/4``,
i.e. fewer than ``depth`` backward passes — against ``K`` VJPs per node for the literal loop.
Skip connections add path lengths, so a ResNet's middle convolutions need more VJPs than a
chain's (benchmarks/results/ar_graph_speed.md).
"""

from __future__ import annotations

import torch

from .ar_graph_units import _Node, _vjp
from .ar_relax import relaxation_coefficients

Tensor = torch.Tensor


def graph_coefficients(longest: int, steps: int, eta: float, sweep: str
                       ) -> tuple[list[float], list[float]]:
    """``(c_0..c_P, β_0..β_P)`` for paths up to ``longest = P`` edges (float64 scalars)."""
    L = int(longest) + 2
    a = relaxation_coefficients(L, int(steps), float(eta), sweep)
    c = [a[1][1 + t] for t in range(L - 1)]
    beta = [a[L - t][L] for t in range(L - 1)]
    return c, beta


def distances_below(nodes: list[_Node]) -> list[set[int]]:
    """For each node, the path lengths to itself (0) and to every relaxed node feeding it."""
    below: list[set[int]] = []
    for nd in nodes:  # topological order
        s = {0}
        for p in nd.parents:
            s.update(t + 1 for t in below[p])
        below.append(s)
    return below


def _add(acc: dict, key, v: Tensor) -> None:
    old = acc.get(key)
    acc[key] = v if old is None else old + v


def _combine(vecs: list[Tensor], weights: list[list[float]]) -> list[Tensor]:
    """``[Σ_r w[i][r] vecs[r] for each row i]`` in one matrix product (one pass over memory)."""
    if len(vecs) == 1:
        return [vecs[0] * w[0] for w in weights]
    if len(weights) <= 2:  # a few axpys read each vector once per row and copy nothing
        rows = []
        for w in weights:
            acc = vecs[0] * w[0]
            for v, wr in zip(vecs[1:], w[1:]):
                acc.add_(v, alpha=wr)
            rows.append(acc)
        return rows
    flat = torch.stack([v.reshape(-1) for v in vecs])
    w = torch.tensor(weights, dtype=flat.dtype, device=flat.device)
    return list((w @ flat).reshape(len(weights), *vecs[0].shape).unbind(0))


def relax_graph_closed_form(nodes: list[_Node], top: int, start: list[Tensor], steps: int,
                            eta: float, sweep: str) -> list[Tensor]:
    """The exact K-step relaxation of :func:`.ar_graph.relax_graph_loop`, without iterating.

    ``start`` holds the forward values with the (scaled) output error at ``top``; the inputs
    are not modified.
    """
    n = len(nodes)
    below = distances_below(nodes)
    longest = max(max(s) for s in below)
    c, beta = graph_coefficients(longest, steps, eta, sweep)
    coef = {"c": c, "b": beta}
    # banks[k]: raw vectors keyed ("c"|"b", m) and combined ones keyed ("t", t)
    banks: list[dict[tuple[str, int], Tensor]] = [{} for _ in range(n)]
    xs: list[Tensor] = list(start)
    for k in range(n - 1, -1, -1):
        nd = nodes[k]
        bank = banks[k]
        banks[k] = {}
        if k == top:
            bank = {("b", 0): start[k]}  # clamped: what its children send is ignored
        else:
            _add(bank, ("c", 0), start[k])
        wanted = sorted({t + 1 for p in nd.parents for t in below[p]})
        raw = [(key, v) for key, v in bank.items() if key[0] != "t"]
        comb = {key[1]: v for key, v in bank.items() if key[0] == "t" and (key[1] in wanted or key[1] == 0)}
        combine = len(wanted) < len(raw) + len(comb) - (0 in comb)
        targets = [0] + wanted if combine else [0]
        # every target t gets Σ_raw coef[kind][m + t]·v (+ the combined vector already there)
        sums = _combine([v for _, v in raw], [[coef[kind][m + t] for (kind, m), _ in raw] for t in targets])
        for t, v in zip(targets, sums):
            if t in comb:
                v = v + comb[t]
            if t == 0:
                xs[k] = v
            else:
                comb[t] = v
        if not nd.parents:
            continue
        items = [(("t", t), v) for t, v in comb.items() if t != 0]
        if not combine:
            items += raw
        for (kind, m), v in items:
            new = (kind, m - 1) if kind == "t" else (kind, m + 1)
            for p, g in zip(nd.parents, _vjp(nd, v, nd.leaves)):
                if g is not None and (kind != "t" or new[1] in below[p]):
                    _add(banks[p], new, g)
    return xs
