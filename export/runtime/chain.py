"""The chain of graphs and Python steps, run in-process: the same order the Triton ensemble runs.

``GraphChain`` takes one runner per graph (onnxruntime or PyTorch, see runners.py) and runs a
request: class names -> text embeddings, image -> views -> graphs with pseudo points between
ESC blocks -> logits -> labels and scores.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from escnet.class_names import SINGLE_TEMPLATE
from escnet.config import ModelConfig
from escnet_export.contract import graph_names, step_specs
from escnet_export.runtime import steps
from escnet_export.runtime.runners import GraphRunner, OrtRunner


@dataclass
class GraphChain:
    config: ModelConfig
    runners: Mapping[str, GraphRunner]
    templates: tuple[str, ...] = SINGLE_TEMPLATE

    def __post_init__(self) -> None:
        self.tokenizer = steps.clip_tokenizer(self.config)

    @classmethod
    def from_onnx(cls, config: ModelConfig, directory: Path, threads: int | None = None) -> GraphChain:
        specs = step_specs(config)
        runners = {
            name: OrtRunner(specs[name], directory / f"{name}.onnx", threads) for name in graph_names(config)
        }
        return cls(config=config, runners=runners)

    def embed_class_names(self, class_names: Sequence[str]) -> np.ndarray:
        """-> TEXT_EMBEDDINGS [T, P, C]"""
        encoder = self.runners["clip_text_encoder"]
        return steps.text_embeddings(
            class_names,
            self.tokenizer,
            lambda tokens: encoder.infer({"TOKENS": tokens})["TEXT_FEATURES"],
            self.templates,
            self.config.protocol.synonyms,
        )

    def logits(self, images: np.ndarray, text_embeddings: np.ndarray) -> np.ndarray:
        """IMAGES [B, 3, S, S], TEXT_EMBEDDINGS [T, P, C] -> LOGITS [B, T, 4G, 4G]"""
        run = self.runners
        features = run["clip_image_encoder"].infer({"IMAGES": images})
        state = run["prep"].infer({**features, "TEXT_EMBEDDINGS": text_embeddings})
        shared = {"TEXT_GUIDANCE": state["TEXT_GUIDANCE"], "CLASS_MASK": state["CLASS_MASK"]}
        embedding, score = state["EMBEDDING"], state["SCORE"]
        for k in range(1, self.config.aggregator.num_layers + 1):
            if self.config.use_sam_blocks:
                prompts = steps.pseudo_points(score, self.config)
                sam = run[f"sam_prompt_decoder_{k}"].infer(
                    {"IMAGE_FEATURES": features["IMAGE_FEATURES"], **prompts}
                )
                guidance = {"SAM_FEATURES": sam["SAM_FEATURES"]}
            else:
                guidance = {"APPEARANCE_GUIDANCE": state["APPEARANCE_GUIDANCE"]}
            out = run[f"aggregator_{k}"].infer({"EMBEDDING": embedding, **guidance, **shared})
            embedding, score = out["NEXT_EMBEDDING"], out.get("NEXT_SCORE")
        decoded = run["decoder"].infer(
            {
                "EMBEDDING": embedding,
                "DECODER_GUIDANCE_MID": state["DECODER_GUIDANCE_MID"],
                "DECODER_GUIDANCE_FINE": state["DECODER_GUIDANCE_FINE"],
                "CLASS_MASK": state["CLASS_MASK"],
            }
        )
        return decoded["LOGITS"]

    def segment(self, image: np.ndarray, class_names: Sequence[str]) -> dict[str, np.ndarray]:
        """IMAGE [H, W, 3] uint8 + class names -> LABELS [H, W] int32, SCORES [T, H, W]"""
        text = self.embed_class_names(class_names)
        views = steps.preprocess(image, self.config)
        return steps.postprocess(self.logits(views["IMAGES"], text), views["VIEW_PLAN"])
