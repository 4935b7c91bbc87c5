"""Shared test configuration: a deterministic hypothesis profile for CI, and an eager
switch for suites whose results do not depend on compilation."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

from tokenprune.compile import compile_mode

settings.register_profile(
    "ci",
    derandomize=True,
    max_examples=40,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("dev", max_examples=200, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def eager_selectors():
    """Run the test with compilation off (restored afterwards): compiled selectors are
    tested with the strategies, and eager keeps command and docs suites fast."""
    with compile_mode(False):
        yield
