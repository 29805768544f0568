"""Activation relaxation on an arbitrary computation graph (paper App. A, eq 12-16).

The model is traced with ``torch.fx``; every node ``i`` whose value is a floating tensor that
depends on a trained parameter (or on another such node) is a relaxed unit, the model's output
is clamped to ``e = ∂loss/∂out``, and the input is never relaxed. At the stored forward pass
each node keeps its *local* autograd graph ``out_j = f_j(parents_j)``, so its vector-Jacobian
product uses the forward Jacobian (frozen, as in the MLP case). One Euler step is

    x_i ← x_i − η_x (x_i − Σ_{j ∈ Chi(i)} (∂f_j/∂x_i)ᵀ x_j)                      (eq 14)

swept in reverse topological order (Gauss-Seidel: children already updated) or from the
previous step's values (Jacobi). Its fixed point is the multivariate chain rule (eq 16), i.e.
``x_i* = ∂loss/∂x_i``. Parameter gradients are each node's local VJP with respect to its
parameters with the relaxed ``x_j`` as cotangent (summed when a parameter is shared).

Unlike the MLP path, a Linear layer and its activation are two nodes here, so the K-step
result differs from the MLP path's (same fixed point).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn

from ..errors import IncompatibleModelError

Tensor = torch.Tensor
_TRACES: weakref.WeakKeyDictionary[nn.Module, fx.GraphModule] = weakref.WeakKeyDictionary()


def trace_model(model: nn.Module) -> fx.GraphModule:
    """``torch.fx`` trace of ``model`` (cached per model), or IncompatibleModelError."""
    gm = _TRACES.get(model)
    if gm is not None:
        return gm
    try:
        gm = fx.symbolic_trace(model)
    except Exception as exc:  # noqa: BLE001 - fx raises many types for untraceable code
        raise IncompatibleModelError(
            f"ar graph mode needs a model that torch.fx can trace; tracing "
            f"{type(model).__name__} failed: {type(exc).__name__}: {exc}") from None
    inputs = [n for n in gm.graph.nodes if n.op == "placeholder"]
    out = next(n for n in gm.graph.nodes if n.op == "output")
    if len(inputs) != 1 or not isinstance(out.args[0], fx.Node):
        raise IncompatibleModelError(
            "ar graph mode needs a model with one tensor input and one tensor output, "
            f"got {len(inputs)} inputs and output {out.args[0]!r}")
    _TRACES[model] = gm
    return gm


@dataclass
class _Node:
    key: str                      # module path for call_module nodes, else the fx node name
    value: Tensor                 # forward value (detached)
    out: Tensor | None = None     # local graph output
    leaves: list[Tensor] = field(default_factory=list)   # detached inputs, one per parent
    parents: list[int] = field(default_factory=list)     # relaxed parents (node indices)
    params: list[Tensor] = field(default_factory=list)   # trained tensors used by this node


@dataclass
class GraphRelaxation:
    """Relaxed values by node key, the output, loss and output error of one batch."""

    relaxed: dict[str, Tensor]
    output: Tensor
    loss: Tensor
    error: Tensor
    nodes: list[_Node]
    top: int
    x: list[Tensor | None]


def _fetch(gm: fx.GraphModule, target: str) -> Any:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _run_forward(gm: fx.GraphModule, x: Tensor) -> tuple[list[_Node], int]:
    """Execute the graph node by node, keeping each relaxed node's local autograd graph."""
    nodes: list[_Node] = []
    index: dict[fx.Node, int] = {}      # relaxed fx node -> position in ``nodes``
    env: dict[fx.Node, Any] = {}
    top = -1
    for n in gm.graph.nodes:
        if n.op == "placeholder":
            env[n] = x.detach()
            continue
        if n.op == "get_attr":
            env[n] = _fetch(gm, n.target)
            continue
        if n.op == "output":
            top = index.get(n.args[0], -1)
            break
        sub: dict[fx.Node, Any] = {}
        node = _Node(str(n.target) if n.op == "call_module" else n.name, value=x)
        module = gm.get_submodule(n.target) if n.op == "call_module" else None
        copy_inputs = bool(getattr(module, "inplace", False)) or (
            n.op == "call_method" and str(n.target).endswith("_"))
        for p in n.all_input_nodes:
            v = env[p]
            if p in index:
                leaf = v.detach().requires_grad_(True)
                node.leaves.append(leaf)
                node.parents.append(index[p])
                sub[p] = leaf.clone() if copy_inputs else leaf
            elif isinstance(v, nn.Parameter) and v.requires_grad:
                node.params.append(v)
                sub[p] = v
            else:
                sub[p] = v.detach() if isinstance(v, Tensor) else v
        args = fx.node.map_arg(n.args, sub.__getitem__)
        kwargs = fx.node.map_arg(n.kwargs, sub.__getitem__)
        if module is not None:
            node.params += [p for p in module.parameters() if p.requires_grad]
        with torch.enable_grad():
            if n.op == "call_module":
                out = module(*args, **kwargs)
            elif n.op == "call_method":
                out = getattr(args[0], n.target)(*args[1:], **kwargs)
            else:
                out = n.target(*args, **kwargs)
        if isinstance(out, Tensor) and out.is_floating_point() and out.requires_grad:
            node.out, node.value = out, out.detach()
            index[n] = len(nodes)
            nodes.append(node)
            env[n] = node.value
        elif isinstance(out, (tuple, list)) and any(
                isinstance(o, Tensor) and o.requires_grad for o in out):
            raise IncompatibleModelError(
                f"ar graph mode cannot relax node {n.name!r}: it returns a {type(out).__name__} "
                "of tensors; only tensor-valued nodes are supported")
        else:
            env[n] = out.detach() if isinstance(out, Tensor) else out
    if top < 0:
        raise IncompatibleModelError("ar graph mode: the model output does not depend on any "
                                     "trained parameter, so there is nothing to relax")
    return nodes, top


def _vjp(node: _Node, cotangent: Tensor, targets: list[Tensor]) -> tuple[Tensor | None, ...]:
    return torch.autograd.grad(node.out, targets, cotangent, retain_graph=True, allow_unused=True)


def graph_relax(rule, model: nn.Module, x: Tensor, y: Tensor, loss_fn,
                callback: Callable[[int, list[Tensor | None]], None] | None = None
                ) -> GraphRelaxation:
    """Forward pass, output error, and ``relax_steps`` Euler steps (or the fixed point)."""
    c = rule.config
    nodes, top = _run_forward(trace_model(model), x)
    with torch.enable_grad():
        out = nodes[top].value.detach().requires_grad_(True)
        loss = loss_fn(out, y)
        (error,) = torch.autograd.grad(loss, out)
    xs: list[Tensor | None] = [nd.value.clone() for nd in nodes]
    xs[top] = error.detach()
    eta, keep = c["eta_x"], 1.0 - c["eta_x"]
    order = range(len(nodes) - 1, -1, -1)

    def push(j: int, drive: list[Tensor | None]) -> None:
        if not nodes[j].parents:
            return
        for p, g in zip(nodes[j].parents, _vjp(nodes[j], xs[j], nodes[j].leaves)):
            if g is not None:
                drive[p] = g if drive[p] is None else drive[p].add_(g)

    def settle(i: int, drive: list[Tensor | None], mix: bool) -> None:
        if i == top:
            return
        d = drive[i] if drive[i] is not None else torch.zeros_like(xs[i])
        xs[i] = xs[i].mul_(keep).add_(d, alpha=eta) if mix else d

    steps = 1 if c["solver"] == "fixed_point" else c["relax_steps"]
    for k in range(steps):
        drive: list[Tensor | None] = [None] * len(nodes)
        if c["solver"] == "fixed_point" or c["sweep"] == "gauss_seidel":
            for j in order:
                settle(j, drive, mix=c["solver"] != "fixed_point")
                push(j, drive)
        else:
            for j in order:
                push(j, drive)
            for i in order:
                settle(i, drive, mix=True)
        if callback is not None:
            callback(k + 1, xs)
    relaxed = {nd.key: xs[i] for i, nd in enumerate(nodes) if i != top}
    return GraphRelaxation(relaxed, nodes[top].value, loss.detach(), error.detach(), nodes, top, xs)


def graph_train_step(rule, model: nn.Module, x: Tensor, y: Tensor, loss_fn):
    """Relax, then write every parameter's ``.grad`` from the local parameter VJPs."""
    res = graph_relax(rule, model, x, y, loss_fn)
    grads: dict[int, Tensor] = {}
    for i, nd in enumerate(res.nodes):
        if not nd.params:
            continue
        for p, g in zip(nd.params, _vjp(nd, res.x[i], nd.params)):
            if g is not None:
                grads[id(p)] = grads[id(p)] + g if id(p) in grads else g
    for p in model.parameters():
        if p.requires_grad:
            g = grads.get(id(p))
            p.grad = g.detach() if g is not None else torch.zeros_like(p)
    relaxed = [v for v in res.relaxed.values() if v is not None]
    return res.output, res.loss, relaxed
