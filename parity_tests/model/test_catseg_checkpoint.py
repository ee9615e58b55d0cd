"""An official CAT-Seg checkpoint's layout loads strict=True into our CAT-Seg variants.

The "official" state dict here is synthetic (random tensors), but its key names and shapes are
written out by hand from the module structure of cvlab-kaist/CAT-Seg, not derived from our model:

- ``cat_seg/cat_seg_model.py`` (``CATSeg``): ``sem_seg_head`` and, at the top level,
  ``upsample1`` = ConvTranspose2d(proj_dim, 256, 2, 2) and ``upsample2`` = ConvTranspose2d(proj_dim,
  128, 4, 4), proj_dim 768 (ViT-B/16) or 1024 (ViT-L/14); its pixel mean/std buffers are
  non-persistent, so they are not in the file.
- ``cat_seg/modeling/heads/cat_seg_head.py``: the head holds ``predictor``;
  ``cat_seg/modeling/transformer/cat_seg_predictor.py``: the predictor holds ``clip_model`` (OpenAI
  CLIP built by ``third_party/model_vpt.py``) and ``transformer`` (``Aggregator`` of ``model.py``).
- ``third_party/model_vpt.py``: every attention block of both towers is its ``Attention`` subclass
  of nn.MultiheadAttention with the fused in_proj_weight removed and separate ``q_proj_weight``,
  ``k_proj_weight``, ``v_proj_weight`` [W, W] plus the fused ``in_proj_bias`` [3W]; the image
  tower's ``positional_embedding`` keeps OpenAI's training resolution (ViT-B/16: 224 -> 14 x 14 + 1
  = 197 rows; ViT-L/14@336px: 24 x 24 + 1 = 577) and is resized bicubically at every dense forward;
  with PROMPT_LENGTH = 0 (both released configs) the VPT ``prompt_tokens`` are None, so absent.
- ``model.py``: ``Aggregator`` (conv1 from prompt_channel = 1 template, guidance projections,
  ``layers`` of ``AggregatorLayer`` = ``swin_block`` (``SwinTransformerBlockWrapper``, pad_len 0:
  no padding tokens) + ``attention`` (``ClassTransformerLayer``, pad_len 256: padding tokens and
  padding guidance [1, 1, dim]), ``decoder1`` / ``decoder2`` (``Up``), ``head``); the shifted Swin
  block registers its ``attn_mask`` [nW, ws^2, ws^2] as a (persistent) buffer, the unshifted one
  registers None.
- Configs: vitb_384.yaml / vitl_336.yaml: NUM_LAYERS 2, HIDDEN_DIMS 128, guidance dims 512 / 768.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from escnet.registry import build_model
from escnet.segmenter import OpenVocabSegmenter
from escnet.weights import catseg_to_ours, load_whole_checkpoint

Shapes = dict[str, tuple[int, ...]]

HEAD = "sem_seg_head.predictor."
CLIP = HEAD + "clip_model."
AGG = HEAD + "transformer."

# OpenAI CLIP hyper-parameters (from the released checkpoints' shapes, as model_vpt.build_model reads them).
OPENAI_CLIP = {
    "catseg_vitb16_384": dict(
        embed_dim=512, vision_width=768, vision_layers=12, patch=16, train_resolution=224, text_width=512
    ),
    "catseg_vitl14_336": dict(
        embed_dim=768, vision_width=1024, vision_layers=24, patch=14, train_resolution=336, text_width=768
    ),
}
TEXT_LAYERS = 12
CONTEXT_LENGTH = 77
VOCAB_SIZE = 49408


def linear(prefix: str, out_features: int, in_features: int) -> Shapes:
    """nn.Linear: ``weight`` [out, in] and ``bias`` [out]."""
    return {prefix + "weight": (out_features, in_features), prefix + "bias": (out_features,)}


def norm(prefix: str, dim: int) -> Shapes:
    """nn.LayerNorm: ``weight`` and ``bias`` [dim]."""
    return {prefix + "weight": (dim,), prefix + "bias": (dim,)}


def mlp(first: str, second: str, dim: int) -> Shapes:
    """The two Linear layers of a transformer MLP, dim -> 4 dim -> dim."""
    return linear(first, 4 * dim, dim) | linear(second, dim, 4 * dim)


def official_attention_block(prefix: str, width: int) -> Shapes:
    """model_vpt.ResidualAttentionBlock with its ``Attention`` (separate q/k/v projection weights)."""
    return (
        {
            prefix + "attn.q_proj_weight": (width, width),
            prefix + "attn.k_proj_weight": (width, width),
            prefix + "attn.v_proj_weight": (width, width),
            prefix + "attn.in_proj_bias": (3 * width,),
        }
        | linear(prefix + "attn.out_proj.", width, width)
        | norm(prefix + "ln_1.", width)
        | mlp(prefix + "mlp.c_fc.", prefix + "mlp.c_proj.", width)
        | norm(prefix + "ln_2.", width)
    )


def official_clip(
    *,
    embed_dim: int,
    vision_width: int,
    vision_layers: int,
    patch: int,
    train_resolution: int,
    text_width: int,
) -> Shapes:
    """model_vpt.CLIP with a VisualTransformer image tower, prompt_length = 0."""
    grid = train_resolution // patch
    keys: Shapes = {
        CLIP + "visual.conv1.weight": (vision_width, 3, patch, patch),  # bias=False
        CLIP + "visual.class_embedding": (vision_width,),
        CLIP + "visual.positional_embedding": (grid * grid + 1, vision_width),
        CLIP + "visual.ln_pre.weight": (vision_width,),
        CLIP + "visual.ln_pre.bias": (vision_width,),
        CLIP + "visual.ln_post.weight": (vision_width,),
        CLIP + "visual.ln_post.bias": (vision_width,),
        CLIP + "visual.proj": (vision_width, embed_dim),
        CLIP + "token_embedding.weight": (VOCAB_SIZE, text_width),
        CLIP + "positional_embedding": (CONTEXT_LENGTH, text_width),
        CLIP + "ln_final.weight": (text_width,),
        CLIP + "ln_final.bias": (text_width,),
        CLIP + "text_projection": (text_width, embed_dim),
        CLIP + "logit_scale": (),
    }
    for i in range(vision_layers):
        keys |= official_attention_block(f"{CLIP}visual.transformer.resblocks.{i}.", vision_width)
    for i in range(TEXT_LAYERS):
        keys |= official_attention_block(f"{CLIP}transformer.resblocks.{i}.", text_width)
    return keys


def official_swin_block(
    prefix: str, dim: int, guidance: int, shifted: bool, windows: int, area: int
) -> Shapes:
    """model.SwinTransformerBlock: WindowAttention q/k (dim + guidance -> dim), v, proj; timm Mlp."""
    keys: Shapes = (
        norm(prefix + "norm1.", dim)
        | linear(prefix + "attn.q.", dim, dim + guidance)
        | linear(prefix + "attn.k.", dim, dim + guidance)
        | linear(prefix + "attn.v.", dim, dim)
        | linear(prefix + "attn.proj.", dim, dim)
        | norm(prefix + "norm2.", dim)
        | mlp(prefix + "mlp.fc1.", prefix + "mlp.fc2.", dim)
    )
    if shifted:
        keys[prefix + "attn_mask"] = (windows, area, area)
    return keys


def official_aggregator(*, embed_dim: int, num_layers: int = 2) -> Shapes:
    """model.Aggregator as CATSegPredictor builds it (hidden 128, 24 x 24 grid, window 12, pad_len 256)."""
    hidden, text_proj, app_proj = 128, 128, 128
    windows, area = (24 // 12) ** 2, 12 * 12
    keys: Shapes = {
        AGG + "conv1.weight": (hidden, 1, 7, 7),
        AGG + "conv1.bias": (hidden,),
        AGG + "guidance_projection.0.weight": (app_proj, embed_dim, 3, 3),
        AGG + "guidance_projection.0.bias": (app_proj,),
        AGG + "text_guidance_projection.0.weight": (text_proj, embed_dim),
        AGG + "text_guidance_projection.0.bias": (text_proj,),
        AGG + "decoder_guidance_projection.0.0.weight": (32, 256, 3, 3),
        AGG + "decoder_guidance_projection.0.0.bias": (32,),
        AGG + "decoder_guidance_projection.1.0.weight": (16, 128, 3, 3),
        AGG + "decoder_guidance_projection.1.0.bias": (16,),
        AGG + "head.weight": (1, 32, 3, 3),
        AGG + "head.bias": (1,),
    }
    # Up(in, out, guidance): up = ConvTranspose2d(in, in - guidance, 2, 2); DoubleConv without conv bias.
    for name, cin, cout, guide in (("decoder1", hidden, 64, 32), ("decoder2", 64, 32, 16)):
        p = f"{AGG}{name}."
        keys |= {
            p + "up.weight": (cin, cin - guide, 2, 2),
            p + "up.bias": (cin - guide,),
            p + "conv.double_conv.0.weight": (cout, cin, 3, 3),
            p + "conv.double_conv.1.weight": (cout,),
            p + "conv.double_conv.1.bias": (cout,),
            p + "conv.double_conv.3.weight": (cout, cout, 3, 3),
            p + "conv.double_conv.4.weight": (cout,),
            p + "conv.double_conv.4.bias": (cout,),
        }
    for layer in range(num_layers):
        swin = f"{AGG}layers.{layer}.swin_block."
        keys |= official_swin_block(swin + "block_1.", hidden, app_proj, False, windows, area)
        keys |= official_swin_block(swin + "block_2.", hidden, app_proj, True, windows, area)
        keys |= {swin + "guidance_norm.weight": (app_proj,), swin + "guidance_norm.bias": (app_proj,)}
        cls = f"{AGG}layers.{layer}.attention."
        keys |= (
            linear(cls + "attention.q.", hidden, hidden + text_proj)
            | linear(cls + "attention.k.", hidden, hidden + text_proj)
            | linear(cls + "attention.v.", hidden, hidden)
            | mlp(cls + "MLP.0.", cls + "MLP.2.", hidden)
            | norm(cls + "norm1.", hidden)
            | norm(cls + "norm2.", hidden)
            | {cls + "padding_tokens": (1, 1, hidden), cls + "padding_guidance": (1, 1, text_proj)}
        )
    return keys


def official_catseg(variant: str) -> Shapes:
    clip = OPENAI_CLIP[variant]
    width = clip["vision_width"]
    keys = official_clip(**clip)
    keys |= official_aggregator(embed_dim=clip["embed_dim"])
    keys |= {
        "upsample1.weight": (width, 256, 2, 2),
        "upsample1.bias": (256,),
        "upsample2.weight": (width, 128, 4, 4),
        "upsample2.bias": (128,),
    }
    return keys


def random_state(shapes: Shapes, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {name: torch.randn(shape, generator=generator) for name, shape in shapes.items()}


def cheap_state(shapes: Shapes) -> dict[str, torch.Tensor]:
    """Zero tensors that allocate nothing (expanded scalars): enough to check names and shapes."""
    return {name: torch.zeros(()).expand(shape) for name, shape in shapes.items()}


def build_quietly(variant: str) -> OpenVocabSegmenter:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build_model(variant)


def reference_position_resize(table: torch.Tensor, grid: int) -> torch.Tensor:
    """model_vpt.VisualTransformer.resized_pos_embed, written from its description: class row kept,
    the g x g patch rows resized bicubically (align_corners=False) to grid x grid."""
    width = table.shape[1]
    old = int((table.shape[0] - 1) ** 0.5)
    patches = table[1:].reshape(old, old, width).permute(2, 0, 1)[None]  # [1, W, g, g]
    patches = F.interpolate(patches, size=(grid, grid), mode="bicubic", align_corners=False)
    return torch.cat([table[:1], patches[0].permute(1, 2, 0).reshape(grid * grid, width)])


@pytest.fixture(scope="module")
def vitb() -> OpenVocabSegmenter:
    return build_quietly("catseg_vitb16_384")


@pytest.fixture(scope="module")
def official_vitb() -> dict[str, torch.Tensor]:
    return random_state(official_catseg("catseg_vitb16_384"))


def test_official_key_count_matches_the_source_structure() -> None:
    # ViT-B/16: 14 tensors per attention block x (12 image + 12 text) + 14 tower tensors = 350;
    # aggregator: 12 top-level + 2 x 8 decoder + 2 layers x (16 + 17 + 2 + 16) = 130; upsample 4.
    assert len(official_catseg("catseg_vitb16_384")) == 350 + 130 + 4


def test_official_vitb_checkpoint_loads_strictly_from_a_file(
    tmp_path, vitb: OpenVocabSegmenter, official_vitb: dict[str, torch.Tensor]
) -> None:
    path = tmp_path / "model_base.pth"
    torch.save({"model": official_vitb}, path)  # detectron2 checkpoints nest the weights under "model"
    load_whole_checkpoint(vitb, path)  # strict=True inside: raises on any missing or extra key

    ours = vitb.state_dict()
    for name, value in official_vitb.items():
        mapped = name[len(HEAD) :] if name.startswith(HEAD) else name
        if name.endswith(("q_proj_weight", "k_proj_weight", "v_proj_weight")):
            continue
        if name == CLIP + "visual.positional_embedding":
            continue
        torch.testing.assert_close(ours[mapped], value, rtol=0, atol=0, msg=f"{name} -> {mapped}")


@pytest.mark.parametrize("tower", ["visual.transformer", "transformer"])
@pytest.mark.parametrize("block", [0, 11])
def test_separate_qkv_fused_in_q_k_v_order(
    vitb: OpenVocabSegmenter, official_vitb: dict[str, torch.Tensor], tower: str, block: int
) -> None:
    state = catseg_to_ours(official_vitb, vitb)
    prefix = f"{tower}.resblocks.{block}.attn."
    fused = state["clip_model." + prefix + "in_proj_weight"]
    width = fused.shape[1]
    assert fused.shape == (3 * width, width)
    for index, part in enumerate(("q", "k", "v")):
        expected = official_vitb[f"{CLIP}{prefix}{part}_proj_weight"]
        torch.testing.assert_close(fused[index * width : (index + 1) * width], expected, rtol=0, atol=0)
    assert not any(k.endswith(("q_proj_weight", "k_proj_weight", "v_proj_weight")) for k in state)


def test_vitb_position_table_resized_to_577_rows(
    vitb: OpenVocabSegmenter, official_vitb: dict[str, torch.Tensor]
) -> None:
    official = official_vitb[CLIP + "visual.positional_embedding"]
    assert official.shape == (197, 768)
    resized = catseg_to_ours(official_vitb, vitb)["clip_model.visual.positional_embedding"]
    assert resized.shape == (577, 768)
    torch.testing.assert_close(resized[0], official[0], rtol=0, atol=0)  # class row untouched
    torch.testing.assert_close(resized, reference_position_resize(official, 24), rtol=1e-6, atol=1e-6)


def _strict_load(model: OpenVocabSegmenter, official: dict[str, torch.Tensor]) -> None:
    model.load_state_dict(catseg_to_ours(official, model), strict=True)


def test_missing_extra_or_misshapen_keys_fail_naming_each(vitb: OpenVocabSegmenter) -> None:
    """One strict load with every kind of fault: the error names each faulty key (our name)."""
    official = cheap_state(official_catseg("catseg_vitb16_384"))
    del official[AGG + "layers.1.attention.padding_tokens"]
    del official["upsample2.bias"]
    del official[CLIP + "visual.transformer.resblocks.3.attn.in_proj_bias"]
    official[AGG + "layers.0.attention.extra.weight"] = torch.zeros(2)
    official["backbone.stray"] = torch.zeros(1)
    official[AGG + "conv1.weight"] = torch.zeros(128, 80, 7, 7)  # 80 templates: not the released layout
    with pytest.raises(RuntimeError) as failure:
        _strict_load(vitb, official)
    message = str(failure.value)
    missing, _, rest = message.partition("Unexpected key(s)")
    for name in (
        "transformer.layers.1.attention.padding_tokens",
        "upsample2.bias",
        "clip_model.visual.transformer.resblocks.3.attn.in_proj_bias",
    ):
        assert f'"{name}"' in missing, name
    for name in ("transformer.layers.0.attention.extra.weight", "backbone.stray"):
        assert f'"{name}"' in rest, name
    assert "size mismatch for transformer.conv1.weight" in message


def test_missing_q_projection_names_the_unfused_block(
    vitb: OpenVocabSegmenter, official_vitb: dict[str, torch.Tensor]
) -> None:
    official = dict(official_vitb)
    del official[CLIP + "transformer.resblocks.5.attn.k_proj_weight"]
    with pytest.raises(KeyError, match=r"transformer\.resblocks\.5\.attn\.k_proj_weight"):
        catseg_to_ours(official, vitb)


def test_official_vitl_layout_loads_strictly() -> None:
    model = build_quietly("catseg_vitl14_336")
    official = cheap_state(official_catseg("catseg_vitl14_336"))
    assert official[CLIP + "visual.positional_embedding"].shape == (577, 1024)  # 336 / 14 = 24: no resize
    state = catseg_to_ours(official, model)
    assert state["clip_model.visual.transformer.resblocks.23.attn.in_proj_weight"].shape == (3072, 1024)
    assert state["clip_model.transformer.resblocks.11.attn.in_proj_weight"].shape == (2304, 768)
    model.load_state_dict(state, strict=True)
