"""Fixtures of the emulator's tests."""

from __future__ import annotations

import pytest

from devstack.sentinel import SentinelEmulator


@pytest.fixture
def emulator_env(emulator: SentinelEmulator, monkeypatch: pytest.MonkeyPatch) -> SentinelEmulator:
    """Point azure-identity at the module's ``emulator`` and start each test from a clean
    slate (use with ``pytestmark = pytest.mark.usefixtures("emulator_env")``)."""
    for var in ("IDENTITY_SERVER_THUMBPRINT", "IMDS_ENDPOINT", "MSI_ENDPOINT", "MSI_SECRET"):
        monkeypatch.delenv(var, raising=False)
    for key, value in emulator.client_env().items():
        monkeypatch.setenv(key, value)
    emulator.reset()
    return emulator
