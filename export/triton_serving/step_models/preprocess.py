"""The request's admission, then its views: IMAGE [H, W, 3] uint8 and CLASS_NAMES [T] -> IMAGES
[V, 3, S, S] and VIEW_PLAN.

Everything a request may be refused for is checked here, before any graph runs (the text
embedder waits for VIEW_PLAN): the image (min_side, max_pixels), the class names (max_classes,
max_name_bytes, blanks, duplicates, CLIP's 77 tokens), the full-size scores (max_score_elements)
and the request's estimated peak memory against the budget (escnet_export.runtime.memory_model) and
against the memory the machine has free now (refused UNAVAILABLE: retry when it is).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from escnet_export.contract import step_specs
from escnet_export.runtime import steps
from escnet_export.runtime.memory_model import RequestShape, estimate_request_memory, resolve_budget
from escnet_export.runtime.request_checks import (
    check_image,
    check_memory_available,
    check_memory_budget,
    check_prompt_tokens,
    check_score_budget,
    decode_class_names,
)
from escnet_export.triton_serving.server_processes import available_memory_bytes
from escnet_export.triton_serving.step_models.base import StepModel

CHECKED_NAMES_KEPT = 65536  # names whose prompt-token count passed, not counted again


class TritonPythonModel(StepModel):
    def setup(self, args: dict[str, Any]) -> None:
        self.tokenizer = steps.clip_tokenizer(self.config)
        self.budget = resolve_budget(self.parameters.get("memory_budget_gib"))
        self.chain_steps = list(step_specs(self.config).values())
        self.chunk_sizes = {
            f"{name}_per_run": int(self.parameters[f"{name}_per_run"])
            for name in ("views", "classes", "texts")
            if f"{name}_per_run" in self.parameters
        }
        self.token_checked: set[str] = set()

    def count_tokens(self, text: str) -> int:
        """Tokens of one prompt text, start and end tokens included, before any truncation."""
        return len(self.tokenizer.encode(text)) + 2

    def run(self, request: Any, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        image = inputs["IMAGE"]
        check_image(image, self.limits)
        rule = self.config.protocol.synonyms
        names = decode_class_names(inputs["CLASS_NAMES"], self.limits, rule)
        unchecked = [name for name in dict.fromkeys(names) if name not in self.token_checked]
        check_prompt_tokens(
            unchecked, self.config.text_templates, self.count_tokens, self.config.clip.context_length, rule
        )
        if len(self.token_checked) + len(unchecked) > CHECKED_NAMES_KEPT:
            self.token_checked.clear()
        self.token_checked.update(unchecked)
        height, width = int(image.shape[0]), int(image.shape[1])
        check_score_budget(height, width, len(names), self.limits)
        shape = RequestShape(
            classes=len(names),
            views=steps.view_count(self.config),
            height=height,
            width=width,
            **self.chunk_sizes,
        )
        estimate = estimate_request_memory(self.chain_steps, shape)
        check_memory_budget(estimate, self.budget, len(names), height, width)
        check_memory_available(estimate, available_memory_bytes())
        return steps.preprocess(image, self.config)
