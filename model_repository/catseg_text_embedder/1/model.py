"""Served by escnet_export.triton_models.text_embedder."""

from escnet_export.triton_models.text_embedder import TritonPythonModel  # noqa: F401
