"""Models of the pipelines: a 1-D CNN (MNIST-1D), an MLP (digits), ResNet-18 (images)."""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import nn

ModelName = Literal["cnn1d", "mlp", "resnet18"]
MODELS: tuple[str, ...] = get_args(ModelName)


class ConvNet1D(nn.Module):
    """The MNIST-1D paper's small 1-D CNN: three stride-2 convolutions and a linear head."""

    def __init__(self, num_classes: int, length: int = 40, channels: int = 25) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv1d(1, channels, 5, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv1d(channels, channels, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv1d(channels, channels, 3, stride=2, padding=1),
            nn.ReLU(),
        )
        with torch.no_grad():
            width = self.features(torch.zeros(1, 1, length)).numel()
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


class MLP(nn.Module):
    """Two hidden ReLU layers."""

    def __init__(self, in_features: int, num_classes: int, hidden: int = 128) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_features, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def resnet18(num_classes: int, cifar_stem: bool) -> nn.Module:
    """torchvision ResNet-18; ``cifar_stem`` swaps the 7x7/2 conv + maxpool for a 3x3/1 conv
    (the usual stem for 32x32 inputs, as in the paper's CIFAR experiments)."""
    from torchvision.models import resnet18 as tv_resnet18

    model = tv_resnet18(weights=None, num_classes=num_classes)
    if cifar_stem:
        model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    return model


def build_model(name: str, num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    """A fresh model for inputs of ``input_shape`` (one sample, no batch axis)."""
    if name == "cnn1d":
        return ConvNet1D(num_classes, length=input_shape[-1])
    if name == "mlp":
        features = 1
        for size in input_shape:
            features *= size
        return MLP(features, num_classes)
    if name == "resnet18":
        return resnet18(num_classes, cifar_stem=input_shape[-1] <= 64)
    raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
