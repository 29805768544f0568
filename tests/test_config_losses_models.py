"""Config validation, loss conventions and model builders."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import bioplausible as bp
from bioplausible.core.losses import get_loss
from bioplausible.engine.config import TrainConfig, load_config
from bioplausible.errors import ConfigError, UnknownNameError


# ------------------------------------------------------------------ config
def test_overrides_parse_and_type_check():
    c = TrainConfig.from_dict({"rule": "kp"}, ["optimizer.lr=0.01", "rule.decay=1e-4", "epochs=3"])
    assert c["optimizer"]["lr"] == 0.01 and c["rule"] == {"name": "kp", "decay": 1e-4} and c["epochs"] == 3
    for bad, needle in [("optimizer.lr=abc", "optimizer.lr must be a number"),
                        ("epoch=3", "did you mean 'epochs'"),
                        ("epochs=0", "at least 1"),
                        ("batch_size=1.5", "batch_size must be an integer"),
                        ("dataset.flatten=3", "true or false"),
                        ("noequals", "key=value")]:
        with pytest.raises(ConfigError, match=needle):
            TrainConfig.from_dict({}, [bad])


def test_yaml_config_file(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text("rule: {name: fa}\noptimizer: {name: adam, lr: 0.001}\nepochs: 2\n")
    c = load_config(f, ["epochs=5"])
    assert c["rule"]["name"] == "fa" and c["optimizer"]["name"] == "adam" and c["epochs"] == 5
    f.write_text("rule: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(f)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


# ------------------------------------------------------------------ losses
def test_mse_conventions_relate_as_their_definitions_say():
    torch.manual_seed(0)
    o, y = torch.randn(8, 5, dtype=torch.float64), torch.randint(0, 5, (8,))
    t = F.one_hot(y, 5).double()
    by_hand = ((o - t) ** 2).sum()
    assert torch.isclose(get_loss("mse_sum")(o, y), by_hand)
    assert torch.isclose(get_loss("mse_half_sum")(o, y), by_hand / 2)
    assert torch.isclose(get_loss("mse_batchmean")(o, y), by_hand / 8)
    assert torch.isclose(get_loss("mse")(o, y), by_hand / 40)
    assert torch.isclose(get_loss("mse_sum").mean_per_example(o, y), by_hand / 8)
    assert torch.isclose(get_loss("mse")(o, t), by_hand / 40)  # dense targets pass through


def test_cross_entropy_and_bce_match_their_formulas():
    o, y = torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([0])
    ce = -torch.log(torch.exp(torch.tensor(2.0)) / torch.exp(o).sum())
    assert torch.isclose(get_loss("cross_entropy")(o, y), ce)
    sig = torch.sigmoid(o[0])
    bce = -(torch.log(sig[0]) + torch.log(1 - sig[1]) + torch.log(1 - sig[2])) / 3
    assert torch.isclose(get_loss("bce")(o, y), bce)
    with pytest.raises(UnknownNameError, match="mse"):
        get_loss("mse_summ")


# ------------------------------------------------------------------ models
def test_mlp_layers_activations_and_bias():
    m = bp.build_model("mlp:784-500-300-10", activation=["sigmoid", "tanh"], bias=False)
    kinds = [type(x).__name__ for x in m]
    assert kinds == ["Flatten", "Linear", "Sigmoid", "Linear", "Tanh", "Linear", "Identity"]
    assert all(x.bias is None for x in m if isinstance(x, torch.nn.Linear))
    assert m(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_mlp_spec_options_and_init():
    torch.manual_seed(0)
    m = bp.build_model("mlp:784-1000-10,activation=relu,init=normal:0.05")
    w = m[1].weight.detach()
    assert abs(float(w.std()) - 0.05) < 0.002 and float(m[1].bias.detach().abs().max()) == 0.0


def test_model_errors_are_clear():
    with pytest.raises(ConfigError, match="data have 3072"):
        bp.build_model("mlp:784-10", input_shape=(3, 32, 32), num_classes=10)
    with pytest.raises(ConfigError, match="-100"):
        bp.build_model("mlp:3072-10", input_shape=(3, 32, 32), num_classes=100)
    with pytest.raises(ConfigError, match="unknown activation"):
        bp.build_model("mlp:4-3-2", activation="sigmoidd")
    with pytest.raises(UnknownNameError, match="lenet"):
        bp.build_model("lenett")


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_cnns_build_for_both_input_shapes(shape):
    for name in ("lenet", "npcnn"):
        m = bp.build_model(name, input_shape=shape, num_classes=100)
        assert m(torch.zeros(2, *shape)).shape == (2, 100)


def test_npcnn_architecture_is_the_papers():
    m = bp.build_model("npcnn", input_shape=(3, 32, 32), num_classes=10)
    convs = [x for x in m if isinstance(x, torch.nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size) for c in convs] == [(32, (3, 3)), (128, (5, 5)), (256, (5, 5))]
    fcs = [x for x in m if isinstance(x, torch.nn.Linear)]
    assert [f.out_features for f in fcs] == [2048, 2048, 10]
    assert sum(isinstance(x, torch.nn.Dropout) for x in m) == 3


def test_unknown_rule_and_option():
    with pytest.raises(UnknownNameError, match="Did you mean 'bp'"):
        bp.make("bpp")
    with pytest.raises(ConfigError, match="no option"):
        bp.make("bp", decay=0.1)


@pytest.mark.parametrize("name", ["mse", "mse_batchmean", "mse_sum", "mse_half_sum", "cross_entropy", "bce"])
def test_per_sample_is_each_examples_loss_in_the_losss_convention(name):
    """Each entry is the loss of that example alone (batch of one, times N for mean losses,
    since a batch-mean loss of one example is that example's loss); mean/sum give the batch loss."""
    torch.manual_seed(1)
    o, y = torch.randn(6, 4, dtype=torch.float64), torch.randint(0, 4, (6,))
    loss = get_loss(name)
    per = loss.per_sample(o, y)
    assert per.shape == (6,)
    for i in range(6):
        alone = loss(o[i : i + 1], y[i : i + 1])
        assert torch.isclose(per[i], alone), (name, i)
    total = per.sum() if loss.reduction == "sum" else per.mean()
    assert torch.isclose(total, loss(o, y))
