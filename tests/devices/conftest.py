"""Fixtures for device tests."""

from __future__ import annotations

import uuid

import pytest

from .helpers import sh


@pytest.fixture
def netns():
    """A network namespace of the test's own, deleted afterwards."""
    name = f"kvmkit-t{uuid.uuid4().hex[:8]}"
    sh("ip", "netns", "add", name)
    yield name
    sh("ip", "netns", "del", name)
