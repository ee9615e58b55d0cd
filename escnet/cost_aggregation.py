"""The cost aggregation network of CAT-Seg, and ESC-Net's version of it with SAM-prompted blocks.

Both hold their modules under CAT-Seg's names (``conv1``, ``layers``, ``decoder1`` ...), so a
CAT-Seg checkpoint's ``sem_seg_head.predictor.transformer.*`` loads unchanged. The stages are
public methods: the ONNX export cuts the network exactly along them.

    prepare:    cost volume, class choice, cost embedding E_1, guidance projections, S_1
    sam_block:  ESC-Net only, SAM prompt encoder + two-way transformer on pseudo prompts
    aggregate:  one aggregator layer (CAT-Seg) / VLF (ESC-Net)
    score_map:  ESC-Net only, S_{k+1} from E_{k+1}
    decode:     upsampling decoder, dropped classes set to -100
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from escnet.aggregator import AggregatorLayer
from escnet.config import ModelConfig
from escnet.cost_volume import class_keep_mask, cost_volume, mean_over_templates
from escnet.sam_prompted_features import SamPromptedFeatures
from escnet.upsampling_decoder import Up, decode_logits


@dataclass(frozen=True)
class PreparedCosts:
    """What every later stage needs (G = 24 grid).

    embedding:          [B, 128, T, G, G] cost embedding E_1
    score:              [B, T, G, G] one-channel class map S_1 (template-mean of the cost volume)
    class_mask:         [B, T] 1 for classes class attention sees (top-256 by peak correlation)
    text_guidance:      [B, T, 128]
    appearance_guidance:[B, 128, G, G] (CAT-Seg only; None for ESC-Net)
    decoder_guidance:   ([B, 32, 2G, 2G], [B, 16, 4G, 4G])
    """

    embedding: torch.Tensor
    score: torch.Tensor
    class_mask: torch.Tensor
    text_guidance: torch.Tensor
    appearance_guidance: torch.Tensor | None
    decoder_guidance: tuple[torch.Tensor, torch.Tensor]


def _conv_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1), nn.ReLU())


class CostAggregator(nn.Module):
    """CAT-Seg's ``Aggregator``; with ``config.use_sam_blocks`` ESC-Net's ESC blocks."""

    def __init__(self, *, config: ModelConfig, num_templates: int = 1) -> None:
        super().__init__()
        agg = config.aggregator
        clip = config.clip
        grid = clip.grid
        self.config = config
        self.conv1 = nn.Conv2d(num_templates, agg.hidden_dim, kernel_size=7, padding=3)
        self.guidance_projection = (
            None if config.use_sam_blocks else _conv_relu(clip.embed_dim, agg.appearance_guidance_proj_dim)
        )
        self.text_guidance_projection = nn.Sequential(
            nn.Linear(clip.embed_dim, agg.text_guidance_proj_dim), nn.ReLU()
        )
        self.decoder_guidance_projection = nn.ModuleList(
            [
                _conv_relu(d, p)
                for d, p in zip(agg.decoder_guidance_dims, agg.decoder_guidance_proj_dims, strict=True)
            ]
        )
        self.layers = nn.ModuleList(
            [
                AggregatorLayer(
                    hidden_dim=agg.hidden_dim,
                    appearance_guidance_dim=agg.appearance_guidance_proj_dim,
                    text_guidance_dim=agg.text_guidance_proj_dim,
                    num_heads=agg.num_heads,
                    resolution=(grid, grid),
                    window=agg.window_size,
                    pooling_size=config.protocol.pooling_size,
                    pad_len=agg.pad_len,
                )
                for _ in range(agg.num_layers)
            ]
        )
        self.decoder1 = Up(
            in_channels=agg.hidden_dim,
            out_channels=agg.decoder_dims[0],
            guidance_channels=agg.decoder_guidance_proj_dims[0],
        )
        self.decoder2 = Up(
            in_channels=agg.decoder_dims[0],
            out_channels=agg.decoder_dims[1],
            guidance_channels=agg.decoder_guidance_proj_dims[1],
        )
        self.head = nn.Conv2d(agg.decoder_dims[1], 1, kernel_size=3, padding=1)
        if config.use_sam_blocks:
            self.sam_blocks = nn.ModuleList(
                [
                    SamPromptedFeatures(
                        clip_dim=clip.embed_dim,
                        out_dim=agg.appearance_guidance_proj_dim,
                        grid=grid,
                        image_size=clip.image_size,
                        config=config.sam,
                    )
                    for _ in range(agg.num_layers)
                ]
            )
            # S_{k+1} = 1x1 conv of E_{k+1}, prompting block k+1; the last block needs none.
            self.score_heads = nn.ModuleList(
                [nn.Conv2d(agg.hidden_dim, 1, kernel_size=1) for _ in range(agg.num_layers - 1)]
            )

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def prepare(
        self,
        image_features: torch.Tensor,
        decoder_guidance_features: tuple[torch.Tensor, torch.Tensor],
        text_embeddings: torch.Tensor,
    ) -> PreparedCosts:
        """image_features: [B, C, G, G] dense CLIP; decoder_guidance_features: ([B, 256, 2G, 2G],
        [B, 128, 4G, 4G]) upsampled intermediate tokens; text_embeddings: [T, P, C] normalised."""
        corr = cost_volume(image_features, text_embeddings)  # [B, P, T, G, G]
        b, p, t, h, w = corr.shape
        class_mask = class_keep_mask(corr, self.config.aggregator.pad_len)
        embedding = self.conv1(corr.transpose(1, 2).reshape(b * t, p, h, w))  # [B*T, 128, G, G]
        hidden = self.conv1.out_channels
        embedding = embedding.reshape(b, t, hidden, h, w).transpose(1, 2)  # [B, 128, T, G, G]
        text = F.normalize(text_embeddings.mean(dim=1), dim=-1)  # [T, C]
        # Broadcast over the batch by an addition, not expand(): ONNX shape inference then keeps the
        # named axes B and T of the output (a TensorRT-readiness lint requirement).
        per_image = torch.zeros_like(class_mask).unsqueeze(-1)  # [B, T, 1]
        text_guidance = self.text_guidance_projection(text).unsqueeze(0) + per_image  # [B, T, 128]
        appearance = (
            self.guidance_projection(image_features) if self.guidance_projection is not None else None
        )
        projections = self.decoder_guidance_projection
        decoder_guidance = (
            projections[0](decoder_guidance_features[0]),
            projections[1](decoder_guidance_features[1]),
        )
        return PreparedCosts(
            embedding=embedding,
            score=mean_over_templates(corr),
            class_mask=class_mask,
            text_guidance=text_guidance,
            appearance_guidance=appearance,
            decoder_guidance=decoder_guidance,
        )

    def sam_block(
        self,
        index: int,
        image_features: torch.Tensor,
        points: torch.Tensor,
        point_labels: torch.Tensor,
        masks: torch.Tensor,
    ) -> torch.Tensor:
        """ESC block ``index``'s class-wise SAM features [B, 128, T, G, G] (see SamPromptedFeatures)."""
        return self.sam_blocks[index](image_features, points, point_labels, masks)

    def aggregate(
        self,
        index: int,
        embedding: torch.Tensor,
        appearance_guidance: torch.Tensor,
        text_guidance: torch.Tensor,
        class_mask: torch.Tensor,
    ) -> torch.Tensor:
        """Aggregator layer ``index``: [B, 128, T, G, G] -> [B, 128, T, G, G]."""
        return self.layers[index](embedding, appearance_guidance, text_guidance, class_mask)

    def score_map(self, index: int, embedding: torch.Tensor) -> torch.Tensor:
        """S_{index+2} from E_{index+2}: [B, 128, T, G, G] -> [B, T, G, G]."""
        b, c, t, h, w = embedding.shape
        flat = embedding.transpose(1, 2).reshape(b * t, c, h, w)  # [B*T, 128, G, G]
        return self.score_heads[index](flat).reshape(b, t, h, w)

    def decode(
        self,
        embedding: torch.Tensor,
        decoder_guidance: tuple[torch.Tensor, torch.Tensor],
        class_mask: torch.Tensor,
    ) -> torch.Tensor:
        """[B, 128, T, G, G] -> logits [B, T, 4G, 4G]; classes outside class_mask get -100."""
        logits = decode_logits(self.decoder1, self.decoder2, self.head, embedding, decoder_guidance)
        dropped = torch.full_like(logits, self.config.aggregator.dropped_class_logit)
        return torch.where(class_mask[:, :, None, None] > 0, logits, dropped)
