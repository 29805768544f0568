"""Trainer: learning, run directory, exact resume, divergence, optimizers and schedules."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_bundle

import bioplausible as bp
from bioplausible.core.optim import build_optimizer
from bioplausible.engine.config import TrainConfig
from bioplausible.engine.trainer import Trainer, evaluate
from bioplausible.errors import ConfigError, UnknownNameError


def _model(seed=0, dim=20, classes=4):
    torch.manual_seed(seed)
    return bp.build_model(f"mlp:{dim}-32-{classes}", activation="tanh")


def _cfg(**kw):
    base = {"epochs": 3, "batch_size": 32, "optimizer": {"name": "sgd", "lr": 0.1},
            "progress": False, "loss": "cross_entropy"}
    base.update(kw)
    return TrainConfig.from_dict(base)


def test_bp_learns_separable_blobs():
    data = make_bundle()
    before = evaluate(_model(), data.test, "cross_entropy")["accuracy"]
    result = Trainer(_model(), "bp", data, _cfg()).run()
    assert result.status == "completed"
    assert result.history[-1]["test_accuracy"] >= 95.0 > before
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]


def test_run_directory_contents_and_plain_state_dict(tmp_path):
    data = make_bundle()
    out = tmp_path / "run"
    Trainer(_model(), "bp", data, _cfg(probe_every=2), out=out).run()
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "checkpoint.pt", "model.pt"):
        assert (out / name).is_file(), name
    lines = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    epochs = [ln for ln in lines if ln["kind"] == "epoch"]
    probes = [ln for ln in lines if ln["kind"] == "probe"]
    assert [e["epoch"] for e in epochs] == [1, 2, 3]
    assert probes and all(abs(p["grad_angle"]) < 1e-3 for p in probes)  # BP vs BP: angle 0
    assert all(e["probe_time"] > 0 for e in epochs)  # probing is timed apart from the rule's cost
    state = torch.load(out / "model.pt", weights_only=True)
    fresh = _model(seed=5)
    fresh.load_state_dict(state)  # strict: exactly the plain model's keys
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs_completed"] == 3 and summary["status"] == "completed"


def test_resume_matches_uninterrupted_run(tmp_path):
    data = make_bundle()
    cfg = _cfg(epochs=4, optimizer={"name": "sgd", "lr": 0.05, "momentum": 0.9},
               schedule={"name": "step", "step_size": 1, "gamma": 0.5})
    full = Trainer(_model(), "bp", data, cfg, out=tmp_path / "a").run()
    # "interrupted" after 2 epochs, then resumed to 4 with the same config
    Trainer(_model(), "bp", data, cfg.updated({"epochs": 2}), out=tmp_path / "b").run()
    with open(tmp_path / "b" / "metrics.jsonl", "a") as f:  # junk from an epoch that never finished
        f.write(json.dumps({"kind": "probe", "epoch": 3, "step": 999}) + "\n")
    resumed = Trainer(_model(seed=9), "bp", data, cfg, out=tmp_path / "b").run(resume=True)
    for (k, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), k
    assert [h["test_accuracy"] for h in full.history] == [h["test_accuracy"] for h in resumed.history]
    lines = [json.loads(ln) for ln in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [ln["epoch"] for ln in lines if ln["kind"] == "epoch"] == [1, 2, 3, 4]
    assert not any(ln.get("step") == 999 for ln in lines)


def test_divergence_stops_with_message_and_keeps_metrics(tmp_path):
    data = make_bundle()
    cfg = _cfg(epochs=5, loss="mse_sum", optimizer={"name": "sgd", "lr": 50.0}, divergence_threshold=1e6)
    result = Trainer(_model(), "bp", data, cfg, out=tmp_path / "d").run()
    assert result.status == "diverged"
    assert "diverged" in result.summary["message"] and "learning rate" in result.summary["message"]
    events = [json.loads(ln) for ln in (tmp_path / "d" / "metrics.jsonl").read_text().splitlines()]
    assert any(e.get("event") == "diverged" for e in events)
    assert json.loads((tmp_path / "d" / "summary.json").read_text())["status"] == "diverged"
    assert not (tmp_path / "d" / "model.pt").exists()


def test_optimizer_by_name_with_options():
    p = [torch.nn.Parameter(torch.zeros(3))]
    opt = build_optimizer([{"params": p, "lr": 0.01}], {"name": "Adam", "betas": [0.8, 0.9]})
    assert isinstance(opt, torch.optim.Adam) and opt.param_groups[0]["betas"] == (0.8, 0.9)
    with pytest.raises(UnknownNameError):
        build_optimizer([{"params": p}], {"name": "sgdd", "lr": 0.1})
    with pytest.raises(ConfigError):
        build_optimizer([{"params": p}], {"name": "sgd", "lr": 0.1, "momentun": 0.9})


def test_unknown_parameter_group_is_rejected():
    with pytest.raises(ConfigError, match="feedback"):
        bp.make("bp").param_groups(_model(), 0.1, {"feedback": {"lr": 0.01}})


def test_fit_api_with_shortcuts_and_float64():
    data = make_bundle(dtype=torch.float64)
    result = bp.fit(_model(), "bp", data, epochs=1, lr=0.1, batch_size=16, dtype="float64")
    assert next(result.model.parameters()).dtype == torch.float64
    with pytest.raises(ConfigError):
        bp.fit(_model(), "bp", data, epoch=1)


def test_sgd_step_matches_hand_written_update():
    """One library step equals W ← W − lr ∂L/∂W computed by hand with autograd."""
    data = make_bundle(n_train=32)
    model = _model()
    ref = _model()
    x, y = data.train.x, data.train.y
    loss = torch.nn.functional.cross_entropy(ref(x), y)
    grads = torch.autograd.grad(loss, list(ref.parameters()))
    Trainer(model, "bp", data, _cfg(epochs=1, batch_size=32)).run()
    for p, q, g in zip(model.parameters(), ref.parameters(), grads):
        torch.testing.assert_close(p, q - 0.1 * g, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_fused_default_steps_transposed_gradients_and_parameters_correctly(name):
    """Fused CPU kernels in this torch mis-step non-contiguous tensors; the library's optimizer
    must give the same update as the per-tensor loop whatever the strides."""
    torch.manual_seed(0)
    g = torch.randn(3, 4)
    a = torch.nn.Parameter(torch.randn(4, 3))                  # contiguous, transposed grad
    b = torch.nn.Parameter(torch.randn(3, 4).t())              # transposed parameter
    refs = [torch.nn.Parameter(t.detach().clone()) for t in (a, b)]
    opt = build_optimizer([{"params": [a, b], "lr": 0.1}], {"name": name})
    ref = build_optimizer([{"params": refs, "lr": 0.1}], {"name": name, "foreach": False})
    for _ in range(2):
        a.grad, b.grad = g.t(), g.t().contiguous()
        refs[0].grad, refs[1].grad = g.t().contiguous(), g.t().contiguous()
        opt.step()
        ref.step()
    torch.testing.assert_close(a, refs[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(b, refs[1], rtol=0, atol=1e-6)
