"""The relaxation-convergence diagnostic (paper Fig. 1a/1b)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

import bioplausible as bp
from bioplausible.core.losses import get_loss
from bioplausible.rules.ar.diagnostics import (
    plot_relaxation_convergence,
    relaxation_convergence,
    run_relaxation_diagnostic,
)


def _setup():
    torch.manual_seed(0)
    model = bp.build_model("mlp:12-9-8-6-4", activation="relu", init="normal:0.4").double()
    x = torch.randn(5, 12, dtype=torch.float64)
    return model, x, torch.tensor([0, 1, 2, 3, 0])


def test_curves_follow_the_maths():
    model, x, y = _setup()
    res = relaxation_convergence(model, x, y, "mse_sum", eta_xs=(0.1, 0.5), steps=80)
    assert res["layers"] == ["hidden 1 (9 units)", "hidden 2 (8 units)", "hidden 3 (6 units)"]
    # independent k = 0 value: forward activity vs autograd gradient
    h, hs = x, []
    for m in model:
        h = m(h)
        if isinstance(m, torch.nn.ReLU):
            hs.append(h)
    grads = torch.autograd.grad(get_loss("mse_sum")(h, y), hs)
    for layer, (a, g) in enumerate(zip(hs, grads)):
        assert res["runs"]["0.1"]["mse"][layer][0] == pytest.approx(float((a - g).detach().pow(2).mean()))
    # the top hidden layer sees the clamped error: its error shrinks by exactly (1 − η)^k
    top = res["runs"]["0.1"]["mse"][2]
    for k in (1, 10, 30):
        assert top[k] == pytest.approx(top[0] * 0.9 ** (2 * k), rel=1e-9)
    fast, slow = res["runs"]["0.5"], res["runs"]["0.1"]
    assert all(f <= s for f, s in zip(fast["iters_to_100x"], slow["iters_to_100x"]))
    assert all(e < 1e-6 for e in fast["final_relative_rms_error"])


def test_plot_and_cli_entry_point(tmp_path, monkeypatch):
    model, x, y = _setup()
    png = plot_relaxation_convergence(relaxation_convergence(model, x, y, steps=5), tmp_path / "a.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
    g = torch.Generator().manual_seed(0)
    fake = SimpleNamespace(train=SimpleNamespace(x=torch.rand(300, 784, generator=g),
                                                 y=torch.randint(0, 10, (300,), generator=g)))
    monkeypatch.setattr(bp, "load_dataset", lambda *a, **k: fake, raising=False)
    out = run_relaxation_diagnostic(tmp_path / "diag", "mnist", steps=20, train_steps=2,
                                    eta_xs=(0.1, 0.2), batch_size=16)
    saved = json.loads((tmp_path / "diag" / "convergence.json").read_text())
    assert saved["measurements"][1]["train_steps"] == 2 == out["measurements"][1]["train_steps"]
    assert set(saved["measurements"][0]["checks"]) >= {"passed", "fold_reduction"}
    assert (tmp_path / "diag" / "convergence.png").stat().st_size > 1000
