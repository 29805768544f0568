"""Graph-mode activation relaxation on a zoo of DAGs, against mathematics (float64).

Every op is a unit here (``graph_units="op"``); merged units: tests/test_ar_graph_units.py.

Oracles, all built here without the library's graph code:

* ``_Dense``: fx's own Interpreter runs the model; the relaxed nodes are the floating outputs
  that require grad; the coupling ``M = Jacᵀ`` is the dense Jacobian of the map "node values ↦
  each node's op applied to its parents' values". The K-step dynamics are then iterated with
  that matrix (Jacobi; Gauss-Seidel block by block in reverse topological order), and
  ``∂loss/∂node`` comes from autograd on the interpreter's values.
* Theory for the error ``ε = x − x*`` (zero on the clamped top): ``M`` restricted to the
  non-top nodes is nilpotent of index ``d`` = the number of nodes on the longest chain of
  non-top relaxed nodes, and

      Jacobi        ε(K) = ((1−η)I + ηM)^K ε(0) = Σ_{m<d} C(K,m)(1−η)^{K−m} η^m M^m ε(0)
      Gauss-Seidel  ε(K) = (1−η)^K (I − ηM)^{−K} ε(0)

  so Jacobi is exact after ``K = d`` steps only for η = 1 (then ε(K) = M^K ε(0)), and not
  before in general; Gauss-Seidel at η = 1 is exact after one sweep; for η < 1 neither is ever
  exact, and ``‖ε(K)‖ ≤ Σ_{m<d} w_m(K) ‖M‖^m ‖ε(0)‖`` with the sweep's weights ``w_m``: the
  test picks the smallest K where that bound is below 1e-9·‖x*‖ and asserts 1e-8.
* BP: ``rule.bp_gradients`` (autograd on the eager model) for ``.grad``.

Batch-mean losses relax per-example errors, so the relaxed values approach ``N·∂loss/∂node``.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn

import bioplausible as bp
from bioplausible.core.losses import get_loss
from bioplausible.rules.ar.ar_graph import graph_relax

Tensor = torch.Tensor
LOSSES = ("mse_sum", "cross_entropy")


# ---------------------------------------------------------------------------------- the zoo
class Chain(nn.Module):  # the 6-5-5-3 tanh chain
    def __init__(self, skip: bool = False):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(6, 5), nn.Linear(5, 5), nn.Linear(5, 3)
        self.skip = skip

    def forward(self, x):
        h = torch.tanh(self.a(x))
        g = torch.tanh(self.b(h)) + h if self.skip else torch.tanh(self.b(h))
        return self.c(g)


class ResidualMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp, self.out = nn.Linear(6, 5), nn.Linear(5, 3)
        self.blocks = nn.ModuleList([nn.Linear(5, 5) for _ in range(3)])

    def forward(self, x):
        h = torch.tanh(self.inp(x))
        for blk in self.blocks:
            h = h + torch.tanh(blk(h))
        return self.out(h)


class Block(nn.Module):
    def __init__(self, c: int, skip: bool, bn: bool = False, inplace: bool = False):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(c, c, 3, padding=1), nn.Conv2d(c, c, 3, padding=1)
        self.n1 = nn.BatchNorm2d(c) if bn else nn.Identity()
        self.act = nn.ReLU(inplace=inplace)
        self.skip, self.inplace = skip, inplace

    def forward(self, x):
        h = self.c2(self.act(self.n1(self.c1(x))))
        if self.skip:
            h = h + x
        return F.relu(h, inplace=self.inplace)


class ResNet(nn.Module):
    """Stem conv, two residual blocks (optionally without the skips), pooling, linear."""

    def __init__(self, c: int = 3, width: int = 3, hw: int = 4, skip: bool = True, bn: bool = False,
                 inplace: bool = False):
        super().__init__()
        self.stem = nn.Conv2d(c, width, 3, padding=1)
        self.b1, self.b2 = (Block(width, skip, bn, inplace), Block(width, skip, bn, inplace))
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(width * (hw // 4) ** 2, 3)

    def forward(self, x):
        h = self.b2(self.b1(F.relu(self.stem(x))))
        h = F.avg_pool2d(self.pool(h), 2)
        return self.fc(torch.flatten(h, 1))


class Concat(nn.Module):
    """Two branches, a product of activations, joined by concatenation; plus a dead branch
    (traced but unused: its units relax to 0, i.e. decay as (1 − η)^K)."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(6, 4), nn.Linear(6, 4), nn.Linear(8, 3)

    def forward(self, x):
        a = torch.relu(self.a(x))
        b = torch.tanh(self.b(x))
        torch.sigmoid(self.c(torch.cat([a, a], dim=1)))  # dead
        return self.c(torch.cat([a, b * a], dim=1))


class Twice(nn.Module):  # one module called twice (shared weights), and its output fans out
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(6, 5), nn.Linear(5, 5), nn.Linear(5, 3)

    def forward(self, x):
        h = torch.tanh(self.a(x))
        g = torch.tanh(self.b(h))
        return self.c(torch.tanh(self.b(g)) * h)


def _data(model_name: str, loss: str, n: int = 3):
    torch.manual_seed(0)
    small = {"chain": lambda: Chain(False), "chain_skip": lambda: Chain(True),
             "residual_mlp": ResidualMLP, "concat": Concat, "twice": Twice,
             "resnet": lambda: ResNet(), "resnet_noskip": lambda: ResNet(skip=False)}
    model = small[model_name]().double()
    g = torch.Generator().manual_seed(1)
    shape = (n, 3, 4, 4) if model_name.startswith("resnet") else (n, 6)
    x = torch.randn(*shape, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 2, 1, 1, 0][:n]) if loss == "cross_entropy" else torch.randn(
        n, 3, generator=g, dtype=torch.float64)
    return model, x, y, get_loss(loss)


ZOO = ("chain", "chain_skip", "residual_mlp", "concat", "twice", "resnet", "resnet_noskip")


# ------------------------------------------------------------------------------ the oracle
class _Relaxation:
    """Dense relaxation dynamics shared by the op-level oracle and the merged-unit one: needs
    ``x0``, ``M``, ``top``, ``offsets`` and ``parents`` (one entry per unit, topological order)."""

    def block(self, i: int) -> slice:
        return slice(self.offsets[i], self.offsets[i + 1])

    def run(self, steps: int, eta: float, sweep: str) -> Tensor:
        x = self.x0.clone()
        top = self.block(self.top)
        for _ in range(steps):
            if sweep == "jacobi":
                new = (1 - eta) * x + eta * (self.M @ x)
                new[top] = x[top]
                x = new
            else:
                for i in reversed(range(len(self.parents))):
                    if i != self.top:
                        b = self.block(i)
                        x[b] = (1 - eta) * x[b] + eta * (self.M[b] @ x)
        return x

    def depth(self) -> int:
        """Units on the longest chain of non-top relaxed units (M's nilpotency index there)."""
        longest: list[int] = []
        for i, ps in enumerate(self.parents):
            longest.append(0 if i == self.top else 1 + max([longest[p] for p in ps], default=0))
        return max(longest)


class _Dense(_Relaxation):
    """The relaxation written with dense matrices from fx's Interpreter (see module docstring)."""

    def __init__(self, model, x, y, loss):
        gm = fx.symbolic_trace(model)
        vals: dict[fx.Node, object] = {}

        class Rec(fx.Interpreter):
            def run_node(self, n):
                vals[n] = super().run_node(n)
                return vals[n]

        with torch.enable_grad():
            out = Rec(gm).run(x)
            self.nodes = [n for n in gm.graph.nodes if n.op in ("call_module", "call_method",
                          "call_function") and isinstance(vals[n], Tensor) and vals[n].requires_grad]
            out_node = next(n for n in gm.graph.nodes if n.op == "output").args[0]
            self.top = self.nodes.index(out_node)
            value = loss(out, y)
            grads = torch.autograd.grad(value, [vals[n] for n in self.nodes], allow_unused=True)
        self.scale = x.shape[0] if loss.reduction == "mean" else 1
        self.grad = [torch.zeros_like(vals[n]) if g is None else g for n, g in zip(self.nodes, grads)]
        self.shapes = [vals[n].shape for n in self.nodes]
        self.sizes = [math.prod(s) for s in self.shapes]
        self.offsets = [sum(self.sizes[:i]) for i in range(len(self.sizes) + 1)]
        calls: dict[str, int] = {}
        self.keys = []
        for n in self.nodes:
            key = n.name
            if n.op == "call_module":
                calls[n.target] = calls.get(n.target, 0) + 1
                key = n.target if calls[n.target] == 1 else f"{n.target}:{calls[n.target] - 1}"
            self.keys.append(key)
        h0 = torch.cat([vals[n].detach().reshape(-1) for n in self.nodes])
        index = {n: i for i, n in enumerate(self.nodes)}
        fixed = {n: (v.detach() if isinstance(v, Tensor) else v) for n, v in vals.items()}

        def ops(v: Tensor) -> Tensor:
            env = dict(fixed)
            for n, i in index.items():
                env[n] = v[self.offsets[i]:self.offsets[i + 1]].reshape(self.shapes[i])
            outs = []
            for n in self.nodes:
                args = fx.node.map_arg(n.args, env.__getitem__)
                kwargs = fx.node.map_arg(n.kwargs, env.__getitem__)
                if n.op == "call_module":
                    outs.append(gm.get_submodule(n.target)(*args, **kwargs))
                elif n.op == "call_method":
                    outs.append(getattr(args[0], n.target)(*args[1:], **kwargs))
                else:
                    outs.append(n.target(*args, **kwargs))
            return torch.cat([o.reshape(-1) for o in outs])

        self._ops, self._h0 = ops, h0
        self.x0 = h0.clone()
        self.x0[self.block(self.top)] = self.grad[self.top].reshape(-1) * self.scale
        self.star = torch.cat([g.reshape(-1) for g in self.grad]) * self.scale
        self.parents = [[index[p] for p in n.all_input_nodes if p in index] for n in self.nodes]

    @property
    def M(self) -> Tensor:
        if not hasattr(self, "_M"):
            self._M = torch.autograd.functional.jacobian(self._ops, self._h0, vectorize=True).t().contiguous()
        return self._M


    def split(self, flat: Tensor) -> dict[str, Tensor]:
        return {k: flat[self.block(i)].reshape(self.shapes[i]) for i, k in enumerate(self.keys)}


def _flat(res, dense: _Dense) -> Tensor:
    return torch.cat([res.x[res.top].reshape(-1) if k == dense.keys[dense.top] else
                      res.relaxed[k].reshape(-1) for k in dense.keys])


def _rel(a: Tensor, b: Tensor) -> float:
    return float((a - b).abs().max()) / max(float(b.abs().max()), 1e-300)


def _relax(model, x, y, loss, **options):
    options.setdefault("graph_units", "op")  # this file's oracle relaxes every op
    return graph_relax(bp.make("ar", graph=True, **options), model, x, y, loss)


def _grad_error(model, x, y, loss, **options) -> float:
    options.setdefault("graph_units", "op")
    rule = bp.make("ar", graph=True, **options)
    rule.train_step(model, x, y, loss)
    want = rule.bp_gradients(model, x, y, loss)
    scale = max(float(w.abs().max()) for w in want.values())
    return max(float((p.grad - want[n]).abs().max()) for n, p in model.named_parameters()) / scale


def _bound_steps(dense: _Dense, eta: float, sweep: str, tol: float = 1e-9) -> int:
    """Smallest K whose error bound Σ_{m<d} w_m(K) ‖M‖^m ‖ε(0)‖ is below tol·‖x*‖."""
    keep = torch.ones(dense.M.shape[0], dtype=torch.bool)
    keep[dense.block(dense.top)] = False
    sub = dense.M[keep][:, keep].abs()  # ‖M‖₂ ≤ sqrt(‖M‖₁ ‖M‖∞), cheaper than an SVD
    norm = math.sqrt(float(sub.sum(0).max()) * float(sub.sum(1).max()))
    e0 = float((dense.x0 - dense.star).norm())
    d, target = dense.depth(), tol * float(dense.star.norm())
    for k in range(1, 100000):
        if sweep == "jacobi":
            w = [math.comb(k, m) * (1 - eta) ** (k - m) * eta ** m for m in range(d)]
        else:
            w = [(1 - eta) ** k * math.comb(k + m - 1, m) * eta ** m for m in range(d)]
        if sum(wm * norm ** m for m, wm in enumerate(w)) * e0 <= target:
            return k
    raise AssertionError("no K found")


# ------------------------------------------------------------------------------- the tests
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("name", ZOO)
def test_k_steps_equal_the_dense_oracle(name, loss):
    """Loop and closed form, both sweeps, K = 1, 2, 5 at η = 0.3: the dense iteration exactly."""
    model, x, y, lf = _data(name, loss)
    dense = _Dense(model, x, y, lf)
    for sweep in ("jacobi", "gauss_seidel"):
        for steps in (1, 2, 5):
            want = dense.run(steps, 0.3, sweep)
            for solver in ("loop", "closed_form"):
                res = _relax(model, x, y, lf, relax_steps=steps, eta_x=0.3, sweep=sweep, solver=solver)
                assert set(res.relaxed) | {dense.keys[dense.top]} == set(dense.keys)
                assert _rel(_flat(res, dense), want) < 1e-10, (sweep, steps, solver)
        assert _rel(want, dense.star) > 1e-4  # K = 5 is still a relaxation, not the gradient


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("name", ZOO)
def test_eta_one_is_exact_where_theory_says(name, loss):
    """η = 1: Jacobi exact at K = d (not at d − 1), Gauss-Seidel exact after one sweep."""
    model, x, y, lf = _data(name, loss)
    dense = _Dense(model, x, y, lf)
    d = dense.depth()
    assert torch.allclose(dense.run(d, 1.0, "jacobi"), dense.star, rtol=0, atol=1e-12)
    for solver in ("loop", "closed_form"):
        for sweep, steps in (("jacobi", d), ("gauss_seidel", 1)):
            opts = {"relax_steps": steps, "eta_x": 1.0, "sweep": sweep, "solver": solver}
            assert _rel(_flat(_relax(model, x, y, lf, **opts), dense), dense.star) < 1e-8
            assert _grad_error(model, x, y, lf, **opts) < 1e-8, (solver, sweep)
        if d > 1:
            early = _relax(model, x, y, lf, relax_steps=d - 1, eta_x=1.0, sweep="jacobi", solver=solver)
            assert _rel(_flat(early, dense), dense.star) > 1e-6


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("name", ZOO)
def test_eta_below_one_converges_by_the_bound(name, loss):
    """η = 0.5: at the K where the error bound drops below 1e-9, values and .grad are within 1e-8."""
    model, x, y, lf = _data(name, loss)
    dense = _Dense(model, x, y, lf)
    for sweep in ("jacobi", "gauss_seidel"):
        steps = _bound_steps(dense, 0.5, sweep)
        opts = {"relax_steps": steps, "eta_x": 0.5, "sweep": sweep}
        assert _rel(_flat(_relax(model, x, y, lf, **opts), dense), dense.star) < 1e-8
        assert _grad_error(model, x, y, lf, **opts) < 1e-8, (sweep, steps)
        assert _grad_error(model, x, y, lf, relax_steps=3, eta_x=0.5, sweep=sweep) > 1e-4


@pytest.mark.parametrize("name", ZOO)
def test_fixed_point_is_autograd(name):
    for loss in LOSSES:
        model, x, y, lf = _data(name, loss)
        dense = _Dense(model, x, y, lf)
        res = _relax(model, x, y, lf, solver="fixed_point")
        assert _rel(_flat(res, dense), dense.star) < 1e-12
        assert _grad_error(model, x, y, lf, solver="fixed_point") < 1e-12


@pytest.mark.parametrize("sweep", ["jacobi", "gauss_seidel"])
@pytest.mark.parametrize("solver", ["loop", "closed_form"])
def test_batch_mean_loss_relaxes_per_example_errors(solver, sweep):
    """At any K, mse_batchmean's .grad is mse_sum's divided by N (not only at the fixed point)."""
    model, x, _, _ = _data("twice", "mse_sum", n=5)
    y = torch.randn(5, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    grads = {}
    for loss in ("mse_sum", "mse_batchmean"):
        rule = bp.make("ar", graph=True, relax_steps=4, eta_x=0.3, sweep=sweep, solver=solver,
                       graph_units="op")
        rule.train_step(model, x, y, get_loss(loss))
        grads[loss] = [p.grad.clone() for p in model.parameters()]
    for a, b in zip(grads["mse_sum"], grads["mse_batchmean"]):
        assert _rel(b * 5, a) < 1e-12
    assert _grad_error(model, x, y, get_loss("mse_batchmean"), relax_steps=4, eta_x=0.3) > 1e-3
