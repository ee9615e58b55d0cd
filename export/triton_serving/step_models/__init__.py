"""Python-backend implementations of the served steps; each model_repository/<model>/1/model.py
imports one of these modules' ``TritonPythonModel``."""
