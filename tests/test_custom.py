"""The user's own model and data from configs and the CLI: ``npz:PATH``, ``pkg.module:callable``.

Oracles: the arrays come back exactly as written (with ``normalize="none"``), the
standardisation uses the training split's own mean/std computed here with NumPy, the split and
subset rules are the built-in ones (last ``val_size`` training rows; first N training rows),
and every bad input is one line with exit status 2 before any run directory is written.
"""

from __future__ import annotations

import json
import sys
import textwrap

import numpy as np
import pytest
import torch
from torch import nn

import bioplausible as bp
from bioplausible.cli import main

NETS = '''
import torch
from torch import nn


class Residual(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1)
        self.bn = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return torch.relu(x + self.conv2(torch.relu(self.bn(self.conv1(x)))))


def tiny_resnet(num_classes=10, input_shape=(3, 8, 8), width=4):
    c = input_shape[0]
    return nn.Sequential(nn.Conv2d(c, width, 3, padding=1), nn.ReLU(), Residual(width),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(4 * width, num_classes))


def mlp(hidden=8, act="tanh"):
    acts = {"tanh": nn.Tanh(), "relu": nn.ReLU()}
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, hidden), acts[act], nn.Linear(hidden, 4))


def not_a_model():
    return 42


NOT_CALLABLE = 3
'''

DATA = '''
import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset


class Pairs(Dataset):
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def load(n=40, kind="tuple"):
    g = np.random.default_rng(0)
    x = g.normal(size=(n + 10, 5)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    if kind == "tuple":
        return (x[:n], y[:n]), (x[n:], y[n:])
    if kind == "datasets":
        return {"train": Pairs(torch.from_numpy(x[:n]), torch.from_numpy(y[:n])),
                "test": TensorDataset(torch.from_numpy(x[n:]), torch.from_numpy(y[n:]))}
    if kind == "arrays":
        return {"x_train": x[:n], "y_train": y[:n], "x_test": x[n:], "y_test": y[n:]}
    return "nonsense"
'''


def _images(n, seed):
    g = np.random.default_rng(seed)
    y = g.integers(0, 4, size=n)
    x = g.normal(size=(n, 3, 8, 8)).astype(np.float32)
    x[np.arange(n), y % 3, :, :] += 2.0 * (1 + y[:, None, None] // 3)  # learnable from colour
    return x, y


@pytest.fixture
def user_dir(tmp_path, monkeypatch):
    """A folder with the user's package ``tests_pkg`` and an npz file, on sys.path, as cwd."""
    pkg = tmp_path / "tests_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "nets.py").write_text(textwrap.dedent(NETS))
    (pkg / "data.py").write_text(textwrap.dedent(DATA))
    (tmp_path / "garbage.npz").write_bytes(b"not a zip")
    np.save(tmp_path / "single.npy", np.zeros(3))
    xtr, ytr = _images(64, 0)
    xte, yte = _images(24, 1)
    np.savez(tmp_path / "data.npz", x_train=xtr, y_train=ytr, x_test=xte, y_test=yte)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    for name in [m for m in sys.modules if m == "tests_pkg" or m.startswith("tests_pkg.")]:
        del sys.modules[name]


# ----------------------------------------------------------------------------- datasets
def test_npz_arrays_come_back_with_the_builtin_options(user_dir):
    raw = np.load(user_dir / "data.npz")
    d = bp.load_dataset("npz:data.npz", normalize="none")
    assert torch.equal(d.train.x, torch.from_numpy(raw["x_train"]))
    assert torch.equal(d.test.y, torch.from_numpy(raw["y_test"]))
    assert d.info.input_shape == (3, 8, 8) and d.info.num_classes == 4 and d.val is None
    d = bp.load_dataset("npz:data.npz", val_size=10, subset=30, flatten=True, dtype=torch.float64)
    xtr = raw["x_train"][:54].astype(np.float64)  # val = the last 10 rows, then subset 30
    mean = xtr[:30].mean(axis=(0, 2, 3), keepdims=True)
    std = xtr[:30].std(axis=(0, 2, 3), keepdims=True)
    ref = ((xtr[:30] - mean) / std).reshape(30, -1)
    np.testing.assert_allclose(d.train.x.numpy(), ref, rtol=1e-12, atol=1e-12)
    # subset cuts the training split only: validation (val_size) and test stay whole
    assert len(d.val) == 10 and torch.equal(d.val.y, torch.from_numpy(raw["y_train"][54:64]))
    assert torch.equal(d.test.y, torch.from_numpy(raw["y_test"])) and d.info.input_shape == (192,)
    one_hot = bp.load_dataset(f"npz:{user_dir / 'data.npz'}", one_hot=True)  # absolute path
    assert one_hot.train.y.shape == (64, 4)


def test_npz_with_its_own_validation_split_and_multilabel_targets(tmp_path):
    g = np.random.default_rng(2)
    y = (g.random((12, 3)) > 0.5).astype(np.float32)
    y[0] = [1, 1, 0]  # not one-hot
    x = g.normal(size=(12, 4))
    np.savez(tmp_path / "m.npz", x_train=x, y_train=y, x_test=x[:4], y_test=y[:4], x_val=x[:2], y_val=y[:2])
    d = bp.load_dataset(f"npz:{tmp_path / 'm.npz'}", normalize="none")
    assert d.info.task == "multilabel" and len(d.val) == 2
    feat = bp.load_dataset(f"npz:{tmp_path / 'm.npz'}")  # (N, D): per-feature statistics
    np.testing.assert_allclose(feat.train.x.double().mean(0).numpy(), 0, atol=1e-6)
    np.testing.assert_allclose(feat.train.x.double().std(0, unbiased=False).numpy(), 1, atol=1e-5)
    with pytest.raises(bp.ConfigError, match="ships its own validation split"):
        bp.load_dataset(f"npz:{tmp_path / 'm.npz'}", val_size=2)


@pytest.mark.parametrize("kind", ["tuple", "datasets", "arrays"])
def test_dataset_from_a_callable(user_dir, kind):
    d = bp.load_dataset("tests_pkg.data:load", normalize="none", n=30, kind=kind)
    g = np.random.default_rng(0)
    x = g.normal(size=(40, 5)).astype(np.float32)
    np.testing.assert_array_equal(d.train.x.numpy(), x[:30])
    np.testing.assert_array_equal(d.test.y.numpy(), (x[30:, 0] > 0).astype(np.int64))
    assert d.info.input_shape == (5,) and d.info.num_classes == 2


@pytest.mark.parametrize("name,options,error,needle", [
    ("npz:nothere.npz", {}, bp.MissingDataError, "no file nothere.npz"),
    ("npz:garbage.npz", {}, bp.CorruptDataError, r"is not an .npz file \(a zip of .npy arrays\); save it"),
    ("npz:single.npy", {}, bp.CorruptDataError, "is a single .npy array"),
    ("tests_pkg.nodata:load", {}, bp.UnknownNameError, "cannot import 'tests_pkg.nodata'"),
    ("tests_pkg.data:nope", {}, bp.UnknownNameError, "has no 'nope'"),
    ("tests_pkg.nets:NOT_CALLABLE", {}, bp.ConfigError, "not a callable"),
    ("tests_pkg.data:load", {"kind": "other"}, bp.DataError, "returned a str"),
    ("tests_pkg.data:load", {"colour": 1}, bp.ConfigError, "does not take options"),
])
def test_bad_dataset_names(user_dir, name, options, error, needle):
    with pytest.raises(error, match=needle):
        bp.load_dataset(name, **options)


# ----------------------------------------------------------------------------- models
def test_model_by_import_path_with_options(user_dir):
    model = bp.build_model("tests_pkg.nets:mlp,hidden=6,act=relu", input_shape=(3, 8, 8), num_classes=4)
    assert model[1].out_features == 6 and isinstance(model[2], nn.ReLU)
    net = bp.build_model("tests_pkg.nets:tiny_resnet", input_shape=(3, 8, 8), num_classes=4)
    assert net[-1].out_features == 4  # num_classes and input_shape passed on: accepted by name
    assert net.training  # the shape check ran in eval mode and restored the mode


@pytest.mark.parametrize("spec,kwargs,needle", [
    ("tests_pkg.nets:mlp", {"input_shape": (1, 8, 8), "num_classes": 4},
     "cannot take the dataset's inputs of shape (1, 8, 8)"),
    ("tests_pkg.nets:mlp", {"input_shape": (3, 8, 8), "num_classes": 10},
     "outputs of shape (4,), but the dataset has 10 classes"),
    ("tests_pkg.nets:not_a_model", {}, "returned a int, not an nn.Module"),
    ("tests_pkg.nets:mlp,depth=3", {}, "unexpected keyword argument 'depth'"),
    ("tests_pkg.nots:mlp", {}, "cannot import 'tests_pkg.nots'"),
])
def test_bad_models_are_one_line_user_errors(user_dir, spec, kwargs, needle):
    with pytest.raises(bp.UserError) as info:
        bp.build_model(spec, **kwargs)
    assert needle in str(info.value) and "\n" not in str(info.value)


# ----------------------------------------------------------------------------- CLI
def test_cli_compare_own_model_on_own_npz(user_dir, capsys):
    out = user_dir / "cmp"
    args = ["compare", "--model", "tests_pkg.nets:tiny_resnet", "--dataset", "npz:data.npz",
            "--rules", "bp,fa,dfa", "--epochs", "2", "--batch-size", "16", "--lr", "0.05",
            "--probe-every", "2", "--quiet", "--out", str(out)]
    assert main(args) == 0
    assert (out / "curves.png").is_file()
    report = (out / "report.md").read_text()
    assert all(f"| {rule} | 1 |" in report for rule in ("bp", "fa", "dfa")) and report.count("completed 1 |") == 3
    for rule in ("bp", "fa", "dfa"):
        summary = json.loads((out / f"{rule}-seed0" / "summary.json").read_text())
        # the run records the file it trained on by its absolute path (a resume elsewhere finds the same)
        assert summary["status"] == "completed" and summary["dataset"] == f"npz:{(user_dir / 'data.npz').resolve()}"
        probes = [json.loads(x) for x in (out / f"{rule}-seed0" / "metrics.jsonl").read_text().splitlines()
                  if json.loads(x)["kind"] == "probe"]
        assert probes  # the probe ran on the user's model
        state = torch.load(out / f"{rule}-seed0" / "model.pt", weights_only=True)
        from tests_pkg.nets import tiny_resnet

        tiny_resnet(num_classes=4).load_state_dict(state)  # strict: the user's own architecture
    assert "report:" in capsys.readouterr().out


@pytest.mark.parametrize("args,needle", [
    (["--model", "tests_pkg.nots:tiny_resnet"], "cannot import 'tests_pkg.nots'"),
    (["--model", "tests_pkg.nets:not_a_model"], "not an nn.Module"),
    (["--dataset", "tests_pkg.data:load"], "cannot take the dataset's inputs of shape (5,)"),
    (["--dataset", "npz:missing_y.npz"], "has no array y_test"),
    (["--dataset", "npz:pickled.npz"], "pickled Python objects"),
])
def test_cli_bad_inputs_one_line_exit_2(user_dir, capsys, args, needle):
    g = np.random.default_rng(0)
    x = g.normal(size=(8, 3, 8, 8))
    np.savez(user_dir / "missing_y.npz", x_train=x, y_train=np.zeros(8), x_test=x)
    labels = np.empty(8, dtype=object)
    labels[:] = [str(i % 2) for i in range(8)]
    np.savez(user_dir / "pickled.npz", x_train=x, y_train=labels, x_test=x, y_test=labels)
    base = {"--model": "tests_pkg.nets:tiny_resnet", "--dataset": "npz:data.npz"}
    base.update(dict(zip(args[::2], args[1::2])))
    out = user_dir / "cmp"
    argv = ["compare", "--rules", "bp,fa", "--epochs", "1", "--quiet", "--out", str(out)]
    argv += [t for kv in base.items() for t in kv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("bioplausible: error:") and needle in err, err
    assert not out.exists()


def test_fit_and_configs_take_the_names_too(user_dir):
    from bioplausible.engine.config import TrainConfig

    torch.manual_seed(0)
    model = bp.build_model("tests_pkg.nets:mlp,hidden=5", input_shape=(3, 8, 8), num_classes=4)
    result = bp.fit(model, "fa", "npz:data.npz", epochs=1, batch_size=16)
    assert result.status == "completed" and result.summary["dataset"] == "npz:data.npz"
    config = TrainConfig.from_dict({"model": {"spec": "tests_pkg.nets:mlp", "hidden": 7},
                                    "dataset": {"name": "tests_pkg.data:load", "n": 20}})
    data = bp.load_dataset(config["dataset"]["name"],
                           **{k: v for k, v in config.dataset_options().items() if v is not None})
    assert len(data.train) == 20
    net = bp.build_model(config["model"]["spec"], **config.model_options())
    assert net[1].out_features == 7


def test_the_installed_command_reports_a_bad_import_path(user_dir):
    """The console script, with the user's package folder on PYTHONPATH (the working directory
    is not searched)."""
    import os
    import subprocess
    from pathlib import Path

    script = Path(sys.executable).with_name("bioplausible")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(user_dir), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([str(script), "compare", "--rules", "bp,fa",
                           "--model", "tests_pkg.nets:tiny_resnett", "--dataset", "npz:data.npz",
                           "--out", str(user_dir / "cmp")], check=False, cwd=user_dir,
                          env={**env, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    err = proc.stderr.strip()
    assert len(err.splitlines()) == 1 and "module 'tests_pkg.nets' has no 'tiny_resnett'" in err, err


def test_the_working_directory_is_never_searched(tmp_path, monkeypatch):
    """A module lying in the working directory (a downloaded folder) is not importable by name
    unless the user puts the folder on the import path; importing it would run its code."""
    import os

    pkg = tmp_path / "own_cwd_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(f"open({str(tmp_path / 'IMPORTED')!r}, 'w').close()\n")
    (pkg / "nets.py").write_text(textwrap.dedent(NETS))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", os.getcwd())])
    try:
        with pytest.raises(bp.UnknownNameError, match=r"cannot import 'own_cwd_pkg.nets'.*PYTHONPATH=\."):
            bp.build_model("own_cwd_pkg.nets:mlp,hidden=3")
        assert not (tmp_path / "IMPORTED").exists() and os.getcwd() not in sys.path
        monkeypatch.syspath_prepend(str(tmp_path))  # what PYTHONPATH=. does
        assert bp.build_model("own_cwd_pkg.nets:mlp,hidden=3")[1].out_features == 3
    finally:
        for name in [m for m in sys.modules if m.startswith("own_cwd_pkg")]:
            del sys.modules[name]


def test_default_run_directories_name_the_data_without_path_separators(user_dir):
    from bioplausible.data.custom import run_label
    from bioplausible.experiments.jobs import plan

    assert run_label("npz:/data/my set.npz") == "npz-my_set"
    assert run_label("tests_pkg.data:load") == "tests_pkg.data-load" and run_label("mnist") == "mnist"
    (job,) = plan({"rule": "fa", "dataset": {"name": f"npz:{user_dir / 'data.npz'}"}})
    assert job.run_dir.startswith("runs/train-fa-npz-data-") and job.run_dir.count("/") == 1
