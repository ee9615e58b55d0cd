"""CAT-Seg's aggregator layer: spatial aggregation (two Swin blocks with guidance in Q and K) then
class aggregation (linear attention across classes at each pixel, text guidance in Q and K).

In ESC-Net one such layer is the vision-language fusion (VLF) of an ESC block. Parameter names
follow CAT-Seg's so that its checkpoints load unchanged. Everything is written with two-operand
matmuls and without branches on the number of classes, so that one graph serves every T.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class GuidedWindowAttention(nn.Module):
    """Window self-attention whose queries and keys also see a guidance vector per token."""

    def __init__(self, *, dim: int, guidance_dim: int, num_heads: int) -> None:
        super().__init__()
        self.dim = dim
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.q = nn.Linear(dim + guidance_dim, dim)
        self.k = nn.Linear(dim + guidance_dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """x: [N, L, dim + guidance_dim] windows; mask: [nW, L, L] additive or None -> [N, L, dim]."""
        windows, length = x.shape[0], x.shape[1]
        heads = self.num_heads

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(windows, length, heads, -1).transpose(1, 2)  # [N, heads, L, d]

        q = split(self.q(x)) * self.scale
        k = split(self.k(x))
        v = split(self.v(x[:, :, : self.dim]))
        attn = torch.matmul(q, k.transpose(-2, -1))  # [N, heads, L, L]
        if mask is not None:
            num_windows = mask.shape[0]
            attn = attn.reshape(-1, num_windows, heads, length, length) + mask.unsqueeze(1).unsqueeze(0)
            attn = attn.reshape(windows, heads, length, length)
        attn = attn.softmax(dim=-1)
        out = torch.matmul(attn, v).transpose(1, 2).reshape(windows, length, self.dim)  # [N, L, dim]
        return self.proj(out)


class Mlp(nn.Module):
    """Two-layer GELU MLP (names as timm's, which CAT-Seg uses)."""

    def __init__(self, *, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def _partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """[N, H, W, C] -> [N * nW, window * window, C]"""
    n, h, w, c = x.shape
    x = x.reshape(n, h // window, window, w // window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window * window, c)


def _merge(windows: torch.Tensor, window: int, h: int, w: int) -> torch.Tensor:
    """[N * nW, window * window, C] -> [N, H, W, C]"""
    c = windows.shape[-1]
    x = windows.reshape(-1, h // window, w // window, window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, h, w, c)


def _shift_mask(resolution: tuple[int, int], window: int, shift: int) -> torch.Tensor:
    """Additive attention mask of the shifted windows: [nW, window^2, window^2], 0 or -100."""
    h, w = resolution
    regions = torch.zeros(1, h, w, 1)
    count = 0
    bounds = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    for hs in bounds:
        for ws in bounds:
            regions[:, hs, ws, :] = count
            count += 1
    ids = _partition(regions, window).squeeze(-1)  # [nW, window^2]
    diff = ids.unsqueeze(1) - ids.unsqueeze(2)
    return torch.where(diff != 0, torch.tensor(-100.0), torch.tensor(0.0))


class GuidedSwinBlock(nn.Module):
    """One (shifted) window block over the G x G grid of each class's cost embedding."""

    def __init__(
        self,
        *,
        dim: int,
        guidance_dim: int,
        resolution: tuple[int, int],
        num_heads: int,
        window: int,
        shift: int,
    ) -> None:
        super().__init__()
        if min(resolution) <= window:
            window, shift = min(resolution), 0
        self.resolution = resolution
        self.window = window
        self.shift = shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = GuidedWindowAttention(dim=dim, guidance_dim=guidance_dim, num_heads=num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim=dim, hidden_dim=4 * dim)
        # Persistent, as in CAT-Seg's checkpoints.
        self.register_buffer("attn_mask", _shift_mask(resolution, window, shift) if shift > 0 else None)

    def forward(self, x: torch.Tensor, guidance: torch.Tensor) -> torch.Tensor:
        """x: [N, H*W, C], guidance: [N, H*W, Cg] (already normalised) -> [N, H*W, C]"""
        h, w = self.resolution
        n, length, channels = x.shape
        shortcut = x
        x = torch.cat([self.norm1(x), guidance], dim=-1).reshape(n, h, w, -1)  # [N, H, W, C+Cg]
        if self.shift > 0:
            x = torch.roll(x, shifts=(-self.shift, -self.shift), dims=(1, 2))
        windows = self.attn(_partition(x, self.window), self.attn_mask)  # [N*nW, w*w, C]
        x = _merge(windows, self.window, h, w)  # [N, H, W, C]
        if self.shift > 0:
            x = torch.roll(x, shifts=(self.shift, self.shift), dims=(1, 2))
        x = shortcut + x.reshape(n, length, channels)
        return x + self.mlp(self.norm2(x))


class SpatialAggregation(nn.Module):
    """Two Swin blocks (plain, then shifted) applied to every class map, guidance in Q and K."""

    def __init__(
        self, *, dim: int, guidance_dim: int, resolution: tuple[int, int], num_heads: int, window: int
    ) -> None:
        super().__init__()
        common = dict(dim=dim, guidance_dim=guidance_dim, resolution=resolution, num_heads=num_heads)
        self.block_1 = GuidedSwinBlock(**common, window=window, shift=0)
        self.block_2 = GuidedSwinBlock(**common, window=window, shift=window // 2)
        self.guidance_norm = nn.LayerNorm(guidance_dim)

    def forward(self, x: torch.Tensor, guidance: torch.Tensor) -> torch.Tensor:
        """x: [B, C, T, H, W]; guidance: [B, Cg, H, W] (image-wide) or [B, Cg, T, H, W] (per class)
        -> [B, C, T, H, W]"""
        b, c, t, h, w = x.shape
        tokens = x.permute(0, 2, 3, 4, 1).reshape(b * t, h * w, c)  # [B*T, H*W, C]
        if guidance.dim() == 4:
            guidance = guidance.unsqueeze(2).expand(-1, -1, t, -1, -1)  # [B, Cg, T, H, W]
        guidance = guidance.permute(0, 2, 3, 4, 1).reshape(b * t, h * w, -1)  # [B*T, H*W, Cg]
        guidance = self.guidance_norm(guidance)
        tokens = self.block_1(tokens, guidance)
        tokens = self.block_2(tokens, guidance)
        return tokens.reshape(b, t, h, w, c).permute(0, 4, 1, 2, 3)  # [B, C, T, H, W]


class LinearClassAttention(nn.Module):
    """Multi-head linear attention ("Transformers are RNNs") over classes, with a token mask.

    Masked tokens (mask 0) neither give keys nor values, so attending over [kept classes + needed
    padding tokens] equals CAT-Seg's attention over its gathered / padded class list.
    """

    def __init__(self, *, hidden_dim: int, guidance_dim: int, num_heads: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.eps = eps
        self.q = nn.Linear(hidden_dim + guidance_dim, hidden_dim)
        self.k = nn.Linear(hidden_dim + guidance_dim, hidden_dim)
        self.v = nn.Linear(hidden_dim, hidden_dim)

    def forward(self, x: torch.Tensor, guidance: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
        """x: [N, S, C]; guidance: [N, S, Cg]; token_mask: [N, S] in {0,1} -> [N, S, C]"""
        n, s, c = x.shape
        heads = self.num_heads
        with_guidance = torch.cat([x, guidance], dim=-1)

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(n, s, heads, -1).transpose(1, 2)  # [N, heads, S, d]

        mask = token_mask.reshape(n, 1, s, 1)
        q = F.elu(split(self.q(with_guidance))) + 1
        k = (F.elu(split(self.k(with_guidance))) + 1) * mask
        v = split(self.v(x)) * mask
        # CAT-Seg divides V by the sequence length before the sums and multiplies it back after;
        # the two cancel exactly, so they are left out.
        kv = torch.matmul(k.transpose(-2, -1), v)  # [N, heads, d, d]
        normaliser = (
            torch.matmul(q, k.sum(dim=2, keepdim=True).transpose(-2, -1)) + self.eps
        )  # [N, heads, S, 1]
        out = torch.matmul(q, kv) / normaliser  # [N, heads, S, d]
        return out.transpose(1, 2).reshape(n, s, c)


class ClassAggregation(nn.Module):
    """Class attention at each (pooled) pixel, padded with learned tokens to a fixed class count."""

    def __init__(
        self,
        *,
        hidden_dim: int,
        guidance_dim: int,
        num_heads: int,
        pooling_size: tuple[int, int],
        pad_len: int,
    ) -> None:
        super().__init__()
        # 1x1 pooling (the official evaluation's) is the identity, and so is the resize back: both
        # are left out of the graph rather than computed.
        self.pool = None if tuple(pooling_size) == (1, 1) else nn.AvgPool2d(pooling_size)
        self.attention = LinearClassAttention(
            hidden_dim=hidden_dim, guidance_dim=guidance_dim, num_heads=num_heads
        )
        self.MLP = nn.Sequential(
            nn.Linear(hidden_dim, 4 * hidden_dim), nn.ReLU(), nn.Linear(4 * hidden_dim, hidden_dim)
        )
        self.norm1 = nn.LayerNorm(hidden_dim)
        self.norm2 = nn.LayerNorm(hidden_dim)
        self.pad_len = pad_len
        self.padding_tokens = nn.Parameter(torch.zeros(1, 1, hidden_dim)) if pad_len > 0 else None
        self.padding_guidance = nn.Parameter(torch.zeros(1, 1, guidance_dim)) if pad_len > 0 else None

    def forward(self, x: torch.Tensor, guidance: torch.Tensor, class_mask: torch.Tensor) -> torch.Tensor:
        """x: [B, C, T, H, W]; guidance: [B, T, Cg]; class_mask: [B, T] in {0,1} -> [B, C, T, H, W]"""
        b, c, t, h, w = x.shape
        pooled = x.transpose(1, 2).reshape(b * t, c, h, w)  # [B*T, C, H, W]
        if self.pool is not None:
            pooled = self.pool(pooled)  # [B*T, C, h', w']
        hp, wp = pooled.shape[-2], pooled.shape[-1]
        tokens = pooled.reshape(b, t, c, hp * wp).permute(0, 3, 1, 2)  # [B, h'w', T, C]
        guide = guidance.unsqueeze(1).expand(-1, hp * wp, -1, -1)  # [B, h'w', T, Cg]
        mask = class_mask.unsqueeze(1).expand(-1, hp * wp, -1)  # [B, h'w', T]
        if self.padding_tokens is not None and self.padding_guidance is not None:
            # Append pad_len padding tokens; only the first (pad_len - kept) of them count, so that
            # kept classes + counted pads = pad_len, exactly CAT-Seg's padded sequence.
            pad_index = torch.arange(self.pad_len, device=x.device, dtype=torch.float32)  # [pad_len]
            kept = class_mask.sum(dim=1, keepdim=True)  # [B, 1]
            pad_mask = (pad_index.unsqueeze(0) < (self.pad_len - kept)).to(mask.dtype)  # [B, pad_len]
            pads = self.padding_tokens.expand(b, hp * wp, self.pad_len, c)
            pad_guide = self.padding_guidance.expand(b, hp * wp, self.pad_len, guide.shape[-1])
            tokens = torch.cat([tokens, pads], dim=2)  # [B, h'w', T+pad_len, C]
            guide = torch.cat([guide, pad_guide], dim=2)
            mask = torch.cat([mask, pad_mask.unsqueeze(1).expand(-1, hp * wp, -1)], dim=2)
        s = tokens.shape[2]
        tokens = tokens.reshape(b * hp * wp, s, c)  # [B*h'w', S, C]
        guide = guide.reshape(b * hp * wp, s, -1)
        mask = mask.reshape(b * hp * wp, s)
        tokens = tokens + self.attention(self.norm1(tokens), guide, mask)
        tokens = tokens + self.MLP(self.norm2(tokens))
        tokens = tokens[:, :t]  # [B*h'w', T, C]
        out = (
            tokens.reshape(b, hp, wp, t, c).permute(0, 3, 4, 1, 2).reshape(b * t, c, hp, wp)
        )  # [B*T, C, h', w']
        if self.pool is not None:
            out = F.interpolate(out, size=(h, w), mode="bilinear", align_corners=True)
        return x + out.reshape(b, t, c, h, w).transpose(1, 2)  # [B, C, T, H, W]


class AggregatorLayer(nn.Module):
    """Spatial then class aggregation (CAT-Seg's layer; ESC-Net's VLF)."""

    def __init__(
        self,
        *,
        hidden_dim: int,
        appearance_guidance_dim: int,
        text_guidance_dim: int,
        num_heads: int,
        resolution: tuple[int, int],
        window: int,
        pooling_size: tuple[int, int],
        pad_len: int,
    ) -> None:
        super().__init__()
        self.swin_block = SpatialAggregation(
            dim=hidden_dim,
            guidance_dim=appearance_guidance_dim,
            resolution=resolution,
            num_heads=num_heads,
            window=window,
        )
        self.attention = ClassAggregation(
            hidden_dim=hidden_dim,
            guidance_dim=text_guidance_dim,
            num_heads=num_heads,
            pooling_size=pooling_size,
            pad_len=pad_len,
        )

    def forward(
        self,
        x: torch.Tensor,
        appearance_guidance: torch.Tensor,
        text_guidance: torch.Tensor,
        class_mask: torch.Tensor,
    ) -> torch.Tensor:
        """x: [B, C, T, H, W]; appearance_guidance: [B, Cg, H, W] or [B, Cg, T, H, W];
        text_guidance: [B, T, Ct]; class_mask: [B, T] -> [B, C, T, H, W]"""
        x = self.swin_block(x, appearance_guidance)
        return self.attention(x, text_guidance, class_mask)
