"""Fixtures shared by the test modules: a simulated upstream per module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.simserver import SimServer


@pytest.fixture(scope="module")
def sim() -> Iterator[SimServer]:
    """The simulated Messages API on 127.0.0.1, fresh for each test module."""
    with SimServer() as server:
        yield server
