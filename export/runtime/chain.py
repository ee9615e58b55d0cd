"""The chain of graphs and Python steps, run in-process: the contract's chain, entry by entry.

``GraphChain`` takes one runner per graph (onnxruntime or PyTorch, see runners.py) and loops over
``contract.chain_steps`` as Triton's ensemble scheduler does: each entry's inputs are read from the
request or from earlier entries' outputs (``<label>.<NAME>``), then a runner (graph steps) or a step
function of steps.py (Python steps) computes its outputs. The PyTorch forward of escnet/ stays the
independent reference the chain is held to.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from escnet.config import ModelConfig
from escnet_export.contract import (
    CLASS_NAMES,
    IMAGE,
    ChainStep,
    chain_steps,
    graph_names,
    request_output_sources,
    step_specs,
)
from escnet_export.runtime import steps
from escnet_export.runtime.runners import GraphRunner, OrtRunner

Values = dict[str, Any]  # chain names (request inputs, "<label>.<NAME>") -> arrays


@dataclass
class GraphChain:
    config: ModelConfig
    runners: Mapping[str, GraphRunner]

    def __post_init__(self) -> None:
        self.tokenizer = steps.clip_tokenizer(self.config)
        self.chain = chain_steps(self.config)
        self.kinds = {name: spec.kind for name, spec in step_specs(self.config).items()}
        # The Python steps, each on the feeds of its contract inputs -> its contract outputs.
        self.python_steps: dict[str, Callable[[Values], Values]] = {
            "preprocess": lambda feeds: steps.preprocess(feeds[IMAGE.name], self.config),
            "text_embedder": lambda feeds: {
                "TEXT_EMBEDDINGS": self.embed_class_names(feeds[CLASS_NAMES.name])
            },
            "pseudo_points": lambda feeds: steps.pseudo_points(feeds["SCORE"], self.config),
            "postprocess": lambda feeds: steps.postprocess(feeds["LOGITS"], feeds["VIEW_PLAN"]),
        }

    @classmethod
    def from_onnx(cls, config: ModelConfig, directory: Path, threads: int | None = None) -> GraphChain:
        specs = step_specs(config)
        runners = {
            name: OrtRunner(specs[name], directory / f"{name}.onnx", threads) for name in graph_names(config)
        }
        return cls(config=config, runners=runners)

    def run_entry(self, entry: ChainStep, values: Values) -> Values:
        """One entry: its feeds read from ``values`` -> its outputs, named ``<label>.<NAME>``."""
        feeds = {name: values[source] for name, source in entry.sources.items()}
        if self.kinds[entry.step] == "graph":
            outputs = self.runners[entry.step].infer(feeds)
        else:
            outputs = self.python_steps[entry.step](feeds)
        return {entry.output(name): outputs[name] for name in entry.outputs if name in outputs}

    def run(self, values: Values, first: str | None = None, last: str | None = None) -> Values:
        """Run the entries from label ``first`` to label ``last`` (default: all) over ``values``."""
        labels = [entry.label for entry in self.chain]
        start = labels.index(first) if first else 0
        stop = labels.index(last) + 1 if last else len(labels)
        values = dict(values)
        for entry in self.chain[start:stop]:
            values.update(self.run_entry(entry, values))
        return values

    def embed_class_names(self, class_names: Sequence[str]) -> np.ndarray:
        """CLASS_NAMES -> TEXT_EMBEDDINGS [T, P, C], through the text encoder (what text_embedder does)."""
        encoder = self.runners["clip_text_encoder"]
        return steps.text_embeddings(
            class_names,
            self.tokenizer,
            lambda tokens: encoder.infer({"TOKENS": tokens})["TEXT_FEATURES"],
            self.config.text_templates,
            self.config.protocol.synonyms,
        )

    def logits(self, images: np.ndarray, text_embeddings: np.ndarray) -> np.ndarray:
        """IMAGES [B, 3, S, S], TEXT_EMBEDDINGS [T, P, C] -> LOGITS [B, T, 4G, 4G]: the graph part."""
        entry = {e.label: e for e in self.chain}
        given = {
            entry["clip_image_encoder"].sources["IMAGES"]: images,
            entry["prep"].sources["TEXT_EMBEDDINGS"]: text_embeddings,
        }
        values = self.run(given, first="clip_image_encoder", last="decoder")
        return values[entry["decoder"].output("LOGITS")]

    def segment(self, image: np.ndarray, class_names: Sequence[str]) -> dict[str, np.ndarray]:
        """IMAGE [H, W, 3] uint8 + class names -> LABELS [H, W] int32, SCORES [T, H, W]"""
        values = self.run({IMAGE.name: image, CLASS_NAMES.name: list(class_names)})
        return {name: values[source] for name, source in request_output_sources(self.config).items()}
