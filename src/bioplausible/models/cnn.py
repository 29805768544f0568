"""Convolutional networks of the papers, as plain ``nn.Sequential`` models."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from .mlp import init_weights, make_activation


def _flat_size(features: nn.Module, input_shape: tuple[int, ...]) -> int:
    with torch.no_grad():
        return int(features(torch.zeros(1, *input_shape)).numel())


class LeNet5(nn.Sequential):
    """LeNet-5 style: Conv5x5-6, MaxPool2, Conv5x5-16, MaxPool2, FC120, FC84, FC classes.

    The first convolution pads by 2 so that 28x28 and 32x32 inputs both work.
    """

    def __init__(
        self,
        input_shape: tuple[int, ...] = (1, 28, 28),
        num_classes: int = 10,
        activation: str = "relu",
        init: str = "default",
        bias: bool = True,
    ) -> None:
        c = int(input_shape[0])
        features = nn.Sequential(
            nn.Conv2d(c, 6, 5, padding=2, bias=bias), make_activation(activation), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5, bias=bias), make_activation(activation), nn.MaxPool2d(2),
            nn.Flatten(),
        )
        n = _flat_size(features, tuple(input_shape))
        super().__init__(
            *features,
            nn.Linear(n, 120, bias=bias), make_activation(activation),
            nn.Linear(120, 84, bias=bias), make_activation(activation),
            nn.Linear(84, num_classes, bias=bias),
        )
        init_weights(self, init)


class NPConvNet(nn.Sequential):
    """The CIFAR CNN of the node-perturbation paper (after Crafton et al. 2019).

    Conv3x3-32, MaxPool3x3/2, Conv5x5-128, MaxPool3x3/2, Conv5x5-256, MaxPool3x3/2, FC2048,
    FC2048, FC classes; ReLU, dropout 0.5 before each fully connected layer. 'Same' padding
    keeps 32x32 inputs at 16, 8 and 4 pixels after the pools. ``conv1_channels`` /
    ``conv1_kernel`` change the first convolution (the authors' code, benlansdell/ssdfa, uses
    5x5x96 where the paper's appendix says 3x3x32).
    """

    def __init__(
        self,
        input_shape: tuple[int, ...] = (3, 32, 32),
        num_classes: int = 10,
        activation: str = "relu",
        dropout: float = 0.5,
        width: int = 2048,
        init: str = "default",
        bias: bool = True,
        conv1_channels: int = 32,
        conv1_kernel: int = 3,
    ) -> None:
        c, k1 = int(input_shape[0]), int(conv1_kernel)
        if k1 < 1 or k1 % 2 == 0 or int(conv1_channels) < 1:
            raise ConfigError(f"npcnn: conv1_kernel must be odd and >= 1 and conv1_channels >= 1, got "
                              f"{conv1_kernel!r} and {conv1_channels!r}")
        features = nn.Sequential(
            nn.Conv2d(c, int(conv1_channels), k1, padding=k1 // 2, bias=bias), make_activation(activation),
            nn.MaxPool2d(3, stride=2, padding=1),
            nn.Conv2d(int(conv1_channels), 128, 5, padding=2, bias=bias), make_activation(activation),
            nn.MaxPool2d(3, stride=2, padding=1),
            nn.Conv2d(128, 256, 5, padding=2, bias=bias), make_activation(activation),
            nn.MaxPool2d(3, stride=2, padding=1),
            nn.Flatten(),
        )
        n = _flat_size(features, tuple(input_shape))
        super().__init__(
            *features,
            nn.Dropout(dropout), nn.Linear(n, width, bias=bias), make_activation(activation),
            nn.Dropout(dropout), nn.Linear(width, width, bias=bias), make_activation(activation),
            nn.Dropout(dropout), nn.Linear(width, num_classes, bias=bias),
        )
        init_weights(self, init)
