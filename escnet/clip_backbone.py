"""CLIP towers used by CAT-Seg and ESC-Net, built on open_clip's OpenAI-layout ViT.

The image tower runs densely: every patch token takes the last block's value path (CAT-Seg's
``forward_dense``), so each of the G x G patches gets a joint-space embedding. The raw tokens of two
intermediate blocks are returned too; they guide the upsampling decoder.
"""

from __future__ import annotations

from dataclasses import dataclass

import open_clip
import torch
import torch.nn.functional as F
from torch import nn

from escnet.config import ClipConfig


def build_clip_model(config: ClipConfig) -> nn.Module:
    """An open_clip CLIP with random weights at ``config.image_size`` (weights come from escnet.weights)."""
    import logging

    # open_clip warns that no pretrained weights were loaded; weights are loaded by escnet.weights.
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        model = open_clip.create_model(
            config.open_clip_name, pretrained=None, force_image_size=config.image_size
        )
    finally:
        logger.setLevel(level)
    return model


@dataclass(frozen=True)
class DenseImageFeatures:
    """Output of the dense image tower.

    dense:     [B, C, G, G] joint-space patch embeddings (C = embed_dim, not normalised)
    guidance:  two [B, W, G, G] raw token maps of the intermediate blocks (W = ViT width)
    """

    dense: torch.Tensor
    guidance: tuple[torch.Tensor, torch.Tensor]


def resize_position_embedding(position_embedding: torch.Tensor, grid: int) -> torch.Tensor:
    """Bicubic resize of a ViT position table [1 + g*g, W] to [1 + grid*grid, W] (CAT-Seg's rule)."""
    old_grid = int(round((position_embedding.shape[0] - 1) ** 0.5))
    if old_grid == grid:
        return position_embedding
    width = position_embedding.shape[1]
    class_pos = position_embedding[:1]  # [1, W]
    patch_pos = (
        position_embedding[1:].reshape(1, old_grid, old_grid, width).permute(0, 3, 1, 2)
    )  # [1, W, g, g]
    patch_pos = F.interpolate(patch_pos, size=(grid, grid), mode="bicubic", align_corners=False)
    patch_pos = patch_pos.squeeze(0).reshape(width, grid * grid).T  # [G*G, W]
    return torch.cat([class_pos, patch_pos], dim=0)


def _value_path_block(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The last block in dense mode: v = out_proj(v_proj(ln_1(x))) + class token, then v + mlp(ln_2(v)).

    x: [B, L, W] -> [B, L, W]
    """
    attn = block.attn
    width = x.shape[-1]
    y = block.ln_1(x)
    v = F.linear(y, attn.in_proj_weight[2 * width :], attn.in_proj_bias[2 * width :])  # [B, L, W]
    v = attn.out_proj(v)
    v = v + x[:, :1]  # CAT-Seg's residual is the class token, not x
    return v + block.mlp(block.ln_2(v))


def encode_image_dense(
    clip_model: nn.Module, images: torch.Tensor, guidance_layers: tuple[int, int]
) -> DenseImageFeatures:
    """Dense CLIP features of normalised images.

    images: [B, 3, S, S] CLIP-normalised, S = image_size
    returns DenseImageFeatures(dense [B, C, G, G], guidance ([B, W, G, G], [B, W, G, G]))
    """
    visual = clip_model.visual
    x = visual.conv1(images)  # [B, W, G, G]
    batch, width, grid = x.shape[0], x.shape[1], x.shape[2]
    x = x.flatten(2).transpose(1, 2)  # [B, G*G, W]
    class_token = visual.class_embedding.to(x.dtype).expand(batch, 1, width)  # [B, 1, W]
    x = torch.cat([class_token, x], dim=1)  # [B, 1+G*G, W]
    x = x + visual.positional_embedding.to(x.dtype)
    x = visual.ln_pre(x)

    blocks = visual.transformer.resblocks
    kept: list[torch.Tensor] = []
    for index, block in enumerate(blocks[:-1]):
        x = block(x)
        if index in guidance_layers:
            kept.append(x[:, 1:])
    x = _value_path_block(blocks[-1], x)
    x = visual.ln_post(x) @ visual.proj  # [B, 1+G*G, C]

    def to_map(tokens: torch.Tensor) -> torch.Tensor:
        return tokens.transpose(1, 2).reshape(batch, tokens.shape[-1], grid, grid)  # [B, C, G, G]

    return DenseImageFeatures(dense=to_map(x[:, 1:]), guidance=(to_map(kept[0]), to_map(kept[1])))


def encode_text_normalised(clip_model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """CLIP text tower, L2-normalised.

    tokens: [N, 77] int64 -> [N, C]
    """
    x = clip_model.token_embedding(tokens) + clip_model.positional_embedding  # [N, 77, W]
    x = clip_model.ln_final(clip_model.transformer(x, attn_mask=clip_model.attn_mask))
    # CLIP pools at the end-of-text token, the highest id of each prompt. Selected by a one-hot
    # weighted sum (exact: one weight is 1, the others 0), not open_clip's x[arange(N), argmax], so
    # that ONNX shape inference keeps the named axis N.
    positions = torch.arange(tokens.shape[1], device=tokens.device)  # [77]
    one_hot = (positions.unsqueeze(0) == tokens.argmax(dim=-1, keepdim=True)).to(x.dtype)  # [N, 77]
    pooled = (x * one_hot.unsqueeze(-1)).sum(dim=1)  # [N, W]
    return F.normalize(pooled @ clip_model.text_projection, dim=-1)
