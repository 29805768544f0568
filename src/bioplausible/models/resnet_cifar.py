"""The CIFAR residual networks of He, Zhang, Ren & Sun 2016, "Deep residual learning for image
recognition", §4.2: ResNet-20, -32, -44, -56, -110 (depth 6n + 2).

A 3×3 convolution with 16 filters, then three stages of ``n`` basic blocks with 16, 32 and 64
filters on 32×32, 16×16 and 8×8 maps (the first block of stages 2 and 3 downsamples with stride
2), global average pooling and one fully connected layer. A basic block is
``relu(BN(conv(relu(BN(conv(x))))) + shortcut(x))``.

Shortcuts (§3.3, "option A" and "option B"): ``shortcut="A"`` (default, the paper's choice for
CIFAR-10 in §4.2) is the identity, and where the shape changes it subsamples the input by 2 and
pads the new channels with zeros — no parameters, so a feedback rule's error reaches the lower
stage through the identity path exactly as in BP. ``shortcut="B"`` uses a 1×1 convolution with
stride 2 (+ BatchNorm) where the shape changes, so those projections are trained by the rule too.

``batchnorm=False`` drops every BatchNorm and gives the convolutions a bias (the variant
feedback-alignment studies train alongside the normalised one). Weights start from He et al.
2015's initialisation (normal, std √(2/fan_in)), as in the paper; biases at 0.

Every layer is an ``nn.Conv2d``/``nn.Linear``, so :func:`bioplausible.convert` turns all of them
into feedback layers, and the model traces with ``torch.fx`` (activation relaxation's graph mode).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError

#: depth → blocks per stage (depth = 6n + 2)
DEPTHS = {20: 3, 32: 5, 44: 7, 56: 9, 110: 18}
SHORTCUTS = ("A", "B")


class _ZeroPadShortcut(nn.Module):
    """Option A: ``x[:, :, ::2, ::2]`` with ``extra`` zero channels appended (no parameters)."""

    def __init__(self, extra: int) -> None:
        super().__init__()
        self.extra = int(extra)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, 0, self.extra))


class BasicBlock(nn.Module):
    """Two 3×3 convolutions with a shortcut: ``relu(F(x) + shortcut(x))`` (He et al. 2016, Fig. 2)."""

    def __init__(self, c_in: int, c_out: int, stride: int, batchnorm: bool, shortcut: str) -> None:
        super().__init__()
        bias = not batchnorm
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=bias)
        self.bn1 = nn.BatchNorm2d(c_out) if batchnorm else nn.Identity()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride=1, padding=1, bias=bias)
        self.bn2 = nn.BatchNorm2d(c_out) if batchnorm else nn.Identity()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            if shortcut == "A":
                self.shortcut = _ZeroPadShortcut(c_out - c_in)
            else:
                self.shortcut = nn.Sequential(
                    nn.Conv2d(c_in, c_out, 1, stride=stride, bias=bias),
                    nn.BatchNorm2d(c_out) if batchnorm else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32×32 images (He et al. 2016, §4.2).

    Args:
        depth: 20, 32, 44, 56 or 110.
        input_shape: ``(C, H, W)`` of one input; any H, W ≥ 8 works (global average pooling).
        num_classes: outputs of the final fully connected layer.
        batchnorm: BatchNorm after every convolution (default) or none (convolutions get biases).
        shortcut: ``"A"`` zero-padding identity shortcuts (default) or ``"B"`` 1×1 projections.
        width: filters of the first stage (16 in the paper; the stages use width, 2·width, 4·width).
    """

    def __init__(self, depth: int = 20, input_shape: tuple[int, ...] = (3, 32, 32),
                 num_classes: int = 10, batchnorm: bool = True, shortcut: str = "A",
                 width: int = 16) -> None:
        super().__init__()
        if depth not in DEPTHS:
            raise ConfigError(f"resnet depth must be one of {', '.join(map(str, DEPTHS))} (6n+2), got {depth!r}")
        shortcut = str(shortcut).upper()
        if shortcut not in SHORTCUTS:
            raise ConfigError(f"resnet shortcut must be A (zero-padding identity) or B (1x1 projection), got {shortcut!r}")
        if not isinstance(batchnorm, bool):
            raise ConfigError(f"resnet batchnorm must be true or false, got {batchnorm!r}")
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise ConfigError(f"resnet width must be a positive integer, got {width!r}")
        if len(input_shape) != 3:
            raise ConfigError(f"resnet needs image inputs (C, H, W), got shape {tuple(input_shape)}; "
                              f"do not flatten the dataset")
        n = DEPTHS[depth]
        self.depth, self.batchnorm, self.shortcut_type = depth, batchnorm, shortcut
        c = int(input_shape[0])
        self.conv = nn.Conv2d(c, width, 3, padding=1, bias=not batchnorm)
        self.bn = nn.BatchNorm2d(width) if batchnorm else nn.Identity()
        blocks: list[nn.Module] = []
        c_in = width
        for stage, c_out in enumerate((width, 2 * width, 4 * width)):
            for i in range(n):
                stride = 2 if (stage > 0 and i == 0) else 1
                blocks.append(BasicBlock(c_in, c_out, stride, batchnorm, shortcut))
                c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(c_in, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn(self.conv(x)))
        out = self.blocks(out)
        out = torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)
        return self.fc(out)


def resnet_factory(depth: int):
    """The model-registry factory of ResNet-``depth`` (``build_model("resnet20,batchnorm=false")``)."""

    def build(arg, *, input_shape=None, num_classes=None, **opts) -> nn.Module:
        if arg:
            raise ConfigError(f"resnet{depth} takes no ':' argument, got {arg!r}; options go after commas, "
                              f"e.g. resnet{depth},batchnorm=false")
        return CifarResNet(depth, input_shape=tuple(input_shape or (3, 32, 32)),
                           num_classes=num_classes or 10, **opts)

    build.__doc__ = f"ResNet-{depth} for CIFAR (He et al. 2016, §4.2); options batchnorm, shortcut, width."
    return build


__all__ = ["DEPTHS", "BasicBlock", "CifarResNet", "resnet_factory"]
