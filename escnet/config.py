"""Every configuration value of the model, and every choice the papers leave open, in one place.

Each variant is a frozen :class:`ModelConfig`. Fields that settle an open point of ESC-Net or
CAT-Seg carry their reason in the comment beside them; ``DESIGN_DECISIONS`` lists the same reasons
for documentation and for the README.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

# One class name, in UTF-8 bytes (the unit a served request's names arrive in); CLIP reads 77 tokens,
# and a longer name is refused, never silently cut. The served limit (RequestLimits) defaults to it.
MAX_CLASS_NAME_BYTES = 200
# CAT-Seg's one prompt template (P = 1; DECISIONS["text_templates"]).
SINGLE_TEMPLATE: tuple[str, ...] = ("A photo of a {} in the scene",)


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
    # Average pooling before class attention is an inference choice: InferenceProtocol.pooling_size.
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
    # K-means on foreground cell coordinates. K = 5 is our choice: the supplementary names K-means
    # but gives no K (DESIGN_DECISIONS["kmeans"]). Initialised from the K most probable cells and
    # run a fixed number of Lloyd iterations so it is deterministic and has a static cost; fewer
    # foreground cells than K give fewer points, padded with label -1.
    num_clusters: int = 5
    kmeans_iterations: int = 10


def check_pseudo_prompt_grid(height: int, width: int, image_size: int, config: PseudoPromptConfig) -> None:
    """The checks of pseudo prompt generation that do not depend on the array library: the grid,
    the image size and the config (escnet/pseudo_prompts.py and its numpy port share them)."""
    cells = height * width
    # The exact K-means compares D_k * n_b^2 in int64: bound it below 2**63.
    if 2 * (cells * (max(height, width) - 1)) ** 2 * cells**2 >= 2**63:
        raise ValueError(
            f"score grid {height}x{width} is too large for the exact integer K-means "
            "(its int64 products would overflow; 24x24 is far within, about 73x73 is the limit)"
        )
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size <= 0:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")
    if config.num_clusters < 1:
        raise ValueError(f"config.num_clusters must be >= 1, got {config.num_clusters}")
    if config.kmeans_iterations < 0:
        raise ValueError(f"config.kmeans_iterations must be >= 0, got {config.kmeans_iterations}")


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


SYNONYM_RULES = ("first", "average")


@dataclass(frozen=True)
class InferenceProtocol:
    """How one image and a class list become the network's inputs, and its outputs one label map.

    The default, ``catseg_eval``, is CAT-Seg's official evaluation (its eval.sh over
    cat_seg_model.py, cat_seg_predictor.py and detectron2's test mapper), reproduced exactly:

    1. ResizeShortestEdge: the shorter side becomes ``shortest_edge`` (the longer side at most
       ``max_size``, sizes rounded half up), resampled by PIL's bilinear filter on the uint8 image.
    2. ``sliding_window``: the resized image is resized again to ``window_size`` squared (bilinear,
       float) and cut into ``crop_size`` crops with stride ``int(crop_size * (1 - overlap))``, plus
       the whole resized image at ``crop_size`` squared as a global view (5 views). Otherwise one
       view: the CLIP-normalised image padded with zeros to a multiple of ``pad_divisor``, resized
       to the CLIP input (CAT-Seg's path with TEST.SLIDING_WINDOW False).
    3. Class attention pools ``pooling_size`` cells (eval.sh overrides the yaml's training value
       2x2 with [1,1]).
    4. ``synonyms``: "first" encodes only the part of a name before its first ", " (CAT-Seg's
       get_text_embeds); "average" splits on every comma and averages the normalised embeddings
       of the synonyms (ours).
    5. Per-class sigmoid probabilities, merged over the views, resized back to the original image;
       the label of a pixel is the first class of highest probability.
    """

    name: str
    sliding_window: bool = True
    synonyms: str = "first"
    pooling_size: tuple[int, int] = (1, 1)
    shortest_edge: int = 640  # detectron2's INPUT.MIN_SIZE_TEST in CAT-Seg's configs
    max_size: int = 2560  # INPUT.MAX_SIZE_TEST
    window_size: int = 640  # inference_sliding_window's out_res
    crop_size: int = 384  # its kernel, in pixels of the window (for either CLIP resolution)
    overlap: float = 0.333
    pad_divisor: int = 32  # MODEL.MASK_FORMER.SIZE_DIVISIBILITY, single-view path only

    def __post_init__(self) -> None:
        if self.synonyms not in SYNONYM_RULES:
            raise ValueError(f"synonyms must be one of {SYNONYM_RULES}, got {self.synonyms!r}")

    @property
    def stride(self) -> int:
        return int(self.crop_size * (1 - self.overlap))


# The protocols a repository can be built with (build_repository --protocol, --synonyms).
PROTOCOLS: dict[str, InferenceProtocol] = {
    # CAT-Seg's official evaluation: what its reported mIoU was measured with. The default.
    "catseg_eval": InferenceProtocol(name="catseg_eval"),
    # CAT-Seg's own non-sliding test path (TEST.SLIDING_WINDOW False): one view instead of five,
    # about 4x less work per image, at some accuracy on small objects. Same graphs (pooling 1x1).
    "single_view": InferenceProtocol(name="single_view", sliding_window=False),
}
DEFAULT_PROTOCOL = PROTOCOLS["catseg_eval"]


def resolve_protocol(name: str, synonyms: str | None = None) -> InferenceProtocol:
    """A named protocol, with its synonym rule replaced when ``synonyms`` is given."""
    if name not in PROTOCOLS:
        raise ValueError(f"unknown inference protocol {name!r}; choose one of {sorted(PROTOCOLS)}")
    protocol = PROTOCOLS[name]
    return protocol if synonyms is None else replace(protocol, synonyms=synonyms)


@dataclass(frozen=True)
class ModelConfig:
    """One variant of the model."""

    name: str
    clip: ClipConfig
    aggregator: AggregatorConfig
    use_sam_blocks: bool  # ESC-Net: True; CAT-Seg: False
    pseudo_prompts: PseudoPromptConfig = field(default_factory=PseudoPromptConfig)
    sam: SamBlockConfig = field(default_factory=SamBlockConfig)
    # Every variant, ESC-Net's included, runs CAT-Seg's official evaluation by default: ESC-Net is
    # CAT-Seg's network with SAM blocks inserted and reports its results on CAT-Seg's benchmarks,
    # so it inherits the pre-processing, sliding window and pooling that produced CAT-Seg's.
    protocol: InferenceProtocol = DEFAULT_PROTOCOL
    # The prompt templates each class name is put in (P of TEXT_EMBEDDINGS [T, P, C]).
    text_templates: tuple[str, ...] = SINGLE_TEMPLATE

    def with_protocol(self, protocol: InferenceProtocol) -> ModelConfig:
        """This variant under another protocol; its graphs are shared when the pooling is the same."""
        return replace(self, protocol=protocol)


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

# The variant registry: name -> config (escnet.registry.build_model builds them). Each network on
# each CLIP tower: ESC-Net has four ESC blocks (SAM block + aggregator), CAT-Seg two aggregator layers.
NETWORKS = {"escnet": (True, 4), "catseg": (False, 2)}  # name -> (use_sam_blocks, aggregator layers)
TOWERS = {"vitb16_384": CLIP_VITB16, "vitl14_336": CLIP_VITL14}
MODEL_CONFIGS: dict[str, ModelConfig] = {
    f"{network}_{tower}": ModelConfig(
        name=f"{network}_{tower}",
        clip=clip,
        aggregator=AggregatorConfig(num_layers=layers),
        use_sam_blocks=sam,
    )
    for network, (sam, layers) in NETWORKS.items()
    for tower, clip in TOWERS.items()
}

DESIGN_DECISIONS: dict[str, str] = {
    "ppg_threshold": "1/576 (above uniform, argmax always kept): a class map is never empty.",
    "kmeans": "K=5 is our choice (the supplementary names K-means but gives no K), initialised from "
    "the 5 most probable cells, 10 fixed Lloyd iterations, deterministic; fewer foreground cells "
    "than K -> fewer points, padded with label -1.",
    "linear_sampling": "w_ij = max(0, 1 - distance) over the 3x3 neighbourhood; the paper's final "
    "point reduces to the argmax cell, so the sub-cell point is the centroid weighted by w*p, p the "
    "softmax probability of the cell: p >= 0 keeps the centroid inside the neighbourhood, where the "
    "raw correlation C (of either sign) could cancel its own weights.",
    "point_frame": "cell (i, j) -> pixel (16 j + 8, 16 i + 8) of the 384 frame after SAM's +0.5.",
    "prompt_grouping": "one prompt set per class: up to 5 points plus the union mask.",
    "clip_to_sam_projection": "linear 512->256, learned.",
    "esc_blocks": "4 ESC blocks, each ending in one VLF layer: our choice, as the sources at hand "
    "(the supplementary) do not give the count; CAT-Seg itself has 2 aggregator layers.",
    "sam_variant": "SAM ViT-B's prompt encoder and mask decoder (256-d, two-way depth 2): the "
    "decoder is the same for every SAM size, and ViT-B's checkpoint is the smallest.",
    "sam_weights_across_blocks": "4 copies, each initialised from the same SAM decoder.",
    "sam_features_across_blocks": "not carried over: each block's SAM features come from the CLIP "
    "features and that block's own prompts; only the 128-d embedding flows on.",
    "state_between_blocks": "the 128-d embedding flows through blocks; S_{k+1} = learned 128->1 conv.",
    "vlf_spatial_guidance": "class-wise SAM features (B,128,T,24,24) replace image-wide guidance.",
    "text_templates": "CAT-Seg's single template (P=1). The paper ensembles ImageNet's 80, but the "
    "official code and checkpoints use one: their conv1 takes P=1 channel, so 80 cannot load them.",
    "inference_protocol": "CAT-Seg's official evaluation (catseg_eval) for every variant: shorter "
    "side to 640 (PIL bilinear, longer at most 2560), always the sliding window (four 384 crops of "
    "the 640x640 resize, stride 256, plus a global view), class-attention pooling 1x1, only the "
    "first ', '-separated synonym encoded. ESC-Net inherits it: it is CAT-Seg's network with SAM "
    "blocks and is evaluated on CAT-Seg's benchmarks. Alternatives, chosen per repository build: "
    "single_view (CAT-Seg's non-sliding path, 1 view) and synonyms='average'.",
    "sam_output_tokens": "kept ahead of the prompt tokens, as SAM's decoder was trained.",
    "pseudo_mask_input": "binary union mask, nearest 4x upsampled to 96x96, values {0,1}.",
}
