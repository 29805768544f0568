"""CIFAR ResNets (He et al. 2016 §4.2) and the crop + flip augmentation (``dataset.augment``)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import bioplausible as bp
from bioplausible.data.augment import Augment, pad_fill, parse_augment
from bioplausible.engine.config import TrainConfig
from bioplausible.engine.trainer import Trainer
from bioplausible.errors import ConfigError
from bioplausible.models.resnet_cifar import CifarResNet


# ------------------------------------------------------------------------------------ ResNet
@pytest.mark.parametrize("depth,params_m", [(20, 0.27), (32, 0.46), (56, 0.85)])
def test_resnet_depth_and_parameter_count_match_the_paper(depth, params_m):
    model = bp.build_model(f"resnet{depth}", input_shape=(3, 32, 32), num_classes=10)
    weighted = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert len(weighted) == depth  # 6n + 2 weighted layers with option-A shortcuts
    n_params = sum(p.numel() for p in model.parameters())
    assert round(n_params / 1e6, 2) == params_m  # He et al. 2016, Table 6
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_resnet_without_batchnorm_and_option_b():
    plain = bp.build_model("resnet20,batchnorm=false")
    assert not any(isinstance(m, nn.BatchNorm2d) for m in plain.modules())
    assert all(m.bias is not None for m in plain.modules() if isinstance(m, nn.Conv2d))
    proj = bp.build_model("resnet20,shortcut=B")
    convs = [m for m in proj.modules() if isinstance(m, nn.Conv2d)]
    assert sum(m.kernel_size == (1, 1) for m in convs) == 2  # one projection per downsampling
    with pytest.raises(ConfigError):
        bp.build_model("resnet20,shortcut=C")
    with pytest.raises(ConfigError):
        CifarResNet(depth=21)
    with pytest.raises(ConfigError):
        bp.build_model("resnet20", input_shape=(3072,))


def test_option_a_shortcut_subsamples_and_zero_pads():
    model = CifarResNet(20, width=4)
    block = model.blocks[3]  # first block of stage 2: 4 -> 8 channels, stride 2
    x = torch.randn(2, 4, 8, 8)
    s = block.shortcut(x)
    assert s.shape == (2, 8, 4, 4)
    assert torch.equal(s[:, :4], x[:, :, ::2, ::2]) and not s[:, 4:].any()


@pytest.mark.parametrize("batchnorm", [True, False])
def test_fa_with_feedback_equal_to_weights_gives_bp_gradient_on_resnet(batchnorm):
    """FA through B = W (``feedback_init="weight"``) must be BP: convert covers every layer and the
    identity shortcuts carry the error as in BP."""
    torch.manual_seed(0)
    base = CifarResNet(20, input_shape=(3, 8, 8), num_classes=5, batchnorm=batchnorm,
                       width=4).double()
    x = torch.randn(6, 3, 8, 8, dtype=torch.float64)
    y = torch.randint(0, 5, (6,))
    loss = bp.get_loss("cross_entropy")
    ref = bp.make("bp").prepare(_copy(base), example=x[:2])
    bp.make("bp").train_step(ref, x, y, loss)
    rule = bp.make("fa", feedback_init="weight")
    model = rule.prepare(_copy(base), example=x[:2])
    rule.train_step(model, x, y, loss)
    converted = [m for m in model.modules() if hasattr(m, "pathway")]
    assert len(converted) == 20
    grads = {k: p.grad for k, p in ref.named_parameters()}
    for name, p in model.named_parameters():
        if name in grads:
            torch.testing.assert_close(p.grad, grads[name], rtol=1e-9, atol=1e-12)
    # with random feedback the hidden layers' gradients differ from BP's
    fa = bp.make("fa")
    model = fa.prepare(_copy(base), example=x[:2])
    fa.train_step(model, x, y, loss)
    first = dict(model.named_parameters())["conv.weight"].grad
    assert not torch.allclose(first, grads["conv.weight"])


def _copy(model):
    import copy

    return copy.deepcopy(model)


@pytest.mark.parametrize("rule", ["dfa", "usf", "brsf", "frsf", "kp"])
def test_feedback_rules_train_a_resnet_step(rule):
    torch.manual_seed(1)
    x, y = torch.randn(4, 3, 8, 8), torch.randint(0, 10, (4,))
    r = bp.make(rule)
    model = r.prepare(CifarResNet(20, input_shape=(3, 8, 8), width=4), example=x[:2])
    opt = r.build_optimizer(model, {"name": "sgd", "lr": 0.01})
    before = [p.detach().clone() for p in model.parameters()]
    out = r.train_step(model, x, y, bp.get_loss("cross_entropy"))
    opt.step()
    assert torch.isfinite(out.loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_resnet_traces_with_fx():
    x = torch.randn(2, 3, 16, 16)
    m = CifarResNet(20, width=4)
    traced = torch.fx.symbolic_trace(m)
    torch.testing.assert_close(traced(x), m(x))


# ------------------------------------------------------------------------------ augmentation
def _is_crop(out, padded, p, h, w):
    """Whether ``out`` (C, H, W) is an H×W window of ``padded`` or of its horizontal flip."""
    for flip in (False, True):
        src = padded.flip(-1) if flip else padded
        for i in range(2 * p + 1):
            for j in range(2 * p + 1):
                if torch.equal(src[:, i:i + h, j:j + w], out):
                    return True
    return False


def test_crop_flip_outputs_are_crops_of_the_padded_image_or_its_mirror():
    x = torch.randn(16, 3, 6, 5)
    gen = torch.Generator().manual_seed(0)
    out = Augment(pad=2, flip=True)(x, gen)
    assert out.shape == x.shape
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for n in range(16):
        assert _is_crop(out[n], padded[n], 2, 6, 5)
    assert not torch.equal(out, x)


def test_flip_only_mirrors_about_half_and_is_seeded():
    x = torch.randn(400, 1, 3, 4)
    out = Augment(pad=0, flip=True)(x, torch.Generator().manual_seed(3))
    same = torch.tensor([torch.equal(o, i) for o, i in zip(out, x)])
    mirrored = torch.tensor([torch.equal(o, i.flip(-1)) for o, i in zip(out, x)])
    assert bool((same | mirrored).all())
    assert 150 < int(mirrored.sum()) < 250  # Binomial(400, 1/2): mean 200, sd 10
    again = Augment(pad=0, flip=True)(x, torch.Generator().manual_seed(3))
    assert torch.equal(out, again)


def test_crop_offsets_cover_every_position():
    x = torch.zeros(2000, 1, 1, 1)
    x[:] = 1.0
    out = Augment(pad=1, flip=False)(x, torch.Generator().manual_seed(0))  # 1x1 image, 3x3 padded
    # the pixel survives only at the centre offset: probability 1/9
    kept = int(out.sum())
    assert 2000 / 9 - 60 < kept < 2000 / 9 + 60


def test_padding_is_a_black_pixel_of_the_raw_image():
    info = type("Info", (), {"mean": (100.0, 50.0), "std": (20.0, 10.0)})()
    fill = pad_fill(info)
    assert fill == [-5.0, -5.0]
    x = torch.zeros(50, 2, 2, 2)
    out = Augment(pad=2, flip=False)(x, torch.Generator().manual_seed(0), fill)
    assert set(out.unique().tolist()) <= {0.0, -5.0} and (out == -5.0).any()
    assert pad_fill(type("Info", (), {"mean": None, "std": None})()) is None


def test_parse_augment_values_and_errors():
    assert parse_augment(None) is None and parse_augment("none") is None and parse_augment(False) is None
    assert parse_augment("crop_flip") == Augment(4, True) == parse_augment(True)
    assert parse_augment("crop") == Augment(4, False)
    assert parse_augment("flip") == Augment(0, True)
    assert parse_augment({"crop": 2, "flip": False}) == Augment(2, False)
    for bad in ("crop-flip", 3, {"pad": 4}, {"crop": -1}, {"crop": 2, "flip": "yes"}):
        with pytest.raises(ConfigError):
            parse_augment(bad)
    with pytest.raises(ConfigError, match="dataset.augment"):
        TrainConfig.from_dict({"dataset": {"augment": "mirror"}})
    cfg = TrainConfig.from_dict({"dataset": {"name": "cifar10", "augment": "crop_flip"}})
    assert "augment" not in cfg.dataset_options()  # the trainer's option, not load_dataset's


def _image_bundle(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    x = torch.randn(n, 1, 6, 6, generator=g) * 0.3
    x[:, 0, :3] += y.view(-1, 1, 1).float()  # class in the top rows: survives crop and flip
    return bp.as_bundle((x[:64], y[:64]), (x[64:], y[64:]))


def _cfg(**kw):
    base = {"epochs": 2, "batch_size": 16, "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
            "progress": False, "loss": "cross_entropy", "dataset": {"augment": "crop_flip"}}
    base.update(kw)
    return TrainConfig.from_dict(base)


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(144, 3))


def test_augmented_training_changes_the_run_and_resume_is_exact(tmp_path):
    data = _image_bundle()
    plain = Trainer(_net(), "fa", data, _cfg(dataset={})).run()
    full = Trainer(_net(), "fa", data, _cfg(epochs=3), out=tmp_path / "a").run()
    assert full.history[0]["train_loss"] != plain.history[0]["train_loss"]
    Trainer(_net(), "fa", data, _cfg(epochs=1), out=tmp_path / "b").run()
    resumed = Trainer(_net(), "fa", data, _cfg(epochs=3), out=tmp_path / "b").run(resume=True)
    for (k, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), k


def test_augment_refuses_flat_inputs():
    x, y = torch.randn(32, 36), torch.randint(0, 3, (32,))
    model = nn.Sequential(nn.Linear(36, 3))
    with pytest.raises(ConfigError, match="dataset.augment"):
        Trainer(model, "bp", bp.as_bundle((x, y)), _cfg())


def test_resnet_preset_is_registered_with_augmentation():
    preset = bp.get_preset("fb-resnet20-cifar10")
    cfg, _seeds = preset.resolved("quick")
    assert cfg["model"]["spec"] == "resnet20" and cfg["dataset"]["augment"] == "crop_flip"
    assert cfg["epochs"] == 1 and cfg["dataset"]["subset"]
    assert set(preset.runs) == {"bp", "fa", "dfa", "usf", "brsf", "frsf"}
    full, _ = preset.resolved("full")
    assert full["epochs"] == 250 and full["dataset"]["val_size"] == 5000


def test_activation_relaxation_graph_mode_on_resnet20_reaches_bp():
    """η_x = 0.5 for K = 200 steps is far past the longest chain of ResNet-20's units, so the
    relaxed update must be BP's gradient to rounding (BatchNorm in train mode, option-A joins)."""
    import copy

    torch.manual_seed(0)
    x, y = torch.randn(4, 3, 8, 8, dtype=torch.float64), torch.randint(0, 10, (4,))
    base = CifarResNet(20, input_shape=(3, 8, 8), width=4).double()
    loss = bp.get_loss("cross_entropy")
    rule = bp.make("ar", graph=True, relax_steps=200, eta_x=0.5)
    model = rule.prepare(copy.deepcopy(base), example=x[:2])
    rule.train_step(model, x, y, loss)
    ref = copy.deepcopy(base)
    bp.make("bp").train_step(ref, x, y, loss)
    for (name, p), q in zip(model.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-9, atol=1e-12, msg=name)
