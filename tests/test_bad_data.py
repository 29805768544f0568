"""Bad data is a one-line data error naming the array, never a silent wrong result or a
"diverged, lower the learning rate" (NaN/inf, complex, overflowing values, empty splits,
truncated or oversized npz members); a non-finite evaluation makes a run diverged, not completed."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
import torch
from torch import nn

from bioplausible.cli import main


def _arrays(n=40, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.normal(size=(n, 4)) + y[:, None]
    return {"x_train": x, "y_train": y, "x_test": x[:10].copy(), "y_test": y[:10].copy()}


def _train(tmp_path, capsys, *extra):
    capsys.readouterr()
    status = main(["train", "--rule", "bp", "--dataset", f"npz:{tmp_path / 'd.npz'}", "--model", "mlp:4-3",
                   "--epochs", "1", "--batch-size", "10", "--quiet", "--out", str(tmp_path / "run"), *extra])
    err = capsys.readouterr().err.strip()
    return status, err


def _edit(**change):
    a = _arrays()
    for key, fn in change.items():
        a[key] = fn(a[key])
    return a


def _with(a, index, value):
    a = a.clone() if isinstance(a, torch.Tensor) else a.copy()
    a[index] = value
    return a


@pytest.mark.parametrize("arrays,words,extra", [
    (_edit(x_test=lambda a: _with(a, (3, 1), np.nan)), ["x_test", "nan", "(3, 1)"], []),
    (_edit(x_train=lambda a: _with(a, (7, 0), np.nan)), ["x_train", "nan", "(7, 0)"], []),
    (_edit(x_train=lambda a: _with(a, (0, 2), -np.inf)), ["x_train", "-inf", "(0, 2)"], []),
    (_edit(x_train=lambda a: a * (1 + 1j)), ["x_train", "complex"], []),
    (_edit(x_train=lambda a: a * 1e300), ["x_train", "too large"], []),
    (_edit(x_train=lambda a: a * 1e300), ["x_train", "beyond the range", "float32"],
     ["--set", "dataset.normalize=none"]),
    (_edit(x_test=lambda a: a[:0], y_test=lambda a: a[:0]), ["test split is empty"], []),
    (_edit(x_train=lambda a: a[:0], y_train=lambda a: a[:0]), ["train split is empty"], []),
], ids=["nan-test", "nan-train", "inf-train", "complex", "1e300-standardize", "1e300-none", "empty-test",
        "empty-train"])
def test_bad_values_are_data_errors(tmp_path, capsys, arrays, words, extra):
    np.savez(tmp_path / "d.npz", **arrays)
    status, err = _train(tmp_path, capsys, *extra)
    assert status == 2 and len(err.splitlines()) == 1 and err.startswith("bioplausible: error: dataset"), err
    for w in words:
        assert w in err, (w, err)
    assert "diverged" not in err and "learning rate" not in err
    assert not (tmp_path / "run").exists()


def _npy_bytes(array, shape=None, cut=0):
    buf = io.BytesIO()
    np.lib.format.write_array(buf, array)
    raw = buf.getvalue()
    if shape is not None:  # a header that declares another shape
        head = io.BytesIO()
        np.lib.format.write_array_header_1_0(head, {"descr": np.lib.format.dtype_to_descr(array.dtype),
                                                   "fortran_order": False, "shape": shape})
        raw = head.getvalue() + array.tobytes()
    return raw[: len(raw) - cut]


@pytest.mark.parametrize("member,words", [
    (lambda x: _npy_bytes(x, cut=40), ["x_train", "truncated"]),
    (lambda x: _npy_bytes(x, shape=(10**12, 4)), ["x_train", "declares shape (1000000000000, 4)", "truncated"]),
], ids=["truncated-member", "huge-header"])
def test_damaged_npz_members_are_corrupt_data(tmp_path, capsys, member, words):
    a = _arrays()
    with zipfile.ZipFile(tmp_path / "d.npz", "w") as zf:
        for key, value in a.items():
            zf.writestr(key + ".npy", member(value) if key == "x_train" else _npy_bytes(value))
    status, err = _train(tmp_path, capsys)
    assert status == 2 and len(err.splitlines()) == 1, err
    for w in words:
        assert w in err, (w, err)
    assert "pickled" not in err


class _NanWhenEvaluated(nn.Module):
    """A linear model whose outputs are NaN in eval mode: training is finite, evaluation is not."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 3)

    def forward(self, x):
        y = self.lin(x)
        return y if self.training else y * float("nan")


def test_a_non_finite_evaluation_is_a_diverged_run(tmp_path):
    import bioplausible as bp

    a = _arrays()
    data = {"train": (torch.tensor(a["x_train"], dtype=torch.float32), torch.tensor(a["y_train"])),
            "test": (torch.tensor(a["x_test"], dtype=torch.float32), torch.tensor(a["y_test"]))}
    result = bp.fit(_NanWhenEvaluated(), "bp", data, epochs=2, batch_size=10,
                    out=tmp_path / "run")
    assert result.summary["status"] == "diverged", result.summary
    assert "test_loss" in result.summary["message"] and "not finite" in result.summary["message"]


@pytest.mark.parametrize("fix,words", [
    (lambda x, y: (_with(x, (2, 3), float("inf")), y), ["train X", "inf", "(2, 3)"]),
    (lambda x, y: (x[:0], y[:0]), ["train data is empty"]),
    (lambda x, y: (x.to(torch.complex64), y), ["complex"]),
], ids=["inf", "empty", "complex"])
def test_python_tensors_with_bad_values_are_data_errors(fix, words):
    import bioplausible as bp

    a = _arrays()
    x, y = fix(torch.tensor(a["x_train"], dtype=torch.float32), torch.tensor(a["y_train"]))
    with pytest.raises(bp.DataError) as info:
        bp.fit(nn.Linear(4, 3), "bp", (x, y), epochs=1, batch_size=10)
    for w in words:
        assert w in str(info.value), (w, str(info.value))


def test_ghost_mb_in_float16_runs_on_the_torch_path(tmp_path):
    """The compiled MB kernel takes float32/float64 arrays only; float16 must not reach it."""
    import bioplausible as bp

    a = _arrays(n=6)
    rule = bp.make("ghost-mb", free_steps=5, clamped_steps=3, kernel="auto")
    model = bp.MLP([4, 5, 3], activation="sigmoid", output_activation="sigmoid").half()
    data = {"train": (torch.tensor(a["x_train"], dtype=torch.float16), torch.tensor(a["y_train"])),
            "test": (torch.tensor(a["x_test"], dtype=torch.float16), torch.tensor(a["y_test"]))}
    result = bp.fit(model, rule, data, epochs=1, batch_size=1, dtype="float16")
    assert result.summary["status"] == "completed", result.summary
    assert model[1].weight.dtype == torch.float16
