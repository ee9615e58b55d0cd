"""Served by escnet_export.triton_serving.step_models.pseudo_points."""

from escnet_export.triton_serving.step_models.pseudo_points import TritonPythonModel  # noqa: F401
