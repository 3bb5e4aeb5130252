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

A file of such lines is *sealed* (:func:`seal_lines`, :func:`open_lines`): each line
also carries its place, the file's line count and the write's random generation, all
authenticated with the file name, so a deleted, duplicated, reordered or foreign line is
reported, and a plain line is refused when a key is configured. Reading never raises on
content: it returns the lines that verified and a list of :class:`LineIssue` with line
numbers. Files written before sequence numbers (plain envelopes, the file name as
associated data) are still read, reported as ``legacy``; rotation rewrites them sealed.

:meth:`Keyring.mac` authenticates data that is not secret but must not be forged (the
upload journal): HMAC-SHA256 under a subkey derived per key id and purpose.

A :class:`Keyring` holds keys by id with one current key: encryption uses the current
key, decryption the key named in the envelope, so old keys keep decrypting while
:func:`rotate_directory` re-encrypts everything under the current one. Rotation
rewrites each file atomically (temporary file, fsync, rename, fsync of the directory):
a crash leaves every file either all old or all new, and both decrypt as long as the
old key is still in the keyring. Remove the old key only after a rotation reports no
failures.

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
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

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
    "LineIssue",
    "OpenedLine",
    "OpenedLines",
    "RotationReport",
    "add_key_to_file",
    "decrypt_file",
    "decrypt_line",
    "encrypt_line",
    "generate_key_file",
    "is_envelope",
    "open_lines",
    "reseal",
    "rotate_directory",
    "rotate_file",
    "seal_lines",
    "write_encrypted_file",
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


def _full_aad(version: int, key_id: str, aad: bytes) -> bytes:
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
                                               _full_aad(VERSION, self._current, aad))
        return Envelope(VERSION, self._current, nonce, ct)

    def decrypt(self, envelope: Envelope | bytes | str | Mapping[str, Any],
                aad: bytes = b"") -> bytes:
        """Open an envelope with the key it names; raises :class:`DecryptError`."""
        env = _envelope(envelope)
        key = self._keys.get(env.key_id)
        if key is None:
            msg = (f"this data was encrypted with key {env.key_id!r}, which the keyring does "
                   f"not hold (it holds {', '.join(self.key_ids)}); add key {env.key_id!r} "
                   "back (key file or Key Vault secret names) and keep it until "
                   "rotate_directory reports every entry re-encrypted")
            raise DecryptError(msg, env.key_id)
        try:
            return key.decrypt(env.nonce, env.ciphertext,
                               _full_aad(env.version, env.key_id, aad))
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


def _envelope(value: Envelope | bytes | str | Mapping[str, Any]) -> Envelope:
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


# --------------------------------------------------------------------------- sealed files
#
# A sealed JSON-lines file (dead-letter entries) is one envelope a line, each carrying its
# place "i" (1-based), the file's line count "of" and a random generation "f" shared by the
# lines of one write, all three authenticated (with the file name) as associated data:
#
#     {"v":1,"kid":"k2","n":"..","ct":"..","f":"3f9c0a1b2c4d","i":2,"of":7}
#
# So a line moved from another file or another write of the same file does not verify, and
# a deleted, duplicated or reordered line is noticed. Files of the previous version (plain
# envelopes, associated data the file name only) are still read, as "legacy": each line is
# authenticated, but a deleted or reordered one cannot be noticed; rotation rewrites them.

_SEALED = frozenset({"v", "kid", "n", "ct", "f", "i", "of"})
_STALE_TMP_SECS = 3600.0


def _default_aad(path: Path) -> bytes:
    return path.name.encode()


def _lines(data: bytes) -> Iterator[tuple[int, bytes]]:
    for n, line in enumerate(data.splitlines(), 1):
        if line.strip():
            yield n, line


def _seq_aad(name: bytes, gen: str, index: int, count: int) -> bytes:
    return b"%s\x00seq\x00%s\x00%d\x00%d" % (name, gen.encode(), index, count)


def seal_lines(keyring: Keyring, plaintexts: Iterable[bytes], name: bytes) -> bytes:
    """The body of a sealed JSON-lines file (see above): one envelope per plaintext, each
    line ending in a newline.

    :arg name: The file's name (or other context); :func:`open_lines` needs it again.
    """
    items = list(plaintexts)
    gen = secrets.token_hex(6)
    out = []
    for i, pt in enumerate(items, 1):
        doc = keyring.encrypt(pt, _seq_aad(name, gen, i, len(items))).to_json()
        doc.update(f=gen, i=i, of=len(items))
        out.append(json.dumps(doc, separators=(",", ":")).encode() + b"\n")
    return b"".join(out)


@dataclass(frozen=True)
class LineIssue:
    """A problem with one line of a sealed file (``line``, 1-based) or with the whole file
    (``line`` 0).

    ``kind`` is one of ``plain`` (not encrypted though a key is configured), ``no_key``
    (encrypted, no key configured), ``undecryptable`` (altered, moved, or under a key the
    keyring lacks), ``duplicate``, ``foreign`` (from another write of the file), ``reordered``,
    ``missing`` (lines deleted or the file truncated), ``empty`` or ``legacy`` (written
    before sequence numbers: not integrity-protected as a whole). ``refused`` says whether
    the line's content was left out.
    """

    line: int
    kind: str
    detail: str
    refused: bool = True

    def __str__(self) -> str:
        return f"{f'line {self.line}' if self.line else 'file'}: {self.detail} [{self.kind}]"


class OpenedLine(NamedTuple):
    """One line that verified (or a plain line, without a key)."""

    number: int
    plaintext: bytes
    key_id: str | None
    """The key it was encrypted with (None for a plain line)."""


@dataclass
class OpenedLines:
    """What :func:`open_lines` found: the lines that verified, and every issue."""

    lines: list[OpenedLine] = field(default_factory=list)
    """The lines that verified (or plain lines, without a key), in file order."""
    issues: list[LineIssue] = field(default_factory=list)
    legacy: bool = False
    """Sealed by an earlier version, without sequence numbers (see :class:`LineIssue`)."""
    plain: bool = False
    """Every line is plain JSON: a file written without a key."""

    @property
    def intact(self) -> bool:
        """Whether nothing is wrong beyond being a legacy file."""
        return all(i.kind == "legacy" for i in self.issues)

    @property
    def refused(self) -> list[LineIssue]:
        """The issues of lines whose content was left out."""
        return [i for i in self.issues if i.refused]


def _split_sealed(obj: Any) -> tuple[dict[str, Any] | None, tuple[str, int, int] | None]:
    """(envelope, (generation, index, count)) of a line; (None, None) when not an envelope."""
    if is_envelope(obj):
        return obj, None
    if (isinstance(obj, dict) and set(obj) == _SEALED and isinstance(obj["f"], str)
            and type(obj["i"]) is int and type(obj["of"]) is int):
        env = {k: obj[k] for k in ("v", "kid", "n", "ct")}
        if is_envelope(env):
            return env, (obj["f"], obj["i"], obj["of"])
    return None, None


def open_lines(keyring: Keyring | None, data: bytes, name: bytes) -> OpenedLines:
    """Verify and decrypt the lines of a file written by :func:`seal_lines`, by an earlier
    version (legacy: one envelope a line, no sequence) or without a key (plain JSON lines).

    Never raises on the content: every problem is an issue with its line number, and the
    lines that verified are returned. With a key, plain lines are refused; without one,
    encrypted lines are.

    :arg name: The name the file was sealed with.
    """
    out = OpenedLines()
    seq: list[tuple[int, bytes, str, tuple[str, int, int]]] = []
    legacy: list[tuple[int, bytes, str, str]] = []
    envelopes = 0
    unverified: set[int] = set()  # places claimed by lines that did not verify
    numbered = list(_lines(data))
    for n, line in numbered:
        try:
            obj = json.loads(line)
        except ValueError:
            obj = None
        env, pos = _split_sealed(obj)
        if env is None:
            if keyring is None:
                out.lines.append(OpenedLine(n, line, None))
            else:
                out.issues.append(LineIssue(n, "plain", (
                    "not encrypted although a key is configured: written without the key, or "
                    "forged (`s3sentinel rotate-key` encrypts files written before encryption "
                    "was turned on)")))
            continue
        envelopes += 1
        if keyring is None:
            out.issues.append(LineIssue(n, "no_key", (
                f"encrypted with key {env['kid']!r} and no key is configured "
                "(runtime.encryption_key_file or runtime.encryption_keyvault_keys)")))
            continue
        try:
            pt = keyring.decrypt(env, name if pos is None else _seq_aad(name, *pos))
        except DecryptError as ex:
            out.issues.append(LineIssue(n, "undecryptable", str(ex)))
            if pos is not None:
                unverified.add(pos[1])
            continue
        if pos is None:
            legacy.append((n, pt, env["kid"], env["n"]))
        else:
            seq.append((n, pt, env["kid"], pos))
    out.plain = bool(numbered) and envelopes == 0
    if not numbered:
        out.issues.append(LineIssue(0, "empty", "no lines, yet a store never writes an empty "
                                    "file: were its lines removed?", refused=False))
    good = _in_sequence(seq, out.issues, unverified)
    if legacy and seq:
        out.issues.extend(LineIssue(n, "foreign", "a line without a sequence number in a "
                                    "sequenced file") for n, *_ in legacy)
    elif legacy:
        out.legacy = True
        good = _legacy(legacy, out.issues)
    out.lines = sorted(out.lines + good)
    out.issues.sort(key=lambda i: (i.line == 0, i.line))  # the file's own issues last
    return out


def _in_sequence(seq: list[tuple[int, bytes, str, tuple[str, int, int]]],
                 issues: list[LineIssue], unverified: set[int]) -> list[OpenedLine]:
    """The lines of the file's write (the generation most lines name), each entry once;
    places that a line claims but that did not verify are reported with that line only."""
    if not seq:
        return []
    gens: dict[tuple[str, int], int] = {}
    for *_, (gen, _i, count) in seq:
        gens[(gen, count)] = gens.get((gen, count), 0) + 1
    gen, count = max(gens, key=gens.__getitem__)  # ties: the first seen
    seen: dict[int, int] = {}
    last = 0
    good = []
    for n, pt, kid, (g, i, c) in seq:
        if (g, c) != (gen, count):
            issues.append(LineIssue(n, "foreign", (
                f"entry {i} of {c} of another write of this file (generation {g}; the file "
                f"holds {count} entries of generation {gen})")))
        elif i in seen:
            issues.append(LineIssue(n, "duplicate", f"entry {i} again (first at line {seen[i]})"))
        else:
            if i < last:
                issues.append(LineIssue(n, "reordered", f"entry {i} of {count} comes after "
                                        f"entry {last}", refused=False))
            seen[i] = n
            last = max(last, i)
            good.append(OpenedLine(n, pt, kid))
    missing = [i for i in range(1, count + 1) if i not in seen and i not in unverified]
    if missing:
        issues.append(LineIssue(0, "missing", (
            f"entries {_spans(missing)} of {count} are missing: lines deleted or the file "
            "truncated"), refused=False))
    return good


def _legacy(legacy: list[tuple[int, bytes, str, str]],
            issues: list[LineIssue]) -> list[OpenedLine]:
    seen: dict[str, int] = {}
    good = []
    for n, pt, kid, nonce in legacy:
        if nonce in seen:
            issues.append(LineIssue(n, "duplicate", f"the same entry as line {seen[nonce]}"))
            continue
        seen[nonce] = n
        good.append(OpenedLine(n, pt, kid))
    issues.append(LineIssue(0, "legacy", (
        "written by an earlier version: each entry is authenticated, but a deleted or "
        "reordered entry cannot be noticed; `s3sentinel rotate-key` rewrites it with "
        "sequence numbers"), refused=False))
    return good


def _spans(numbers: list[int]) -> str:
    out: list[str] = []
    start = prev = numbers[0]
    for x in [*numbers[1:], None]:
        if x is not None and x == prev + 1:
            prev = x
            continue
        out.append(str(start) if start == prev else f"{start}-{prev}")
        if x is not None:
            start = prev = x
    return ", ".join(out)


def _problem(path: Path, opened: OpenedLines) -> str:
    bad = [i for i in opened.issues if i.kind != "legacy"]
    more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
    return f"{path}, {bad[0]}{more}"


def decrypt_file(path: str | os.PathLike[str], keyring: Keyring,
                 aad: Callable[[Path], bytes] = _default_aad) -> list[bytes]:
    """The plaintext of every line of a sealed (or legacy) file; raises
    :class:`DecryptError` naming the first problem."""
    p = Path(path)
    opened = open_lines(keyring, p.read_bytes(), aad(p))
    if not opened.intact:
        raise DecryptError(_problem(p, opened))
    return [line.plaintext for line in opened.lines]


def write_encrypted_file(path: str | os.PathLike[str], plaintexts: Iterable[bytes],
                         keyring: Keyring, aad: Callable[[Path], bytes] = _default_aad) -> None:
    """Write a sealed file (one encrypted line per plaintext), atomically, mode 0600."""
    p = Path(path)
    atomic_write(p, seal_lines(keyring, plaintexts, aad(p)))


@dataclass
class RotationReport:
    """What a rotation did. ``failures`` maps file to reason: keep the old keys until empty."""

    files: int = 0
    files_rewritten: int = 0
    entries: int = 0
    reencrypted: int = 0
    already_current: int = 0
    encrypted_plaintext: int = 0
    stale_tmp_removed: int = 0
    upgraded: int = 0
    """Legacy files rewritten with sequence numbers."""
    failures: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failures

    def add(self, other: RotationReport) -> None:
        for name in ("files", "files_rewritten", "entries", "reencrypted", "already_current",
                     "encrypted_plaintext", "stale_tmp_removed", "upgraded"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.failures.update(other.failures)

    def __str__(self) -> str:
        text = (f"rotation: {self.files} files ({self.files_rewritten} rewritten, "
                f"{self.upgraded} legacy upgraded), {self.entries} entries: "
                f"{self.reencrypted} re-encrypted, {self.already_current} already current, "
                f"{self.encrypted_plaintext} plaintext encrypted")
        if self.failures:
            text += (f"; {len(self.failures)} files FAILED (keep the old keys): "
                     + "; ".join(f"{k}: {v}" for k, v in sorted(self.failures.items())))
        return text


def reseal(data: bytes, name: bytes, keyring: Keyring, *, encrypt_plaintext: bool = False,
           where: str = "") -> tuple[bytes | None, RotationReport]:
    """Rotation of one file's content: the new body (None when it is already sealed under
    the current key) and what was done. Raises :class:`DecryptError` when a line is wrong
    (see :func:`open_lines`): such a file is not rewritten, so that nothing is lost or
    blessed.

    :arg encrypt_plaintext: Encrypt a file of plain lines (written before encryption was
        turned on) instead of refusing it. Plain lines inside an encrypted file are always
        refused.
    """
    opened = open_lines(keyring, data, name)
    report = RotationReport(files=1)
    if opened.plain:
        if not encrypt_plaintext:
            msg = (f"{where}: not encrypted; pass encrypt_plaintext=True to encrypt entries "
                   "written before encryption was turned on")
            raise DecryptError(msg)
        plaintexts = [line for _, line in _lines(data)]
        report.entries = report.encrypted_plaintext = len(plaintexts)
    elif not opened.intact:
        raise DecryptError(_problem(Path(where), opened))
    else:
        plaintexts = [line.plaintext for line in opened.lines]
        report.entries = len(plaintexts)
        stale = sum(line.key_id != keyring.current for line in opened.lines)
        if not stale and not opened.legacy:
            report.already_current = report.entries
            return None, report
        report.reencrypted = report.entries
        report.upgraded = int(opened.legacy)
    report.files_rewritten = 1
    return seal_lines(keyring, plaintexts, name), report


def rotate_file(path: str | os.PathLike[str], keyring: Keyring, *,
                aad: Callable[[Path], bytes] = _default_aad,
                encrypt_plaintext: bool = False) -> RotationReport:
    """Re-encrypt every line of one file under the current key, atomically (see
    :func:`reseal`); legacy files are rewritten with sequence numbers. A file already
    sealed under the current key is left as it is; one with a wrong line raises
    :class:`DecryptError` and is left untouched."""
    p = Path(path)
    body, report = reseal(p.read_bytes(), aad(p), keyring, encrypt_plaintext=encrypt_plaintext,
                          where=str(p))
    if body is not None:
        atomic_write(p, body)
    return report


def rotate_directory(directory: str | os.PathLike[str], keyring: Keyring,
                     pattern: str = "*.jsonl", *, aad: Callable[[Path], bytes] = _default_aad,
                     encrypt_plaintext: bool = False) -> RotationReport:
    """Re-encrypt every file matching ``pattern`` under the current key (see :func:`rotate_file`).

    Temporary files left by an interrupted rotation (or by a write killed an hour ago or
    more) are removed first: their originals are intact. A file that fails is recorded in
    ``failures`` and the others go on; run it again after fixing the cause: finished files
    are skipped quickly.
    """
    d = Path(directory)
    if not d.is_dir():
        msg = f"{d} is not a directory; pass the dead-letter directory (errors_dir)"
        raise FileNotFoundError(msg)
    report = RotationReport()
    old = time.time() - _STALE_TMP_SECS
    for tmp in [*d.glob(".*.rotate-tmp"), *d.glob(".*.tmp")]:
        try:  # a write in progress renames its temporary file away: leave that one be
            if tmp.suffix != ".tmp" or tmp.stat().st_mtime < old:
                tmp.unlink()
                report.stale_tmp_removed += 1
        except FileNotFoundError:
            continue
    for p in sorted(d.glob(pattern)):
        if not p.is_file():
            continue
        try:
            report.add(rotate_file(p, keyring, aad=aad, encrypt_plaintext=encrypt_plaintext))
        except (DecryptError, OSError) as ex:
            report.files += 1
            report.failures[p.name] = str(ex)
    return report


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
