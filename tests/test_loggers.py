"""TensorBoard logging: the event file holds the same scalars as metrics.jsonl.

Oracle: metrics.jsonl written by the same run. Every number of every epoch record must be in
the event file under the same key at x = epoch, every number of every probe record at
x = step (TensorBoard stores float32, hence the relative tolerance of 1e-6).
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import bioplausible as bp
from bioplausible.data import as_bundle
from bioplausible.engine.config import TrainConfig
from bioplausible.engine.loggers import TensorBoardLogger, make_logger, scalars

EventAccumulator = pytest.importorskip(
    "tensorboard.backend.event_processing.event_accumulator").EventAccumulator


def read_scalars(log_dir) -> dict[str, dict[int, float]]:
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


def test_records_are_written_by_epoch_and_by_step(tmp_path):
    with TensorBoardLogger(tmp_path / "tb") as logger:
        logger.log({"kind": "epoch", "epoch": 1, "step": 40, "train_loss": 0.5, "test_accuracy": 91.25,
                    "rule/alignment": {"0": 12.5}, "samples_per_s": None, "flag": True})
        logger.log({"kind": "probe", "epoch": 2, "step": 50, "grad_angle/0.weight": 33.0,
                    "grad_angle": 20.0, "grad_angle_all_layers": 25.0})
        logger.log({"kind": "epoch", "epoch": 2, "step": 80, "train_loss": 0.25, "test_accuracy": 95.0})
        logger.log({"kind": "event", "event": "diverged", "epoch": 3, "step": 81, "message": "boom"})
    got = read_scalars(tmp_path / "tb")
    assert got["loss/train"] == {1: 0.5, 2: 0.25}  # tags grouped by kind (group_tag)
    assert got["accuracy/test"] == {1: 91.25, 2: 95.0}
    assert got["grad_angle/0.weight"] == {50: 33.0}
    # the hidden-layer angle and the whole-network mean, each under its own grouped tag
    assert got["grad_angle/hidden_layers"] == {50: 20.0} and got["grad_angle/all_layers"] == {50: 25.0}
    assert got["rule/alignment/0"] == {1: 12.5}
    assert not {"time/samples_per_s", "metrics/flag", "epoch", "step", "kind"} & set(got)


def test_a_training_run_logs_what_metrics_jsonl_holds(tmp_path):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 6, generator=g), torch.randint(0, 3, (64,), generator=g)
    data = as_bundle(DataLoader(TensorDataset(x, y), batch_size=16), (x[:20], y[:20]))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    config = TrainConfig.from_dict({"epochs": 2, "probe_every": 3, "progress": False,
                                    "loss": "cross_entropy", "optimizer": {"name": "sgd", "lr": 0.1}})
    trainer = bp.Trainer(model, "fa", data, config, out=tmp_path / "run")
    logger = make_logger("tensorboard", tmp_path / "run")
    trainer.loggers.append(logger)
    trainer.run()
    logger.close()
    got = read_scalars(tmp_path / "run" / "tensorboard")
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    kinds = {r["kind"] for r in records}
    assert kinds == {"epoch", "probe"}
    checked = 0
    for r in records:
        step = r["epoch"] if r["kind"] == "epoch" else r["step"]
        for tag, value in scalars(r):
            assert got[tag][step] == pytest.approx(value, rel=1e-6, abs=1e-30), (tag, step)
            checked += 1
    assert {"accuracy/test", "loss/train", "grad_angle/0.weight", "grad_angle/2.weight"} <= set(got)
    assert checked > 20


def test_unknown_logger_is_a_config_error(tmp_path):
    with pytest.raises(bp.ConfigError, match="unknown logger 'comet'; accepted: tensorboard"):
        make_logger("comet", tmp_path)


def test_fit_passes_loggers_on(tmp_path):
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(32, 4, generator=g), torch.randint(0, 2, (32,), generator=g)
    torch.manual_seed(0)
    with TensorBoardLogger(tmp_path / "tb") as logger:
        result = bp.fit(nn.Linear(4, 2), "bp", (x, y), (x, y), epochs=2, batch_size=8,
                        loggers=[logger])
    got = read_scalars(tmp_path / "tb")
    assert got["accuracy/test"] == {e: pytest.approx(h["test_accuracy"]) for e, h in
                                    zip((1, 2), result.history)}


def test_cli_logger_flag_writes_events_that_survive_resume(synthetic_root, tmp_path, capsys):
    from bioplausible.cli import main

    out = tmp_path / "run"
    args = ["train", "--rule", "fa", "--dataset", "mnist", "--model", "mlp:784-16-10", "--epochs", "1",
            "--batch-size", "40", "--probe-every", "2", "--quiet", "--logger", "tensorboard"]
    assert main(args + ["--out", str(out)]) == 0
    assert main(["train", "--resume", str(out), "--epochs", "2"]) == 0
    got = read_scalars(out / "tensorboard")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2]
    assert got["accuracy/test"] == {r["epoch"]: pytest.approx(r["test_accuracy"]) for r in epochs}
    probes = [r for r in records if r["kind"] == "probe"]
    assert got["grad_angle/hidden_layers"] == pytest.approx({r["step"]: r["grad_angle"] for r in probes})
    assert got["grad_angle/all_layers"] == pytest.approx({r["step"]: r["grad_angle_all_layers"] for r in probes})


def test_unknown_logger_name_is_refused_before_anything_runs(synthetic_root, tmp_path, capsys):
    from bioplausible.cli import main

    out = tmp_path / "run"
    assert main(["train", "--rule", "fa", "--dataset", "mnist", "--model", "mlp:784-16-10",
                 "--logger", "comet", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown logger 'comet'; accepted: none, tensorboard, wandb" in err
    assert not out.exists()


def test_tags_are_grouped_and_hparams_written(tmp_path):
    from bioplausible.engine.loggers import group_tag

    assert [group_tag(k) for k in ("test_accuracy", "train_loss", "epoch_time", "lr", "grad_angle/1.weight")] == \
        ["accuracy/test", "loss/train", "time/epoch_time", "optimizer/lr", "grad_angle/1.weight"]
    config = TrainConfig.from_dict({"rule": {"name": "kp", "decay": 0.01}}).to_dict()
    logger = make_logger("tensorboard", tmp_path, config=config)
    logger.log({"kind": "epoch", "epoch": 1, "step": 3, "test_accuracy": 50.0, "train_loss": 1.5})
    logger.close()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator as EA
    from tensorboard.plugins.hparams import plugin_data_pb2

    acc = EA(str(tmp_path / "tensorboard"), size_guidance={"tensors": 0})
    acc.Reload()
    content = acc.PluginTagToContent("hparams")
    info = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert info.hparams["rule"].string_value == "kp" and info.hparams["rule.decay"].number_value == 0.01
    assert acc.Scalars("hparam/accuracy/test")[0].value == 50.0


def test_wandb_logger_offline(synthetic_root, tmp_path, capsys, monkeypatch):
    pytest.importorskip("wandb")
    from bioplausible.cli import main

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "run"
    assert main(["train", "--rule", "kp", "--dataset", "mnist", "--model", "mlp:784-16-10", "--epochs", "2",
                 "--batch-size", "40", "--quiet", "--logger", "wandb", "--out", str(out)]) == 0
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("run-*.wandb"))
    # the run file (wandb's record log, read by `wandb sync`) holds the grouped tags and the config
    data = next(runs[0].glob("run-*.wandb")).read_bytes()
    assert b"accuracy/test" in data and b"loss/train" in data and b"optimizer.lr" in data


def test_wandb_logger_logs_grouped_records_and_the_config(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    from bioplausible.engine.loggers import WandbLogger

    calls = {"log": [], "init": {}}

    class FakeRun:
        def define_metric(self, *a, **k):
            pass

        def log(self, data):
            calls["log"].append(data)

        def finish(self):
            calls["finished"] = True

    monkeypatch.setattr(wandb, "init", lambda **kw: calls["init"].update(kw) or FakeRun())
    config = TrainConfig.from_dict({"rule": {"name": "kp", "decay": 0.01}}).to_dict()
    with WandbLogger(tmp_path, config=config) as logger:
        logger.log({"kind": "epoch", "epoch": 1, "step": 3, "test_accuracy": 50.0, "train_loss": 1.5})
        logger.log({"kind": "probe", "epoch": 1, "step": 2, "grad_angle/0.weight": 30.0})
        logger.log({"kind": "event", "event": "diverged"})
    assert calls["log"] == [{"accuracy/test": 50.0, "loss/train": 1.5, "epoch": 1},
                            {"grad_angle/0.weight": 30.0, "step": 2}]
    assert calls["init"]["config"]["rule"] == "kp" and calls["init"]["config"]["rule.decay"] == 0.01
    assert calls["finished"]
