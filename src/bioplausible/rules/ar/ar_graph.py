"""Activation relaxation on an arbitrary computation graph (paper App. A, eq 12-16).

The model is traced with ``torch.fx``; every node ``i`` whose value is a floating tensor that
depends on a trained parameter (or on another such node) is a relaxed unit (or part of one,
when ``graph_units`` merges a producer into the op that alone reads it), the model's output
is clamped to the output error ``e``, and the input is never relaxed. At the stored forward
pass each node keeps its *local* autograd graph ``out_j = f_j(parents_j)``, so its
vector-Jacobian product uses the forward Jacobian (frozen, as in the MLP case). One Euler step is

    x_i ← x_i − η_x (x_i − Σ_{j ∈ Chi(i)} (∂f_j/∂x_i)ᵀ x_j)                      (eq 14)

swept in reverse topological order (Gauss-Seidel: every child already updated; the same as a
sweep by topological level, since nodes of one level never feed each other) or from the
previous step's values (Jacobi). The coupling ``M`` (``(Mx)_i = Σ_j (∂f_j/∂x_i)ᵀ x_j``) is
nilpotent on a DAG, so for 0 < η_x ≤ 1 the iteration converges, whatever the fan-out and
fan-in, to the multivariate chain rule (eq 16) ``x_i* = ∂loss/∂x_i``. Parameter gradients are
each node's local VJP with respect to its parameters with the relaxed ``x_j`` as cotangent
(summed when a parameter is shared, e.g. a module called twice).

Solvers: ``"closed_form"`` (default) evaluates the exact K-step result as a polynomial in
``M`` (:mod:`.ar_graph_closed`); ``"loop"`` runs the literal Euler steps; ``"fixed_point"`` is
one backward sweep (BP). Batch-mean losses (``Loss.reduction == "mean"``, as in the MLP
path) are relaxed on per-example errors ``N·∂loss/∂out`` and the
weight update is divided by ``N``, so the finite-K error relative to BP does not grow with the
batch; summed losses (and plain callables) relax ``∂loss/∂out`` itself.

Units (``graph_units``, :mod:`.ar_graph_units`): with ``"op"`` every fx node is a unit, so a
Linear layer and its activation are two and graphs are deep (a LeNet-5 is a chain of 12);
with ``"layer"`` (default) an op that is the only reader of its producer's value and is an
activation, pooling, flatten, an add join or BatchNorm takes that producer in, so the units
are layer outputs (LeNet-5: 5; on an MLP the MLP path's layers, with the same K-step result);
``"activation"`` merges activations only. Every choice has the same fixed point. The error
after K steps is ``Σ_{m<d} w_m(K) M^m ε(0)`` (``d`` units on the longest chain; Jacobi ``w_m``
= Binomial(K, η) probabilities), so K·η must clearly exceed ``d``: at the MLP defaults
(K = 100, η_x = 0.1) a CIFAR-10 LeNet-5's update is 89° from BP's with op units and 19° with
layer units, a 2-block ResNet's ~75° with either (its lowest layers lag); at K = 200 layer
units are within 0.06° on both, at η_x = 0.5 every choice is BP's to rounding
(benchmarks/results/ar_graph_speed.md). Supported: fan-out, fan-in (add,
concatenation, products of activations), modules called twice, in-place ops (the mutated
value is used by every later consumer, as in eager mode), pooling, BatchNorm in eval and
train mode (its batch coupling is part of the local Jacobian), ops returning several tensors
(``chunk``, ``split``, ``max_pool2d(return_indices=True)``: each item used is a node that re-runs
the op, so a random op inside would draw twice). Not supported, with an
IncompatibleModelError: untraceable models, several inputs or outputs, a tuple of trained
tensors used whole, and item assignment on trained tensors.
"""

from __future__ import annotations

import operator
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn

from ...errors import IncompatibleModelError
from .ar_graph_units import _mutates_first_arg, _Node, _vjp
from .ar_relax import batch_mean

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
class GraphRelaxation:
    """Relaxed values by node key, the output, loss and output error of one batch.

    ``x`` (by node index) and ``relaxed`` are in per-example units: they approach
    ``scale · ∂loss/∂node`` with ``scale = N`` for a batch-mean loss and 1 for a summed one.
    """

    relaxed: dict[str, Tensor]
    output: Tensor
    loss: Tensor
    error: Tensor
    nodes: list[_Node]
    top: int
    x: list[Tensor]
    scale: float = 1.0


def _fetch(gm: fx.GraphModule, target: str) -> Any:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


class _Several:
    """The value of a node that returns several trained tensors (``chunk``, ``split``, an RNN).

    It is not relaxed itself: each ``getitem`` of it becomes a relaxed node whose local
    function re-runs the op on the same parents and picks its item.
    """

    def __init__(self, node: fx.Node) -> None:
        self.node = node


def _run_forward(gm: fx.GraphModule, x: Tensor, units: str = "op") -> tuple[list[_Node], int]:
    """Execute the graph node by node, keeping each relaxed node's local autograd graph.

    With ``units="activation"`` an elementwise activation whose producer it alone reads takes
    that producer in, with ``"layer"`` pooling, flatten, add joins and BatchNorm do too
    (:mod:`.ar_graph_units`): the unit is the last op's output and its local graph runs from
    the producers' inputs through all the merged ops.
    """
    from .ar_graph_units import absorbs, compact, consumers

    sole = consumers(gm) if units != "op" else {}
    absorbed: set[int] = set()
    nodes: list[_Node] = []
    index: dict[fx.Node, int] = {}      # relaxed fx node -> position in ``nodes``
    env: dict[fx.Node, Any] = {}
    current: dict[fx.Node, fx.Node] = {}  # a value mutated in place -> the node holding it now
    calls: dict[str, int] = {}
    top = -1
    for n in gm.graph.nodes:
        if n.op == "placeholder":
            env[n] = x.detach()
            continue
        if n.op == "get_attr":
            env[n] = _fetch(gm, n.target)
            continue
        if n.op == "output":
            src = n.args[0]
            top = index.get(current.get(src, src), -1)
            if isinstance(env.get(src), _Several):
                raise IncompatibleModelError("ar graph mode needs one tensor output; the model "
                                             "returns several")
            break
        if n.target is operator.setitem:
            raise IncompatibleModelError(
                f"ar graph mode cannot relax item assignment ({n.name}); build the tensor "
                "with torch.cat/torch.stack or out-of-place ops instead")
        run, pick = n, None  # the fx node whose op runs, and the item it yields
        if n.target is operator.getitem and isinstance(env.get(n.args[0]), _Several):
            run, pick = n.args[0], n.args[1]
        module = gm.get_submodule(run.target) if run.op == "call_module" else None
        key = n.name
        if module is not None and pick is None:
            calls[n.target] = calls.get(n.target, 0) + 1
            key = n.target if calls[n.target] == 1 else f"{n.target}:{calls[n.target] - 1}"
        node = _Node(key, value=x, members=[key])
        inplace = _mutates_first_arg(run, module)
        merge = units != "op" and pick is None and absorbs(run, module, units == "layer")
        first = run.args[0] if run.args and isinstance(run.args[0], fx.Node) else None
        sub: dict[fx.Node, Any] = {}
        for p in run.all_input_nodes:
            src = current.get(p, p)
            v = env[src]
            if isinstance(v, _Several):
                raise IncompatibleModelError(
                    f"ar graph mode: node {run.name!r} uses the several outputs of "
                    f"{v.node.name!r} at once; index them (a, b = ...) before using them")
            if src in index and merge and sole.get(src) == 1:
                # take the producer in: its local graph feeds this op, its inputs are ours
                prod = nodes[index[src]]
                absorbed.add(index[src])
                node.leaves += prod.leaves
                node.parents += prod.parents
                node.params += prod.params
                node.members = prod.members + node.members
                v = prod.out
            elif src in index:
                leaf = v.detach().requires_grad_(True)
                node.leaves.append(leaf)
                node.parents.append(index[src])
                v = leaf
            elif isinstance(v, nn.Parameter) and v.requires_grad:
                node.params.append(v)
            elif isinstance(v, Tensor):
                v = v.detach()
            # an in-place op works on a copy, so stored values and leaves stay intact
            sub[p] = v.clone() if inplace and p is first and isinstance(v, Tensor) else v
        args = fx.node.map_arg(run.args, sub.__getitem__)
        kwargs = fx.node.map_arg(run.kwargs, sub.__getitem__)
        if module is not None:
            node.params += [p for p in module.parameters() if p.requires_grad]
        with torch.enable_grad():
            if run.op == "call_module":
                out = module(*args, **kwargs)
            elif run.op == "call_method":
                out = getattr(args[0], run.target)(*args[1:], **kwargs)
            else:
                out = run.target(*args, **kwargs)
            if pick is not None:
                out = out[pick]
        if inplace and first is not None and pick is None:
            current[first] = n  # later consumers of the mutated value read this node
        if isinstance(out, Tensor) and out.is_floating_point() and out.requires_grad:
            node.out, node.value = out, out.detach()
            index[n] = len(nodes)
            nodes.append(node)
            env[n] = node.value
        elif isinstance(out, (tuple, list)) and any(
                isinstance(o, Tensor) and o.requires_grad for o in out):
            if inplace:
                raise IncompatibleModelError(f"ar graph mode cannot relax the in-place node "
                                             f"{n.name!r} that returns several tensors")
            env[n] = _Several(n)
        else:
            env[n] = out.detach() if isinstance(out, Tensor) else out
    if top < 0:
        raise IncompatibleModelError("ar graph mode: the model output does not depend on any "
                                     "trained parameter, so there is nothing to relax")
    return compact(nodes, top, absorbed)


def _push(node: _Node, value: Tensor, drive: list[Tensor | None]) -> None:
    """Add ``(∂f_j/∂x_p)ᵀ x_j`` to each relaxed parent's drive (out of place: no aliasing)."""
    if not node.parents:
        return
    for p, g in zip(node.parents, _vjp(node, value, node.leaves)):
        if g is not None:
            drive[p] = g if drive[p] is None else drive[p] + g


def relax_graph_loop(nodes: list[_Node], top: int, start: list[Tensor], steps: int, eta: float,
                     sweep: str, callback: Callable[[int, list[Tensor]], None] | None = None
                     ) -> list[Tensor]:
    """The literal Euler iteration (eq 14) from ``start`` (forward values, top = error)."""
    xs = list(start)
    keep = 1.0 - eta
    order = range(len(nodes) - 1, -1, -1)

    def settle(i: int, d: Tensor | None) -> None:
        if i == top:
            return
        if d is None:
            xs[i] = torch.zeros_like(xs[i]) if keep == 0.0 else xs[i] * keep
        elif keep == 0.0:  # η = 1: the drive itself
            xs[i] = d
        else:  # a fresh tensor, so no value is ever aliased
            xs[i] = xs[i].mul(keep).add_(d, alpha=eta)

    for k in range(steps):
        drive: list[Tensor | None] = [None] * len(nodes)
        if sweep == "jacobi":
            for j in order:
                _push(nodes[j], xs[j], drive)
            for i in order:
                settle(i, drive[i])
        else:  # Gauss-Seidel: children come first in reverse topological order
            for j in order:
                settle(j, drive[j])
                _push(nodes[j], xs[j], drive)
        if callback is not None:
            callback(k + 1, xs)
    return xs


def batch_scale(loss_fn: Any, output: Tensor) -> float:
    """``N`` for a batch-mean loss (as the MLP path: :func:`.ar_relax.batch_mean`), else 1."""
    return float(output.shape[0]) if batch_mean(loss_fn) else 1.0


def graph_relax(rule, model: nn.Module, x: Tensor, y: Tensor, loss_fn,
                callback: Callable[[int, list[Tensor]], None] | None = None
                ) -> GraphRelaxation:
    """Forward pass, output error, and ``relax_steps`` Euler steps (or their closed form).

    A ``callback(k, xs)`` forces the literal loop and sees every step.
    """
    c = rule.config
    nodes, top = _run_forward(trace_model(model), x, c["graph_units"])
    with torch.enable_grad():
        out = nodes[top].value.detach().requires_grad_(True)
        loss = loss_fn(out, y)
        (error,) = torch.autograd.grad(loss, out)
    scale = batch_scale(loss_fn, out)
    start = [nd.value for nd in nodes]
    start[top] = error.detach() * scale if scale != 1.0 else error.detach()
    solver = "loop" if callback is not None else c["solver"]
    with torch.no_grad():
        if solver == "fixed_point":  # one Gauss-Seidel sweep at η = 1 is the chain rule
            xs = relax_graph_loop(nodes, top, start, 1, 1.0, "gauss_seidel")
        elif solver == "loop":
            xs = relax_graph_loop(nodes, top, start, c["relax_steps"], c["eta_x"], c["sweep"],
                                  callback)
        else:
            from .ar_graph_closed import relax_graph_closed_form

            xs = relax_graph_closed_form(nodes, top, start, c["relax_steps"], c["eta_x"],
                                         c["sweep"])
    relaxed = {nd.key: xs[i] for i, nd in enumerate(nodes) if i != top}
    return GraphRelaxation(relaxed, nodes[top].value, loss.detach(), error.detach(), nodes, top,
                           xs, scale)


def graph_train_step(rule, model: nn.Module, x: Tensor, y: Tensor, loss_fn):
    """Relax, then write every parameter's ``.grad`` from the local parameter VJPs (÷ N)."""
    res = graph_relax(rule, model, x, y, loss_fn)
    outs, cots, params, seen = [], [], [], set()
    for i, nd in enumerate(res.nodes):
        if nd.params:
            outs.append(nd.out)
            cots.append(res.x[i])
            for p in nd.params:
                if id(p) not in seen:
                    seen.add(id(p))
                    params.append(p)
    grads = torch.autograd.grad(outs, params, cots, allow_unused=True) if params else ()
    found = {id(p): g for p, g in zip(params, grads)}
    for p in model.parameters():
        if p.requires_grad:
            g = found.get(id(p))
            if g is None:
                p.grad = torch.zeros_like(p)
            else:
                p.grad = g.detach() / res.scale if res.scale != 1.0 else g.detach()
    relaxed = [v for v in res.relaxed.values() if v is not None]
    return res.output, res.loss, relaxed
