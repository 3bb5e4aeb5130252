"""Secrets from Azure Key Vault: ``keyvault:<name>`` references in the config.

Secrets never live in the config file. A value written ``keyvault:admin-token`` is read
with the official ``azure-keyvault-secrets`` client (and the process's Azure credential),
kept for ``ttl_secs``, and read again after that, so a rotated secret is picked up
without a restart. While Key Vault fails, the last value is kept and a circuit breaker
stops asking for ``open_secs`` after ``failures`` failures in a row, so a Key Vault
outage neither floods it nor stops the connector; a secret never read at all raises
:class:`SecretError`, which says what to check. Each secret has its own breaker (and its
own lock): one misnamed or unreadable secret never stops the others from being read.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = ["PREFIX", "CircuitBreaker", "SecretError", "SecretResolver"]

log = logging.getLogger(__name__)

PREFIX = "keyvault:"


class SecretError(RuntimeError):
    """A secret could not be read and no earlier value is known."""


class CircuitBreaker:
    """Closed → open after ``failures`` failures in a row; half-open after ``open_secs``."""

    def __init__(self, failures: int = 3, open_secs: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._limit = failures
        self._open_secs = open_secs
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None

    @property
    def open(self) -> bool:
        if self._opened_at is None:
            return False
        # Half-open once open_secs have passed: let one call through.
        return self._clock() - self._opened_at < self._open_secs

    def success(self) -> None:
        self._failures = 0
        self._opened_at = None

    def failure(self) -> None:
        self._failures += 1
        if self._failures >= self._limit:
            self._opened_at = self._clock()


class SecretResolver:
    """Resolves ``keyvault:<name>`` values; other values are returned as they are.

    :arg vault_url: ``https://<vault>.vault.azure.net``.
    :arg credential: An Azure credential (default: DefaultAzureCredential).
    :arg client: A ``SecretClient``-like object (tests); built from the above when None.
    :arg breaker_failures: Failures in a row that open a secret's circuit breaker.
    :arg breaker_open_secs: How long an open breaker stops asking Key Vault for that secret.
    """

    def __init__(self, vault_url: str = "", credential: Any = None, *, ttl_secs: float = 300.0,
                 client: Any = None, breaker_failures: int = 3, breaker_open_secs: float = 30.0,
                 clock: Callable[[], float] = time.monotonic, **client_kwargs: Any) -> None:
        self._url = vault_url
        self._credential = credential
        self._client = client
        self._client_kwargs = client_kwargs
        self._ttl = ttl_secs
        self._clock = clock
        self._breaker_failures = breaker_failures
        self._breaker_open_secs = breaker_open_secs
        self._cache: dict[str, tuple[str, float, str]] = {}  # name -> (value, fetched, version)
        self._breakers: dict[str, CircuitBreaker] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()  # guards the dicts and the client, never held for a call

    def _secret_client(self) -> Any:
        with self._lock:
            return self._build_client()

    def _build_client(self) -> Any:
        if self._client is None:
            if not self._url:
                msg = "a keyvault: reference needs ops.keyvault_url"
                raise SecretError(msg)
            from azure.keyvault.secrets import SecretClient

            cred = self._credential
            if cred is None:
                from azure.identity import DefaultAzureCredential

                cred = DefaultAzureCredential()
            self._client = SecretClient(self._url, cred, **self._client_kwargs)
        return self._client

    def resolve(self, value: str) -> str:
        """The value itself, or the current secret it references."""
        if not value.startswith(PREFIX):
            return value
        return self.get(value[len(PREFIX):])

    def breaker(self, name: str) -> CircuitBreaker:
        """The circuit breaker of the secret ``name`` (one per secret)."""
        with self._lock:
            if name not in self._breakers:
                self._breakers[name] = CircuitBreaker(self._breaker_failures,
                                                      self._breaker_open_secs, self._clock)
                self._locks[name] = threading.Lock()
            return self._breakers[name]

    def get(self, name: str) -> str:
        """The secret ``name`` (cached for ttl_secs).

        :raises SecretError: It cannot be read and was never read before.
        """
        breaker = self.breaker(name)
        with self._locks[name]:  # one fetch per secret at a time; other secrets go on
            cached = self._cache.get(name)
            now = self._clock()
            if cached is not None and now - cached[1] < self._ttl:
                return cached[0]
            if breaker.open:
                if cached is not None:
                    return cached[0]
                msg = (f"Key Vault secret {name!r}: reading it keeps failing (circuit open); "
                       "check that it exists in ops.keyvault_url, network access and the "
                       "identity's 'get' permission on secrets")
                raise SecretError(msg)
            try:
                secret = self._secret_client().get_secret(name)
            except Exception as ex:
                breaker.failure()
                if cached is not None:
                    log.warning("Key Vault secret %r: %s; keeping the value read before",
                                name, type(ex).__name__)
                    return cached[0]
                first = (str(ex).splitlines() or [""])[0]
                msg = (f"Key Vault secret {name!r} cannot be read ({type(ex).__name__}: {first}); "
                       "check that it exists in ops.keyvault_url and that the identity may "
                       "'get' secrets")
                raise SecretError(msg) from ex
            breaker.success()
            version = getattr(getattr(secret, "properties", None), "version", "") or ""
            if cached is not None and cached[2] != version:
                log.info("Key Vault secret %r rotated (new version %s)", name, version[:8])
            value: str = secret.value  # KeyVaultSecret.value: a secret read always has one
            self._cache[name] = (value, now, version)
            return value
