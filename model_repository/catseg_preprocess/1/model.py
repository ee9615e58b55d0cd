"""Served by escnet_export.triton_models.preprocess."""

from escnet_export.triton_models.preprocess import TritonPythonModel  # noqa: F401
