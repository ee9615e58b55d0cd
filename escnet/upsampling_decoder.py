"""CAT-Seg's upsampling decoder: two guided 2x up stages and a 3x3 head, per class.

[B, 128, T, 24, 24] -> [B, T, 96, 96] logits. Parameter names follow CAT-Seg's.
"""

from __future__ import annotations

import torch
from torch import nn


class DoubleConv(nn.Module):
    """(3x3 conv -> GroupNorm -> ReLU) x 2, no conv bias."""

    def __init__(self, *, in_channels: int, out_channels: int) -> None:
        super().__init__()
        groups = out_channels // 16
        self.double_conv = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.GroupNorm(groups, out_channels),
            nn.ReLU(),
            nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.GroupNorm(groups, out_channels),
            nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.double_conv(x)


class Up(nn.Module):
    """2x transposed conv, concatenate the image guidance, double conv."""

    def __init__(self, *, in_channels: int, out_channels: int, guidance_channels: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, in_channels - guidance_channels, kernel_size=2, stride=2)
        self.conv = DoubleConv(in_channels=in_channels, out_channels=out_channels)

    def forward(self, x: torch.Tensor, guidance: torch.Tensor) -> torch.Tensor:
        """x: [B*T, Cin, h, w]; guidance: [B, Cg, 2h, 2w] -> [B*T, Cout, 2h, 2w]"""
        x = self.up(x)
        batch = guidance.shape[0]
        per_image = x.reshape(batch, -1, x.shape[1], x.shape[2], x.shape[3])  # [B, T, C, 2h, 2w]
        guide = guidance.unsqueeze(1).expand(-1, per_image.shape[1], -1, -1, -1)  # [B, T, Cg, 2h, 2w]
        x = torch.cat([per_image, guide], dim=2).flatten(0, 1)  # [B*T, Cin, 2h, 2w]
        return self.conv(x)


def decode_logits(
    decoder1: Up, decoder2: Up, head: nn.Conv2d, x: torch.Tensor, guidance: tuple[torch.Tensor, torch.Tensor]
) -> torch.Tensor:
    """Run the decoder stages (held by the aggregator under CAT-Seg's names) on every class.

    x: [B, C, T, H, W]; guidance: ([B, 32, 2H, 2W], [B, 16, 4H, 4W]) -> logits [B, T, 4H, 4W]
    """
    b, c, t, h, w = x.shape
    y = x.transpose(1, 2).reshape(b * t, c, h, w)  # [B*T, C, H, W]
    y = decoder1(y, guidance[0])
    y = decoder2(y, guidance[1])
    y = head(y)  # [B*T, 1, 4H, 4W]
    return y.reshape(b, t, y.shape[-2], y.shape[-1])
