"""Weights from local files only: CLIP, SAM, an official CAT-Seg checkpoint, or our own checkpoint.

Nothing here downloads. Every loader maps the file's names onto ours and then loads with
strict=True, so a missing or unexpected tensor is an error that names it.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from escnet.clip_backbone import resize_position_embedding

CATSEG_PREFIX = "sem_seg_head.predictor."
_QKV = ("q_proj_weight", "k_proj_weight", "v_proj_weight")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a local .pth/.pt file: plain, nested under "model"/"state_dict", or TorchScript."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except RuntimeError:
        # OpenAI's CLIP releases are TorchScript archives.
        loaded = torch.jit.load(str(path), map_location="cpu").state_dict()
    for key in ("model", "state_dict"):
        if isinstance(loaded, Mapping) and key in loaded and isinstance(loaded[key], Mapping):
            loaded = loaded[key]
    if not isinstance(loaded, Mapping):
        raise ValueError(f"{path} holds no state dict (found {type(loaded).__name__})")
    return {k: v for k, v in loaded.items() if isinstance(v, torch.Tensor)}


def _fit_clip_tensors(
    state: dict[str, torch.Tensor], prefix: str, model: nn.Module
) -> dict[str, torch.Tensor]:
    """Fuse separate q/k/v projections into in_proj_weight; resize the image position table."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        name = key.rsplit(".", 1)[-1]
        if name in _QKV:
            if name == "q_proj_weight":
                base = key[: -len(name)]
                out[base + "in_proj_weight"] = torch.cat([state[base + n] for n in _QKV], dim=0)
            continue
        out[key] = value
    pos_key = prefix + "visual.positional_embedding"
    if pos_key in out:
        grid = model.config.clip.grid
        out[pos_key] = resize_position_embedding(out[pos_key], grid)
    return out


def catseg_to_ours(official: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Official CAT-Seg names -> ours: drop ``sem_seg_head.predictor.``, fuse CAT-Seg's separate
    q/k/v CLIP projections into open_clip's in_proj_weight, resize ViT-B's 14x14 position table to
    the 24x24 grid (bicubic, as CAT-Seg does at every forward), drop the text tower's prompt slots."""
    state: dict[str, torch.Tensor] = {}
    for key, value in official.items():
        name = key[len(CATSEG_PREFIX) :] if key.startswith(CATSEG_PREFIX) else key
        if name.endswith("prompt_tokens") and value.numel() == 0:
            continue
        state[name] = value
    return _fit_clip_tensors(state, "clip_model.", model)


def load_clip_checkpoint(model: nn.Module, path: str | Path) -> None:
    """Load an OpenAI CLIP (.pt) or open_clip checkpoint into ``model.clip_model`` strictly."""
    state = {k: v for k, v in read_state_dict(path).items() if not k.startswith("module.")}
    state = _fit_clip_tensors(state, "", model)
    model.clip_model.load_state_dict(state, strict=True)
    report_loaded("the CLIP image and text towers (clip_model.*)", state, path)


def load_sam_checkpoint(model: nn.Module, path: str | Path) -> None:
    """Initialise every ESC block's SAM part from one SAM checkpoint (4 copies of the same decoder)."""
    from escnet.sam_prompted_features import load_sam_decoder_weights

    blocks = getattr(model.transformer, "sam_blocks", None)
    if blocks is None:
        raise ValueError("this variant has no SAM blocks (CAT-Seg); a SAM checkpoint does not apply")
    state = read_state_dict(path)
    for block in blocks:
        load_sam_decoder_weights(block, state)
    used = {
        k: v
        for k, v in state.items()
        if k.startswith(
            (
                "prompt_encoder.",
                "mask_decoder.transformer.",
                "mask_decoder.iou_token",
                "mask_decoder.mask_tokens",
            )
        )
    }
    report_loaded(f"the SAM prompt encoder and two-way transformer of {len(blocks)} ESC blocks", used, path)


def load_whole_checkpoint(model: nn.Module, path: str | Path) -> None:
    """Load a whole-model file strictly: an official CAT-Seg checkpoint (``sem_seg_head.*`` names,
    mapped by :func:`catseg_to_ours`) or one of ours (``torch.save(model.state_dict())``)."""
    state = read_state_dict(path)
    official = any(key.startswith(CATSEG_PREFIX) for key in state)
    if official:
        state = catseg_to_ours(state, model)
    model.load_state_dict(state, strict=True)
    layout = "official CAT-Seg layout" if official else "this project's layout"
    report_loaded(f"the whole model, every tensor ({layout})", state, path)


def report_loaded(what: str, state: Mapping[str, torch.Tensor], path: str | Path) -> None:
    """Say what a file filled: the loaders print it, so a user sees which weights are real."""
    values = sum(t.numel() for t in state.values())
    print(
        f"loaded {what}: {len(state)} tensors, {values / 1e6:.1f} M values, from {Path(path).resolve()}",
        flush=True,
    )


def warn_random_weights(what: str) -> None:
    message = (
        f"NO WEIGHTS for {what}: using a seeded random initialisation. Outputs are deterministic "
        "but MEAN NOTHING. Pass a local checkpoint file to get real segmentations."
    )
    warnings.warn(message, stacklevel=3)
    print(f"WARNING: {message}", flush=True)
