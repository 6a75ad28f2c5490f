"""Layers shared by the trifire backbone (csba.models) and the heads (csba.heads): the
convolution block, our weight init, the squeeze-and-excitation gate and LDAM's cosine
classifier. Layers apart from models, as timm keeps them."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["FEATURE_CHANNELS", "NEG_SLOPE", "NormedLinear", "SEGate", "conv_bn_act", "init_weights"]

NEG_SLOPE = 0.1  # LeakyReLU slope everywhere (pinned)
FEATURE_CHANNELS = 768  # channels of Z on trifire


def conv_bn_act(cin: int, cout: int, k: int, stride: int = 1) -> nn.Sequential:
    """Conv(k x k, same padding) -> BatchNorm -> LeakyReLU(0.1): (B, cin, h, w) -> (B, cout, h, w)
    at stride 1."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=True),
        nn.BatchNorm2d(cout),
        nn.LeakyReLU(NEG_SLOPE, inplace=True),
    )


def init_weights(module: nn.Module) -> None:
    """Kaiming-uniform (LeakyReLU 0.1) weights and zero biases on every Conv2d and Linear."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_uniform_(m.weight, a=NEG_SLOPE, nonlinearity="leaky_relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class SEGate(nn.Module):
    """Bias-free squeeze-and-excitation gate: Z (B, C, h, w) -> a (B, C) in (0, 1)."""

    def __init__(self, channels: int = FEATURE_CHANNELS, hidden: int | None = None) -> None:
        hidden = hidden or max(1, channels // 8)  # 768 / 8 = 96 on trifire (pinned)
        super().__init__()
        self.fc1 = nn.Linear(channels, hidden, bias=False)  # W1: hidden x channels
        self.fc2 = nn.Linear(hidden, channels, bias=False)  # W2: channels x hidden

    def forward(self, z: Tensor) -> Tensor:
        return torch.sigmoid(self.fc2(F.relu(self.fc1(z.mean(dim=(2, 3))))))


class NormedLinear(nn.Module):
    """Cosine classifier of LDAM (Cao et al., NeurIPS 2019): cos(x, w_c), (B, F) -> (B, C)."""

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, in_features))
        nn.init.kaiming_uniform_(self.weight, a=NEG_SLOPE, nonlinearity="leaky_relu")

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(x.float(), dim=1) @ F.normalize(self.weight.float(), dim=1).t()
