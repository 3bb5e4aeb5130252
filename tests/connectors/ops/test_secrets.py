"""Key Vault references through the real azure-keyvault-secrets client and
ManagedIdentityCredential, against the emulator: read, cache, rotation, a circuit breaker
per secret."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from connectors.ops.secrets import CircuitBreaker, SecretError, SecretResolver
from devstack.sentinel import SentinelEmulator


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelEmulator]:
    with SentinelEmulator(rules={}, workdir=tmp_path_factory.mktemp("kv"),
                          secrets={"admin-token": "first"}) as em:
        yield em


@pytest.fixture
def resolver(emulator: SentinelEmulator, monkeypatch: pytest.MonkeyPatch):
    from azure.identity import ManagedIdentityCredential

    for var in ("IDENTITY_SERVER_THUMBPRINT", "IMDS_ENDPOINT", "MSI_ENDPOINT", "MSI_SECRET"):
        monkeypatch.delenv(var, raising=False)
    for key, value in emulator.client_env().items():
        monkeypatch.setenv(key, value)
    clock = Clock()
    res = SecretResolver(emulator.vault_url, ManagedIdentityCredential(), ttl_secs=60,
                         clock=clock, verify_challenge_resource=False,
                         connection_verify=emulator.ca_file)
    return res, clock


def test_references_are_read_cached_and_rotated(resolver, emulator: SentinelEmulator) -> None:
    res, clock = resolver
    emulator.set_secret("admin-token", "first")
    assert res.resolve("plain value") == "plain value"
    assert res.resolve("keyvault:admin-token") == "first"
    emulator.set_secret("admin-token", "second")  # rotation
    clock.now += 30
    assert res.resolve("keyvault:admin-token") == "first"  # still cached
    clock.now += 31
    assert res.resolve("keyvault:admin-token") == "second"  # picked up without a restart


def test_a_missing_secret_says_what_to_check(resolver) -> None:
    res, _ = resolver
    with pytest.raises(SecretError, match="'no-such-secret' cannot be read.*exists"):
        res.get("no-such-secret")


def test_outage_keeps_the_last_value_and_opens_the_breaker() -> None:
    calls = []

    class Failing:
        def get_secret(self, name: str):
            calls.append(name)
            raise ConnectionError("vault unreachable")

    clock = Clock()
    res = SecretResolver(client=Failing(), ttl_secs=10, clock=clock, breaker_failures=2,
                         breaker_open_secs=50)
    res._cache["t"] = ("kept", 0.0, "v1")
    for _ in range(5):
        clock.now += 11
        assert res.get("t") == "kept"
    assert calls == ["t", "t"]  # the breaker opened after two failures
    for _ in range(2):  # another secret has its own breaker: tried until it opens too
        with pytest.raises(SecretError, match="'never-read' cannot be read"):
            res.get("never-read")
    with pytest.raises(SecretError, match="circuit open"):
        res.get("never-read")
    assert calls == ["t", "t", "never-read", "never-read"]
    clock.now += 60  # half-open: one call goes through
    assert res.get("t") == "kept" and len(calls) == 5


def test_one_unreadable_secret_does_not_stop_the_others(resolver,
                                                        emulator: SentinelEmulator) -> None:
    res, _ = resolver
    emulator.set_secret("admin-token", "current")
    for _ in range(4):  # a misnamed secret: its breaker opens
        with pytest.raises(SecretError, match="misnamed-token"):
            res.get("misnamed-token")
    assert res.breaker("misnamed-token").open
    # Read for the first time after that: Key Vault is asked, and answers.
    assert res.resolve("keyvault:admin-token") == "current"
    assert not res.breaker("admin-token").open
    assert isinstance(res.breaker("admin-token"), CircuitBreaker)
