"""Graph mode with merged units (``graph_units="layer"``, the default, and ``"activation"``), float64.

Oracles, built here without the library's graph code:

* The units of each zoo model are written out by hand from the model's source (which op takes
  in which producer).
* ``_Merged``: the op-level dense Jacobian of tests/test_ar_graph_zoo.py (``J[j, i] =
  ∂f_j/∂x_i``, strictly lower triangular on the op DAG) with the merged-in ops eliminated —
  a merged-in value ``x_N`` is a function of the units, ``dx_N = J_NN dx_N + J_NU dx_U``, so
  the units' own Jacobian is the Schur complement ``J_UU + J_UN (I − J_NN)⁻¹ J_NU`` (for an
  activation after a Linear layer that is ``diag(f′(a)) W``). The relaxation on the units is
  eq 14 with ``M = (that Jacobian)ᵀ``, iterated densely (Jacobi; Gauss-Seidel unit by unit
  in reverse topological order), from the units' forward values with the top clamped.
* Theory (as in the zoo file, ``d`` = units on the longest chain of non-top units): Jacobi at
  η = 1 exact at K = d and not at d − 1, Gauss-Seidel at η = 1 exact after one sweep; at η =
  0.5 the error bound Σ_{m<d} w_m(K) ‖M‖^m ‖ε(0)‖ picks the K where 1e-8 must hold.
* The MLP path (``graph=False``), whose units are the layers: on an MLP, layer units must
  give the same numbers at every K.
"""

from __future__ import annotations

import math

import pytest
import test_ar_graph_zoo as zoo
import torch
import torch.nn.functional as F
from torch import nn

import bioplausible as bp
from bioplausible.core.losses import get_loss
from bioplausible.errors import ConfigError
from bioplausible.rules.ar.ar_graph import graph_relax

LOSSES = ("mse_sum", "cross_entropy")
# the units (their keys: the last merged op's key) of every zoo model, read off the models
UNITS = {
    "activation": {
        "chain": ["tanh", "tanh_1", "c"],
        "chain_skip": ["tanh", "tanh_1", "add", "c"],
        "residual_mlp": ["tanh", "tanh_1", "add", "tanh_2", "add_1", "tanh_3", "add_2", "out"],
        "concat": ["relu", "tanh", "cat", "sigmoid", "mul", "cat_1", "c:1"],
        "twice": ["tanh", "tanh_1", "tanh_2", "mul", "c"],
        "resnet": ["relu", "b1.act", "b1.c2", "relu_1", "b2.act", "b2.c2", "relu_2", "pool",
                   "avg_pool2d", "flatten", "fc"],
        "resnet_noskip": ["relu", "b1.act", "relu_1", "b2.act", "relu_2", "pool", "avg_pool2d",
                          "flatten", "fc"],
    },
    "layer": {
        "chain": ["tanh", "tanh_1", "c"],
        "chain_skip": ["tanh", "add", "c"],
        "residual_mlp": ["tanh", "add", "add_1", "add_2", "out"],
        "concat": ["relu", "tanh", "cat", "sigmoid", "mul", "cat_1", "c:1"],
        "twice": ["tanh", "tanh_1", "tanh_2", "mul", "c"],
        "resnet": ["relu", "b1.act", "relu_1", "b2.act", "flatten", "fc"],
        "resnet_noskip": ["relu", "b1.act", "relu_1", "b2.act", "flatten", "fc"],
    },
}


class _Merged(zoo._Relaxation):
    """Dense relaxation on merged units (see the module docstring)."""

    def __init__(self, dense: zoo._Dense, keys: list[str]) -> None:
        self.d, self.keys = dense, keys
        self.units = [dense.keys.index(k) for k in keys]
        assert self.units == sorted(self.units), "units must be listed in topological order"
        rest = [i for i in range(len(dense.keys)) if i not in self.units]
        u = self._coords(self.units)
        J = dense.M.t()
        jac = J[u][:, u]
        if rest:
            n = self._coords(rest)
            eye = torch.eye(len(n), dtype=J.dtype)
            jac = jac + J[u][:, n] @ torch.linalg.solve(eye - J[n][:, n], J[n][:, u])
        self.M = jac.t().contiguous()
        self.sizes = [dense.sizes[i] for i in self.units]
        self.offsets = [sum(self.sizes[:i]) for i in range(len(self.sizes) + 1)]
        self.top = self.units.index(dense.top)
        self.x0 = dense.x0[u].clone()
        self.star = dense.star[u].clone()
        # unit parents: units reached backwards through merged-in ops
        self.parents = []
        for i in self.units:
            found, todo = set(), list(dense.parents[i])
            while todo:
                p = todo.pop()
                if p in self.units:
                    found.add(self.units.index(p))
                else:
                    todo += dense.parents[p]
            self.parents.append(sorted(found))

    def _coords(self, idx: list[int]) -> torch.Tensor:
        return torch.cat([torch.arange(self.d.offsets[i], self.d.offsets[i + 1]) for i in idx])



def _setup(name: str, loss: str, units: str):
    model, x, y, lf = zoo._data(name, loss)
    return model, x, y, lf, _Merged(zoo._Dense(model, x, y, lf), UNITS[units][name])


def _flat(res, merged: _Merged) -> torch.Tensor:
    top = merged.keys[merged.top]
    return torch.cat([res.x[res.top].reshape(-1) if k == top else res.relaxed[k].reshape(-1)
                      for k in merged.keys])


def _relax(model, x, y, lf, **options):
    return graph_relax(bp.make("ar", graph=True, **options), model, x, y, lf)


def _grad_error(model, x, y, lf, **options) -> float:
    rule = bp.make("ar", graph=True, **options)
    rule.train_step(model, x, y, lf)
    want = rule.bp_gradients(model, x, y, lf)
    scale = max(float(w.abs().max()) for w in want.values())
    return max(float((p.grad - want[n]).abs().max()) for n, p in model.named_parameters()) / scale


def _bound_steps(m: _Merged, eta: float, sweep: str, tol: float = 1e-9) -> int:
    keep = torch.ones(m.M.shape[0], dtype=torch.bool)
    keep[m.block(m.top)] = False
    sub = m.M[keep][:, keep].abs()
    norm = math.sqrt(float(sub.sum(0).max()) * float(sub.sum(1).max()))
    e0, d, target = float((m.x0 - m.star).norm()), m.depth(), tol * float(m.star.norm())
    for k in range(1, 100000):
        if sweep == "jacobi":
            w = [math.comb(k, j) * (1 - eta) ** (k - j) * eta ** j for j in range(d)]
        else:
            w = [(1 - eta) ** k * math.comb(k + j - 1, j) * eta ** j for j in range(d)]
        if sum(wj * norm ** j for j, wj in enumerate(w)) * e0 <= target:
            return k
    raise AssertionError("no K found")


# ------------------------------------------------------------------------------ the tests
@pytest.mark.parametrize("units", ["activation", "layer"])
@pytest.mark.parametrize("name", zoo.ZOO)
def test_units_are_the_hand_written_merges(name, units):
    model, x, y, lf = zoo._data(name, "mse_sum")
    res = _relax(model, x, y, lf, graph_units=units)
    assert [nd.key for nd in res.nodes] == UNITS[units][name]


@pytest.mark.parametrize("train", [False, True])
def test_batchnorm_is_part_of_its_layer(train):
    """conv → BN → ReLU: one unit with layer units, conv a unit of its own with activation."""
    torch.manual_seed(0)
    model = zoo.ResNet(bn=True).double().train(train)
    x = torch.randn(3, 3, 4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    y = torch.tensor([0, 2, 1])
    lf = get_loss("cross_entropy")
    members = {u: [nd.members for nd in _relax(model, x, y, lf, graph_units=u).nodes]
               for u in ("activation", "layer")}
    assert ["b1.c1", "b1.n1", "b1.act"] in members["layer"]
    assert ["b1.c1"] in members["activation"] and ["b1.n1", "b1.act"] in members["activation"]
    assert [nd for nd in members["layer"] if nd[-1] != "b1.act"] == [
        ["stem", "relu"], ["b1.c2", "add", "relu_1"], ["b2.c1", "b2.n1", "b2.act"],
        ["b2.c2", "add_1", "relu_2", "pool", "avg_pool2d", "flatten"], ["fc"]]


@pytest.mark.parametrize("units", ["activation", "layer"])
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("name", zoo.ZOO)
def test_k_steps_equal_the_merged_dense_oracle(name, loss, units):
    """Loop and closed form, both sweeps, K = 1, 2, 5 at η = 0.3: the dense unit dynamics."""
    model, x, y, lf, m = _setup(name, loss, units)
    for sweep in ("jacobi", "gauss_seidel"):
        for steps in (1, 2, 5):
            want = m.run(steps, 0.3, sweep)
            for solver in ("loop", "closed_form"):
                res = _relax(model, x, y, lf, relax_steps=steps, eta_x=0.3, sweep=sweep,
                             solver=solver, graph_units=units)
                assert zoo._rel(_flat(res, m), want) < 1e-10, (sweep, steps, solver)
        assert zoo._rel(want, m.star) > 1e-4


@pytest.mark.parametrize("units", ["activation", "layer"])
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("name", zoo.ZOO)
def test_convergence_where_theory_says(name, loss, units):
    """η = 1: Jacobi exact at K = d, not d − 1; GS after one sweep. η = 0.5: by the bound."""
    model, x, y, lf, m = _setup(name, loss, units)
    d = m.depth()
    assert torch.allclose(m.run(d, 1.0, "jacobi"), m.star, rtol=0, atol=1e-12)
    for solver in ("loop", "closed_form"):
        for sweep, steps in (("jacobi", d), ("gauss_seidel", 1)):
            opts = {"relax_steps": steps, "eta_x": 1.0, "sweep": sweep, "solver": solver,
                    "graph_units": units}
            assert zoo._rel(_flat(_relax(model, x, y, lf, **opts), m), m.star) < 1e-8
            assert _grad_error(model, x, y, lf, **opts) < 1e-8, (solver, sweep)
        if d > 1:
            early = _relax(model, x, y, lf, relax_steps=d - 1, eta_x=1.0, sweep="jacobi",
                           solver=solver, graph_units=units)
            assert zoo._rel(_flat(early, m), m.star) > 1e-6
    for sweep in ("jacobi", "gauss_seidel"):
        steps = _bound_steps(m, 0.5, sweep)
        opts = {"relax_steps": steps, "eta_x": 0.5, "sweep": sweep, "graph_units": units}
        assert zoo._rel(_flat(_relax(model, x, y, lf, **opts), m), m.star) < 1e-8
        assert _grad_error(model, x, y, lf, **opts) < 1e-8, (sweep, steps)
    res = _relax(model, x, y, lf, solver="fixed_point", graph_units=units)
    assert zoo._rel(_flat(res, m), m.star) < 1e-12
    assert _grad_error(model, x, y, lf, solver="fixed_point", graph_units=units) < 1e-12


class SharedPre(nn.Module):
    """``a`` feeds the activation *and* a skip, so the activation must not take it in; ``h``
    (an activation's output) is used twice, which is fine for a unit."""

    def __init__(self):
        super().__init__()
        self.l, self.m, self.o = nn.Linear(6, 5), nn.Linear(5, 5), nn.Linear(5, 3)

    def forward(self, x):
        a = self.l(x)
        h = torch.tanh(a)
        g = F.gelu(self.m(h)) * h
        return self.o(g + a)


class Forms(nn.Module):
    """Activations in functional, method, module and chained forms, in place or not."""

    def __init__(self, inplace: bool = False):
        super().__init__()
        self.a, self.b, self.c, self.d = (nn.Linear(6, 5), nn.Linear(5, 5), nn.Linear(5, 5),
                                          nn.Linear(5, 3))
        self.act = nn.SiLU(inplace=inplace)
        self.inplace = inplace

    def forward(self, x):
        if self.inplace:  # the statement form: later readers of h read the in-place node
            h = self.a(x)
            torch.relu_(h)
        else:
            h = self.a(x).relu()
        h = F.leaky_relu(self.b(h), 0.2, inplace=self.inplace)
        h = torch.sigmoid(self.act(self.c(h)))
        return self.d(h)


@pytest.mark.parametrize("units", ["activation", "layer"])
def test_an_activation_whose_producer_has_two_consumers_is_not_merged(units):
    torch.manual_seed(0)
    model = SharedPre().double()
    x = torch.randn(4, 6, dtype=torch.float64)
    y = torch.randn(4, 3, dtype=torch.float64)
    lf = get_loss("mse_sum")
    keys = ["l", "tanh", "gelu", "mul", "add", "o"] if units == "activation" else \
        ["l", "tanh", "gelu", "add", "o"]
    m = _Merged(zoo._Dense(model, x, y, lf), keys)
    for sweep in ("jacobi", "gauss_seidel"):
        for steps in (1, 3):
            res = _relax(model, x, y, lf, relax_steps=steps, eta_x=0.4, sweep=sweep,
                         graph_units=units)
            assert [nd.key for nd in res.nodes] == keys
            assert zoo._rel(_flat(res, m), m.run(steps, 0.4, sweep)) < 1e-10
    assert _grad_error(model, x, y, lf, solver="fixed_point", graph_units=units) < 1e-12


def test_every_activation_form_is_merged_and_in_place_forms_match():
    torch.manual_seed(0)
    model = Forms().double()
    x = torch.randn(4, 6, dtype=torch.float64)
    y = torch.tensor([0, 2, 1, 1])
    lf = get_loss("cross_entropy")
    m = _Merged(zoo._Dense(model, x, y, lf), ["relu", "leaky_relu", "sigmoid", "d"])
    twin = Forms(inplace=True).double()
    twin.load_state_dict(model.state_dict())
    for sweep in ("jacobi", "gauss_seidel"):
        want = m.run(3, 0.4, sweep)
        for net in (model, twin):
            for solver in ("loop", "closed_form"):
                res = _relax(net, x, y, lf, relax_steps=3, eta_x=0.4, sweep=sweep, solver=solver)
                assert len(res.nodes) == 4, [nd.members for nd in res.nodes]
                assert zoo._rel(_flat_keys(res), want) < 1e-10, (net.inplace, solver)
    assert torch.equal(twin(x), model(x))  # the relaxation did not mutate anything


def _flat_keys(res) -> torch.Tensor:
    return torch.cat([res.x[i].reshape(-1) for i in range(len(res.nodes))])


class Viewed(nn.Module):
    """Shape queries do not count as uses: ``x.view(x.size(0), -1)`` still merges."""

    def __init__(self):
        super().__init__()
        self.c, self.o = nn.Conv2d(2, 3, 3, padding=1), nn.Linear(3 * 2 * 2, 3)

    def forward(self, x):
        h = torch.relu(self.c(x))
        h = F.max_pool2d(h, 2)
        return self.o(h.view(h.size(0), -1) * (h.shape[1] / 3))


def test_shape_queries_do_not_block_a_merge():
    torch.manual_seed(0)
    model = Viewed().double()
    x = torch.randn(3, 2, 4, 4, dtype=torch.float64)
    y = torch.tensor([0, 2, 1])
    lf = get_loss("cross_entropy")
    want = {"activation": [["c", "relu"], ["max_pool2d"], ["view"], ["mul"], ["o"]],
            "layer": [["c", "relu", "max_pool2d", "view"], ["mul"], ["o"]]}
    for units, members in want.items():
        res = _relax(model, x, y, lf, graph_units=units, relax_steps=3, eta_x=0.5)
        assert [nd.members for nd in res.nodes] == members
        m = _Merged(zoo._Dense(model, x, y, lf), [ms[-1] for ms in members])
        assert zoo._rel(_flat(res, m), m.run(3, 0.5, "gauss_seidel")) < 1e-10
        assert _grad_error(model, x, y, lf, solver="fixed_point", graph_units=units) < 1e-12


def _mlp(final_act: bool) -> nn.Sequential:
    torch.manual_seed(3)
    layers = [nn.Flatten(), nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 5), nn.ReLU(inplace=True),
              nn.Linear(5, 4), nn.LeakyReLU(0.1), nn.Sigmoid(), nn.Linear(4, 3)]
    if final_act:
        layers.append(nn.Tanh())
    return nn.Sequential(*layers).double()


@pytest.mark.parametrize("final_act", [False, True])
@pytest.mark.parametrize("loss", ["mse_sum", "mse_batchmean", "cross_entropy"])
@pytest.mark.parametrize("sweep", ["jacobi", "gauss_seidel"])
def test_layer_units_equal_the_mlp_path_at_every_k(sweep, loss, final_act):
    """On an MLP the layer units are the MLP path's layers: the same .grad at K = 1..6."""
    model = _mlp(final_act)
    x = torch.randn(5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    y = (torch.tensor([0, 2, 1, 1, 0]) if loss == "cross_entropy" else
         torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(5)))
    lf = get_loss(loss)
    for steps in range(1, 7):
        grads = {}
        for key, opts in (("mlp", {"graph": False}),
                          ("layer_closed", {"graph": True}),
                          ("layer_loop", {"graph": True, "solver": "loop"}),
                          ("activation_closed", {"graph": True, "graph_units": "activation"}),
                          ("op", {"graph": True, "graph_units": "op"})):
            rule = bp.make("ar", relax_steps=steps, eta_x=0.3, sweep=sweep, **opts)
            rule.train_step(model, x, y, lf)
            grads[key] = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
        for key in ("layer_closed", "layer_loop", "activation_closed"):
            assert zoo._rel(grads[key], grads["mlp"]) < 1e-12, (key, steps)
        assert zoo._rel(grads["op"], grads["mlp"]) > 1e-4  # op units relax differently


def test_graph_units_option_is_checked():
    with pytest.raises(ConfigError, match="graph_units.*layer, activation, op"):
        bp.make("ar", graph=True, graph_units="neuron")
    assert bp.make("ar", graph=True).config["graph_units"] == "layer"
