"""Sealed files: the lines of a file encrypted one by one and authenticated as a whole.

Each line is an :class:`~connectors.ops.crypto.Envelope` whose associated data also
covers its place, the file's line count and the write's random generation, all with the
file name, so a deleted, duplicated, reordered or foreign line is reported, and a plain
line is refused when a key is configured. Reading never raises on content: it returns the
lines that verified and a list of :class:`LineIssue` with line numbers. Files written
before sequence numbers (plain envelopes, the file name as associated data) are still
read, reported as ``legacy``; rotation rewrites them sealed.

Rotation rewrites each file atomically (temporary file, fsync, rename, fsync of the
directory): a crash leaves every file either all old or all new, and both decrypt as long
as the old key is still in the keyring.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from connectors.ops.crypto import (
    DecryptError,
    Keyring,
    is_envelope,
)
from dataflow.core.files import atomic_write

__all__ = [
    "IssueList",
    "LineIssue",
    "OpenedLine",
    "OpenedLines",
    "RotationReport",
    "decrypt_file",
    "open_lines",
    "reseal",
    "rotate_directory",
    "rotate_file",
    "seal_lines",
    "write_encrypted_file",
]


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


class IssueList:
    """The verdict on a file's issues, for the readers that report them (a mixin of
    :class:`OpenedLines` and :class:`~connectors.deadletter.EntryFile`)."""

    issues: list[LineIssue]

    @property
    def intact(self) -> bool:
        """Whether nothing is wrong beyond being a legacy file."""
        return all(i.kind == "legacy" for i in self.issues)

    @property
    def refused(self) -> list[LineIssue]:
        """The issues of lines whose content was left out."""
        return [i for i in self.issues if i.refused]


@dataclass
class OpenedLines(IssueList):
    """What :func:`open_lines` found: the lines that verified, and every issue."""

    lines: list[OpenedLine] = field(default_factory=list)
    """The lines that verified (or plain lines, without a key), in file order."""
    issues: list[LineIssue] = field(default_factory=list)
    legacy: bool = False
    """Sealed by an earlier version, without sequence numbers (see :class:`LineIssue`)."""
    plain: bool = False
    """Every line is plain JSON: a file written without a key."""


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


