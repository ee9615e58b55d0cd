"""Every configuration value of the model, and every choice the papers leave open, in one place.

Each variant is a frozen :class:`ModelConfig`. Fields that settle an open point of ESC-Net or
CAT-Seg carry their reason in the comment beside them; ``DESIGN_DECISIONS`` lists the same reasons
for documentation and for the README.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ClipConfig:
    """The CLIP backbone: an OpenAI-layout ViT built by open_clip."""

    open_clip_name: str  # open_clip architecture name (QuickGELU variants, as OpenAI's weights use)
    image_size: int  # square input of the image tower, pixels
    patch_size: int  # ViT patch size, pixels; grid = image_size // patch_size = 24 for both variants
    width: int  # ViT token width (768 for B/16, 1024 for L/14)
    embed_dim: int  # joint image-text embedding width (512 for B/16, 768 for L/14)
    guidance_layers: tuple[int, int]  # blocks whose raw tokens feed the decoder guidance (CAT-Seg)
    # CLIP's pixel mean/std in 0-255 units (CAT-Seg's CLIP_PIXEL_MEAN / CLIP_PIXEL_STD).
    pixel_mean: tuple[float, float, float] = (122.7709383, 116.7460125, 104.09373615)
    pixel_std: tuple[float, float, float] = (68.5005327, 66.6321579, 70.32316305)
    context_length: int = 77  # text tokens per prompt

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size


@dataclass(frozen=True)
class AggregatorConfig:
    """CAT-Seg's cost aggregation (one "VLF" layer of ESC-Net is one of its layers)."""

    num_layers: int  # CAT-Seg: 2 (ViT-B and ViT-L configs); ESC-Net: 4, one per ESC block
    hidden_dim: int = 128  # cost embedding width
    num_heads: int = 4
    window_size: int = 12  # Swin window on the 24x24 grid
    pooling_size: tuple[int, int] = (2, 2)  # average pooling before class attention (CAT-Seg config)
    text_guidance_proj_dim: int = 128
    appearance_guidance_proj_dim: int = 128
    decoder_dims: tuple[int, int] = (64, 32)
    decoder_guidance_dims: tuple[int, int] = (256, 128)
    decoder_guidance_proj_dims: tuple[int, int] = (32, 16)
    # Class attention always sees this many classes: fewer are padded with learned tokens, more
    # are cut to the ones with the highest peak correlation, the rest getting logit -100.
    pad_len: int = 256
    dropped_class_logit: float = -100.0


@dataclass(frozen=True)
class PseudoPromptConfig:
    """Pseudo prompt generation (PPG) of ESC-Net; see escnet/pseudo_prompts.py."""

    # Binarisation of the per-class softmax over the grid cells. None -> 1 / (H * W), the uniform
    # probability: cells above uniform are foreground, and the most probable cell always is, so a
    # class map is never empty.
    threshold: float | None = None
    # K-means on foreground cell coordinates. The supplementary fixes K = 5; initialised from the
    # K most probable cells and run a fixed number of Lloyd iterations so it is deterministic and
    # has a static cost; fewer foreground cells than K give fewer points, padded with label -1.
    num_clusters: int = 5
    kmeans_iterations: int = 10


@dataclass(frozen=True)
class SamBlockConfig:
    """The pretrained SAM prompt encoder and two-way transformer inside each ESC block."""

    sam_dim: int = 256  # SAM ViT-B decoder width
    transformer_depth: int = 2
    transformer_mlp_dim: int = 2048
    transformer_heads: int = 8
    mask_in_chans: int = 16
    # SAM's decoder was trained with its output tokens (IoU + 4 mask tokens) ahead of the prompt
    # tokens; we keep them so the pretrained transformer sees the token layout it was trained on.
    use_output_tokens: bool = True
    # The pseudo mask (union of clusters, 24x24 binary) is upsampled 4x (nearest) to the 96x96
    # mask input SAM's prompt encoder expects for a 24x24 embedding, values {0, 1}.
    mask_upsample: int = 4


@dataclass(frozen=True)
class ModelConfig:
    """One variant of the model."""

    name: str
    clip: ClipConfig
    aggregator: AggregatorConfig
    use_sam_blocks: bool  # ESC-Net: True; CAT-Seg: False
    pseudo_prompts: PseudoPromptConfig = field(default_factory=PseudoPromptConfig)
    sam: SamBlockConfig = field(default_factory=SamBlockConfig)
    # CAT-Seg's single template; the 80 ImageNet templates are the option ("imagenet").
    prompt_templates: str = "single"
    # Sliding-window inference (CAT-Seg): the image is resized to this square, cut into
    # image_size crops with stride = int(image_size * (1 - overlap)), plus one global view.
    sliding_window_size: int = 640
    sliding_window_overlap: float = 0.333


CLIP_VITB16 = ClipConfig(
    open_clip_name="ViT-B-16-quickgelu",
    image_size=384,
    patch_size=16,
    width=768,
    embed_dim=512,
    guidance_layers=(3, 7),
)
CLIP_VITL14 = ClipConfig(
    open_clip_name="ViT-L-14-quickgelu",
    image_size=336,
    patch_size=14,
    width=1024,
    embed_dim=768,
    guidance_layers=(7, 15),
)

# The variant registry: name -> config (escnet.registry.build_model builds them).
MODEL_CONFIGS: dict[str, ModelConfig] = {
    "escnet_vitb16_384": ModelConfig(
        name="escnet_vitb16_384",
        clip=CLIP_VITB16,
        aggregator=AggregatorConfig(num_layers=4),
        use_sam_blocks=True,
    ),
    "escnet_vitl14_336": ModelConfig(
        name="escnet_vitl14_336",
        clip=CLIP_VITL14,
        aggregator=AggregatorConfig(num_layers=4),
        use_sam_blocks=True,
    ),
    "catseg_vitb16_384": ModelConfig(
        name="catseg_vitb16_384",
        clip=CLIP_VITB16,
        aggregator=AggregatorConfig(num_layers=2),
        use_sam_blocks=False,
    ),
    "catseg_vitl14_336": ModelConfig(
        name="catseg_vitl14_336",
        clip=CLIP_VITL14,
        aggregator=AggregatorConfig(num_layers=2),
        use_sam_blocks=False,
    ),
}

DESIGN_DECISIONS: dict[str, str] = {
    "ppg_threshold": "1/576 (above uniform, argmax always kept): a class map is never empty.",
    "kmeans": "K=5, initialised from the 5 most probable cells, 10 fixed Lloyd iterations, "
    "deterministic; fewer foreground cells than K -> fewer points, padded with label -1.",
    "linear_sampling": "w_ij = max(0, 1 - distance) over the 3x3 neighbourhood; the paper's final "
    "point reduces to the argmax cell, so the w*C-weighted centroid is the sub-cell point.",
    "point_frame": "cell (i, j) -> pixel (16 j + 8, 16 i + 8) of the 384 frame after SAM's +0.5.",
    "prompt_grouping": "one prompt set per class: up to 5 points plus the union mask.",
    "clip_to_sam_projection": "linear 512->256, learned.",
    "sam_weights_across_blocks": "4 copies, each initialised from the same SAM decoder.",
    "state_between_blocks": "the 128-d embedding flows through blocks; S_{k+1} = learned 128->1 conv.",
    "vlf_spatial_guidance": "class-wise SAM features (B,128,T,24,24) replace image-wide guidance.",
    "text_templates": "CAT-Seg's single template (P=1); ImageNet's 80 as an option.",
    "large_images": "CAT-Seg's sliding window: 640x640 -> 384 crops (stride 256) + global view.",
    "sam_output_tokens": "kept ahead of the prompt tokens, as SAM's decoder was trained.",
    "pseudo_mask_input": "binary union mask, nearest 4x upsampled to 96x96, values {0,1}.",
}
