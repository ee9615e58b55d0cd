"""Fixtures of every test: the parity fixtures (parity_support.py) and one real tritonserver per
session (triton_fixtures.py). Shared helpers are imported from parity_support, never from conftest."""

from parity_support import *  # noqa: F403 (fixtures are found by name)

pytest_plugins = ["triton_fixtures"]
