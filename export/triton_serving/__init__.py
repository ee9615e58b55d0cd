"""Triton: the model configs, the model repository, the Python-backend step models and the server launcher."""
