"""CLASS_NAMES [T] bytes -> TEXT_EMBEDDINGS [T, P, C], with a bounded LRU cache by class name.

Names missing from the cache go to the text encoder model in one BLS request; a vocabulary seen
before costs no text-encoder run at all.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import numpy as np
import open_clip
import triton_python_backend_utils as pb_utils

from escnet.text_prompts import SINGLE_TEMPLATE
from escnet_export import steps
from escnet_export.contract import TOKEN_LENGTH
from escnet_export.request_checks import check_prompt_tokens, decode_class_names
from escnet_export.triton_models.base import StepModel


class TritonPythonModel(StepModel):
    def setup(self, args: dict[str, Any]) -> None:
        self.tokenizer = open_clip.get_tokenizer(self.config.clip.open_clip_name)
        self.encoder_model = self.parameters["text_encoder_model"]
        self.cache_size = int(self.parameters["cache_size"])
        self.cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self.templates = SINGLE_TEMPLATE

    def count_tokens(self, text: str) -> int:
        """Tokens of one prompt text, start and end tokens included, before any truncation."""
        return len(self.tokenizer.encode(text)) + 2

    def encode(self, tokens: np.ndarray) -> np.ndarray:
        """TOKENS [N, 77] int32 -> TEXT_FEATURES [N, C] through the text encoder model."""
        request = pb_utils.InferenceRequest(
            model_name=self.encoder_model,
            requested_output_names=["TEXT_FEATURES"],
            inputs=[pb_utils.Tensor("TOKENS", tokens)],
        )
        response = request.exec()
        if response.has_error():
            raise RuntimeError(f"{self.encoder_model}: {response.error().message()}")
        return pb_utils.get_output_tensor_by_name(response, "TEXT_FEATURES").as_numpy()

    def run(self, request: Any, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rule = self.config.protocol.synonyms
        names = decode_class_names(inputs["CLASS_NAMES"], self.limits, rule)
        missing = list(dict.fromkeys(name for name in names if name not in self.cache))
        if missing:  # a cached name passed this check before
            check_prompt_tokens(missing, self.templates, self.count_tokens, TOKEN_LENGTH, rule)
            embedded = steps.text_embeddings(
                missing, self.tokenizer, self.encode, self.templates, rule
            )  # [M, P, C]
            for name, embedding in zip(missing, embedded, strict=True):
                self.cache[name] = embedding
        for name in names:
            self.cache.move_to_end(name)
        result = np.stack([self.cache[name] for name in names])  # [T, P, C]
        while len(self.cache) > self.cache_size:
            self.cache.popitem(last=False)
        return {"TEXT_EMBEDDINGS": result.astype(np.float32)}
