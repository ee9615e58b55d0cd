"""Served by escnet_export.triton_models.postprocess."""

from escnet_export.triton_models.postprocess import TritonPythonModel  # noqa: F401
