"""Served by escnet_export.triton_models.pseudo_points."""

from escnet_export.triton_models.pseudo_points import TritonPythonModel  # noqa: F401
