"""CLASS_NAMES [T] bytes -> TEXT_EMBEDDINGS [T, P, C], with a bounded LRU cache by class name.

The names were checked by preprocess (this step reads its VIEW_PLAN only to run after it). Names
missing from the cache go to the text encoder model in one BLS request; a vocabulary seen before
costs no text-encoder run at all. Each BLS request carries the client request's trace, so a
traced request shows its text-encoder runs as its children. The cache's hits and misses and the
classes per request go to /metrics (metrics.TextEmbedderMetrics).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from escnet_export.runtime import steps
from escnet_export.runtime.request_checks import RequestCancelled, decode_class_names
from escnet_export.runtime.runners import DEFAULT_CHUNKS
from escnet_export.triton_serving.step_models.base import StepModel
from escnet_export.triton_serving.step_models.metrics import TextEmbedderMetrics


class TritonPythonModel(StepModel):
    def setup(self, args: dict[str, Any]) -> None:
        self.tokenizer = steps.clip_tokenizer(self.config)
        self.encoder_model = self.parameters["text_encoder_model"]
        self.cache_size = int(self.parameters["cache_size"])
        self.cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self.texts_per_run = int(self.parameters.get("texts_per_run") or DEFAULT_CHUNKS.texts)
        self.cache_metrics = TextEmbedderMetrics.create(self.model_name)

    def encoder(self, request: Any) -> Callable[[np.ndarray], np.ndarray]:
        """TOKENS [N, 77] int32 -> TEXT_FEATURES [N, C] through the text encoder model, one BLS
        request per texts_per_run texts; between them, a request the client gave up stops."""

        def encode(tokens: np.ndarray) -> np.ndarray:
            features = []
            for start in range(0, tokens.shape[0], self.texts_per_run):
                if request.is_cancelled():
                    raise RequestCancelled(f"{self.model_name}: the client gave up; text encoding stopped")
                call = pb_utils.InferenceRequest(
                    model_name=self.encoder_model,
                    requested_output_names=["TEXT_FEATURES"],
                    inputs=[pb_utils.Tensor("TOKENS", tokens[start : start + self.texts_per_run])],
                    # On a GPU runtime the encoder answers on the GPU; the cache keeps host arrays.
                    preferred_memory=pb_utils.PreferredMemory(pb_utils.TRITONSERVER_MEMORY_CPU, 0),
                    trace=request.trace(),  # the encoder's run shows in the client request's trace
                )
                response = call.exec()
                if response.has_error():
                    raise RuntimeError(f"{self.encoder_model}: {response.error().message()}")
                features.append(pb_utils.get_output_tensor_by_name(response, "TEXT_FEATURES").as_numpy())
            return np.concatenate(features)

        return encode

    def run(self, request: Any, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rule = self.config.protocol.synonyms
        names = decode_class_names(inputs["CLASS_NAMES"], self.limits, rule)
        missing = list(dict.fromkeys(name for name in names if name not in self.cache))
        if missing:
            encode = self.encoder(request)
            embedded = steps.text_embeddings(
                missing, self.tokenizer, encode, self.config.text_templates, rule
            )
            for name, embedding in zip(missing, embedded, strict=True):  # [M, P, C]
                self.cache[name] = embedding
        for name in names:
            self.cache.move_to_end(name)
        result = np.stack([self.cache[name] for name in names])  # [T, P, C]
        while len(self.cache) > self.cache_size:
            self.cache.popitem(last=False)
        if self.cache_metrics is not None:
            self.cache_metrics.embedded(len(names), len(missing), len(self.cache))
        return {"TEXT_EMBEDDINGS": result.astype(np.float32)}
