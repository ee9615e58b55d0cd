"""Served by escnet_export.triton_serving.step_models.preprocess."""

from escnet_export.triton_serving.step_models.preprocess import TritonPythonModel  # noqa: F401
