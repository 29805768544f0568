"""Relaxation units of graph mode (``graph_units``): every op, or merged ops.

A *merge* lets an op take in a producer whose value only it reads: the producer's output is
no longer relaxed, the merged unit's value is the op's output and its local graph runs from
the producer's inputs through both ops, so its Jacobian is the composition (for an
elementwise activation after ``a = g(parents)``: ``diag(f′(a)) · J_g``, exactly how the MLP
path folds ``f′`` into each layer's backward map, :mod:`.ar_mlp`). Merges repeat (Linear →
ReLU → MaxPool → Flatten is one unit). Relaxation on the merged graph is eq 14 on fewer units:
its fixed point is still ``∂loss/∂unit`` (the chain rule through the merged ops), its finite-K
result differs from the op graph's (it converges faster: the longest chain is shorter).

* ``"op"``: no merge, every fx node is a unit (App. A read literally).
* ``"activation"``: parameter-free elementwise activations (module, functional or method
  form, in place or not: ReLU, tanh, sigmoid, GELU, ...) take in their producer.
* ``"layer"`` (default): activations, and also pooling (max/avg/adaptive), flatten / reshape /
  view, additions (a residual join takes in the branch only it reads, not the shared skip)
  and BatchNorm (eval or train mode) take in their producer. In MLPs, CNNs and ResNets the
  units are then the layer outputs ``x_l = pool(f(BN(W x_{l−1}) + skip))``; other joins
  (concatenation, products) stay units of their own.

On an MLP (Linear layers and elementwise activations) both merged choices give the MLP
path's layers, so graph mode and the MLP path give the same numbers at every K.

"Only reader" is decided statically on the fx graph, counting every node that reads the
value (after an in-place op, later readers of the mutated name read the in-place node, as in
:func:`.ar_graph._run_forward`), the model output included: a value used twice, by the output
or by anything else (even a shape query) is never merged, so a merge never changes the fixed
point.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field

import torch
from torch import fx, nn

from ...nn.mlp import ELEMENTWISE

Tensor = torch.Tensor

#: functional / method names of elementwise activations (``torch.*``, ``F.*``, ``Tensor.*``)
ACTIVATION_NAMES = frozenset({
    "relu", "relu_", "relu6", "tanh", "tanh_", "sigmoid", "sigmoid_", "gelu", "silu", "silu_",
    "elu", "elu_", "selu", "selu_", "celu", "celu_", "leaky_relu", "leaky_relu_", "softplus",
    "mish", "hardtanh", "hardtanh_", "hardswish", "hardsigmoid", "softsign", "tanhshrink",
    "logsigmoid",
})
_NAMESPACES = (torch, torch.nn.functional, torch.special, torch._C._nn)
#: parameter-free reductions of one value that end a conv layer (or an MLP's input)
POOLING_NAMES = frozenset({
    "max_pool1d", "max_pool2d", "max_pool3d", "avg_pool1d", "avg_pool2d", "avg_pool3d",
    "adaptive_max_pool1d", "adaptive_max_pool2d", "adaptive_max_pool3d",
    "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d",
    "flatten", "reshape", "view",
})
LAYER_MODULES = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d,
                   nn.AvgPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
                   nn.AdaptiveMaxPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
                   nn.AdaptiveAvgPool3d, nn.Flatten, nn.BatchNorm1d, nn.BatchNorm2d,
                   nn.BatchNorm3d)
_ADDS = (operator.add, operator.iadd, torch.add)


def is_activation(n: fx.Node, module: nn.Module | None) -> bool:
    """True for a parameter-free elementwise activation of one tensor (any of its forms)."""
    if len(n.all_input_nodes) != 1:
        return False
    if n.op == "call_module":
        return (isinstance(module, ELEMENTWISE)
                and not any(True for _ in module.parameters()))
    name = getattr(n.target, "__name__", n.target)
    if n.op == "call_method":
        return name in ACTIVATION_NAMES
    if n.op != "call_function" or name not in ACTIVATION_NAMES:
        return False
    return any(getattr(ns, name, None) is n.target for ns in _NAMESPACES)


_METADATA_METHODS = frozenset({"size", "dim", "ndimension", "numel", "nelement"})
_METADATA_ATTRS = frozenset({"shape", "dtype", "device", "ndim", "is_cuda"})


def _metadata_only(n: fx.Node) -> bool:
    if n.op == "call_method":
        return n.target in _METADATA_METHODS
    if n.op == "call_function" and n.target is getattr:
        return len(n.args) > 1 and n.args[1] in _METADATA_ATTRS
    return n.op == "call_function" and n.target is len


def consumers(gm: fx.GraphModule) -> dict[fx.Node, int]:
    """How many distinct fx nodes (the output included) read each node's value.

    Reading only a tensor's shape, dtype or device (``x.size(0)``, ``x.shape``, ``x.dim()``)
    is not a use of its value: ``x.view(x.size(0), -1)`` may still merge ``x``.
    """
    readers: dict[fx.Node, set[fx.Node]] = {}
    current: dict[fx.Node, fx.Node] = {}
    for n in gm.graph.nodes:
        if _metadata_only(n):
            continue
        for p in n.all_input_nodes:
            readers.setdefault(current.get(p, p), set()).add(n)
        if n.op in ("call_module", "call_method", "call_function"):
            module = gm.get_submodule(n.target) if n.op == "call_module" else None
            first = n.args[0] if n.args and isinstance(n.args[0], fx.Node) else None
            if first is not None and _mutates_first_arg(n, module):
                current[first] = n
    return {n: len(r) for n, r in readers.items()}


def compact(nodes: list, top: int, absorbed: set[int]) -> tuple[list, int]:
    """Drop the merged-in producers and renumber parents (topological order is kept)."""
    if not absorbed:
        return nodes, top
    new = {}
    for i in range(len(nodes)):
        if i not in absorbed:
            new[i] = len(new)
    out = []
    for i, nd in enumerate(nodes):
        if i in absorbed:
            continue
        nd.parents = [new[p] for p in nd.parents]
        out.append(nd)
    return out, new[top]


def _returns_indices(n: fx.Node, module: nn.Module | None) -> bool:
    if module is not None:
        return bool(getattr(module, "return_indices", False))
    return n.kwargs.get("return_indices") is True or (len(n.args) > 6 and n.args[6] is True)


def absorbs(n: fx.Node, module: nn.Module | None, joins: bool) -> bool:
    """Whether op ``n`` takes in a producer it alone reads (``joins``: the ``"layer"`` merges)."""
    if is_activation(n, module):
        return True
    if not joins:
        return False
    if n.op == "call_module":
        return isinstance(module, LAYER_MODULES) and not _returns_indices(n, module)
    name = getattr(n.target, "__name__", n.target)
    if n.op == "call_method":
        return name in POOLING_NAMES or name in ("add", "add_")
    if n.op != "call_function":
        return False
    if n.target in _ADDS:
        return True
    return (name in POOLING_NAMES and not _returns_indices(n, None)
            and any(getattr(ns, name, None) is n.target for ns in _NAMESPACES))


_INPLACE_OPERATORS = (operator.iadd, operator.isub, operator.imul, operator.itruediv)


@dataclass
class _Node:
    key: str                      # module path for call_module nodes, else the fx node name
    value: Tensor                 # forward value (detached)
    members: list[str] = field(default_factory=list)     # keys of the ops merged into it
    out: Tensor | None = None     # local graph output
    leaves: list[Tensor] = field(default_factory=list)   # detached inputs, one per parent
    parents: list[int] = field(default_factory=list)     # relaxed parents (node indices)
    params: list[Tensor] = field(default_factory=list)   # trained tensors used by this node


def _mutates_first_arg(n: fx.Node, module: nn.Module | None) -> bool:
    if module is not None:
        return bool(getattr(module, "inplace", False))
    name = str(getattr(n.target, "__name__", n.target))
    if n.op == "call_method":
        return name.endswith("_") and not name.endswith("__")
    return (n.kwargs.get("inplace") is True or n.target in _INPLACE_OPERATORS
            or (name.endswith("_") and not name.endswith("__")))


def _vjp(node: _Node, cotangent: Tensor, targets: list[Tensor]) -> tuple[Tensor | None, ...]:
    return torch.autograd.grad(node.out, targets, cotangent, retain_graph=True, allow_unused=True)
