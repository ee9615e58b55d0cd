"""Export wrappers: one small module per graph of the contract, each calling only public stages of
the built model, plus sample inputs to trace them with.

The wrappers take and return exactly the contract's tensors, in the contract's order.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from escnet.segmenter import OpenVocabSegmenter
from escnet_export.contract import AXIS_PROFILES, StepSpec, step_specs


class ClipImageEncoder(nn.Module):
    def __init__(self, model: OpenVocabSegmenter) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        features = self.model.encode_image(images)
        return features.dense, features.guidance_mid, features.guidance_fine


class ClipTextEncoder(nn.Module):
    def __init__(self, model: OpenVocabSegmenter) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(tokens.long())


class Prep(nn.Module):
    def __init__(self, model: OpenVocabSegmenter) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        features: torch.Tensor,
        guidance_mid: torch.Tensor,
        guidance_fine: torch.Tensor,
        text: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        prep = self.model.transformer.prepare(features, (guidance_mid, guidance_fine), text)
        outputs = [prep.embedding, prep.score, prep.class_mask, prep.text_guidance, *prep.decoder_guidance]
        if prep.appearance_guidance is not None:
            outputs.append(prep.appearance_guidance)
        return tuple(outputs)


class SamPromptDecoder(nn.Module):
    def __init__(self, model: OpenVocabSegmenter, index: int) -> None:
        super().__init__()
        self.block = model.transformer.sam_blocks[index]

    def forward(
        self, features: torch.Tensor, points: torch.Tensor, point_labels: torch.Tensor, masks: torch.Tensor
    ) -> torch.Tensor:
        return self.block(features, points, point_labels, masks)


class Aggregator(nn.Module):
    def __init__(self, model: OpenVocabSegmenter, index: int) -> None:
        super().__init__()
        self.aggregator = model.transformer
        self.index = index
        self.emits_score = model.config.use_sam_blocks and index < self.aggregator.num_layers - 1

    def forward(
        self,
        embedding: torch.Tensor,
        guidance: torch.Tensor,
        text_guidance: torch.Tensor,
        class_mask: torch.Tensor,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        out = self.aggregator.aggregate(self.index, embedding, guidance, text_guidance, class_mask)
        if self.emits_score:
            return out, self.aggregator.score_map(self.index, out)
        return out


class Decoder(nn.Module):
    def __init__(self, model: OpenVocabSegmenter) -> None:
        super().__init__()
        self.aggregator = model.transformer

    def forward(
        self,
        embedding: torch.Tensor,
        guidance_mid: torch.Tensor,
        guidance_fine: torch.Tensor,
        class_mask: torch.Tensor,
    ) -> torch.Tensor:
        return self.aggregator.decode(embedding, (guidance_mid, guidance_fine), class_mask)


def graph_wrapper(model: OpenVocabSegmenter, name: str) -> nn.Module:
    """The export wrapper of graph ``name`` (a graph name of escnet_export.contract.graph_names)."""
    simple: dict[str, Callable[[OpenVocabSegmenter], nn.Module]] = {
        "clip_image_encoder": ClipImageEncoder,
        "clip_text_encoder": ClipTextEncoder,
        "prep": Prep,
        "decoder": Decoder,
    }
    if name in simple:
        return simple[name](model).eval()
    prefix, _, number = name.rpartition("_")
    if prefix == "sam_prompt_decoder":
        return SamPromptDecoder(model, int(number) - 1).eval()
    if prefix == "aggregator":
        return Aggregator(model, int(number) - 1).eval()
    raise ValueError(f"no graph named {name!r}")


# Sizes used to trace: every dynamic axis > 1 and distinct, so no axis is fixed by accident.
SAMPLE_AXES = {"B": 2, "T": 3, "N": 4, "P": 1, "K": AXIS_PROFILES["K"].optimum}


def sample_inputs(
    step: StepSpec, seed: int = 0, axes: dict[str, int] | None = None
) -> dict[str, torch.Tensor]:
    """Random inputs of the right shapes and dtypes for a graph (values in plausible ranges)."""
    sizes = {**SAMPLE_AXES, **(axes or {})}
    generator = torch.Generator().manual_seed(seed)
    feeds: dict[str, torch.Tensor] = {}
    for spec in step.inputs:
        shape = [sizes[d] if isinstance(d, str) else d for d in spec.shape]
        if spec.dtype == "INT32":
            tensor = torch.randint(1, 49000, shape, generator=generator, dtype=torch.int32)
            if spec.name == "TOKENS":
                tensor[:, 0] = 49406  # start of text
                tensor[:, 8] = 49407  # end of text: the highest id, CLIP pools there
                tensor[:, 9:] = 0
        elif spec.name == "CLASS_MASK":
            tensor = torch.ones(shape)
        elif spec.name == "POINT_LABELS":
            tensor = torch.ones(shape)
            tensor[..., -1] = -1
        elif spec.name == "POINTS":
            tensor = torch.rand(shape, generator=generator) * 384
        elif spec.name == "PSEUDO_MASK":
            tensor = (torch.rand(shape, generator=generator) > 0.7).float()
        elif spec.name == "TEXT_EMBEDDINGS":
            tensor = torch.nn.functional.normalize(torch.randn(shape, generator=generator), dim=-1)
        else:
            tensor = torch.randn(shape, generator=generator)
        feeds[spec.name] = tensor
    return feeds


def graph_steps(model: OpenVocabSegmenter) -> dict[str, StepSpec]:
    return {name: step for name, step in step_specs(model.config).items() if step.kind == "graph"}
