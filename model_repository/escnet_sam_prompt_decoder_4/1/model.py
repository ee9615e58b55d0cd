"""Served by escnet_export.triton_serving.step_models.onnx_graph."""

from escnet_export.triton_serving.step_models.onnx_graph import TritonPythonModel  # noqa: F401
