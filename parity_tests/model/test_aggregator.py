"""CAT-Seg's aggregator layer (escnet/aggregator.py) against CAT-Seg's own formulation.

The references below transcribe the math of cvlab-kaist/CAT-Seg, cat_seg/modeling/transformer/
model.py, as described there: ``LinearAttention`` (elu + 1 feature map, values divided by their
length, a 3-operand einsum, times the length) and ``ClassTransformerLayer`` (pool, gather the kept
classes, append exactly pad_len - kept learned padding tokens, attention + MLP, upsample, cut the
padding). They run on the same module's weights in float64, so agreement is to rounding.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from escnet.aggregator import AggregatorLayer, ClassAggregation, GuidedSwinBlock, LinearClassAttention

HIDDEN = 16
GUIDANCE = 8
HEADS = 4
PAD_LEN = 256


def randomise(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Seeded random weights (padding tokens included, which start at zero) in float64."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
    return module.double().eval()


def reference_linear_attention(
    layer: LinearClassAttention, x: torch.Tensor, guidance: torch.Tensor, kept: torch.Tensor | None = None
) -> torch.Tensor:
    """CAT-Seg's AttentionLayer + LinearAttention. x: [N, L, C]; guidance: [N, L, Cg]; kept: indices
    of the tokens that give keys and values (all when None) -> [N, L, C]."""
    n, length, channels = x.shape
    heads = layer.num_heads
    with_guidance = torch.cat([x, guidance], dim=-1)
    queries = layer.q(with_guidance).reshape(n, length, heads, -1)  # [N, L, H, D]
    keys = layer.k(with_guidance).reshape(n, length, heads, -1)  # [N, S, H, D]
    values = layer.v(x).reshape(n, length, heads, -1)  # [N, S, H, D]
    if kept is not None:
        keys, values = keys[:, kept], values[:, kept]
    q = F.elu(queries) + 1
    k = F.elu(keys) + 1
    v_length = values.size(1)
    values = values / v_length
    kv = torch.einsum("nshd,nshv->nhdv", k, values)
    z = 1 / (torch.einsum("nlhd,nhd->nlh", q, k.sum(dim=1)) + layer.eps)
    out = torch.einsum("nlhd,nhdv,nlh->nlhv", q, kv, z) * v_length
    return out.reshape(n, length, channels)


def reference_class_aggregation(
    layer: ClassAggregation, x: torch.Tensor, guidance: torch.Tensor, class_mask: torch.Tensor
) -> list[torch.Tensor]:
    """CAT-Seg's ClassTransformerLayer on each image's kept classes, gathered explicitly and padded
    with exactly (pad_len - kept) padding tokens. Returns per image [C, kept, H, W]."""
    b, c, t, h, w = x.shape
    outputs = []
    for image in range(b):
        kept = class_mask[image].nonzero().flatten()
        count = kept.numel()
        xb = x[image][:, kept]  # [C, Tk, H, W]
        gb = guidance[image][kept]  # [Tk, Cg]
        pooled = layer.pool(xb.transpose(0, 1))  # [Tk, C, h', w']
        hp, wp = pooled.shape[-2:]
        pads = max(layer.pad_len - count, 0)
        tokens = torch.cat([pooled, layer.padding_tokens.reshape(1, c, 1, 1).expand(pads, c, hp, wp)])
        gb = torch.cat([gb, layer.padding_guidance.reshape(1, -1).expand(pads, -1)])  # [S, Cg]
        tokens = tokens.permute(2, 3, 0, 1).reshape(hp * wp, count + pads, c)  # [h'w', S, C]
        guide = gb.unsqueeze(0).expand(hp * wp, -1, -1)  # [h'w', S, Cg]
        tokens = tokens + reference_linear_attention(layer.attention, layer.norm1(tokens), guide)
        tokens = tokens + layer.MLP(layer.norm2(tokens))
        tokens = tokens.reshape(hp, wp, count + pads, c).permute(2, 3, 0, 1)  # [S, C, h', w']
        tokens = F.interpolate(tokens, size=(h, w), mode="bilinear", align_corners=True)[:count]
        outputs.append(xb + tokens.transpose(0, 1))
    return outputs


@pytest.fixture(scope="module")
def attention() -> LinearClassAttention:
    return randomise(LinearClassAttention(hidden_dim=HIDDEN, guidance_dim=GUIDANCE, num_heads=HEADS), 1)


@pytest.fixture(scope="module")
def class_aggregation() -> ClassAggregation:
    module = ClassAggregation(
        hidden_dim=HIDDEN, guidance_dim=GUIDANCE, num_heads=HEADS, pooling_size=(2, 2), pad_len=PAD_LEN
    )
    return randomise(module, 2)


@torch.no_grad()
def test_linear_attention_equals_catseg_einsum(attention: LinearClassAttention) -> None:
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(5, 37, HIDDEN, generator=generator, dtype=torch.float64)
    guidance = torch.randn(5, 37, GUIDANCE, generator=generator, dtype=torch.float64)
    ours = attention(x, guidance, torch.ones(5, 37, dtype=torch.float64))
    torch.testing.assert_close(
        ours, reference_linear_attention(attention, x, guidance), rtol=1e-10, atol=1e-10
    )


@torch.no_grad()
def test_masked_tokens_give_neither_keys_nor_values(attention: LinearClassAttention) -> None:
    generator = torch.Generator().manual_seed(4)
    x = torch.randn(3, 20, HIDDEN, generator=generator, dtype=torch.float64)
    guidance = torch.randn(3, 20, GUIDANCE, generator=generator, dtype=torch.float64)
    mask = torch.ones(3, 20, dtype=torch.float64)
    dropped = torch.tensor([0, 4, 5, 11, 19])
    mask[:, dropped] = 0
    kept = mask[0].nonzero().flatten()
    ours = attention(x, guidance, mask)
    # Every token still queries; only the kept ones are attended to.
    torch.testing.assert_close(
        ours, reference_linear_attention(attention, x, guidance, kept), rtol=1e-10, atol=1e-10
    )
    # What a masked token holds does not matter.
    x2, guidance2 = x.clone(), guidance.clone()
    x2[:, dropped] = 1e3
    guidance2[:, dropped] = -1e3
    changed = attention(x2, guidance2, mask)
    torch.testing.assert_close(changed[:, kept], ours[:, kept], rtol=1e-10, atol=1e-10)


def _keep(batch: int, classes: int, kept: int, generator: torch.Generator) -> torch.Tensor:
    mask = torch.zeros(batch, classes, dtype=torch.float64)
    for image in range(batch):
        mask[image, torch.randperm(classes, generator=generator)[:kept]] = 1
    return mask


@pytest.mark.parametrize(
    ("classes", "kept"),
    [(1, 1), (7, 7), (40, 29), (256, 256), (300, 256)],
    ids=["T=1", "T<256", "T<256-masked", "T=256", "T>256"],
)
@torch.no_grad()
def test_masked_padding_equals_gather_and_pad(
    class_aggregation: ClassAggregation, classes: int, kept: int
) -> None:
    generator = torch.Generator().manual_seed(classes)
    b, h, w = 2, 4, 6
    x = torch.randn(b, HIDDEN, classes, h, w, generator=generator, dtype=torch.float64)
    guidance = torch.randn(b, classes, GUIDANCE, generator=generator, dtype=torch.float64)
    mask = _keep(b, classes, kept, generator)  # a different choice of classes per image
    ours = class_aggregation(x, guidance, mask)
    assert ours.shape == x.shape
    for image, expected in enumerate(reference_class_aggregation(class_aggregation, x, guidance, mask)):
        got = ours[image][:, mask[image].nonzero().flatten()]
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)


@torch.no_grad()
def test_padding_tokens_matter_below_pad_len(class_aggregation: ClassAggregation) -> None:
    """Guard for the reference above: with T < pad_len the learned padding changes the output."""
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(1, HIDDEN, 3, 4, 4, generator=generator, dtype=torch.float64)
    guidance = torch.randn(1, 3, GUIDANCE, generator=generator, dtype=torch.float64)
    mask = torch.ones(1, 3, dtype=torch.float64)
    before = class_aggregation(x, guidance, mask)
    saved = class_aggregation.padding_tokens.detach().clone()
    shift = torch.randn(saved.shape, generator=generator, dtype=saved.dtype)  # not constant: LayerNorm
    class_aggregation.padding_tokens.add_(shift)
    try:
        after = class_aggregation(x, guidance, mask)
    finally:
        class_aggregation.padding_tokens.copy_(saved)
    assert (after - before).abs().max() > 1e-3


# Region ids of the shifted 4x4 grid (window 2, shift 1): rows/cols split as [0:2], [2:3], [3:4].
#     0 0 1 2
#     0 0 1 2
#     3 3 4 5
#     6 6 7 8
# Windows (row-major) hold the ids [0,0,0,0], [1,2,1,2], [3,3,6,6], [4,5,7,8]; two tokens of one window
# may attend to each other (0) only when their ids agree, else -100.
X = -100.0
EXPECTED_SHIFT_MASK = torch.tensor(
    [
        [[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]],
        [[0, X, 0, X], [X, 0, X, 0], [0, X, 0, X], [X, 0, X, 0]],
        [[0, 0, X, X], [0, 0, X, X], [X, X, 0, 0], [X, X, 0, 0]],
        [[0, X, X, X], [X, 0, X, X], [X, X, 0, X], [X, X, X, 0]],
    ]
)


def test_swin_shift_mask_by_hand() -> None:
    common = dict(dim=8, guidance_dim=4, resolution=(4, 4), num_heads=2, window=2)
    shifted = GuidedSwinBlock(**common, shift=1)
    torch.testing.assert_close(shifted.attn_mask, EXPECTED_SHIFT_MASK, rtol=0, atol=0)
    assert GuidedSwinBlock(**common, shift=0).attn_mask is None


def test_swin_shift_mask_at_catseg_size() -> None:
    block = GuidedSwinBlock(dim=8, guidance_dim=4, resolution=(24, 24), num_heads=2, window=12, shift=6)
    mask = block.attn_mask
    assert mask.shape == (4, 144, 144)
    assert set(mask.unique().tolist()) == {0.0, -100.0}
    assert (mask[0] == 0).all()  # the top-left window is not cut by the shift
    assert (mask.diagonal(dim1=1, dim2=2) == 0).all()  # a token always sees itself
    # Bottom-right window: 4 regions of 6x6 tokens each, each token sees exactly its own 36.
    assert ((mask[3] == 0).sum(dim=1) == 36).all()


@pytest.fixture(scope="module")
def aggregator_layer() -> AggregatorLayer:
    layer = AggregatorLayer(
        hidden_dim=HIDDEN,
        appearance_guidance_dim=GUIDANCE,
        text_guidance_dim=GUIDANCE,
        num_heads=HEADS,
        resolution=(8, 8),
        window=4,
        pooling_size=(2, 2),
        pad_len=8,
    )
    return randomise(layer, 6)


@pytest.mark.parametrize(
    ("classes", "per_class_guidance"),
    [(5, False), (5, True), (12, False)],
    ids=["T<pad-image-guidance", "T<pad-class-guidance", "T>pad-masked"],
)
@torch.no_grad()
def test_permuting_classes_permutes_the_output(
    aggregator_layer: AggregatorLayer, classes: int, per_class_guidance: bool
) -> None:
    generator = torch.Generator().manual_seed(7)
    b = 2
    x = torch.randn(b, HIDDEN, classes, 8, 8, generator=generator, dtype=torch.float64)
    shape = (b, GUIDANCE, classes, 8, 8) if per_class_guidance else (b, GUIDANCE, 8, 8)
    appearance = torch.randn(shape, generator=generator, dtype=torch.float64)
    text = torch.randn(b, classes, GUIDANCE, generator=generator, dtype=torch.float64)
    mask = _keep(b, classes, min(classes, aggregator_layer.attention.pad_len), generator)
    perm = torch.randperm(classes, generator=generator)
    out = aggregator_layer(x, appearance, text, mask)
    permuted_appearance = appearance[:, :, perm] if per_class_guidance else appearance
    out_permuted = aggregator_layer(x[:, :, perm], permuted_appearance, text[:, perm], mask[:, perm])
    torch.testing.assert_close(out_permuted, out[:, :, perm], rtol=1e-10, atol=1e-10)
    assert (out - x).abs().max() > 1e-3  # the layer did something
