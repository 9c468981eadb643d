"""Chaos fixtures: ``chaos`` brings up stacks whose link to the verifier runs through a fault
proxy (:mod:`tests.chaos.rig`), on top of the shared ``stacks`` fixture (:mod:`tests.stacks`):
every proxy is stopped, then every stack, even when the test fails."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.chaos.rig import ChaosStacks
from tests.stacks import Stacks


@pytest.fixture
def chaos(stacks: Stacks) -> Iterator[ChaosStacks]:
    registry = ChaosStacks(stacks)
    try:
        yield registry
    finally:
        registry.close()
