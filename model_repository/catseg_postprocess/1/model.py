"""Served by escnet_export.triton_serving.step_models.postprocess."""

from escnet_export.triton_serving.step_models.postprocess import TritonPythonModel  # noqa: F401
