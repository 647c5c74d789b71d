"""The encrypted on-device store: confidentiality, integrity, wrong keys, crashes, forgetting."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from fedrec.client import store as store_module
from fedrec.client.store import (
    JOURNAL_FILE,
    MIN_SCRYPT_N,
    STORE_FILE,
    EncryptedStore,
    ScryptParams,
    StoreError,
    StoreExistsError,
    StoreNotFoundError,
    TamperedStoreError,
    WrongKeyError,
    forget_store,
    key_from_passphrase,
)

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
FAST = ScryptParams(n=2**10, r=8, p=1)  # cheaper than a new store may be: for derivations
DIARY = "Quokka-7731: my private note about the dentist and the blue umbrella"


@pytest.fixture
def store(tmp_path: Path) -> EncryptedStore:
    s = EncryptedStore(tmp_path / "store", KEY, create=True)
    s.put("texts/raw", DIARY.encode())
    s.put("state", b"interest-vector-v1")
    return s


def store_file(s: EncryptedStore) -> Path:
    return s.path / STORE_FILE


def all_bytes_under(directory: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file())


def test_round_trip_and_reopen(store: EncryptedStore) -> None:
    store.put("state", b"interest-vector-v2")
    assert store.get("state") == b"interest-vector-v2"
    assert store.get("missing") is None
    assert store.names() == ["state", "texts/raw"]
    assert store.delete("state") is True
    assert store.delete("state") is False
    reopened = EncryptedStore(store.path, KEY)
    assert reopened.export() == {"texts/raw": DIARY.encode()}
    assert reopened.generation == store.generation


def test_put_many_is_one_write(store: EncryptedStore) -> None:
    before = store.generation
    store.put_many({"ledger": b"eps=0.5", "state": b"v3", "empty": b""})
    assert store.generation == before + 1
    assert EncryptedStore(store.path, KEY).get("empty") == b""


def test_json_and_array_helpers(store: EncryptedStore) -> None:
    store.put_json("ledger", {"epsilon": 0.75, "rounds": [1, 2], "note": "ü"})
    vector = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)
    store.put_array("interest", vector)
    reopened = EncryptedStore(store.path, KEY)
    assert reopened.get_json("ledger") == {"epsilon": 0.75, "rounds": [1, 2], "note": "ü"}
    loaded = reopened.get_array("interest")
    assert loaded is not None and loaded.dtype == np.float32
    np.testing.assert_array_equal(loaded, vector)
    assert reopened.get_json("nothing") is None and reopened.get_array("nothing") is None


def test_helpers_refuse_null_nan_pickles_and_non_arrays(store: EncryptedStore) -> None:
    with pytest.raises(ValueError, match="null is not stored, use delete"):
        store.put_json("x", None)
    with pytest.raises(ValueError, match="Out of range float"):
        store.put_json("x", {"a": float("nan")})
    with pytest.raises(ValueError, match="allow_pickle=False"):
        store.put_array("x", np.array([{"a": 1}], dtype=object))
    with pytest.raises(TypeError, match="expected a numpy array, got list"):
        store.put_array("x", [1.0, 2.0])  # type: ignore[arg-type]
    assert "x" not in store.names()


def test_no_plaintext_or_names_on_disk(store: EncryptedStore) -> None:
    floats = np.array([3.14159265, 2.71828182, 1.41421356, 1234.5678], dtype=np.float64)
    store.put_array("interest/state", floats)
    store.put_json("ledger/privacy", {"secret_marker": "Wombat-4242"})
    store.put("texts/raw2", DIARY.encode("utf-16-le"))
    disk = all_bytes_under(store.path)
    assert len(disk) > 300
    secrets = [DIARY.encode(), DIARY.encode("utf-16-le"), b"Quokka", b"Wombat-4242"]
    secrets += [floats.tobytes(), floats[:1].tobytes(), floats.astype(np.float32).tobytes()]
    secrets += [b"texts/raw", b"interest", b"ledger", b"state"]
    for secret in secrets:
        assert secret not in disk, secret


def test_wrong_key_is_a_clear_error_and_changes_nothing(store: EncryptedStore) -> None:
    before = all_bytes_under(store.path)
    with pytest.raises(WrongKeyError, match="wrong key or passphrase") as caught:
        EncryptedStore(store.path, OTHER_KEY)
    assert not isinstance(caught.value, TamperedStoreError)
    assert all_bytes_under(store.path) == before
    assert EncryptedStore(store.path, KEY).get("state") == b"interest-vector-v1"


def test_passphrase_store(tmp_path: Path) -> None:
    path = tmp_path / "p"
    least = ScryptParams(n=MIN_SCRYPT_N, r=8, p=1)
    created = EncryptedStore.with_passphrase(path, "correct horse", create=True, params=least)
    created.put("a", b"1")
    assert EncryptedStore.with_passphrase(path, "correct horse").get("a") == b"1"
    with pytest.raises(WrongKeyError, match="wrong key or passphrase"):
        EncryptedStore.with_passphrase(path, "correct horsf")
    raw = EncryptedStore(tmp_path / "raw", KEY, create=True)
    with pytest.raises(StoreError, match="created with a raw key, not a passphrase"):
        EncryptedStore.with_passphrase(raw.path, "correct horse")


def test_a_new_passphrase_store_refuses_cheap_scrypt_but_an_old_one_opens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for cheap in (FAST, ScryptParams(n=MIN_SCRYPT_N, r=4, p=1)):
        with pytest.raises(ValueError, match=r"too cheap to guess passphrases against"):
            EncryptedStore.with_passphrase(tmp_path / "new", "pw", create=True, params=cheap)
        assert not (tmp_path / "new").exists()
    # a store created before the floor keeps its parameters in its header and still opens
    monkeypatch.setattr(store_module, "MIN_SCRYPT_N", 2)
    EncryptedStore.with_passphrase(tmp_path / "old", "pw", create=True, params=FAST).put("a", b"1")
    monkeypatch.undo()
    assert EncryptedStore.with_passphrase(tmp_path / "old", "pw").get("a") == b"1"


def test_key_from_passphrase() -> None:
    salt = b"s" * 16
    key = key_from_passphrase("pässword", salt, FAST)
    assert len(key) == 32 and key == key_from_passphrase("pa\u0308ssword", salt, FAST)  # NFC
    assert key != key_from_passphrase("pässword", b"t" * 16, FAST)
    with pytest.raises(ValueError, match="non-empty str"):
        key_from_passphrase("", salt, FAST)
    with pytest.raises(ValueError, match="at least 16 bytes"):
        key_from_passphrase("pw", b"short", FAST)
    with pytest.raises(ValueError, match="power of two"):
        ScryptParams(n=1000)
    with pytest.raises(ValueError, match="at most 256"):
        ScryptParams(n=2**20, r=8)


def flip(file: Path, position: int) -> None:
    data = bytearray(file.read_bytes())
    data[position] ^= 0x01
    file.write_bytes(bytes(data))


def test_flipped_ciphertext_byte_is_tampering(store: EncryptedStore) -> None:
    file = store_file(store)
    flip(file, file.stat().st_size - 40)
    with pytest.raises(TamperedStoreError, match="authentication failed") as caught:
        EncryptedStore(store.path, KEY)
    assert caught.value.path == file
    assert str(file) in str(caught.value) and "nothing was loaded" in str(caught.value)


def test_every_single_byte_flip_is_refused(tmp_path: Path) -> None:
    small = EncryptedStore(tmp_path / "s", KEY, create=True)
    small.put("a", b"hello")
    file = store_file(small)
    original = file.read_bytes()
    nonce_at = 14 + int.from_bytes(original[10:14], "big")  # magic, format, header length
    for position in range(len(original)):
        flip(file, position)
        # in the header: a clear StoreError of some kind; in nonce, ciphertext, tag: tampering
        with pytest.raises(TamperedStoreError if position >= nonce_at else StoreError):
            EncryptedStore(small.path, KEY)
        file.write_bytes(original)


def test_modified_header_fields_are_tampering(store: EncryptedStore) -> None:
    file = store_file(store)
    original = file.read_bytes()
    for old, new in [(b'"generation":3', b'"generation":9'), (b'"store_id":"', b'"store_id":"0')]:
        edited = original.replace(old, new, 1)
        if old == b'"store_id":"':  # keep the id 16 bytes long
            start = edited.index(b'"store_id":"') + len(b'"store_id":"')
            edited = edited[:start] + edited[start : start + 32] + edited[start + 33 :]
        assert edited != original
        file.write_bytes(edited)
        with pytest.raises(TamperedStoreError, match="authentication failed"):
            EncryptedStore(store.path, KEY)
    file.write_bytes(b"NOTASTORE" + original[9:])
    with pytest.raises(TamperedStoreError, match="bad magic"):
        EncryptedStore(store.path, KEY)
    file.write_bytes(original[:20] + b"{not json" + original[29:])
    with pytest.raises(TamperedStoreError, match="malformed header"):
        EncryptedStore(store.path, KEY)


@pytest.mark.parametrize(
    ("keep", "message"),
    [
        (0, "truncated"),
        (5, "truncated"),
        (14, "truncated"),
        (40, "truncated"),
        (-17, "authentication failed"),
        (-1, "authentication failed"),
    ],
)
def test_truncated_file_is_tampering(store: EncryptedStore, keep: int, message: str) -> None:
    file = store_file(store)
    file.write_bytes(file.read_bytes()[:keep])
    with pytest.raises(TamperedStoreError, match=message):
        EncryptedStore(store.path, KEY)


def test_spliced_and_swapped_files_are_detected(tmp_path: Path) -> None:
    a = EncryptedStore(tmp_path / "a", KEY, create=True)
    b = EncryptedStore(tmp_path / "b", KEY, create=True)
    a.put("ledger", b"spent=0.1")
    b.put("ledger", b"spent=9.9")
    blob_a, blob_b = store_file(a).read_bytes(), store_file(b).read_bytes()
    nonce_at = 14 + int.from_bytes(blob_a[10:14], "big")  # magic, format, header length
    assert blob_b[10:14] == blob_a[10:14]
    store_file(a).write_bytes(blob_b[:nonce_at] + blob_a[nonce_at:])  # b's header, a's records
    with pytest.raises(TamperedStoreError, match="authentication failed"):
        EncryptedStore(a.path, KEY)
    store_file(a).write_bytes(blob_a[:nonce_at] + blob_b[nonce_at:])  # a's header, b's records
    with pytest.raises(TamperedStoreError, match="authentication failed"):
        EncryptedStore(a.path, KEY)


def test_crash_before_rename_keeps_the_old_state(
    store: EncryptedStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    def crash(*args: object) -> None:
        raise OSError("simulated power loss")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="simulated power loss"):
        store.put("state", b"half-written")
    monkeypatch.undo()
    assert store.get("state") == b"interest-vector-v1"
    assert [p.name for p in store.path.iterdir()] == [STORE_FILE]
    assert EncryptedStore(store.path, KEY).get("state") == b"interest-vector-v1"
    store.put("state", b"after the crash")
    assert EncryptedStore(store.path, KEY).get("state") == b"after the crash"


def test_crash_in_fsync_keeps_the_old_state(
    store: EncryptedStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    def crash(fd: int) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(OSError, match="disk full"):
        store.delete("state")
    monkeypatch.undo()
    assert EncryptedStore(store.path, KEY).names() == ["state", "texts/raw"]


def test_stray_temp_files_from_a_killed_writer_are_removed(store: EncryptedStore) -> None:
    stray = store.path / f".{STORE_FILE}.x1y2z3.tmp"
    stray.write_bytes(b"partial write, process killed")
    foreign = store.path / "app-notes.txt"
    foreign.write_bytes(b"not ours")
    reopened = EncryptedStore(store.path, KEY)
    assert reopened.get("state") == b"interest-vector-v1"
    assert not stray.exists() and foreign.exists()


def test_a_second_writer_cannot_clobber_the_first(store: EncryptedStore) -> None:
    other = EncryptedStore(store.path, KEY)
    other.put("state", b"from other")
    with pytest.raises(StoreError, match="changed on disk since it was opened"):
        store.put("ledger", b"lost update")
    assert EncryptedStore(store.path, KEY).get("state") == b"from other"


def test_open_and_create_never_reset_silently(store: EncryptedStore, tmp_path: Path) -> None:
    with pytest.raises(StoreNotFoundError, match="no store at"):
        EncryptedStore(tmp_path / "nowhere", KEY)
    with pytest.raises(StoreExistsError, match="already exists"):
        EncryptedStore(store.path, KEY, create=True)
    store_file(store).unlink()
    with pytest.raises(StoreNotFoundError):
        EncryptedStore(store.path, KEY)


@pytest.mark.skipif(os.name == "nt", reason="POSIX permissions")
def test_files_are_private(store: EncryptedStore) -> None:
    assert store_file(store).stat().st_mode & 0o077 == 0
    assert store.path.stat().st_mode & 0o077 == 0


def test_export_and_forget(store: EncryptedStore) -> None:
    assert store.export() == {"state": b"interest-vector-v1", "texts/raw": DIARY.encode()}
    store.forget()
    assert not store.path.exists()
    with pytest.raises(StoreError, match="was forgotten"):
        store.get("state")
    with pytest.raises(StoreError, match="was forgotten"):
        store.put("state", b"x")
    store.forget()  # idempotent


def test_forget_store_needs_no_key_and_keeps_foreign_files(store: EncryptedStore) -> None:
    (store.path / f".{STORE_FILE}.abc.tmp").write_bytes(b"stray")
    (store.path / "keep.txt").write_bytes(b"app file")
    forget_store(store.path)
    assert [p.name for p in store.path.iterdir()] == ["keep.txt"]
    with pytest.raises(StoreNotFoundError):
        EncryptedStore(store.path, KEY)


@pytest.mark.parametrize(
    ("key", "error", "message"),
    [
        (b"x" * 16, ValueError, "key must be 32 bytes, got 16"),
        (b"x" * 33, ValueError, "key must be 32 bytes, got 33"),
        ("x" * 32, TypeError, "key must be 32 raw bytes, got str"),
    ],
)
def test_bad_keys(tmp_path: Path, key: object, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        EncryptedStore(tmp_path / "k", key, create=True)  # type: ignore[arg-type]
    assert not (tmp_path / "k").exists()


@pytest.mark.parametrize("name", ["", "../etc", ".hidden", "a b", "a\n", "é", "x" * 129])
def test_bad_names(store: EncryptedStore, name: str) -> None:
    with pytest.raises(ValueError, match="invalid record name"):
        store.put(name, b"v")
    with pytest.raises(ValueError, match="invalid record name"):
        store.get(name)


def test_bad_values_and_name_types(store: EncryptedStore) -> None:
    with pytest.raises(TypeError, match="value of record 'a' must be bytes, got str"):
        store.put("a", "text")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="must be bytes, got bytearray"):
        store.put_many({"ok": b"1", "b": bytearray(b"2")})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="record name must be a str, got int"):
        store.put(3, b"v")  # type: ignore[arg-type]
    assert store.names() == ["state", "texts/raw"]


# -- the append journal ---------------------------------------------------------------------


def journal_file(s: EncryptedStore) -> Path:
    return s.path / JOURNAL_FILE


def test_logs_append_reopen_and_compact(store: EncryptedStore) -> None:
    before = store.generation
    store.append("events", b"e1")
    store.append_many({"events": [b"e2", b""], "texts": [DIARY.encode()]})
    assert store.generation == before + 2
    assert journal_file(store).exists()
    reopened = EncryptedStore(store.path, KEY)
    assert reopened.entries("events") == [b"e1", b"e2", b""]
    assert reopened.entries("texts") == [DIARY.encode()]
    assert reopened.entries("nothing") == []
    assert reopened.generation == store.generation
    assert reopened.names() == ["events", "state", "texts", "texts/raw"]
    assert reopened.export()["events"] == [b"e1", b"e2", b""]
    reopened.compact()
    assert not journal_file(reopened).exists() and reopened.journal_bytes == 0
    assert reopened.generation == before + 3
    reopened.append("events", b"e3")
    again = EncryptedStore(store.path, KEY)
    assert again.entries("events") == [b"e1", b"e2", b"", b"e3"]
    assert again.delete("events") is True
    assert EncryptedStore(store.path, KEY).entries("events") == []


def test_an_append_writes_only_its_entry(store: EncryptedStore) -> None:
    store.put("big", os.urandom(100_000))
    store.append("events", b"first")
    size = journal_file(store).stat().st_size
    store.append("events", b"x" * 10)
    assert journal_file(store).stat().st_size - size < 100
    assert store_file(store).stat().st_size > 100_000


def test_no_plaintext_in_the_journal(store: EncryptedStore) -> None:
    store.append_many({"texts/raw-log": [DIARY.encode()], "ledger": [b"Wombat-4242"]})
    disk = journal_file(store).read_bytes()
    for secret in [DIARY.encode(), b"Quokka", b"Wombat-4242", b"texts", b"ledger"]:
        assert secret not in disk, secret


def test_records_and_logs_do_not_share_names(store: EncryptedStore) -> None:
    with pytest.raises(StoreError, match="'state' is a record in this store"):
        store.append("state", b"x")
    store.append("events", b"e1")
    with pytest.raises(StoreError, match="'events' is a log in this store"):
        store.put("events", b"x")
    with pytest.raises(TypeError, match="value of record 'events' must be bytes, got str"):
        store.append("events", "text")  # type: ignore[arg-type]
    assert store.entries("events") == [b"e1"]


@pytest.mark.parametrize("cut", [1, 5, 20, 40])
def test_a_torn_last_append_is_cut_off(store: EncryptedStore, cut: int) -> None:
    store.append("events", b"e1")
    store.append("events", b"e2 was being written when the power went")
    file = journal_file(store)
    file.write_bytes(file.read_bytes()[:-cut])
    reopened = EncryptedStore(store.path, KEY)
    assert reopened.entries("events") == [b"e1"]
    reopened.append("events", b"e3")
    assert EncryptedStore(store.path, KEY).entries("events") == [b"e1", b"e3"]


def test_a_zero_filled_last_append_is_cut_off(store: EncryptedStore) -> None:
    """Some file systems leave a zero-filled tail when the power goes mid-append: an append
    never acknowledged, cut off like a torn one."""
    store.append("events", b"e1")
    store.append("events", b"e2")
    file = journal_file(store)
    size = file.stat().st_size
    file.write_bytes(file.read_bytes() + bytes(64))
    reopened = EncryptedStore(store.path, KEY)
    assert reopened.entries("events") == [b"e1", b"e2"] and file.stat().st_size == size
    reopened.append("events", b"e3")
    assert EncryptedStore(store.path, KEY).entries("events") == [b"e1", b"e2", b"e3"]


def test_a_first_append_zero_filled_with_its_header_is_cut_off(store: EncryptedStore) -> None:
    """The first append after a fold writes the journal's header with its frame: zero-filled
    at power loss, the whole journal is zeros, an append never acknowledged."""
    store.append("events", b"e1")
    store.compact()
    store.append("events", b"e2")
    file = journal_file(store)
    file.write_bytes(bytes(file.stat().st_size))
    reopened = EncryptedStore(store.path, KEY)
    assert reopened.entries("events") == [b"e1"] and not file.exists()
    reopened.append("events", b"e3")
    assert EncryptedStore(store.path, KEY).entries("events") == [b"e1", b"e3"]


def test_a_last_append_zero_filled_from_a_sector_boundary_is_cut_off(
    store: EncryptedStore,
) -> None:
    """Power lost mid-append can leave the blocks not yet written as zeros, from a sector
    boundary inside the last frame to its end; the frames before it are kept. Zeros that
    start elsewhere, or damage to an earlier frame, are tampering."""
    store.append("events", b"e1")
    file = journal_file(store)
    size = file.stat().st_size
    store.append("events", b"x" * 2000)
    blob = file.read_bytes()
    boundary = -(-(size + 100) // 512) * 512
    file.write_bytes(blob[:boundary] + bytes(len(blob) - boundary))
    reopened = EncryptedStore(store.path, KEY)
    assert reopened.entries("events") == [b"e1"] and file.stat().st_size == size
    reopened.append("events", b"e3")
    assert EncryptedStore(store.path, KEY).entries("events") == [b"e1", b"e3"]
    blob = file.read_bytes()
    damaged = bytearray(blob)
    damaged[size + 40] ^= 1  # inside the last frame, not zeros to the end
    file.write_bytes(bytes(damaged))
    with pytest.raises(TamperedStoreError, match="journal frame 1 failed authentication"):
        EncryptedStore(store.path, KEY)
    file.write_bytes(blob[: size - 8] + bytes(8) + blob[size:])  # an earlier frame's end
    with pytest.raises(TamperedStoreError, match="journal frame 0 failed authentication"):
        EncryptedStore(store.path, KEY)


def test_a_journal_left_without_its_store_does_not_break_a_new_one(
    store: EncryptedStore,
) -> None:
    """A forget that crashed after removing the store file (as forget did before it removed
    the journal first) leaves a journal no key can read: a new store in the folder drops it."""
    store.append("events", b"e1")
    store_file(store).unlink()
    new = EncryptedStore(store.path, KEY, create=True)
    new.append("events", b"fresh")
    assert EncryptedStore(store.path, KEY).entries("events") == [b"fresh"]


def test_a_failed_append_changes_nothing(
    store: EncryptedStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.append("events", b"e1")
    size, generation = journal_file(store).stat().st_size, store.generation

    def crash(fd: int) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(OSError, match="disk full"):
        store.append_many({"events": [b"e2"], "texts": [b"t"]})
    monkeypatch.undo()
    assert store.entries("events") == [b"e1"] and store.entries("texts") == []
    assert store.generation == generation
    assert journal_file(store).stat().st_size == size
    store.append("events", b"e3")
    assert EncryptedStore(store.path, KEY).entries("events") == [b"e1", b"e3"]


def test_a_changed_journal_frame_is_tampering(store: EncryptedStore) -> None:
    store.append("events", b"e1")
    store.append("events", b"e2")
    file = journal_file(store)
    blob = bytearray(file.read_bytes())
    blob[-20] ^= 1
    file.write_bytes(bytes(blob))
    with pytest.raises(TamperedStoreError, match="journal frame 1 failed authentication"):
        EncryptedStore(store.path, KEY)


@pytest.mark.parametrize("bit", [0, 7, 31])
def test_a_damaged_frame_length_is_tampering_not_a_torn_append(
    store: EncryptedStore, bit: int
) -> None:
    """A length flipped to run past the end must not read as a torn last append, which would
    cut off the frames after it: every frame keeps a check of its length."""
    for event in (b"e1", b"e2", b"e3", b"e4"):
        store.append("events", event)
    file = journal_file(store)
    blob = bytearray(file.read_bytes())
    head = 32  # magic, store id, generation
    second = head + (len(blob) - head) // 4  # the frames are of one size
    length = int.from_bytes(blob[second : second + 4], "big") ^ (1 << bit)
    blob[second : second + 4] = length.to_bytes(4, "big")
    file.write_bytes(bytes(blob))
    with pytest.raises(TamperedStoreError, match="journal frame 1's length is damaged"):
        EncryptedStore(store.path, KEY)
    assert file.read_bytes() == bytes(blob)  # nothing cut off


def test_journal_frames_cannot_be_reordered(store: EncryptedStore) -> None:
    store.append("events", b"first")
    size = journal_file(store).stat().st_size
    store.append("events", b"secnd")
    blob = journal_file(store).read_bytes()
    head = 32  # magic, store id, generation
    one, two = blob[head:size], blob[size:]
    journal_file(store).write_bytes(blob[:head] + two + one)
    with pytest.raises(TamperedStoreError, match="journal frame 0 failed authentication"):
        EncryptedStore(store.path, KEY)


def test_a_journal_already_folded_in_is_dropped(store: EncryptedStore) -> None:
    """A crash after the store file was replaced but before the journal was removed."""
    store.append("events", b"e1")
    old_journal = journal_file(store).read_bytes()
    store.compact()
    journal_file(store).write_bytes(old_journal)
    reopened = EncryptedStore(store.path, KEY)
    assert reopened.entries("events") == [b"e1"]
    assert not journal_file(store).exists()


@pytest.mark.parametrize("bit", [0, 1, 63])
def test_a_damaged_journal_generation_is_tampering_not_a_folded_journal(
    store: EncryptedStore, bit: int
) -> None:
    """The generation a journal extends is read before anything is authenticated: flipped to
    an older one, it must not pass for a journal already folded in, which is dropped."""
    store.put("state", b"v1")
    for event in (b"e1", b"e2", b"e3"):
        store.append("events", event)
    file = journal_file(store)
    blob = bytearray(file.read_bytes())
    generation = int.from_bytes(blob[24:32], "big") ^ (1 << bit)
    blob[24:32] = generation.to_bytes(8, "big")
    file.write_bytes(bytes(blob))
    with pytest.raises(TamperedStoreError, match="the journal's header is damaged"):
        EncryptedStore(store.path, KEY)
    assert file.read_bytes() == bytes(blob)  # nothing removed


def test_a_rolled_back_store_file_under_a_newer_journal_is_tampering(
    store: EncryptedStore,
) -> None:
    old_store = store_file(store).read_bytes()
    store.put("state", b"v2")
    store.append("events", b"e1")
    store_file(store).write_bytes(old_store)
    with pytest.raises(TamperedStoreError, match=r"the journal extends a newer store\.fedrec"):
        EncryptedStore(store.path, KEY)


def test_another_stores_journal_is_tampering(store: EncryptedStore, tmp_path: Path) -> None:
    other = EncryptedStore(tmp_path / "other", KEY, create=True)
    other.append("events", b"e1")
    journal_file(store).write_bytes(journal_file(other).read_bytes())
    with pytest.raises(TamperedStoreError, match="not this store's journal"):
        EncryptedStore(store.path, KEY)


def test_a_second_writer_cannot_append_behind_the_first(store: EncryptedStore) -> None:
    other = EncryptedStore(store.path, KEY)
    other.append("events", b"from other")
    with pytest.raises(StoreError, match="changed on disk since it was opened"):
        store.append("events", b"lost update")
    with pytest.raises(StoreError, match="changed on disk since it was opened"):
        store.put("state", b"lost update")
    assert EncryptedStore(store.path, KEY).entries("events") == [b"from other"]


def test_forget_removes_the_journal(store: EncryptedStore) -> None:
    store.append("events", b"e1")
    store.forget()
    assert not store.path.exists()
