"""Signed item-embedding bundles: round trips, every kind of damage, rollback, key files."""

from __future__ import annotations

import contextlib
import json
import os
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedrec.shared import bundle as bundle_module
from fedrec.shared.bundle import (
    BundleChecksumError,
    BundleContentError,
    BundleError,
    BundleFormatError,
    BundleModelError,
    BundleRollbackError,
    BundleSignatureError,
    BundleTruncatedError,
    BundleWrongKeyError,
    ItemBundle,
    accept_bundle,
    generate_signing_key,
    key_id,
    load_private_key,
    load_public_key,
    public_key_pem,
    save_private_key,
    sign_bundle,
    verify_bundle,
)
from fedrec.shared.quantization import QuantizedMatrix, quantize_int8

SERVER_KEY = generate_signing_key()
PINNED = SERVER_KEY.public_key()
MODEL = "all-MiniLM-L6-v2@round-3"
WHEN = datetime(2025, 1, 2, 3, 4, 5, 678901, tzinfo=timezone.utc)


def make_bundle(version: int = 1, rows: int = 5, dim: int = 8, int8: bool = False) -> ItemBundle:
    rng = np.random.default_rng(version)
    matrix = rng.standard_normal((rows, dim)).astype(np.float32)
    return ItemBundle(
        version=version,
        model=MODEL,
        item_ids=[f"item-{i}" for i in range(rows)],
        embeddings=quantize_int8(matrix) if int8 else matrix,
        created_at=WHEN,
        round=3,
    )


def signed(version: int = 1, int8: bool = False) -> bytes:
    return sign_bundle(make_bundle(version, int8=int8), SERVER_KEY)


def metadata_and_payload(bundle: ItemBundle) -> tuple[dict[str, object], bytes]:
    """The metadata and payload a blob carries, to re-sign altered versions of them."""
    blob = sign_bundle(bundle, SERVER_KEY)
    meta_len, payload_len = (int.from_bytes(blob[26:30], "big"), int.from_bytes(blob[30:38], "big"))
    metadata = json.loads(blob[38 : 38 + meta_len])
    return metadata, blob[38 + meta_len : 38 + meta_len + payload_len]


def resign(metadata: object, payload: bytes) -> bytes:
    return bundle_module._pack(json.dumps(metadata).encode(), payload, SERVER_KEY)


def test_fp32_round_trip_is_exact() -> None:
    original = make_bundle()
    loaded = verify_bundle(sign_bundle(original, SERVER_KEY), PINNED)
    assert (loaded.version, loaded.model, loaded.round) == (1, MODEL, 3)
    assert loaded.item_ids == tuple(original.item_ids) and loaded.created_at == WHEN
    assert loaded.encoding == "fp32" and loaded.shape == (5, 8)
    assert isinstance(loaded.embeddings, np.ndarray) and loaded.embeddings.dtype == np.float32
    np.testing.assert_array_equal(loaded.embeddings, original.embeddings)
    assert not loaded.embeddings.flags.writeable


def test_int8_round_trip_is_exact() -> None:
    original = make_bundle(int8=True)
    loaded = verify_bundle(sign_bundle(original, SERVER_KEY), PINNED)
    assert loaded.encoding == "int8"
    assert isinstance(loaded.embeddings, QuantizedMatrix)
    assert isinstance(original.embeddings, QuantizedMatrix)
    np.testing.assert_array_equal(loaded.embeddings.codes, original.embeddings.codes)
    np.testing.assert_array_equal(loaded.embeddings.scales, original.embeddings.scales)
    np.testing.assert_array_equal(loaded.dense(), original.dense())


def test_int8_bundle_is_about_four_times_smaller() -> None:
    fp32 = sign_bundle(make_bundle(rows=1000, dim=384), SERVER_KEY)
    int8 = sign_bundle(make_bundle(rows=1000, dim=384, int8=True), SERVER_KEY)
    assert len(int8) / len(fp32) < 0.3


def test_tampered_payload_byte_is_a_checksum_error() -> None:
    blob = bytearray(signed())
    blob[-200] ^= 0x01  # inside the payload
    with pytest.raises(BundleChecksumError, match="does not match its SHA-256 checksum"):
        verify_bundle(bytes(blob), PINNED)


@pytest.mark.parametrize(
    ("where", "error"),
    [
        (-1, BundleSignatureError),  # the signature
        (-64, BundleSignatureError),
        (45, BundleSignatureError),  # the metadata (signed, not checksummed)
        (-70, BundleChecksumError),  # the checksum itself
    ],
)
def test_tampered_signature_or_signed_bytes_are_rejected(
    where: int, error: type[Exception]
) -> None:
    blob = bytearray(signed())
    blob[where] ^= 0x01
    with pytest.raises(error, match=r"signature is invalid|does not match its SHA-256"):
        verify_bundle(bytes(blob), PINNED)


def test_signed_with_another_key_is_rejected() -> None:
    intruder = generate_signing_key()
    blob = sign_bundle(make_bundle(), intruder)
    with pytest.raises(BundleWrongKeyError, match=f"this device trusts {key_id(PINNED)}"):
        verify_bundle(blob, PINNED)
    forged = bytearray(blob)  # claim the pinned key's id: the signature still fails
    forged[10:26] = bytes.fromhex(key_id(PINNED))
    with pytest.raises(BundleSignatureError, match="signature is invalid"):
        verify_bundle(bytes(forged), PINNED)


@pytest.mark.parametrize("keep", [0, 7, 37, 100, -1, -65])
def test_truncated_blob_is_a_clear_error(keep: int) -> None:
    with pytest.raises(BundleTruncatedError, match="bundle is truncated"):
        verify_bundle(signed()[:keep], PINNED)


def test_bad_magic_format_and_trailing_bytes() -> None:
    blob = signed()
    with pytest.raises(BundleFormatError, match="bad magic"):
        verify_bundle(b"PK\x03\x04" + blob[4:], PINNED)
    with pytest.raises(BundleFormatError, match="format 2 is not supported"):
        verify_bundle(blob[:8] + b"\x00\x02" + blob[10:], PINNED)
    with pytest.raises(BundleFormatError, match="3 unexpected trailing bytes"):
        verify_bundle(blob + b"abc", PINNED)
    with pytest.raises(TypeError, match="a bundle is bytes, got str"):
        verify_bundle("not bytes", PINNED)  # type: ignore[arg-type]


def test_malformed_metadata_is_a_content_error() -> None:
    metadata, payload = metadata_and_payload(make_bundle())
    cases: list[tuple[object, str]] = [
        ([1, 2], "must have keys"),
        ({**metadata, "extra": 1}, "must have keys"),
        ({**metadata, "version": "7"}, "version must be an int"),
        ({**metadata, "model": ""}, "model must be a non-empty str"),
        ({**metadata, "created_at": "yesterday"}, "bad created_at"),
        ({**metadata, "created_at": "2025-01-02T03:04:05"}, "timezone-aware"),
        ({**metadata, "item_ids": ["a", "a", "b", "c", "d"]}, "must be unique"),
        ({**metadata, "item_ids": "abcde"}, "list of strings"),
        ({**metadata, "encoding": "fp16"}, "encoding must be"),
        ({**metadata, "shape": [5]}, r"shape must be \[items, dimensions\]"),
    ]
    for bad, message in cases:
        with pytest.raises(BundleContentError, match=message):
            verify_bundle(resign(bad, payload), PINNED)
    with pytest.raises(BundleContentError, match="not UTF-8 JSON"):
        verify_bundle(bundle_module._pack(b"{oops", payload, SERVER_KEY), PINNED)


def test_shape_and_dtype_inconsistencies_are_content_errors() -> None:
    metadata, payload = metadata_and_payload(make_bundle())

    def reshaped(shape: list[int], dtype: str = "<f4") -> dict[str, object]:
        arrays = [{"name": "embeddings", "dtype": dtype, "shape": shape}]
        return {**metadata, "shape": shape, "arrays": arrays}

    cases = [
        (reshaped([5, 10]), "payload is 160 bytes, its metadata describes 200"),
        (reshaped([5, 8], "<f8"), "do not match"),
        (reshaped([4, 10]), r"shape \(4, 10\) does not fit 5 item ids"),
    ]
    for bad, message in cases:
        with pytest.raises(BundleContentError, match=message):
            verify_bundle(resign(bad, payload), PINNED)


def test_non_finite_values_are_content_errors() -> None:
    matrix = np.ones((5, 8), dtype=np.float32)
    metadata, _ = metadata_and_payload(make_bundle())
    matrix[3, 2] = np.nan
    with pytest.raises(BundleContentError, match="NaN or infinite values in row 3"):
        verify_bundle(resign(metadata, matrix.astype("<f4").tobytes()), PINNED)
    with pytest.raises(BundleContentError, match="NaN or infinite values in row 3"):
        ItemBundle(1, MODEL, [f"i{i}" for i in range(5)], matrix)


def test_item_bundle_validates_its_fields() -> None:
    matrix = np.zeros((2, 3), dtype=np.float32)
    with pytest.raises(
        BundleContentError, match="float32 array or a QuantizedMatrix, got a float64"
    ):
        ItemBundle(1, MODEL, ["a", "b"], matrix.astype(np.float64))  # type: ignore[arg-type]
    with pytest.raises(BundleContentError, match="does not fit 3 item ids"):
        ItemBundle(1, MODEL, ["a", "b", "c"], matrix)
    with pytest.raises(BundleContentError, match="one or more non-empty strings"):
        ItemBundle(1, MODEL, [], np.zeros((0, 3), dtype=np.float32))
    with pytest.raises(BundleContentError, match="version must be an int >= 0"):
        ItemBundle(-1, MODEL, ["a", "b"], matrix)
    assert ItemBundle(1, MODEL, ["a", "b"], matrix).created_at.tzinfo is not None


def test_accept_bundle_takes_newer_versions_only() -> None:
    first = accept_bundle(None, signed(1), PINNED, model=MODEL)
    second = accept_bundle(first, signed(2), PINNED)
    assert (first.version, second.version) == (1, 2)
    with pytest.raises(BundleRollbackError, match="version 1 is not newer than the current 2"):
        accept_bundle(second, signed(1), PINNED)
    with pytest.raises(BundleRollbackError, match="version 2 is not newer than the current 2"):
        accept_bundle(second, signed(2), PINNED)
    with pytest.raises(BundleModelError, match="the device uses 'other-model'"):
        accept_bundle(second, signed(3), PINNED, model="other-model")


def test_the_device_keeps_its_bundle_on_every_rejection() -> None:
    intruder = generate_signing_key()
    good = signed(6)
    tampered = bytearray(good)
    tampered[-200] ^= 0x01
    bad_signature = bytearray(good)
    bad_signature[-1] ^= 0x01
    rejections = [
        signed(4),  # rollback
        signed(5),  # replay of the same version
        bytes(tampered),
        bytes(bad_signature),
        sign_bundle(make_bundle(9), intruder),
        good[:-10],
        b"",
        resign([], b""),
    ]
    current = accept_bundle(None, signed(5), PINNED)
    kept = current
    for blob in rejections:
        with contextlib.suppress(BundleError):
            current = accept_bundle(current, blob, PINNED)
        assert current is kept
    assert accept_bundle(current, good, PINNED).version == 6


def test_private_key_files(tmp_path: Path) -> None:
    path = tmp_path / "signing.pem"
    save_private_key(SERVER_KEY, path, passphrase="server secret")
    assert b"ENCRYPTED PRIVATE KEY" in path.read_bytes()
    if os.name != "nt":
        assert path.stat().st_mode & 0o077 == 0
    loaded = load_private_key(path, passphrase="server secret")
    assert verify_bundle(sign_bundle(make_bundle(), loaded), PINNED).version == 1
    with pytest.raises(ValueError, match="cannot load the private key"):
        load_private_key(path, passphrase="wrong")
    with pytest.raises(FileExistsError):
        save_private_key(generate_signing_key(), path)
    plain = tmp_path / "plain.pem"
    save_private_key(SERVER_KEY, plain)
    assert isinstance(load_private_key(plain), Ed25519PrivateKey)


def test_public_key_pinning_round_trip() -> None:
    pem = public_key_pem(PINNED)
    assert pem.startswith(b"-----BEGIN PUBLIC KEY-----")
    pinned = load_public_key(pem.decode())
    assert key_id(pinned) == key_id(PINNED) and len(key_id(PINNED)) == 32
    assert verify_bundle(signed(), pinned).version == 1
    with pytest.raises(ValueError, match="not a PEM public key"):
        load_public_key(b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
