"""The two MobileVLM projectors, written so that their state_dict names are the mtgv checkpoint's.

LDP (V1, `ldpnet`): MLP, then two MobileNetV3 inverted-residual blocks (stride 1, then stride 2).
LDPv2 (V2, `ldpnetv2`): MLP, 2x2 average pool, then a depthwise-conv position injection (PEG).
Both turn 576 CLIP patch tokens (24x24) into 144 tokens (12x12) of the language model's width.
The official code builds LDP from torchvision/timm blocks; these are the same layers without them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def make_divisible(value: float, divisor: int = 8) -> int:
    """torchvision's `_make_divisible`: round to a multiple of divisor, never below 90% of value."""
    new_value = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if new_value < 0.9 * value:
        new_value += divisor
    return new_value


def tokens_to_grid(x: torch.Tensor) -> torch.Tensor:
    b, num_tokens, c = x.shape
    side = int(math.sqrt(num_tokens))
    return x.permute(0, 2, 1).reshape(b, c, side, side)  # (B, C, side, side)


def grid_to_tokens(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(2).transpose(1, 2)  # (B, side*side, C)


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of each pixel (timm's LayerNormAct2d without its activation)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)  # (B, H, W, C)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)  # (B, C, H, W)


class SqueezeExcitation(nn.Module):
    def __init__(self, channels: int, squeeze_channels: int):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, squeeze_channels, 1)
        self.fc2 = nn.Conv2d(squeeze_channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = F.adaptive_avg_pool2d(x, 1)  # (B, C, 1, 1)
        scale = F.hardsigmoid(self.fc2(F.relu(self.fc1(scale))))
        return x * scale


class InvertedResidual(nn.Module):
    """torchvision's InvertedResidual with expanded == in channels (so no expand conv), SE and hardswish."""

    def __init__(self, channels: int, stride: int):
        super().__init__()
        self.use_residual = stride == 1
        self.block = nn.Sequential(
            nn.Sequential(
                nn.Conv2d(channels, channels, 3, stride=stride, padding=1, groups=channels, bias=False),
                LayerNorm2d(channels),
                nn.Hardswish(),
            ),
            SqueezeExcitation(channels, make_divisible(channels // 4, 8)),
            nn.Sequential(nn.Conv2d(channels, channels, 1, bias=False), LayerNorm2d(channels)),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return out + x if self.use_residual else out


class LDPBlock(nn.Module):
    def __init__(self, vision_width: int, text_width: int):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Identity(), nn.Linear(vision_width, text_width), nn.GELU(), nn.Linear(text_width, text_width)
        )
        self.mb_block = nn.Sequential(
            nn.Identity(), InvertedResidual(text_width, stride=1), InvertedResidual(text_width, stride=2)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 576, Cv)
        x = tokens_to_grid(self.mlp(x))  # (B, C, 24, 24)
        return grid_to_tokens(self.mb_block(x))  # (B, 144, C)


class LDPProjector(nn.Module):
    """V1 `ldpnet`; keys `model.mm_projector.model.{mlp,mb_block}.*`."""

    def __init__(self, vision_width: int, text_width: int):
        super().__init__()
        self.model = LDPBlock(vision_width, text_width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class FeatureIRLayer(nn.Module):
    def __init__(self, vision_width: int, text_width: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(vision_width, text_width), nn.GELU(), nn.Linear(text_width, text_width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)


class TokenDownLayer(nn.Module):
    def __init__(self, side: int):
        super().__init__()
        self.dwn = nn.Sequential(nn.AdaptiveAvgPool2d((side, side)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 576, C)
        return grid_to_tokens(self.dwn(tokens_to_grid(x)))  # (B, 144, C)


class PosInjectLayer(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.peg = nn.Sequential(nn.Conv2d(width, width, 3, 1, 1, bias=True, groups=width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 144, C)
        grid = tokens_to_grid(x)
        return grid_to_tokens(self.peg(grid) + grid)


class LDPv2Projector(nn.Module):
    """V2 `ldpnetv2`; keys `model.mm_projector.{mlp.mlp,peg.peg}.*`."""

    def __init__(self, vision_width: int, text_width: int, out_side: int = 12):
        super().__init__()
        self.mlp = FeatureIRLayer(vision_width, text_width)
        self.dwn = TokenDownLayer(out_side)
        self.peg = PosInjectLayer(text_width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.peg(self.dwn(self.mlp(x)))


def build_projector(projector_type: str, vision_width: int, text_width: int, out_side: int) -> nn.Module:
    if projector_type == "ldpnetv2":
        return LDPv2Projector(vision_width, text_width, out_side)
    if projector_type == "ldpnet":
        return LDPProjector(vision_width, text_width)
    raise ValueError(f"unknown projector type {projector_type!r}")
