"""Served by escnet_export.triton_serving.step_models.text_embedder."""

from escnet_export.triton_serving.step_models.text_embedder import TritonPythonModel  # noqa: F401
