"""Helpers shared by the emulated-device tests (the `emulator` fixture is in conftest.py)."""

from __future__ import annotations

import os
import socket

import pytest

from lepton import device

#: The shared emulator listens here so that tests do not disturb a user's device on 9090.
TEST_PORT = int(os.environ.get("LEPTON_DEVICE_TEST_PORT", "9094"))


def require_host_packages() -> None:
    # Fail (not skip): these tests are meant to run in CI, and a silent skip would hide a CI machine
    # that lost its qemu. Deselect with `-m "not arm"` on machines without the host packages.
    missing = device.missing_host_packages(for_build=not device.image_is_current(device.cache_dir()))
    if missing:
        pytest.fail(f"missing host packages {missing}: run `lepton-device install-host-deps`")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
