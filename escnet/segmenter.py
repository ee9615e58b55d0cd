"""The whole model: CLIP towers + cost aggregation (CAT-Seg), with SAM-prompted ESC blocks (ESC-Net).

Top-level names follow CAT-Seg's checkpoints with the ``sem_seg_head.predictor.`` prefix dropped:
``clip_model`` (open_clip's OpenAI-layout CLIP), ``upsample1`` / ``upsample2`` (guidance
upsampling) and ``transformer`` (the cost aggregator).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from torch import nn

from escnet.clip_backbone import build_clip_model, encode_image_dense, encode_text_normalised
from escnet.config import ModelConfig
from escnet.cost_aggregation import CostAggregator
from escnet.image_views import segment_probabilities
from escnet.pseudo_prompts import generate_pseudo_prompts
from escnet.text_prompts import class_text_embeddings


@dataclass(frozen=True)
class ImageFeatures:
    """dense: [B, C, G, G]; guidance_mid: [B, 256, 2G, 2G]; guidance_fine: [B, 128, 4G, 4G]"""

    dense: torch.Tensor
    guidance_mid: torch.Tensor
    guidance_fine: torch.Tensor


@dataclass(frozen=True)
class Segmentation:
    """labels: [H, W] int64 class index per pixel; probabilities: [T, H, W] per-class sigmoid scores."""

    labels: torch.Tensor
    probabilities: torch.Tensor


def validate_image(image: np.ndarray | torch.Tensor) -> torch.Tensor:
    """An RGB image [H, W, 3] uint8 -> tensor, or a ValueError naming what is wrong with it."""
    if not isinstance(image, torch.Tensor):
        array = np.asarray(image)
        tensor = torch.from_numpy(array if array.flags.writeable else array.copy())  # e.g. a PIL image's
    else:
        tensor = image
    if tensor.dtype != torch.uint8:
        raise ValueError(f"image must be uint8 RGB, got dtype {tensor.dtype}")
    if tensor.dim() != 3 or tensor.shape[-1] != 3:
        raise ValueError(f"image must have shape [H, W, 3] (RGB), got {tuple(tensor.shape)}")
    if tensor.shape[0] == 0 or tensor.shape[1] == 0:
        raise ValueError(f"image is empty: shape {tuple(tensor.shape)}")
    return tensor


class OpenVocabSegmenter(nn.Module):
    """ESC-Net (``config.use_sam_blocks``) or CAT-Seg. Keyword-only constructor."""

    def __init__(self, *, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        clip = config.clip
        self.templates: tuple[str, ...] = config.text_templates
        self.clip_model = build_clip_model(clip)
        self.upsample1 = nn.ConvTranspose2d(clip.width, 256, kernel_size=2, stride=2)
        self.upsample2 = nn.ConvTranspose2d(clip.width, 128, kernel_size=4, stride=4)
        self.transformer = CostAggregator(config=config, num_templates=len(self.templates))
        self.tokenizer = open_clip.get_tokenizer(clip.open_clip_name)
        self.register_buffer("pixel_mean", torch.tensor(clip.pixel_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(clip.pixel_std).view(1, 3, 1, 1), persistent=False)

    # -- stages -------------------------------------------------------------------------------

    def normalise_images(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] RGB in 0..255 (any float/uint8) -> [B, 3, S, S] CLIP-normalised, S = image_size."""
        x = (images.float() - self.pixel_mean) / self.pixel_std
        size = self.config.clip.image_size
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        return x

    def encode_image(self, images: torch.Tensor) -> ImageFeatures:
        """[B, 3, S, S] normalised -> dense CLIP features and the two upsampled guidance maps."""
        features = encode_image_dense(self.clip_model, images, self.config.clip.guidance_layers)
        return ImageFeatures(
            dense=features.dense,
            guidance_mid=self.upsample1(features.guidance[0]),
            guidance_fine=self.upsample2(features.guidance[1]),
        )

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """[N, 77] int64 tokens -> [N, C] L2-normalised text embeddings."""
        return encode_text_normalised(self.clip_model, tokens)

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """texts -> [N, 77] int64 (CLIP BPE, truncated at 77 tokens)."""
        return self.tokenizer(texts)

    def embed_class_names(self, class_names: Sequence[str]) -> torch.Tensor:
        """Class names -> [T, P, C] normalised class embeddings, by the protocol's synonym rule."""
        device = self.pixel_mean.device
        return class_text_embeddings(
            class_names,
            lambda texts: self.tokenize(texts).to(device),
            self.encode_text,
            self.templates,
            self.config.protocol.synonyms,
        )

    def forward(self, images: torch.Tensor, text_embeddings: torch.Tensor) -> torch.Tensor:
        """images: [B, 3, S, S] normalised; text_embeddings: [T, P, C] -> logits [B, T, 4G, 4G]."""
        if text_embeddings.dim() != 3 or text_embeddings.shape[0] == 0:
            raise ValueError(
                f"text embeddings must be [T, P, C] with T >= 1, got {tuple(text_embeddings.shape)}"
            )
        features = self.encode_image(images)
        agg = self.transformer
        prep = agg.prepare(features.dense, (features.guidance_mid, features.guidance_fine), text_embeddings)
        embedding = prep.embedding
        if not self.config.use_sam_blocks:
            assert prep.appearance_guidance is not None
            for index in range(agg.num_layers):
                embedding = agg.aggregate(
                    index, embedding, prep.appearance_guidance, prep.text_guidance, prep.class_mask
                )
            return agg.decode(embedding, prep.decoder_guidance, prep.class_mask)

        score = prep.score
        b, t, g = score.shape[0], score.shape[1], score.shape[2]
        for index in range(agg.num_layers):
            prompts = generate_pseudo_prompts(
                score.reshape(b * t, g, g),
                image_size=self.config.clip.image_size,
                config=self.config.pseudo_prompts,
            )
            k = prompts.points.shape[1]
            sam_features = agg.sam_block(
                index,
                features.dense,
                prompts.points.reshape(b, t, k, 2),
                prompts.labels.reshape(b, t, k),
                prompts.mask.reshape(b, t, g, g),
            )
            embedding = agg.aggregate(index, embedding, sam_features, prep.text_guidance, prep.class_mask)
            if index < agg.num_layers - 1:
                score = agg.score_map(index, embedding)
        return agg.decode(embedding, prep.decoder_guidance, prep.class_mask)

    # -- whole-image inference ---------------------------------------------------------------

    @torch.no_grad()
    def segment(self, image: np.ndarray | torch.Tensor, class_names: Sequence[str]) -> Segmentation:
        """One RGB image [H, W, 3] uint8 and T class names -> labels [H, W] and probabilities [T, H, W].

        Follows ``config.protocol`` (by default CAT-Seg's official evaluation: shorter side to 640,
        sliding window, first synonym); see escnet/image_views.py.
        """
        pixels = validate_image(image)
        text = self.embed_class_names(class_names)
        probabilities = segment_probabilities(self, pixels, text)  # [T, H, W]
        return Segmentation(labels=probabilities.argmax(dim=0), probabilities=probabilities)
