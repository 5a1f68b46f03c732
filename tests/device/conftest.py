"""The shared emulated aarch64 device for the `arm` tests."""

from __future__ import annotations

import pytest

from devicetest import TEST_PORT, require_host_packages
from lepton import device


@pytest.fixture(scope="session")
def emulator() -> tuple[str, int]:
    """The shared emulated device: built on first use, stopped after the last xdist worker is done."""
    require_host_packages()
    with device.EmulatorLease(port=TEST_PORT) as address:
        yield address
