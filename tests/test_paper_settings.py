"""Settings added to follow the papers' and the authors' code: per-image standardisation, the NP
CNN's first convolution, the Table 2b noise controls and the Fig. 2 noise sweep."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import bioplausible as bp
from bioplausible.data.core import per_image_standardize
from bioplausible.experiments.presets import get_preset


def test_per_image_standardize_matches_tensorflows_formula():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(4, 3, 5, 5)).astype(np.float64)
    x[3] = 7.0                                   # a constant image: std 0, divided by 1/sqrt(n)
    got = per_image_standardize(torch.from_numpy(x.copy())).numpy()
    n = x[0].size
    for i in range(4):
        want = (x[i] - x[i].mean()) / max(x[i].std(), 1.0 / np.sqrt(n))
        np.testing.assert_allclose(got[i], want, rtol=1e-12, atol=1e-12)
    assert np.allclose(got[:3].reshape(3, -1).mean(1), 0) and np.allclose(got[:3].reshape(3, -1).std(1), 1)


def test_load_dataset_per_image(synthetic_root):
    data = bp.load_dataset("mnist", normalize="per_image", flatten=True)
    x = data.train.x.double()
    assert torch.allclose(x.mean(1), torch.zeros(len(x), dtype=x.dtype), atol=1e-5)
    assert torch.allclose(x.std(1, unbiased=False), torch.ones(len(x), dtype=x.dtype), atol=1e-4)


def test_npcnn_first_convolution_option():
    paper = bp.build_model("npcnn", input_shape=(3, 32, 32), num_classes=10)
    code = bp.build_model("npcnn,activation=tanh,conv1_channels=96,conv1_kernel=5", input_shape=(3, 32, 32),
                          num_classes=10)
    assert paper[0].weight.shape == (32, 3, 3, 3) and code[0].weight.shape == (96, 3, 5, 5)
    assert code[3].weight.shape == (128, 96, 5, 5)
    assert isinstance(code[1], torch.nn.Tanh)
    assert code(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(bp.ConfigError):
        bp.build_model("npcnn,conv1_kernel=4", input_shape=(3, 32, 32), num_classes=10)


def test_np_presets_carry_the_missing_cells():
    cifar = get_preset("np-table1-cifar10")
    assert cifar.runs["bp-noise"] == {"name": "bp-noise", "c_h": 0.067}
    assert cifar.runs["dfa-noise"] == {"name": "dfa-noise", "c_h": 0.067}
    assert cifar.paper_results["values"]["bp-noise"] == 76.8
    code = get_preset("np-table1-cifar10-code")
    config, _ = code.resolved("full")
    assert config["epochs"] == 200 and config["dataset"]["normalize"] == "per_image"
    sweep = get_preset("np-fig2-mnist-noise")
    assert sorted(r["c_h"] for r in sweep.runs.values()) == [0.0001, 0.001, 0.01, 0.1]
    base = get_preset("np-fig2-mnist")
    full, _ = sweep.resolved("full")
    ref, _ = base.resolved("full")
    for key in ("dataset", "model", "loss", "epochs", "batch_size"):
        assert full[key] == ref[key]
