"""Served by escnet_export.triton_models.onnx_graph."""

from escnet_export.triton_models.onnx_graph import TritonPythonModel  # noqa: F401
