"""``fit`` on standard PyTorch data: DataLoader, Dataset, TensorDataset, (X, y) tensors.

Oracles: (1) a DataLoader run equals the hand-written loop over the same loader
(``rule.train_step``; SGD ``W ← W − lr·grad``; ``rule.after_step``), step for step in float64;
(2) tensors, NumPy arrays, a TensorDataset and a generic map-style Dataset of the same examples
are batched and shuffled by the trainer exactly like a DataBundle of the same tensors, so the
trained weights are identical; (3) evaluation numbers equal ``bp.evaluate`` on the same data;
(4) a loader shuffling from torch's global RNG resumes exactly.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

import bioplausible as bp
from bioplausible.data import DataBundle, DatasetInfo, Split

DT = torch.float64


def blobs(n=96, dim=10, classes=3, seed=0):
    centers = 3 * torch.randn(classes, dim, generator=torch.Generator().manual_seed(99))
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    return centers[y] + torch.randn(n, dim, generator=g), y


def net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(10, 16), nn.Tanh(), nn.Linear(16, 3))


class PairDataset(Dataset):
    """A user's own map-style dataset (not a TensorDataset)."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


OPTS = {"epochs": 2, "batch_size": 16, "lr": 0.05, "dtype": "float64", "seed": 3, "loss": "cross_entropy"}


@pytest.mark.parametrize("rule", ["fa", "dfa", "ar"])
def test_dataloader_run_equals_the_hand_written_loop(rule):
    x, y = blobs()
    loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=False)  # float32 batches
    result = bp.fit(net(), rule, loader, **{**OPTS, "optimizer": "sgd"})
    assert next(result.model.parameters()).dtype == DT

    r = bp.make(rule)
    r.set_seed(OPTS["seed"])
    model = r.prepare(net().to(DT))
    loss = bp.get_loss("cross_entropy")
    params = [p for g in r.param_groups(model) for p in g["params"]]
    for _ in range(OPTS["epochs"]):
        for xb, yb in loader:
            r.train_step(model, xb.to(DT), yb, loss)
            with torch.no_grad():
                for p in params:
                    if p.grad is not None:
                        p.sub_(OPTS["lr"] * p.grad)
            r.after_step(model)
    got, ref = result.model.state_dict(), model.state_dict()
    assert set(got) == set(ref)
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("rule", ["fa", "dfa", "ar"])
def test_tensors_arrays_and_datasets_train_like_a_bundle(rule):
    x, y = blobs()
    xt, yt = blobs(n=30, seed=1)
    info = DatasetInfo("blobs", (10,), 3, "multiclass")
    bundle = DataBundle(Split(x, y), Split(xt, yt), None, info)
    ref = bp.fit(net(), rule, bundle, **OPTS)
    forms = {
        "tensors": ((x, y), (xt, yt)),
        "arrays": ((x.numpy(), y.numpy()), (xt.numpy(), yt.numpy())),
        "tensor_dataset": (TensorDataset(x, y), TensorDataset(xt, yt)),
        "dataset": (PairDataset(x, y), PairDataset(xt, yt)),
    }
    for form, (train, test) in forms.items():
        got = bp.fit(net(), rule, train, test, **OPTS)
        for k, v in ref.model.state_dict().items():
            assert torch.equal(got.model.state_dict()[k], v), (form, k)
        assert got.history[-1]["test_accuracy"] == ref.history[-1]["test_accuracy"], form
    assert ref.history[-1]["test_accuracy"] > 80  # and it learns: separable blobs


def test_eval_loaders_and_dict_form_are_evaluated():
    x, y = blobs()
    xt, yt = blobs(n=40, seed=1)
    xv, yv = blobs(n=20, seed=2)
    train = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True)
    evals = {"test": DataLoader(TensorDataset(xt, yt), batch_size=7),
             "val": DataLoader(TensorDataset(xv, yv), batch_size=64)}
    result = bp.fit(net(), "fa", train, evals, **OPTS)
    last = result.history[-1]
    model = result.model
    for name, (xe, ye) in {"test": (xt, yt), "val": (xv, yv)}.items():
        ref = bp.evaluate(model, Split(xe.to(DT), ye), "cross_entropy")
        assert last[f"{name}_accuracy"] == pytest.approx(ref["accuracy"])
        assert last[f"{name}_loss"] == pytest.approx(ref["loss"], rel=1e-12)
    again = bp.fit(net(), "fa", {"train": (x, y), "test": (xt, yt)}, **OPTS)
    assert "test_accuracy" in again.history[-1] and "val_accuracy" not in again.history[-1]


def test_without_eval_data_nothing_is_evaluated(tmp_path):
    x, y = blobs()
    result = bp.fit(net(), "fa", DataLoader(TensorDataset(x, y), batch_size=32), out=tmp_path / "r",
                    **OPTS)
    assert result.status == "completed"
    assert not any(k.startswith("test_") for k in result.history[-1])
    assert result.summary["best_test_accuracy"] is None


def test_shuffling_loader_resumes_exactly(tmp_path):
    x, y = blobs()

    def loader():
        return DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True)  # global RNG

    full = bp.fit(net(), "fa", loader(), out=tmp_path / "full", **{**OPTS, "epochs": 3})
    bp.fit(net(), "fa", loader(), out=tmp_path / "part", **{**OPTS, "epochs": 1})
    resumed = bp.fit(net(), "fa", loader(), out=tmp_path / "part", resume=True, **{**OPTS, "epochs": 3})
    for k, v in full.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[k], v), k


def test_multilabel_targets_are_recognised():
    x, _ = blobs()
    g = torch.Generator().manual_seed(5)
    labels = (torch.rand(len(x), 3, generator=g) > 0.5).float()
    assert bp.as_bundle((x, labels)).info.task == "multilabel"
    one_hot = torch.nn.functional.one_hot(torch.arange(len(x)) % 3, 3).float()
    assert bp.as_bundle((x, one_hot)).info.task == "multiclass"
    loader = DataLoader(TensorDataset(x, labels), batch_size=32)
    bundle = bp.as_bundle(loader, loader, task="multilabel")
    assert bundle.info.task == "multilabel" and torch.equal(bundle.test.y, labels)
    result = bp.fit(net(), "fa", bundle, **{**OPTS, "loss": "auto"})
    assert "test_auc" in result.history[-1]


@pytest.mark.parametrize("bad", [42, ["not", "a", "tensor", "pair"], (torch.zeros(3, 2),),
                                 {"weights": torch.zeros(2)}, np.zeros((4, 2))])
def test_other_types_are_a_type_error_naming_what_is_accepted(bad):
    with pytest.raises((TypeError, bp.ConfigError)) as info:
        bp.fit(net(), "fa", bad, epochs=1)
    assert "DataLoader" in str(info.value) or "'train'" in str(info.value)


def test_type_error_message():
    with pytest.raises(TypeError, match=r"cannot use a int as train data; accepted: a DataLoader"):
        bp.as_bundle(42)
    with pytest.raises(TypeError, match=r"cannot use a tuple of 2 .DataLoader, DataLoader. as train data "
                                        r"\(give evaluation data separately"):
        loader = DataLoader(TensorDataset(torch.zeros(2, 1), torch.zeros(2)))
        bp.as_bundle((loader, loader))
    bad = DataLoader(TensorDataset(torch.zeros(4, 2), torch.zeros(4), torch.zeros(4)), batch_size=2)
    with pytest.raises(TypeError, match=r"\(inputs, targets\) pairs, got a list of length 3"):
        bp.fit(net(), "fa", bad, epochs=1)
    with pytest.raises(bp.ConfigError, match="same first dimension"):
        bp.as_bundle((torch.zeros(4, 2), torch.zeros(3)))


def test_loader_over_an_iterable_dataset_trains():
    from torch.utils.data import IterableDataset

    x, y = blobs()

    class Stream(IterableDataset):
        def __iter__(self):
            return iter(zip(x, y))

    loader = DataLoader(Stream(), batch_size=16)
    assert len(bp.as_bundle(loader).train) == 0  # unknown length: no progress total
    result = bp.fit(net(), "fa", loader, (x, y), **OPTS)
    assert result.status == "completed" and result.history[-1]["test_accuracy"] > 80
    with pytest.raises(TypeError, match="IterableDataset"):
        bp.as_bundle(Stream())
