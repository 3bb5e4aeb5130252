"""Encryption at rest for dead-letter entries and any other persisted record data.

Dead-letter entries carry whole log records (CloudTrail, VPC flow, access logs), which
are as sensitive as the logs themselves, and they wait on disk (or in a bucket) until
someone replays them. This module seals each entry with AES-256-GCM so a copied disk, a
backup or an over-broad bucket policy does not leak them, and so an altered entry is
refused rather than replayed into Sentinel.

An envelope is one compact JSON object, so an encrypted dead-letter file stays JSON
lines (one envelope a line)::

    {"v":1,"kid":"k2","n":"<base64 12-byte nonce>","ct":"<base64 ciphertext+tag>"}

The associated data authenticated with it is the version and key id, plus what the
caller supplies: an entry moved to another file, or given another key id, does not
decrypt. Nonces are 96-bit random, safe for about 2**32 encryptions a key: rotate long
before.

A file of such lines is *sealed* by :mod:`connectors.ops.sealed` (place, count and
generation authenticated with the file name; issues reported by line).

:meth:`Keyring.mac` authenticates data that is not secret but must not be forged (the
upload journal): HMAC-SHA256 under a subkey derived per key id and purpose.

A :class:`Keyring` holds keys by id with one current key: encryption uses the current
key, decryption the key named in the envelope, so old keys keep decrypting while
:func:`~connectors.ops.sealed.rotate_directory` re-encrypts everything under the current
one. Remove the old key only after a rotation reports no failures.

Keys come from a local key file (mode 0600, see :func:`generate_key_file`) or from a
secret provider such as Azure Key Vault (:meth:`Keyring.from_secrets`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import re
import secrets
import stat
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from dataflow.core.errors import TerminalError
from dataflow.core.files import atomic_write, fsync_dir, open_private

__all__ = [
    "VERSION",
    "DecryptError",
    "Envelope",
    "KeyringError",
    "Keyring",
    "add_key_to_file",
    "decrypt_line",
    "encrypt_line",
    "generate_key_file",
    "is_envelope",
]

VERSION = 1
"""Envelope format version; a reader refuses versions it does not know."""

KEY_BYTES = 32
NONCE_BYTES = 12
_KEY_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class KeyringError(ValueError):
    """A keyring or key file cannot be used as it is; the message says what to change."""


class DecryptError(TerminalError, ValueError):
    """An envelope cannot be decrypted.

    :arg key_id: The key id named in the envelope (None when the envelope is unreadable).
    """

    def __init__(self, message: str, key_id: str | None = None) -> None:
        self.key_id = key_id
        super().__init__(message)



def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


@dataclass(frozen=True)
class Envelope:
    """One encrypted value: format version, key id, nonce, ciphertext with its GCM tag."""

    version: int
    key_id: str
    nonce: bytes
    ciphertext: bytes = field(repr=False)

    def to_json(self) -> dict[str, Any]:
        return {"v": self.version, "kid": self.key_id, "n": _b64(self.nonce),
                "ct": _b64(self.ciphertext)}

    def to_bytes(self) -> bytes:
        """Compact JSON, no newline: one line of an encrypted JSON-lines file."""
        return json.dumps(self.to_json(), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, obj: Any) -> Envelope:
        if not is_envelope(obj):
            msg = ("not an s3sentinel encrypted envelope (expected an object with v, kid, n, "
                   "ct); is this file encrypted at all?")
            raise DecryptError(msg)
        kid = obj["kid"]
        if obj["v"] != VERSION:
            msg = (f"envelope version {obj['v']!r} (key {kid!r}) is not supported; this "
                   f"version of s3sentinel reads version {VERSION}: upgrade it")
            raise DecryptError(msg, kid)
        try:
            nonce, ct = _unb64(obj["n"]), _unb64(obj["ct"])
        except (binascii.Error, ValueError):
            msg = f"envelope for key {kid!r} has a nonce or ciphertext that is not base64: altered?"
            raise DecryptError(msg, kid) from None
        if len(nonce) != NONCE_BYTES or len(ct) < 16:
            msg = f"envelope for key {kid!r} has a bad nonce or a truncated ciphertext: altered?"
            raise DecryptError(msg, kid)
        return cls(VERSION, kid, nonce, ct)

    @classmethod
    def from_bytes(cls, data: bytes | str) -> Envelope:
        try:
            obj = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            msg = "not an s3sentinel encrypted envelope (not JSON); is this data encrypted?"
            raise DecryptError(msg) from None
        return cls.from_json(obj)


def is_envelope(obj: Any) -> bool:
    """Whether a decoded JSON value has the shape of an envelope (it may still not decrypt)."""
    return (isinstance(obj, dict) and set(obj) == {"v", "kid", "n", "ct"}
            and isinstance(obj["kid"], str) and isinstance(obj["n"], str)
            and isinstance(obj["ct"], str) and isinstance(obj["v"], int))


def full_aad(version: int, key_id: str, aad: bytes) -> bytes:
    return b"s3sentinel\x00%d\x00%s\x00" % (version, key_id.encode()) + aad


class Keyring:
    """Keys by id, one of them current.

    :arg keys: Key id to 32-byte key.
    :arg current: Id of the key that encrypts.
    """

    def __init__(self, keys: Mapping[str, bytes], current: str) -> None:
        for kid, key in keys.items():
            if not _KEY_ID.match(kid):
                msg = (f"key id {kid!r} is not usable: use 1-64 letters, digits, '.', '_' "
                       "or '-', starting with a letter or digit")
                raise KeyringError(msg)
            if len(key) != KEY_BYTES:
                msg = (f"key {kid!r} is {len(key)} bytes; AES-256 needs {KEY_BYTES}: generate "
                       "one with `generate_key_file` or `openssl rand -base64 32`")
                raise KeyringError(msg)
        if current not in keys:
            msg = (f"the current key {current!r} is not among the keys "
                   f"({', '.join(sorted(keys)) or 'none'}); add it or name another as current")
            raise KeyringError(msg)
        self._keys = {kid: AESGCM(key) for kid, key in keys.items()}
        self._raw = {kid: bytes(key) for kid, key in keys.items()}
        self._macs: dict[tuple[str, bytes], bytes] = {}
        self._current = current

    def __repr__(self) -> str:
        return f"Keyring(current={self._current!r}, keys={sorted(self._keys)!r})"

    @property
    def current(self) -> str:
        return self._current

    @property
    def key_ids(self) -> list[str]:
        return sorted(self._keys)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Keyring:
        """Load ``{"current": "k2", "keys": {"k1": "<base64 32 bytes>", ...}}``.

        Refuses a file that its group or others can read or write.
        """
        p = Path(path)
        try:
            st = p.stat()
        except FileNotFoundError:
            msg = f"key file {p} does not exist; create one with generate_key_file({str(p)!r})"
            raise KeyringError(msg) from None
        if st.st_mode & 0o077:
            msg = (f"key file {p} is accessible to group or others (mode "
                   f"{stat.S_IMODE(st.st_mode):04o}); run `chmod 600 {p}` and make sure only "
                   "the connector's user owns it")
            raise KeyringError(msg)
        try:
            doc = json.loads(p.read_bytes())
        except ValueError:
            msg = (f"key file {p} is not JSON; expected "
                   '{"current": "k1", "keys": {"k1": "<base64 of 32 bytes>"}}')
            raise KeyringError(msg) from None
        if not isinstance(doc, dict) or set(doc) != {"current", "keys"} \
                or not isinstance(doc["keys"], dict) or not isinstance(doc["current"], str):
            msg = (f"key file {p} must hold exactly "
                   '{"current": "<key id>", "keys": {"<key id>": "<base64 of 32 bytes>"}}')
            raise KeyringError(msg)
        keys = {kid: _decode_key(val, f"key {kid!r} in {p}") for kid, val in doc["keys"].items()}
        return cls(keys, doc["current"])

    @classmethod
    def from_secrets(cls, get_secret: Callable[[str], str], names: Iterable[str],
                     current: str) -> Keyring:
        """Keys from a secret store (e.g. Azure Key Vault): each secret is base64 of 32 bytes.

        :arg get_secret: Returns the value of the secret named.
        :arg names: Secret names; each becomes the key id.
        :arg current: Name of the key that encrypts.
        """
        keys: dict[str, bytes] = {}
        for name in names:
            try:
                value = get_secret(name)
            except Exception as ex:
                msg = (f"cannot read secret {name!r} for key {name!r}: {type(ex).__name__}: "
                       f"{ex}; check that it exists and that the connector's identity may "
                       "get secrets")
                raise KeyringError(msg) from ex
            keys[name] = _decode_key(value, f"secret {name!r}")
        return cls(keys, current)

    def without(self, key_id: str) -> Keyring:
        """This keyring less one (retired) key; the current key cannot be removed."""
        if key_id == self._current:
            msg = f"key {key_id!r} is current; make another key current before removing it"
            raise KeyringError(msg)
        ring = Keyring.__new__(Keyring)
        ring._keys = {k: v for k, v in self._keys.items() if k != key_id}
        ring._raw = {k: v for k, v in self._raw.items() if k != key_id}
        ring._macs = {}
        ring._current = self._current
        return ring

    def _mac_key(self, key_id: str, purpose: bytes) -> bytes:
        """A key for ``purpose`` derived from key ``key_id`` (HMAC-SHA256 as a PRF, one
        block of HKDF-Expand): MACs and encryption never share a key."""
        sub = self._macs.get((key_id, purpose))
        if sub is None:
            sub = hmac.new(self._raw[key_id], b"s3sentinel mac\x00" + purpose + b"\x01",
                           hashlib.sha256).digest()
            self._macs[(key_id, purpose)] = sub
        return sub

    def mac(self, data: bytes, purpose: bytes) -> tuple[str, bytes]:
        """HMAC-SHA256 of ``data`` under the current key's subkey for ``purpose``:
        (key id, 32-byte tag). Store the key id with the tag: :meth:`verify_mac` needs it."""
        tag = hmac.new(self._mac_key(self._current, purpose), data, hashlib.sha256).digest()
        return self._current, tag

    def verify_mac(self, key_id: str, data: bytes, tag: bytes, purpose: bytes) -> None:
        """Check a tag made by :meth:`mac`; raises :class:`DecryptError` (with ``key_id``)
        when the key is not in the keyring or the tag does not match."""
        if key_id not in self._raw:
            msg = (f"authenticated with key {key_id!r}, which the keyring does not hold (it "
                   f"holds {', '.join(self.key_ids)})")
            raise DecryptError(msg, key_id)
        want = hmac.new(self._mac_key(key_id, purpose), data, hashlib.sha256).digest()
        if not hmac.compare_digest(want, tag):
            msg = f"authentication failed with key {key_id!r}: the data was altered or forged"
            raise DecryptError(msg, key_id)

    def encrypt(self, plaintext: bytes, aad: bytes = b"") -> Envelope:
        """Seal ``plaintext`` under the current key; ``aad`` must be given again to decrypt."""
        nonce = os.urandom(NONCE_BYTES)
        ct = self._keys[self._current].encrypt(nonce, plaintext,
                                               full_aad(VERSION, self._current, aad))
        return Envelope(VERSION, self._current, nonce, ct)

    def decrypt(self, envelope: Envelope | bytes | str | Mapping[str, Any],
                aad: bytes = b"") -> bytes:
        """Open an envelope with the key it names; raises :class:`DecryptError`."""
        env = as_envelope(envelope)
        key = self._keys.get(env.key_id)
        if key is None:
            msg = (f"this data was encrypted with key {env.key_id!r}, which the keyring does "
                   f"not hold (it holds {', '.join(self.key_ids)}); add key {env.key_id!r} "
                   "back (key file or Key Vault secret names) and keep it until "
                   "rotate_directory reports every entry re-encrypted")
            raise DecryptError(msg, env.key_id)
        try:
            return key.decrypt(env.nonce, env.ciphertext,
                               full_aad(env.version, env.key_id, aad))
        except InvalidTag:
            msg = (f"authentication failed with key {env.key_id!r}: the data was altered, the "
                   "associated data differs (was the file renamed or the entry moved?), or "
                   f"key {env.key_id!r} is not the key that encrypted it (was it replaced "
                   "instead of rotated under a new id?)")
            raise DecryptError(msg, env.key_id) from None


def _decode_key(value: str, what: str) -> bytes:
    try:
        key = base64.b64decode(str(value).strip().encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        msg = f"{what} is not base64; expected base64 of {KEY_BYTES} random bytes"
        raise KeyringError(msg) from None
    if len(key) != KEY_BYTES:
        msg = f"{what} decodes to {len(key)} bytes; AES-256 needs {KEY_BYTES}"
        raise KeyringError(msg)
    return key


def as_envelope(value: Envelope | bytes | str | Mapping[str, Any]) -> Envelope:
    if isinstance(value, Envelope):
        return value
    if isinstance(value, (bytes, str)):
        return Envelope.from_bytes(value)
    return Envelope.from_json(dict(value))


def encrypt_line(keyring: Keyring, plaintext: bytes, aad: bytes) -> bytes:
    """One encrypted JSON line (no newline) for ``plaintext``, e.g. an entry's JSON."""
    return keyring.encrypt(plaintext, aad).to_bytes()


def decrypt_line(keyring: Keyring, line: bytes | str, aad: bytes) -> bytes:
    """The plaintext of one line written by :func:`encrypt_line`."""
    return keyring.decrypt(line, aad)


def _write_key_doc(p: Path, doc: dict[str, Any], *, exclusive: bool) -> None:
    body = json.dumps(doc, indent=2).encode() + b"\n"
    if not exclusive:
        atomic_write(p, body)
        return
    with open_private(p, "xb") as f:
        f.write(body)
        f.flush()
        os.fsync(f.fileno())
    fsync_dir(p.parent)


def generate_key_file(path: str | os.PathLike[str], key_id: str = "k1") -> Path:
    """Create a key file with one new random key, mode 0600; refuses to overwrite one."""
    p = Path(path)
    Keyring({key_id: bytes(KEY_BYTES)}, key_id)  # validates the id
    try:
        _write_key_doc(p, {"current": key_id, "keys": {key_id: _b64(secrets.token_bytes(
            KEY_BYTES))}}, exclusive=True)
    except FileExistsError:
        msg = (f"key file {p} exists; it is not overwritten (its keys may still be needed to "
               "decrypt); use add_key_to_file to rotate")
        raise KeyringError(msg) from None
    return p


def add_key_to_file(path: str | os.PathLike[str], key_id: str, *,
                    make_current: bool = True) -> Keyring:
    """Add a new random key to a key file (the first step of a rotation); returns the keyring.

    Then run :func:`rotate_directory`, and once it reports no failures, remove the old key
    from the file.
    """
    p = Path(path)
    ring = Keyring.from_file(p)
    if key_id in ring.key_ids:
        msg = (f"key file {p} already has a key {key_id!r}; pick a new id "
               f"(e.g. k{len(ring.key_ids) + 1})")
        raise KeyringError(msg)
    doc = json.loads(p.read_bytes())
    doc["keys"][key_id] = _b64(secrets.token_bytes(KEY_BYTES))
    if make_current:
        doc["current"] = key_id
    _write_key_doc(p, doc, exclusive=False)
    return Keyring.from_file(p)
