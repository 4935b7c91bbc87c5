"""Tiny models, built once per session (seeded, random weights, real geometry)."""

from __future__ import annotations

import pytest
from tiny_models import tiny_internvl, tiny_llava, tiny_llava_next


@pytest.fixture(scope="session")
def llava():
    return tiny_llava()


@pytest.fixture(scope="session")
def llava_next():
    return tiny_llava_next()


@pytest.fixture(scope="session")
def internvl():
    return tiny_internvl()
