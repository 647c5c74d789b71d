"""The encrypted on-device store: named records and logs sealed with AES-256-GCM.

The store file, ``<dir>/store.fedrec``, is rewritten atomically on every ``put``::

    "FEDRECST" | u16 format (1) | u32 n | header (n bytes, JSON) | nonce (12) | ciphertext + tag

Appends to a log (an event history) go to ``<dir>/store.journal`` instead, one sealed, fsynced
frame each, so an event costs the size of the event, not of the store; the next ``put`` or
``compact`` folds the journal into the store file::

    "FEDRECJL" | store id (16) | u64 generation it extends | frames: u32 n | nonce | n bytes

The header (store id, generation, key check, passphrase salt and scrypt parameters) is plain
but authenticated: the prefix up to the nonce is the AES-GCM associated data. The ciphertext
holds every record, names included, so names, values and their order are all hidden and
authenticated together: a record cannot be swapped, renamed, rolled back or dropped on its own.
See docs/security.md for the threat model and its limits.
"""

from __future__ import annotations

import contextlib
import hmac
import io
import json
import os
import re
import struct
import threading
import unicodedata
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from fedrec.shared.files import fsync_dir, write_atomic

KEY_BYTES = 32
FORMAT_VERSION = 2
STORE_FILE = "store.fedrec"
JOURNAL_FILE = "store.journal"

_MAGIC = b"FEDRECST"
_PREFIX = struct.Struct(">8sHI")  # magic, format version, header length
_NONCE_BYTES = 12
_TAG_BYTES = 16
_ID_BYTES = 16
_SALT_BYTES = 16
#: The least scrypt ``n`` a new passphrase store is created with (at ``r`` 8: 16 MiB and tens
#: of milliseconds a guess, the cost ``cryptography`` recommends for interactive logins); a
#: store created with less before this floor still opens.
MIN_SCRYPT_N = 2**14
_TMP_PREFIX = f".{STORE_FILE}."
_TMP_SUFFIX = ".tmp"
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:/-]{0,127}")
_COUNT = struct.Struct(">I")
_NAME_LEN = struct.Struct(">H")
_VALUE_LEN = struct.Struct(">Q")
_JOURNAL_MAGIC = b"FEDRECJL"
_JOURNAL_HEAD = struct.Struct(">8s16sQ")  # magic, store id, store-file generation it extends
_FRAME_LEN = struct.Struct(">II")  # ciphertext length, CRC-32 of that length
_SECTOR = 512  # the least a file system zero-fills at power loss


class StoreError(Exception):
    """The store cannot be used as asked. Nothing is loaded or changed when this is raised."""


class StoreNotFoundError(StoreError):
    """There is no store at the path (open with ``create=True`` only on a first run)."""


class StoreExistsError(StoreError):
    """``create=True`` was asked where a store already exists."""


class WrongKeyError(StoreError):
    """The key or passphrase is not the one the store was created with."""


class TamperedStoreError(StoreError):
    """The store file was modified, truncated or damaged; ``path`` names it."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}; the store was modified or damaged, nothing was loaded")


@dataclass(frozen=True)
class ScryptParams:
    """scrypt cost parameters: ``n`` (a power of two), ``r``, ``p``; 128 * n * r bytes of memory."""

    n: int = 2**15
    r: int = 8
    p: int = 1

    def __post_init__(self) -> None:
        n, r, p = self.n, self.r, self.p
        if not (_is_int(n) and n >= 2 and n & (n - 1) == 0):
            raise ValueError(f"scrypt n must be a power of two >= 2, got {n!r}")
        if not (_is_int(r) and r >= 1 and _is_int(p) and 1 <= p <= 16):
            raise ValueError(f"scrypt r must be >= 1 and p in 1..16, got r={r!r}, p={p!r}")
        if 128 * n * r > 2**28:
            raise ValueError(f"scrypt n={n}, r={r} needs {128 * n * r >> 20} MiB; at most 256")


def key_from_passphrase(passphrase: str, salt: bytes, params: ScryptParams | None = None) -> bytes:
    """The 32-byte key scrypt derives from a passphrase (NFC-normalized UTF-8) and a salt."""
    if not isinstance(passphrase, str) or not passphrase:
        raise ValueError("passphrase must be a non-empty str")
    if not isinstance(salt, bytes) or len(salt) < _SALT_BYTES:
        raise ValueError(f"salt must be at least {_SALT_BYTES} bytes")
    params = params or ScryptParams()
    kdf = Scrypt(salt=salt, length=KEY_BYTES, n=params.n, r=params.r, p=params.p)
    return kdf.derive(unicodedata.normalize("NFC", passphrase).encode("utf-8"))


def forget_store(path: str | os.PathLike[str]) -> None:
    """Delete the store at ``path``, no key needed: its journal and temp files, then its file
    (so that a crash midway leaves no journal without its store), the dir if then empty."""
    directory = Path(path)
    if not directory.is_dir():
        return
    for file in [directory / JOURNAL_FILE, *_temp_files(directory), directory / STORE_FILE]:
        file.unlink(missing_ok=True)
    fsync_dir(directory)
    with contextlib.suppress(OSError):
        directory.rmdir()


def json_record(name: str, value: object) -> bytes:
    """The bytes ``put_json`` stores, for writing several records at once with ``put_many``."""
    if value is None:
        raise ValueError(f"record {name!r}: null is not stored, use delete()")
    text = json.dumps(value, allow_nan=False, ensure_ascii=False, separators=(",", ":"))
    return text.encode("utf-8")


def array_record(name: str, array: npt.NDArray[Any]) -> bytes:
    """The bytes ``put_array`` stores (``.npy``, never pickled), for ``put_many``."""
    if not isinstance(array, np.ndarray):
        raise TypeError(f"record {name!r}: expected a numpy array, got {type(array).__name__}")
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


@dataclass(frozen=True)
class _Passphrase:
    salt: bytes
    params: ScryptParams


@dataclass(frozen=True)
class _Header:
    store_id: bytes
    generation: int
    key_check: bytes
    passphrase: _Passphrase | None

    def __post_init__(self) -> None:
        if len(self.store_id) != _ID_BYTES or len(self.key_check) != KEY_BYTES:
            raise ValueError("bad store id or key check length")
        if not (_is_int(self.generation) and self.generation >= 0):
            raise ValueError(f"bad generation {self.generation!r}")

    def encode(self) -> bytes:
        kdf = self.passphrase
        header = {
            "store_id": self.store_id.hex(),
            "generation": self.generation,
            "key_check": self.key_check.hex(),
            "kdf": None if kdf is None else _kdf_json(kdf),
        }
        body = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
        return _PREFIX.pack(_MAGIC, FORMAT_VERSION, len(body)) + body


def _kdf_json(kdf: _Passphrase) -> dict[str, str | int]:
    params = kdf.params
    return {"name": "scrypt", "salt": kdf.salt.hex(), "n": params.n, "r": params.r, "p": params.p}


class EncryptedStore:
    """Named byte records and append-only logs, encrypted at rest under a 32-byte key; every
    change is atomic.

    ``EncryptedStore(path, key)`` opens the store in directory ``path``;
    ``create=True`` makes a new one there instead (and refuses to replace an existing one).
    A wrong key raises ``WrongKeyError``, a modified file ``TamperedStoreError``: a store
    is opened whole or not at all. One object per directory at a time; it is thread-safe.
    """

    _records: dict[str, bytes]
    _logs: dict[str, list[bytes]]

    def __init__(self, path: str | os.PathLike[str], key: bytes, *, create: bool = False) -> None:
        self._setup(Path(path), key, create, None)

    @classmethod
    def with_passphrase(
        cls,
        path: str | os.PathLike[str],
        passphrase: str,
        *,
        create: bool = False,
        params: ScryptParams | None = None,
    ) -> EncryptedStore:
        """Open (or create) a store whose key scrypt derives from ``passphrase``; a new one
        refuses ``params`` cheaper than ``MIN_SCRYPT_N`` at ``r`` 8."""
        path = Path(path)
        if create:
            params = params or ScryptParams()
            if params.n * params.r < MIN_SCRYPT_N * 8:
                raise ValueError(
                    f"scrypt n={params.n}, r={params.r} is too cheap to guess passphrases "
                    f"against: a new store needs n * r >= {MIN_SCRYPT_N * 8} (n={MIN_SCRYPT_N} "
                    "at r=8)"
                )
            kdf = _Passphrase(os.urandom(_SALT_BYTES), params)
        else:
            file = path / STORE_FILE
            found = _parse_prefix(_read(file), file)[0].passphrase
            if found is None:
                raise StoreError(f"{file} was created with a raw key, not a passphrase")
            kdf = found
        store = cls.__new__(cls)
        store._setup(path, key_from_passphrase(passphrase, kdf.salt, kdf.params), create, kdf)
        return store

    @property
    def path(self) -> Path:
        """The store's directory."""
        return self._dir

    @property
    def generation(self) -> int:
        """How many times the store has been written (puts and appends); an app may pin it to
        detect rollback."""
        return self._header.generation + self._frames

    @property
    def journal_bytes(self) -> int:
        """Size of the append journal that the next ``put`` or ``compact`` folds in."""
        return self._journal_size

    def put(self, name: str, value: bytes) -> None:
        """Store ``value`` under ``name``, replacing any previous value."""
        self.put_many({name: value})

    def put_many(self, records: Mapping[str, bytes]) -> None:
        """Store several records in one atomic write: all of them land, or none."""
        checked = {_check_name(name): _check_value(name, value) for name, value in records.items()}
        with self._lock:
            self._refuse_kind(checked, self._logs, "a log")
            self._commit({**self._live(), **checked}, self._logs)

    def append(self, name: str, entry: bytes) -> None:
        """Add ``entry`` at the end of the log ``name`` (created on first use)."""
        self.append_many({name: [entry]})

    def append_many(self, entries: Mapping[str, Sequence[bytes]]) -> None:
        """Add entries to several logs in one atomic, fsynced write: all of them land, or none.
        It writes only the new entries (to the journal), not the whole store."""
        checked = {
            _check_name(name): [_check_value(name, value) for value in values]
            for name, values in entries.items()
        }
        with self._lock:
            self._live()
            self._refuse_kind(checked, self._records, "a record")
            self._append_frame(checked)
            for name, values in checked.items():
                self._logs.setdefault(name, []).extend(values)

    def entries(self, name: str) -> list[bytes]:
        """The entries of the log ``name``, oldest first (empty when there is none)."""
        name = _check_name(name)
        with self._lock:
            self._live()
            return list(self._logs.get(name, []))

    def compact(self) -> None:
        """Fold the journal into the store file (one full atomic write)."""
        with self._lock:
            self._commit(self._live(), self._logs)

    def get(self, name: str) -> bytes | None:
        """The value stored under ``name``, or None."""
        name = _check_name(name)
        with self._lock:
            return self._live().get(name)

    def names(self) -> list[str]:
        """The record and log names, sorted."""
        with self._lock:
            return sorted([*self._live(), *self._logs])

    def delete(self, name: str) -> bool:
        """Remove a record or a log; False when there was none."""
        name = _check_name(name)
        with self._lock:
            records = self._live()
            if name not in records and name not in self._logs:
                return False
            self._commit(
                {key: value for key, value in records.items() if key != name},
                {key: value for key, value in self._logs.items() if key != name},
            )
            return True

    def check_writable(self) -> None:
        """Raise the ``StoreError`` the next write would: the store was forgotten, or another
        writer changed it. For a caller that writes a file beside the store first."""
        with self._lock:
            self._live()
            self._check_unchanged()

    def export(self) -> dict[str, bytes | list[bytes]]:
        """Every record and log, decrypted (e.g. for a user's data-access request)."""
        with self._lock:
            return {**self._live(), **{name: list(log) for name, log in self._logs.items()}}

    def forget(self) -> None:
        """Delete the store from disk (see ``forget_store``); this object is unusable after."""
        with self._lock:
            forget_store(self._dir)
            self._records, self._logs = {}, {}
            self._forgotten = True

    def put_json(self, name: str, value: object) -> None:
        """Store a JSON value (not null: use ``delete``); NaN and infinity are refused."""
        self.put(name, json_record(name, value))

    def get_json(self, name: str) -> Any:
        """The JSON value stored under ``name``, or None."""
        raw = self.get(name)
        return None if raw is None else json.loads(raw)

    def put_array(self, name: str, array: npt.NDArray[Any]) -> None:
        """Store a numpy array in ``.npy`` format (never pickled: object arrays are refused)."""
        self.put(name, array_record(name, array))

    def get_array(self, name: str) -> npt.NDArray[Any] | None:
        """The array stored under ``name``, or None."""
        raw = self.get(name)
        return None if raw is None else np.load(io.BytesIO(raw), allow_pickle=False)

    def _setup(self, path: Path, key: bytes, create: bool, kdf: _Passphrase | None) -> None:
        _check_key(key)
        self._dir = path
        self._file = path / STORE_FILE
        self._journal = path / JOURNAL_FILE
        self._lock = threading.RLock()
        self._forgotten = False
        self._records, self._logs = {}, {}
        self._frames = self._journal_size = 0
        self._fingerprint: tuple[int, int, int] | None = None
        if create:
            self._create(key, kdf)
        else:
            self._load(key)

    def _create(self, key: bytes, kdf: _Passphrase | None) -> None:
        if self._file.exists():
            raise StoreExistsError(f"{self._file} already exists; open it without create=True")
        self._dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        # left by a forget that crashed after deleting its store file: nothing can read them
        for stray in [self._journal, *_temp_files(self._dir)]:
            stray.unlink(missing_ok=True)
        store_id = os.urandom(_ID_BYTES)
        encryption_key, key_check = _subkeys(key, store_id)
        self._aead = AESGCM(encryption_key)
        self._header = _Header(store_id, 0, key_check, kdf)
        self._commit({}, {})

    def _load(self, key: bytes) -> None:
        blob = _read(self._file)
        header, start = _parse_prefix(blob, self._file)
        encryption_key, key_check = _subkeys(key, header.store_id)
        if not hmac.compare_digest(key_check, header.key_check):
            raise WrongKeyError(
                f"{self._file}: wrong key or passphrase (it does not match the key check)"
            )
        if len(blob) - start < _NONCE_BYTES + _TAG_BYTES:
            raise TamperedStoreError(self._file, "the file is truncated")
        self._aead = AESGCM(encryption_key)
        nonce, sealed = blob[start : start + _NONCE_BYTES], blob[start + _NONCE_BYTES :]
        try:
            plain = self._aead.decrypt(nonce, sealed, blob[:start])
        except InvalidTag:
            raise TamperedStoreError(self._file, "authentication failed") from None
        self._header = header
        self._records, self._logs = _decode_store(plain, self._file)
        self._fingerprint = _fingerprint(self._file)
        self._load_journal()
        for stray in _temp_files(self._dir):
            stray.unlink(missing_ok=True)

    def _load_journal(self) -> None:
        """Replay the journal's frames over the store file's logs. A frame cut short at the end
        (a crash mid-append, never acknowledged) is cut off, as is a tail the file system
        zero-filled at power loss (from a sector boundary to the end: the header too, when the
        append that wrote it was the first); a journal the store file already folded in (a
        crash before it was removed) is removed once its first frame authenticates under its
        header; any other damage raises."""
        try:
            blob = self._journal.read_bytes()
        except FileNotFoundError:
            return
        if len(blob) < _JOURNAL_HEAD.size or not any(blob):  # the crash came while creating it
            self._journal.unlink()
            return
        magic, store_id, extends = _JOURNAL_HEAD.unpack_from(blob)
        if magic != _JOURNAL_MAGIC or store_id != self._header.store_id:
            raise TamperedStoreError(self._journal, "not this store's journal")
        if extends != self._header.generation:
            self._check_first_frame(blob)  # the generation is read before it is authenticated
            if extends > self._header.generation:
                raise TamperedStoreError(
                    self._journal,
                    f"the journal extends a newer {STORE_FILE}: that file was rolled back",
                )
            self._journal.unlink()
            return
        head, offset = blob[: _JOURNAL_HEAD.size], _JOURNAL_HEAD.size
        frames = 0
        while len(blob) - offset >= _FRAME_LEN.size + _NONCE_BYTES + _TAG_BYTES:
            length, check = _FRAME_LEN.unpack_from(blob, offset)
            if not any(blob[offset:]):  # an append the file system zero-filled at power loss
                break
            if check != _length_check(length):  # a torn append keeps its whole head
                raise TamperedStoreError(
                    self._journal, f"journal frame {frames}'s length is damaged"
                )
            start = offset + _FRAME_LEN.size + _NONCE_BYTES
            if start + length > len(blob):
                break
            try:
                plain = self._aead.decrypt(
                    blob[start - _NONCE_BYTES : start],
                    blob[start : start + length],
                    head + _COUNT.pack(frames),
                )
            except InvalidTag:
                if _zero_filled_from(blob, offset):  # the last append, partly zero-filled
                    break
                raise TamperedStoreError(
                    self._journal, f"journal frame {frames} failed authentication"
                ) from None
            logs, end = _decode_logs(plain, 0, self._journal)
            if end != len(plain):
                raise TamperedStoreError(self._journal, "malformed journal frame")
            self._refuse_kind(logs, self._records, "a record")
            for name, values in logs.items():
                self._logs.setdefault(name, []).extend(values)
            frames, offset = frames + 1, start + length
        if offset < len(blob):
            os.truncate(self._journal, offset)
        self._frames, self._journal_size = frames, offset

    def _check_first_frame(self, blob: bytes) -> None:
        """Raise unless the journal's first frame is whole and authenticates under its header
        (its generation included)."""
        offset = _JOURNAL_HEAD.size
        start = offset + _FRAME_LEN.size + _NONCE_BYTES
        try:
            length, check = _FRAME_LEN.unpack_from(blob, offset)
            if check != _length_check(length) or start + length > len(blob):
                raise ValueError("frame 0 is cut short or its length is damaged")
            self._aead.decrypt(
                blob[start - _NONCE_BYTES : start],
                blob[start : start + length],
                blob[:offset] + _COUNT.pack(0),
            )
        except (struct.error, ValueError, InvalidTag):
            raise TamperedStoreError(
                self._journal,
                "the journal's header is damaged (its first frame fails authentication)",
            ) from None

    def _refuse_kind(
        self, names: Mapping[str, object], other: Mapping[str, object], kind: str
    ) -> None:
        clash = sorted(set(names) & set(other))
        if clash:
            raise StoreError(f"{clash[0]!r} is {kind} in this store; delete it first")

    def _live(self) -> dict[str, bytes]:
        if self._forgotten:
            raise StoreError(f"the store at {self._dir} was forgotten")
        return self._records

    def _commit(self, records: dict[str, bytes], logs: dict[str, list[bytes]]) -> None:
        """Seal ``records`` and ``logs`` as the next generation, replace the store file
        atomically, then drop the journal it folds in (a crash between the two leaves a journal
        that the next open recognises as folded in)."""
        self._check_unchanged()
        header = replace(self._header, generation=self.generation + 1)
        prefix = header.encode()
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, _encode_store(records, logs), prefix)
        write_atomic(self._file, prefix + nonce + sealed, _TMP_PREFIX, _TMP_SUFFIX)
        self._header, self._records = header, records
        self._logs = {name: list(values) for name, values in logs.items()}
        self._fingerprint = _fingerprint(self._file)
        if self._journal_size:
            self._journal.unlink(missing_ok=True)
            fsync_dir(self._dir)
        self._frames = self._journal_size = 0

    def _append_frame(self, logs: dict[str, list[bytes]]) -> None:
        """Seal ``logs`` as the journal's next frame and append it, fsynced; a failed write is
        cut off again, so the journal never holds a partial frame before a whole one."""
        self._check_unchanged()
        head = _JOURNAL_HEAD.pack(_JOURNAL_MAGIC, self._header.store_id, self._header.generation)
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, _encode_logs(logs), head + _COUNT.pack(self._frames))
        frame = _FRAME_LEN.pack(len(sealed), _length_check(len(sealed))) + nonce + sealed
        data = frame if self._journal_size else head + frame
        fd = os.open(self._journal, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        except BaseException:
            os.ftruncate(fd, self._journal_size)
            raise
        finally:
            os.close(fd)
        if not self._journal_size:
            fsync_dir(self._dir)
        self._frames += 1
        self._journal_size += len(data)

    def _check_unchanged(self) -> None:
        """Refuse to write over files another writer changed since this object last wrote."""
        if self._fingerprint is None:
            return
        try:
            journal = self._journal.stat().st_size
        except FileNotFoundError:
            journal = 0
        if _fingerprint(self._file) != self._fingerprint or journal != self._journal_size:
            raise StoreError(f"{self._file} changed on disk since it was opened; reopen it")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_key(key: object) -> None:
    if not isinstance(key, bytes):
        raise TypeError(f"key must be {KEY_BYTES} raw bytes, got {type(key).__name__}")
    if len(key) != KEY_BYTES:
        raise ValueError(f"key must be {KEY_BYTES} bytes, got {len(key)}")


def _check_name(name: object) -> str:
    if not isinstance(name, str):
        raise TypeError(f"record name must be a str, got {type(name).__name__}")
    if not _NAME.fullmatch(name):
        raise ValueError(
            f"invalid record name {name!r}: 1-128 characters from A-Z a-z 0-9 _ . : / -, "
            "not starting with . : / -"
        )
    return name


def _check_value(name: str, value: object) -> bytes:
    if not isinstance(value, bytes):
        raise TypeError(f"value of record {name!r} must be bytes, got {type(value).__name__}")
    return value


def _subkeys(key: bytes, store_id: bytes) -> tuple[bytes, bytes]:
    """This store's encryption key, and the key check (independent of the store id, so that a
    modified store id reads as tampering, not as a wrong key)."""
    return _hkdf(key, store_id, b"fedrec store v1: encryption"), _hkdf(
        key, None, b"fedrec store v1: key check"
    )


def _hkdf(key: bytes, salt: bytes | None, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=salt, info=info).derive(key)


def _read(file: Path) -> bytes:
    try:
        return file.read_bytes()
    except FileNotFoundError:
        raise StoreNotFoundError(f"no store at {file.parent} ({file.name} is missing)") from None


def _parse_prefix(blob: bytes, file: Path) -> tuple[_Header, int]:
    """The header and the offset of the nonce; raises on a damaged or foreign file."""
    if len(blob) < _PREFIX.size:
        raise TamperedStoreError(file, "the file is truncated")
    magic, version, length = _PREFIX.unpack_from(blob)
    if magic != _MAGIC:
        raise TamperedStoreError(file, "not a fedrec store file (bad magic)")
    if version != FORMAT_VERSION:
        raise StoreError(
            f"{file}: store format {version} is not supported (this SDK reads {FORMAT_VERSION})"
        )
    start = _PREFIX.size + length
    if len(blob) < start:
        raise TamperedStoreError(file, "the file is truncated")
    try:
        header = json.loads(blob[_PREFIX.size : start].decode("utf-8"))
        kdf = header["kdf"]
        passphrase = (
            None
            if kdf is None
            else _Passphrase(
                bytes.fromhex(kdf["salt"]), ScryptParams(n=kdf["n"], r=kdf["r"], p=kdf["p"])
            )
        )
        parsed = _Header(
            bytes.fromhex(header["store_id"]),
            header["generation"],
            bytes.fromhex(header["key_check"]),
            passphrase,
        )
    except (ValueError, KeyError, TypeError, RecursionError) as error:
        raise TamperedStoreError(file, f"malformed header ({error})") from None
    return parsed, start


def _fingerprint(file: Path) -> tuple[int, int, int]:
    """What changes when another writer replaces ``file``."""
    try:
        stat = file.stat()
    except FileNotFoundError:
        raise StoreError(f"{file} was removed since it was opened") from None
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


def _encode_store(records: Mapping[str, bytes], logs: Mapping[str, Sequence[bytes]]) -> bytes:
    """The record table, then the log table."""
    parts = [_COUNT.pack(len(records))]
    for name in sorted(records):
        parts += [*_encode_name(name), _VALUE_LEN.pack(len(records[name])), records[name]]
    return b"".join(parts) + _encode_logs(logs)


def _encode_logs(logs: Mapping[str, Sequence[bytes]]) -> bytes:
    """``u32 count``, then per log ``u16 len | name | u32 entries | (u64 len | entry)...``."""
    parts = [_COUNT.pack(len(logs))]
    for name in sorted(logs):
        parts += [*_encode_name(name), _COUNT.pack(len(logs[name]))]
        for entry in logs[name]:
            parts += [_VALUE_LEN.pack(len(entry)), entry]
    return b"".join(parts)


def _encode_name(name: str) -> tuple[bytes, bytes]:
    raw = name.encode("utf-8")
    return _NAME_LEN.pack(len(raw)), raw


def _decode_store(plain: bytes, file: Path) -> tuple[dict[str, bytes], dict[str, list[bytes]]]:
    """Inverse of ``_encode_store``; the input is authenticated, so failure means a bug."""
    records: dict[str, bytes] = {}
    try:
        (count,), offset = _COUNT.unpack_from(plain), _COUNT.size
        for _ in range(count):
            name, offset = _decode_name(plain, offset)
            records[name], offset = _decode_value(plain, offset)
    except (struct.error, UnicodeDecodeError) as error:
        raise TamperedStoreError(file, f"malformed record table ({error})") from None
    logs, offset = _decode_logs(plain, offset, file)
    if offset != len(plain):
        raise TamperedStoreError(file, "malformed record table (length mismatch)")
    return records, logs


def _decode_logs(plain: bytes, offset: int, file: Path) -> tuple[dict[str, list[bytes]], int]:
    """Inverse of ``_encode_logs`` from ``offset``; the logs and the offset after them."""
    logs: dict[str, list[bytes]] = {}
    try:
        (count,), offset = _COUNT.unpack_from(plain, offset), offset + _COUNT.size
        for _ in range(count):
            name, offset = _decode_name(plain, offset)
            (entries,), offset = _COUNT.unpack_from(plain, offset), offset + _COUNT.size
            values = logs[name] = []
            for _ in range(entries):
                value, offset = _decode_value(plain, offset)
                values.append(value)
    except (struct.error, UnicodeDecodeError) as error:
        raise TamperedStoreError(file, f"malformed log table ({error})") from None
    return logs, offset


def _decode_name(plain: bytes, offset: int) -> tuple[str, int]:
    (length,) = _NAME_LEN.unpack_from(plain, offset)
    offset += _NAME_LEN.size
    return plain[offset : offset + length].decode("utf-8"), offset + length


def _decode_value(plain: bytes, offset: int) -> tuple[bytes, int]:
    (length,) = _VALUE_LEN.unpack_from(plain, offset)
    offset += _VALUE_LEN.size
    if offset + length > len(plain):
        raise struct.error("value runs past the end")
    return plain[offset : offset + length], offset + length


def _temp_files(directory: Path) -> list[Path]:
    return list(directory.glob(f"{_TMP_PREFIX}*{_TMP_SUFFIX}"))


def _zero_filled_from(blob: bytes, offset: int) -> bool:
    """Whether ``blob`` is zeros from a sector boundary after ``offset`` to its end, as a file
    system leaves the blocks of an append it had not written when the power went."""
    zeros = len(blob) - len(blob.rstrip(b"\0"))
    boundary = -(-max(len(blob) - zeros, offset + 1) // _SECTOR) * _SECTOR
    return boundary < len(blob)


def _length_check(length: int) -> int:
    """The CRC-32 a journal frame's head keeps of its length: a damaged length would otherwise
    read as an append cut short, and the frames after it would be cut off."""
    return zlib.crc32(length.to_bytes(4, "big"))
