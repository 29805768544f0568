"""A stack of R multilayer perceptrons of one shape, trained as one: ``W_l`` is ``(R, out, in)``.

:class:`StackedMLP` is built from R ordinary models of the form ``[Flatten,] (Linear,
activation)*`` (the library's ``mlp:`` models): it *copies* their weights, so run ``r`` of the
stack starts from exactly the initialisation run ``r`` gets unstacked. Every layer is then one
batched product ``a = b + h Wᵀ`` (``torch.baddbmm``) over the run dimension, and
:meth:`StackedMLP.unstack` writes the trained values back into the R plain models.

Per-run data: :func:`epoch_orders` draws each run's permutation of the training set with the
generator the unstacked trainer uses (seed ``seed · 1 000 003 + epoch``), and :func:`gather`
takes run ``r``'s batch ``i`` by ``index_select`` on the one shared data tensor (no copy of the
dataset per run).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ...nn.mlp import ACTIVATION_KERNELS, plain_mlp

#: activation module type -> (name, forward, backward(grad_out, out)): the hand-written paths'
#: kernels (:data:`bioplausible.nn.mlp.ACTIVATION_KERNELS`, autograd's own backward kernels) with a name
ACTIVATIONS = {kind: (name, *ACTIVATION_KERNELS[kind]) for kind, name in
               ((nn.Sigmoid, "sigmoid"), (nn.Tanh, "tanh"), (nn.ReLU, "relu"), (nn.Identity, "identity"))}


def mlp_layers(model: nn.Module) -> tuple[list[nn.Module], list[tuple]] | str:
    """``(linear_layers, activations)`` of a ``[Flatten,] (Linear[, activation])*`` Sequential
    (:func:`bioplausible.nn.mlp.plain_mlp`; a Linear with no activation after it, e.g. the output
    layer, has the identity), or a one-line reason why ``model`` is not of that form.

    Linear layers converted by a feedback rule (``FeedbackLinear``) count as Linear: the stack
    reads only their ``weight``, ``bias`` and, where the rule keeps one, ``feedback``.
    """
    from ...nn.layers import FeedbackLinear

    plan = plain_mlp(model, (nn.Linear, FeedbackLinear))
    if isinstance(plan, str):
        return plan
    flatten, layers, acts = plan
    if flatten is not None and (flatten.start_dim != 1 or flatten.end_dim != -1):
        return "the model flattens other than from dimension 1"
    return layers, [ACTIVATIONS[type(act)] for act in acts]


class StackedMLP:
    """Weights ``W[l]`` of shape ``(R, out, in)`` and biases ``b[l]`` ``(R, out)`` (or ``None``)."""

    def __init__(self, models: Sequence[nn.Module]) -> None:
        plans = [mlp_layers(m) for m in models]
        bad = next((p for p in plans if isinstance(p, str)), None)
        if bad is not None:
            raise ValueError(bad)
        self.models = list(models)
        self.layers = [p[0] for p in plans]  # per run: its Linear layers
        first = self.layers[0]
        names = [a[0] for a in plans[0][1]]
        for layers, acts in plans[1:]:
            if [(lay.in_features, lay.out_features, lay.bias is not None) for lay in layers] != \
                    [(lay.in_features, lay.out_features, lay.bias is not None) for lay in first] \
                    or [a[0] for a in acts] != names:
                raise ValueError("the runs' models differ in shape; only runs of one model stack")
        self.acts = plans[0][1]
        self.R = len(models)
        with torch.no_grad():
            self.W = [torch.stack([run[i].weight.detach() for run in self.layers]).contiguous()
                      for i in range(len(first))]
            self.b = [None if first[i].bias is None else
                      torch.stack([run[i].bias.detach() for run in self.layers]).contiguous()
                      for i in range(len(first))]

    @property
    def depth(self) -> int:
        return len(self.W)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``hs``: the input of every layer (``(R, B, n)``), ``hs[-1]`` the output."""
        return self.passes(x)[0]

    def passes(self, x: torch.Tensor, perturb=None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """``(hs, outs)``: every layer's input (what its weights' gradient reads) and every
        activation's output (what its derivative reads). ``perturb(i, h)``, if given, replaces the
        input ``h`` of every layer ``i > 0`` (the activation's output is kept in ``outs``); without
        it the two lists are one."""
        h = x.reshape(x.shape[0], x.shape[1], -1)
        hs = [h]
        outs = hs if perturb is None else [h]
        for i, (w, b, (_, fwd, _)) in enumerate(zip(self.W, self.b, self.acts)):
            if i > 0 and perturb is not None:
                h = hs[i] = perturb(i, h)
            a = linear(h, w, b)
            h = a if fwd is None else fwd(a)
            hs.append(h)
            if outs is not hs:
                outs.append(h)
        return hs, outs

    def act_backward(self, i: int, g: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """``g ⊙ f_i′`` from the output ``out`` of layer ``i``'s activation.

        Fastest when ``g`` is laid out as ``out`` (:func:`bmm_as`): over a batch-major and a
        feature-major operand the elementwise kernel runs its strided loop (on one CPU thread
        ReLU's derivative of an (8, 256, 200) stack takes 2 ms against 60 µs, the sigmoid's 330 µs
        against 60 µs). A copy into ``out``'s layout costs about as much as the strided loop
        (more on small stacks), so a mismatched ``g`` is used as it is."""
        back = self.acts[i][2]
        return g if back is None else back(g, out)

    def unstack(self) -> None:
        """Write every run's weights and biases back into its own plain model (in place)."""
        with torch.no_grad():
            for r, layers in enumerate(self.layers):
                for i, layer in enumerate(layers):
                    layer.weight.copy_(self.W[i][r])
                    if layer.bias is not None:
                        layer.bias.copy_(self.b[i][r])

    def restack(self) -> None:
        """Read the runs' weights again (after a checkpoint was loaded into the plain models)."""
        with torch.no_grad():
            for r, layers in enumerate(self.layers):
                for i, layer in enumerate(layers):
                    self.W[i][r].copy_(layer.weight)
                    if layer.bias is not None:
                        self.b[i][r].copy_(layer.bias)

    def select(self, keep: list[int]) -> None:
        """Keep only the runs ``keep`` (a run that diverged leaves the stack)."""
        idx = torch.tensor(keep, device=self.W[0].device)
        self.W = [w.index_select(0, idx) for w in self.W]
        self.b = [None if b is None else b.index_select(0, idx) for b in self.b]
        self.models = [self.models[r] for r in keep]
        self.layers = [self.layers[r] for r in keep]
        self.R = len(keep)


def feature_major(t: torch.Tensor) -> bool:
    """Whether the ``(R, B, n)`` stack ``t`` is stored feature-major (as ``(R, n, B)``, the
    transposed view :func:`linear` returns for a narrow layer) rather than batch-major."""
    return t.dim() == 3 and t.shape[1] > 1 and t.shape[2] > 1 and t.stride(1) == 1


def bmm_as(a: torch.Tensor, b: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``a b`` per run (``(R, B, k)`` by ``(R, k, n)``), laid out as ``like``: for a feature-major
    ``like`` computed as ``(bᵀ aᵀ)ᵀ`` (the same products, no copy), so that the elementwise ops
    that combine it with ``like`` run their contiguous loops."""
    if like.stride(1) == 1 and like.shape[1] > 1 and like.shape[2] > 1:  # feature_major(like), inlined
        return torch.bmm(b.transpose(1, 2), a.transpose(1, 2)).transpose(1, 2)
    return torch.bmm(a, b)


def linear(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """``h Wᵀ + b`` per run: ``(R, B, in)``, ``(R, out, in)``, ``(R, out)`` -> ``(R, B, out)``.

    ``bmm`` then an in-place bias add: on one CPU thread ``baddbmm`` with a broadcast bias costs
    about 25 % more than the product alone for a 784-400 layer at batch 128. A layer no wider than
    twice the batch is computed feature-major, ``(b + W hᵀ)ᵀ`` (a transposed view, which the next
    such layer reads without a copy): on one CPU thread about 13 % faster for 784 → 50 at batch 32
    and 40 % for the NP Fig. 2 net's 20 → 10 (the same products; ``b`` enters first, as in
    ``addmm``).
    """
    if h.device.type == "cpu" and w.shape[1] <= 2 * h.shape[1]:
        ht = h.transpose(1, 2)
        a = torch.bmm(w, ht) if b is None else torch.baddbmm(b.unsqueeze(2), w, ht)
        return a.transpose(1, 2)
    a = torch.bmm(h, w.transpose(1, 2))
    return a if b is None else a.add_(b.unsqueeze(1))


def epoch_order(seed: int, epoch: int, n: int) -> torch.Tensor:
    """The permutation :class:`~bioplausible.train.Trainer` draws for ``seed`` at ``epoch``
    (0-based): ``randperm(n)`` from a CPU generator seeded ``seed · 1 000 003 + epoch``."""
    gen = torch.Generator()
    gen.manual_seed(int(seed) * 1_000_003 + int(epoch))
    return torch.randperm(n, generator=gen)


def epoch_orders(seeds: Sequence[int], epoch: int, n: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """``(R, n)``: every run's permutation for ``epoch``."""
    return torch.stack([epoch_order(s, epoch, n) for s in seeds]).to(device)


def gather(x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-run batches ``(R, B, ...)`` from the shared ``x``, ``y`` and indices ``idx`` ``(R, B)``."""
    flat = idx.reshape(-1)
    R, B = idx.shape
    if x.is_floating_point() and x.is_contiguous() and x.dim() >= 2:
        # the rows as an embedding lookup: the same copy, ~10 % faster than index_select on one CPU thread
        xb = torch.nn.functional.embedding(flat, x.view(x.shape[0], -1))
    else:
        xb = x.index_select(0, flat)
    yb = y.index_select(0, flat)
    return xb.view(R, B, *x.shape[1:]), yb.view(R, B, *y.shape[1:])


__all__ = ["ACTIVATIONS", "StackedMLP", "bmm_as", "epoch_order", "epoch_orders", "feature_major", "gather", "linear",
           "mlp_layers"]
