"""Item-embedding bundles: the server signs the catalog's embeddings, devices verify them.

A bundle is one bytes blob (integers big-endian, arrays little-endian, C order)::

    "FRECBNDL" | u16 format (1) | signer key id (16) | u32 m | u64 k
    | metadata (m bytes, UTF-8 JSON) | payload (k bytes: the raw arrays)
    | SHA-256 of the payload (32) | Ed25519 signature of everything before it (64)

Devices pin the server's public key and check, in this order: framing, signer key id,
checksum, signature, and only then parse the metadata and arrays. See docs/security.md.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedrec.shared.quantization import Float32Array, QuantizedMatrix

FORMAT_VERSION = 1

_MAGIC = b"FRECBNDL"
_HEAD = struct.Struct(">8sH16sIQ")  # magic, format, key id, metadata length, payload length
_DIGEST_BYTES = 32
_SIGNATURE_BYTES = 64
_METADATA_KEYS = frozenset(
    {"version", "model", "created_at", "round", "item_ids", "encoding", "shape", "arrays"}
)


class BundleError(ValueError):
    """A bundle that cannot be used. The device keeps the bundle it had."""


class BundleFormatError(BundleError):
    """Not a bundle this code reads: bad magic, another format version, stray bytes."""


class BundleTruncatedError(BundleFormatError):
    """The blob is shorter than its header says (an interrupted download)."""


class BundleChecksumError(BundleError):
    """The payload does not match its SHA-256 checksum (corrupted or modified)."""


class BundleSignatureError(BundleError):
    """The signature does not verify: the signed bytes or the signature were modified."""


class BundleWrongKeyError(BundleSignatureError):
    """The bundle was signed by a key other than the one the device pins."""


class BundleContentError(BundleError):
    """Malformed metadata or arrays: wrong fields, shapes, dtypes or non-finite values."""


class BundleRollbackError(BundleError):
    """The bundle is not newer than the one the device has."""


class BundleModelError(BundleError):
    """The bundle's embeddings come from another model than the device's encoder."""


def _now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True, eq=False)
class ItemBundle:
    """One version of the catalog's item embeddings, row i for ``item_ids[i]``.

    ``embeddings`` is float32 (n, d), or int8 as a ``QuantizedMatrix`` (about 4x smaller).
    ``round`` is the federated round that produced the model, where there is one.
    """

    version: int
    model: str
    item_ids: Sequence[str]
    embeddings: Float32Array | QuantizedMatrix
    created_at: datetime = field(default_factory=_now)
    round: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "item_ids", tuple(self.item_ids))
        _check_metadata(self)
        _check_embeddings(self.embeddings, len(self.item_ids))

    @property
    def encoding(self) -> str:
        """``"fp32"`` or ``"int8"``."""
        return "int8" if isinstance(self.embeddings, QuantizedMatrix) else "fp32"

    @property
    def shape(self) -> tuple[int, int]:
        """(items, dimensions)."""
        rows, dim = self.embeddings.shape
        return int(rows), int(dim)

    def dense(self) -> Float32Array:
        """The embeddings as float32 (dequantized for an int8 bundle)."""
        if isinstance(self.embeddings, QuantizedMatrix):
            return self.embeddings.dequantize()
        return self.embeddings


def generate_signing_key() -> Ed25519PrivateKey:
    """A new Ed25519 signing key for the server."""
    return Ed25519PrivateKey.generate()


def key_id(public_key: Ed25519PublicKey) -> str:
    """A short fingerprint of a public key: the first 16 bytes of its SHA-256, in hex."""
    return _key_id(public_key).hex()


def save_private_key(
    key: Ed25519PrivateKey, path: str | os.PathLike[str], passphrase: str | None = None
) -> None:
    """Write the key as PKCS#8 PEM (encrypted when a passphrase is given), mode 0600.

    Refuses to overwrite an existing file: losing the signing key means no more updates.
    """
    encryption: serialization.KeySerializationEncryption = (
        serialization.NoEncryption()
        if passphrase is None
        else serialization.BestAvailableEncryption(passphrase.encode("utf-8"))
    )
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(pem)


def load_private_key(
    path: str | os.PathLike[str], passphrase: str | None = None
) -> Ed25519PrivateKey:
    """Read a key written by ``save_private_key``."""
    password = None if passphrase is None else passphrase.encode("utf-8")
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password)
    except (ValueError, TypeError) as error:
        raise ValueError(f"cannot load the private key in {path}: {error}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} holds a {type(key).__name__}, not an Ed25519 private key")
    return key


def public_key_pem(key: Ed25519PublicKey) -> bytes:
    """The public key as SubjectPublicKeyInfo PEM, the form devices pin."""
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_public_key(pem: bytes | str) -> Ed25519PublicKey:
    """The public key in ``pem`` (as written by ``public_key_pem``)."""
    data = pem.encode("ascii") if isinstance(pem, str) else pem
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as error:
        raise ValueError(f"not a PEM public key: {error}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"expected an Ed25519 public key, got {type(key).__name__}")
    return key


def sign_bundle(bundle: ItemBundle, private_key: Ed25519PrivateKey) -> bytes:
    """Serialize and sign ``bundle``: the blob the server publishes."""
    rows, dim = bundle.shape
    layout = _layout(bundle.encoding, rows, dim)
    metadata = {
        "version": bundle.version,
        "model": bundle.model,
        "created_at": bundle.created_at.isoformat(),
        "round": bundle.round,
        "item_ids": list(bundle.item_ids),
        "encoding": bundle.encoding,
        "shape": [rows, dim],
        "arrays": layout,
    }
    payload = b"".join(
        np.ascontiguousarray(array, dtype=spec["dtype"]).tobytes()
        for array, spec in zip(_arrays(bundle.embeddings), layout, strict=True)
    )
    text = json.dumps(metadata, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return _pack(text.encode("utf-8"), payload, private_key)


def verify_bundle(blob: bytes, public_key: Ed25519PublicKey) -> ItemBundle:
    """The bundle in ``blob`` if it is intact and signed by ``public_key``; else a BundleError."""
    if not isinstance(blob, bytes):
        raise TypeError(f"a bundle is bytes, got {type(blob).__name__}")
    metadata, payload = _open(blob, public_key)
    return _decode(metadata, payload)


def accept_bundle(
    current: ItemBundle | None,
    blob: bytes,
    public_key: Ed25519PublicKey,
    *,
    model: str | None = None,
) -> ItemBundle:
    """The device's update policy: the new bundle, if verified and newer than ``current``.

    Any rejection raises a ``BundleError`` and returns nothing, so ``bundle =
    accept_bundle(bundle, blob, key)`` keeps the old bundle on every failure. ``model``,
    where given, must match the bundle's model (the device's encoder).
    """
    candidate = verify_bundle(blob, public_key)
    if model is not None and candidate.model != model:
        raise BundleModelError(
            f"bundle is for model {candidate.model!r}, the device uses {model!r}"
        )
    if current is not None and candidate.version <= current.version:
        raise BundleRollbackError(
            f"bundle version {candidate.version} is not newer than the current {current.version}"
        )
    return candidate


def _key_id(public_key: Ed25519PublicKey) -> bytes:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).digest()[:16]


def _pack(metadata: bytes, payload: bytes, private_key: Ed25519PrivateKey) -> bytes:
    """Frame, checksum and sign raw metadata and payload."""
    head = _HEAD.pack(
        _MAGIC, FORMAT_VERSION, _key_id(private_key.public_key()), len(metadata), len(payload)
    )
    signed = head + metadata + payload + hashlib.sha256(payload).digest()
    return signed + private_key.sign(signed)


def _open(blob: bytes, public_key: Ed25519PublicKey) -> tuple[bytes, memoryview]:
    """Check framing, signer, checksum and signature; the metadata and payload bytes."""
    if len(blob) < _HEAD.size:
        raise BundleTruncatedError(
            f"bundle is truncated: {len(blob)} bytes, the header alone is {_HEAD.size}"
        )
    magic, version, signer, meta_len, payload_len = _HEAD.unpack_from(blob)
    if magic != _MAGIC:
        raise BundleFormatError("not a fedrec item bundle (bad magic)")
    if version != FORMAT_VERSION:
        raise BundleFormatError(
            f"bundle format {version} is not supported (this code reads {FORMAT_VERSION})"
        )
    payload_at = _HEAD.size + meta_len
    signature_at = payload_at + payload_len + _DIGEST_BYTES
    expected = signature_at + _SIGNATURE_BYTES
    if len(blob) < expected:
        raise BundleTruncatedError(f"bundle is truncated: {len(blob)} of {expected} bytes")
    if len(blob) > expected:
        raise BundleFormatError(f"bundle has {len(blob) - expected} unexpected trailing bytes")
    if signer != _key_id(public_key):
        raise BundleWrongKeyError(
            f"bundle was signed by key {signer.hex()}, this device trusts {key_id(public_key)}"
        )
    view = memoryview(blob)
    payload = view[payload_at : payload_at + payload_len]
    if hashlib.sha256(payload).digest() != blob[payload_at + payload_len : signature_at]:
        raise BundleChecksumError("bundle payload does not match its SHA-256 checksum")
    try:
        public_key.verify(blob[signature_at:], blob[:signature_at])
    except InvalidSignature:
        raise BundleSignatureError("bundle signature is invalid (modified after signing)") from None
    return blob[_HEAD.size : payload_at], payload


def _decode(raw: bytes, payload: memoryview) -> ItemBundle:
    """The bundle described by verified metadata and payload."""
    try:
        metadata = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as error:
        raise BundleContentError(f"bundle metadata is not UTF-8 JSON: {error}") from None
    if not isinstance(metadata, dict) or set(metadata) != _METADATA_KEYS:
        keys = sorted(metadata) if isinstance(metadata, dict) else type(metadata).__name__
        raise BundleContentError(f"bundle metadata must have keys {sorted(_METADATA_KEYS)}: {keys}")
    shape, encoding = metadata["shape"], metadata["encoding"]
    if not (isinstance(shape, list) and len(shape) == 2 and all(_is_count(x) for x in shape)):
        raise BundleContentError(f"bundle shape must be [items, dimensions], got {shape!r}")
    if encoding not in ("fp32", "int8"):
        raise BundleContentError(f"bundle encoding must be 'fp32' or 'int8', got {encoding!r}")
    layout = _layout(encoding, *shape)
    if metadata["arrays"] != layout:
        raise BundleContentError(f"bundle arrays {metadata['arrays']!r} do not match {layout!r}")
    arrays = _read_arrays(payload, layout)
    embeddings = arrays[0] if encoding == "fp32" else QuantizedMatrix(arrays[0], arrays[1])
    try:
        created_at = datetime.fromisoformat(metadata["created_at"])
    except (TypeError, ValueError):
        raise BundleContentError(f"bad created_at {metadata['created_at']!r}") from None
    return ItemBundle(
        version=metadata["version"],
        model=metadata["model"],
        item_ids=_strings(metadata["item_ids"]),
        embeddings=embeddings,
        created_at=created_at,
        round=metadata["round"],
    )


def _layout(encoding: str, rows: int, dim: int) -> list[dict[str, Any]]:
    """The payload's arrays, in order, for an encoding and shape."""
    if encoding == "fp32":
        return [{"name": "embeddings", "dtype": "<f4", "shape": [rows, dim]}]
    return [
        {"name": "codes", "dtype": "|i1", "shape": [rows, dim]},
        {"name": "scales", "dtype": "<f4", "shape": [rows]},
    ]


def _arrays(embeddings: Float32Array | QuantizedMatrix) -> list[npt.NDArray[Any]]:
    if isinstance(embeddings, QuantizedMatrix):
        return [embeddings.codes, embeddings.scales]
    return [embeddings]


def _read_arrays(payload: memoryview, layout: list[dict[str, Any]]) -> list[npt.NDArray[Any]]:
    """Read-only arrays over ``payload``, which must hold exactly the arrays in ``layout``."""
    dtypes = [np.dtype(spec["dtype"]) for spec in layout]
    sizes = [
        math.prod(spec["shape"]) * dtype.itemsize
        for spec, dtype in zip(layout, dtypes, strict=True)
    ]
    if sum(sizes) != len(payload):
        raise BundleContentError(
            f"bundle payload is {len(payload)} bytes, its metadata describes {sum(sizes)}"
        )
    arrays, offset = [], 0
    for spec, dtype, size in zip(layout, dtypes, sizes, strict=True):
        flat = np.frombuffer(payload, dtype=dtype, count=size // dtype.itemsize, offset=offset)
        arrays.append(flat.reshape(spec["shape"]).astype(dtype.newbyteorder("="), copy=False))
        offset += size
    return arrays


def _strings(value: object) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise BundleContentError("bundle item_ids must be a list of strings")
    return value


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_metadata(bundle: ItemBundle) -> None:
    if not _is_count(bundle.version):
        raise BundleContentError(f"bundle version must be an int >= 0, got {bundle.version!r}")
    if not isinstance(bundle.model, str) or not bundle.model:
        raise BundleContentError(f"bundle model must be a non-empty str, got {bundle.model!r}")
    if not (isinstance(bundle.created_at, datetime) and bundle.created_at.tzinfo is not None):
        raise BundleContentError(
            f"created_at must be a timezone-aware datetime: {bundle.created_at!r}"
        )
    if bundle.round is not None and not _is_count(bundle.round):
        raise BundleContentError(f"bundle round must be None or an int >= 0, got {bundle.round!r}")
    ids = bundle.item_ids
    if not ids or not all(isinstance(item, str) and item for item in ids):
        raise BundleContentError("bundle item_ids must be one or more non-empty strings")
    if len(set(ids)) != len(ids):
        raise BundleContentError("bundle item_ids must be unique")


def _check_embeddings(embeddings: object, rows: int) -> None:
    if isinstance(embeddings, QuantizedMatrix):
        values, shape = embeddings.scales, embeddings.shape
    elif isinstance(embeddings, np.ndarray) and embeddings.dtype == np.float32:
        values, shape = embeddings, embeddings.shape
    else:
        raise BundleContentError(
            f"embeddings must be a float32 array or a QuantizedMatrix, got {_describe(embeddings)}"
        )
    if len(shape) != 2 or shape[0] != rows or shape[1] < 1:
        raise BundleContentError(f"embeddings shape {shape} does not fit {rows} item ids")
    bad = np.flatnonzero(~np.isfinite(values).reshape(rows, -1).all(axis=1))
    if bad.size:
        raise BundleContentError(f"embeddings have NaN or infinite values in row {int(bad[0])}")


def _describe(value: object) -> str:
    if isinstance(value, np.ndarray):
        return f"a {value.dtype} array"
    return type(value).__name__
