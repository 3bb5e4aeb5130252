"""The keyring that encrypts dead-letter entries, from the config.

``runtime.encryption_key_file`` (a local 0600 key file), or
``runtime.encryption_keyvault_keys`` (Key Vault secrets holding base64 keys, read with
the official client) with ``runtime.encryption_current_key``. None when neither is set.
"""

from __future__ import annotations

from typing import Any

from connectors.ops.crypto import Keyring
from connectors.ops.secrets import SecretResolver
from dataflow.config import Config

__all__ = ["keyring_for"]


def keyring_for(cfg: Config, secrets: Any = None) -> Keyring | None:
    """The configured keyring, or None (entries stay plain JSON).

    :arg secrets: A :class:`~connectors.ops.secrets.SecretResolver` (built from ``ops`` when None).
    """
    rt = cfg.runtime
    if rt.encryption_key_file:
        return Keyring.from_file(rt.encryption_key_file)
    if rt.encryption_keyvault_keys:
        if secrets is None:

            kwargs: dict[str, Any] = {
                "verify_challenge_resource": cfg.ops.keyvault_verify_challenge_resource}
            if cfg.sentinel.ca_file:
                kwargs["connection_verify"] = cfg.sentinel.ca_file
            secrets = SecretResolver(cfg.ops.keyvault_url, ttl_secs=cfg.ops.secret_ttl_secs,
                                     **kwargs)
        current = rt.encryption_current_key or rt.encryption_keyvault_keys[-1]
        return Keyring.from_secrets(secrets.get, rt.encryption_keyvault_keys, current)
    return None
