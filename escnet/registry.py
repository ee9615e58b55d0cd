"""Variant registry: one name per model, one builder that resolves its weights from local files."""

from __future__ import annotations

from pathlib import Path

import torch

from escnet.config import MODEL_CONFIGS
from escnet.segmenter import OpenVocabSegmenter
from escnet.weights import (
    load_clip_checkpoint,
    load_sam_checkpoint,
    load_whole_checkpoint,
    warn_random_weights,
)


def build_model(
    variant: str,
    *,
    checkpoint: str | Path | None = None,
    clip_checkpoint: str | Path | None = None,
    sam_checkpoint: str | Path | None = None,
    seed: int = 0,
) -> OpenVocabSegmenter:
    """Build a variant in eval mode.

    checkpoint:      a whole-model file: an official CAT-Seg checkpoint (``sem_seg_head.*`` names)
                     or one of ours (``torch.save(model.state_dict())``)
    clip_checkpoint: an OpenAI / open_clip CLIP file for the towers (when no whole checkpoint)
    sam_checkpoint:  a SAM file for the ESC blocks' prompt encoder and two-way transformer
    Whatever no file covers stays at a seeded random init, with a loud warning.
    """
    if variant not in MODEL_CONFIGS:
        raise ValueError(f"unknown variant {variant!r}; choose one of {sorted(MODEL_CONFIGS)}")
    config = MODEL_CONFIGS[variant]
    torch.manual_seed(seed)
    model = OpenVocabSegmenter(config=config)
    if checkpoint is not None:
        load_whole_checkpoint(model, checkpoint)
    else:
        if clip_checkpoint is not None:
            load_clip_checkpoint(model, clip_checkpoint)
        if sam_checkpoint is not None:
            load_sam_checkpoint(model, sam_checkpoint)
        missing = ["CLIP towers"] if clip_checkpoint is None else []
        missing += ["cost aggregation and decoder"]
        if config.use_sam_blocks and sam_checkpoint is None:
            missing.append("SAM blocks")
        warn_random_weights(f"{variant} ({', '.join(missing)})")
    return model.eval()
