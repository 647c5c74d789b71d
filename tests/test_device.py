"""The on-device SDK with the real encoder, real encryption and real signatures."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from fedrec.client.device import Device, DeviceInputError, DeviceModel
from fedrec.client.store import EncryptedStore, StoreError, StoreNotFoundError
from fedrec.shared.bundle import (
    BundleContentError,
    BundleError,
    BundleModelError,
    ItemBundle,
    generate_signing_key,
    sign_bundle,
    verify_bundle,
)
from fedrec.shared.encoder.config import EncoderConfig
from fedrec.shared.encoder.model import TextEncoder
from fedrec.shared.model.network import ITEM_EVENT, TEXT_EVENT, ModelConfig, Recommender

CATALOG = {
    "bread": "Sourdough bread baking: starters, crusty loaves and rye",
    "pizza": "Neapolitan pizza at home: dough, tomato sauce and a hot oven",
    "pasta": "Fresh pasta by hand: tagliatelle, ravioli and egg dough",
    "run": "Trail running for beginners: shoes, hills and pacing",
    "marathon": "Marathon training plan: long runs, tempo and recovery",
    "bike": "Road cycling: climbing, cadence and bike fitting",
    "stars": "Backyard astronomy: telescopes, planets and star charts",
    "moon": "Photographing the moon and planets through a telescope",
    "jazz": "Jazz piano voicings: chords, swing and improvisation",
    "blues": "Blues guitar licks: bends, shuffles and slide",
    "camera": "Vintage film cameras: rangefinders, lenses and developing",
    "garden": "Vegetable gardening: tomatoes, compost and raised beds",
}
KEY = bytes(range(32))


@pytest.fixture(scope="module")
def model() -> DeviceModel:
    torch.manual_seed(0)
    return DeviceModel(
        Recommender(ModelConfig(hidden_dim=32)).eval(),
        TextEncoder.from_config(EncoderConfig(max_length=32)),
    )


@pytest.fixture(scope="module")
def signing() -> tuple[object, object]:
    private = generate_signing_key()
    return private, private.public_key()


def bundle_blob(
    model: DeviceModel,
    private: object,
    version: int,
    int8: bool = False,
    dim: int | None = None,
    without: str | None = None,
    name: str = "test",
) -> bytes:
    """A signed bundle of the catalog; ``dim`` keeps only that many of each vector's
    components (another model's bundle); ``without`` leaves that item out; ``name`` is the
    model it names."""
    features = model.encoder.encode(list(CATALOG.values()))
    with torch.no_grad():
        vectors = model.network.items(torch.from_numpy(features)).numpy()[:, :dim]
    if version > 1:  # a later round: the item vectors moved a little
        vectors = vectors + 0.01 * np.random.default_rng(version).normal(size=vectors.shape)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    from fedrec.shared.quantization import quantize_int8

    keep = [i for i, item in enumerate(CATALOG) if item != without]
    vectors = vectors[keep]
    embeddings = quantize_int8(vectors) if int8 else vectors.astype(np.float32)
    bundle = ItemBundle(
        version=version,
        model=name,
        item_ids=[item for item in CATALOG if item != without],
        embeddings=embeddings,
    )
    return sign_bundle(bundle, private)  # type: ignore[arg-type]


@pytest.fixture
def device(tmp_path: Path, model: DeviceModel, signing: tuple[object, object]) -> Device:
    private, public = signing
    return Device.create(tmp_path / "dev", KEY, model, public, bundle_blob(model, private, 1))  # type: ignore[arg-type]


def batch_interest(device: Device, model: DeviceModel) -> torch.Tensor:
    vectors = device._event_vectors()
    kinds = [e["kind"] for e in device._history]
    types = torch.tensor([[ITEM_EVENT if kind == "item" else TEXT_EVENT for kind in kinds]])
    with torch.no_grad():
        return model.network.users(torch.from_numpy(vectors)[None], types)[0, -1]


def test_incremental_interest_equals_the_whole_history(device: Device, model: DeviceModel) -> None:
    device.record("bread", "click", timestamp=10)
    device.add_text("I love a crusty sourdough loaf", timestamp=20)
    device.record("pizza", "rating", value=5.0, timestamp=30)
    device.record("pasta", timestamp=30)
    interest = device.interest()
    assert interest is not None
    torch.testing.assert_close(torch.from_numpy(interest), batch_interest(device, model))


def test_an_event_appends_only_itself_and_the_state_is_saved_now_and_then(
    tmp_path: Path,
    device: Device,
    model: DeviceModel,
    signing: tuple[object, object],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store_file = tmp_path / "dev" / "store.fedrec"
    device.record("bread", timestamp=1)
    size, journal = store_file.stat().st_size, device._store.journal_bytes
    device.record("pizza", timestamp=2)
    assert store_file.stat().st_size == size  # the store file was not rewritten
    assert device._store.journal_bytes - journal < 300  # the event only
    monkeypatch.setattr("fedrec.client.device.JOURNAL_LIMIT", 1000)
    names = list(CATALOG)
    for t in range(3, 40):
        device.record(names[t % len(names)], timestamp=t)
        if t % 7 == 0:
            device.add_text(f"note number {t} about bread and jazz", timestamp=t)
    assert device._store.journal_bytes <= 1000 + 2000  # folded in as it grew
    assert device._store.get_json("state_meta")["events"] > 30
    again = Device.open(tmp_path / "dev", KEY, model, signing[1])  # type: ignore[arg-type]
    assert again._history == device._history
    np.testing.assert_array_equal(again._text_features.view, device._text_features.view)
    np.testing.assert_allclose(again.interest(), device.interest(), atol=1e-6)
    torch.testing.assert_close(torch.from_numpy(again.interest()), batch_interest(again, model))


def test_recommendations_exclude_seen_and_explain(device: Device) -> None:
    device.record("bread", timestamp=10)
    device.add_text("tips for my sourdough starter and pizza dough", timestamp=11)
    results = device.recommend(k=5)
    assert len(results) == 5 and "bread" not in [r.item_id for r in results]
    assert [r.score for r in results] == sorted((r.score for r in results), reverse=True)
    assert all(r.because.startswith(("you interacted with", "you wrote")) for r in results)
    everything = device.recommend(k=len(CATALOG), exclude_seen=False)
    assert len(everything) == len(CATALOG) and "bread" in [r.item_id for r in everything]
    assert len(device.recommend(k=len(CATALOG))) == len(CATALOG) - 1


def test_state_survives_reopening(
    tmp_path: Path, device: Device, model: DeviceModel, signing: tuple[object, object]
) -> None:
    device.record("jazz", timestamp=5)
    device.add_text("swing piano chords", timestamp=6)
    before = device.interest()
    again = Device.open(tmp_path / "dev", KEY, model, signing[1])  # type: ignore[arg-type]
    np.testing.assert_array_equal(again.interest(), before)
    assert [r.item_id for r in again.recommend(3)] == [r.item_id for r in device.recommend(3)]


def test_no_raw_text_or_interest_vector_on_disk_in_the_clear(
    tmp_path: Path, device: Device
) -> None:
    secret = "my neighbour's secret garden diary entry"
    device.add_text(secret, timestamp=1)
    device.record("garden", timestamp=2)
    interest = device.interest()
    assert interest is not None
    blobs = b"".join(p.read_bytes() for p in (tmp_path / "dev").rglob("*") if p.is_file())
    for needle in (
        secret.encode(),
        secret.encode("utf-16-le"),
        interest.tobytes(),
        interest.astype(np.float64).tobytes(),
    ):
        assert needle not in blobs


def test_cold_start_gives_diverse_results(device: Device) -> None:
    results = device.recommend(k=4)
    assert len(results) == 4 and all(r.because == "a broad pick for a new profile" for r in results)
    assert len({r.item_id for r in results}) == 4


def test_a_first_text_ends_the_cold_start(device: Device) -> None:
    device.add_text("which telescope should I buy to see saturn's rings?", timestamp=1)
    results = device.recommend(k=2)
    assert device.interest() is not None and len(results) == 2
    assert all(r.because.startswith('you wrote "which telescope') for r in results)


def test_diversity_spreads_the_list(device: Device) -> None:
    device.record("run", timestamp=1)
    device.record("marathon", timestamp=2)

    def spread(items: list[str]) -> float:
        rows = device._vectors[[device._positions[i] for i in items]]
        sims = rows @ rows.T
        return float(sims[np.triu_indices(len(items), 1)].mean())

    plain = [r.item_id for r in device.recommend(k=4)]
    varied = [r.item_id for r in device.recommend(k=4, diversity=0.8)]
    assert spread(varied) < spread(plain)


def test_tampered_bundle_is_refused_and_the_old_one_kept(
    device: Device, model: DeviceModel, signing: tuple[object, object]
) -> None:
    device.record("bike", timestamp=1)
    before = device.recommend(k=3)
    blob = bytearray(bundle_blob(model, signing[0], 2))
    blob[len(blob) // 2] ^= 0xFF
    with pytest.raises(BundleError):
        device.update_bundle(bytes(blob))
    other = generate_signing_key()
    with pytest.raises(BundleError):
        device.update_bundle(bundle_blob(model, other, 3))
    with pytest.raises(BundleError):
        device.update_bundle(bundle_blob(model, signing[0], 1))  # not newer
    assert device.recommend(k=3) == before


def test_newer_bundle_rebuilds_the_interest(
    device: Device, model: DeviceModel, signing: tuple[object, object]
) -> None:
    device.record("stars", timestamp=1)
    device.add_text("planets tonight", timestamp=2)
    before = device.interest()
    device.update_bundle(bundle_blob(model, signing[0], 2, int8=True))
    after = device.interest()
    assert after is not None and not np.array_equal(after, before)
    torch.testing.assert_close(torch.from_numpy(after), batch_interest(device, model))
    assert len(device.recommend(k=3)) == 3


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda d: d.add_text(""), "text is empty"),
        (lambda d: d.add_text("   "), "text is empty"),
        (lambda d: d.add_text("\u200b\u200b \n"), "text is empty"),
        (lambda d: d.add_text("x" * 10_001), "more than the 10,000 allowed"),
        (lambda d: d.add_text(b"caf\xe9"), "text is not valid UTF-8"),
        (lambda d: d.add_text("bad \ud800 surrogate"), "not valid UTF-8"),
        (lambda d: d.add_text("nul\x00"), "NUL character"),
        (lambda d: d.add_text(42), "text must be a string"),
        (lambda d: d.add_text("ok", item="nope"), "unknown item 'nope'"),
        (lambda d: d.record("nope"), "unknown item 'nope'"),
        (lambda d: d.record("jazz", value=float("nan")), "value must be a finite number"),
        (lambda d: d.record("jazz", value=float("inf")), "value must be a finite number"),
        (lambda d: d.record("jazz", event=""), "event must be a non-empty string"),
        (lambda d: d.record("jazz", timestamp=50), "timestamp 50 is before the last event (100)"),
        (lambda d: d.record("jazz", timestamp=-1), "timestamp must be Unix seconds"),
        (lambda d: d.recommend(k=0), "k must be a positive integer"),
        (lambda d: d.recommend(diversity=2.0), "diversity must be a number in [0, 1]"),
        (lambda d: d.recommend(diversity="0.5"), "diversity must be a number in [0, 1]"),
        (lambda d: d.recommend(exclude_seen="no"), "exclude_seen must be True or False"),
        (lambda d: d.record("jazz", value=10**400), "value must be a finite number"),
        (lambda d: d.record("jazz", event="x" * 65), "at most 64 characters"),
        (lambda d: d.record("jazz", event="\ud800"), "event contains characters that are not"),
        (lambda d: d.record("jazz", timestamp=2**80), "an int in 1970-2100"),
        (lambda d: d.add_text("ok", item=["jazz"]), "unknown item ['jazz']"),
    ],
)
def test_bad_input_is_refused_and_changes_nothing(
    device: Device, call: object, message: str
) -> None:
    device.record("blues", timestamp=100)
    generation, history, interest = (
        device._store.generation,
        list(device._history),
        device.interest(),
    )
    with pytest.raises(DeviceInputError) as raised:
        call(device)  # type: ignore[operator]
    assert message in str(raised.value)
    assert device._store.generation == generation and device._history == history
    np.testing.assert_array_equal(device.interest(), interest)


def state_on_disk(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_a_bundle_of_another_model_is_refused_and_changes_nothing(
    tmp_path: Path, device: Device, model: DeviceModel, signing: tuple[object, object]
) -> None:
    private, public = signing
    other = bundle_blob(model, private, 1, dim=16)
    with pytest.raises(BundleModelError, match="the bundle's items are 16-d, this device's model"):
        Device.create(tmp_path / "new", KEY, model, public, other)  # type: ignore[arg-type]
    assert not (tmp_path / "new").exists() or not any((tmp_path / "new").iterdir())
    Device.create(tmp_path / "new", KEY, model, public, bundle_blob(model, private, 1))  # type: ignore[arg-type]
    device.record("jazz", timestamp=5)
    before = state_on_disk(tmp_path / "dev")
    with pytest.raises(BundleModelError, match="16-d"):
        device.update_bundle(bundle_blob(model, private, 2, dim=16))
    assert state_on_disk(tmp_path / "dev") == before
    device.add_text("swing piano", timestamp=6)  # the device works on
    with pytest.raises(DeviceInputError, match="model must be a DeviceModel"):
        Device.create(tmp_path / "third", KEY, None, public, bundle_blob(model, private, 1))  # type: ignore[arg-type]
    with pytest.raises(DeviceInputError, match="public_key must be the server's Ed25519PublicKey"):
        Device.open(tmp_path / "dev", KEY, model, None)  # type: ignore[arg-type]
    assert not (tmp_path / "third").exists()


def test_a_create_that_fails_leaves_nothing_behind(
    tmp_path: Path,
    model: DeviceModel,
    signing: tuple[object, object],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    private, public = signing
    blob = bundle_blob(model, private, 1)

    def fail(self: Device, *args: object) -> None:
        raise MemoryError("no room")

    for step in ("_use_bundle", "_save_state"):  # building the index; saving the first state
        monkeypatch.setattr(Device, step, fail)
        with pytest.raises(MemoryError):
            Device.create(tmp_path / "new", KEY, model, public, blob)  # type: ignore[arg-type]
        assert not (tmp_path / "new").exists()
        monkeypatch.undo()
    Device.create(tmp_path / "new", KEY, model, public, blob).record("jazz", timestamp=1)  # type: ignore[arg-type]


def test_a_bundle_without_an_item_of_the_history_keeps_that_items_last_vector(
    tmp_path: Path, device: Device, model: DeviceModel, signing: tuple[object, object]
) -> None:
    """Catalogs retire items: a newer bundle without one the person clicked is installed, and
    the device keeps the vector it last had for that item (in its encrypted store), so its
    interest, reopening and later bundles go on as before; the item is no longer offered."""
    private, public = signing
    folder = tmp_path / "dev"
    device.record("jazz", timestamp=5)
    device.add_text("swing piano chords", timestamp=6, item="jazz")
    jazz = device._vectors[device._positions["jazz"]].copy()
    device.update_bundle(bundle_blob(model, private, 2, without="jazz"))
    assert "jazz" not in {r.item_id for r in device.recommend(k=11, exclude_seen=False)}
    np.testing.assert_array_equal(device._events.view[0], jazz)
    torch.testing.assert_close(torch.from_numpy(device.interest()), batch_interest(device, model))
    reopened = Device.open(folder, KEY, model, public)  # type: ignore[arg-type]
    np.testing.assert_allclose(reopened.interest(), device.interest(), atol=1e-6)
    reopened.update_bundle(bundle_blob(model, private, 3, without="moon"))  # jazz is back
    back = reopened._vectors[reopened._positions["jazz"]]
    np.testing.assert_array_equal(reopened._events.view[0], back)
    assert reopened._store.get_json("retired_items") == {}


def test_a_bundle_file_without_a_history_item_the_device_kept_no_vector_for_is_named(
    tmp_path: Path, device: Device, model: DeviceModel, signing: tuple[object, object]
) -> None:
    """A newer bundle put in the device's folder by hand (not through ``update_bundle``,
    which keeps the vector) lacks an item the person clicked: opening says which."""
    private, public = signing
    device.record("jazz", timestamp=5)
    (tmp_path / "dev" / "items.bundle").write_bytes(bundle_blob(model, private, 2, without="jazz"))
    with pytest.raises(BundleContentError, match="the bundle lacks item 'jazz' of this device"):
        Device.open(tmp_path / "dev", KEY, model, public)  # type: ignore[arg-type]


def test_a_saved_state_from_other_network_weights_is_replayed_not_reused(
    tmp_path: Path, device: Device, model: DeviceModel, signing: tuple[object, object]
) -> None:
    """The app ships new weights for the user model: the saved interest state came from the
    old ones, so the device rebuilds it from the history (the same shape or not)."""
    public = signing[1]
    device.record("bread", timestamp=1)
    device.add_text("sourdough starter tips", timestamp=2)
    device._save_state()
    torch.manual_seed(7)
    for config in (ModelConfig(hidden_dim=32), ModelConfig(hidden_dim=16)):
        other = DeviceModel(Recommender(config).eval(), model.encoder)
        with torch.no_grad():
            other.network.items.load_state_dict(model.network.items.state_dict())
            other.network.users.project.weight.normal_(std=0.5)
        reopened = Device.open(tmp_path / "dev", KEY, other, public)  # type: ignore[arg-type]
        torch.testing.assert_close(
            torch.from_numpy(reopened.interest()), batch_interest(reopened, other)
        )


def test_a_create_cut_short_leaves_a_folder_that_creates_or_opens(
    tmp_path: Path, model: DeviceModel, signing: tuple[object, object]
) -> None:
    """Killed after writing the bundle (no store yet), the next create takes the folder over;
    killed after creating the store too, the device opens."""
    private, public = signing
    blob, folder = bundle_blob(model, private, 1), tmp_path / "dev"
    folder.mkdir()
    (folder / "items.bundle").write_bytes(blob)
    Device.create(folder, KEY, model, public, blob).record("jazz", timestamp=1)  # type: ignore[arg-type]
    (folder / "store.fedrec").unlink()
    (folder / "store.journal").unlink(missing_ok=True)
    EncryptedStore(folder, KEY, create=True)
    opened = Device.open(folder, KEY, model, public)  # type: ignore[arg-type]
    assert opened.interest() is None and len(opened.recommend(3)) == 3


def test_a_timestamp_far_ahead_of_the_clock_is_refused(device: Device) -> None:
    """One wrong clock must not refuse every correct timestamp after it."""
    ahead = int(time.time()) + 3 * 24 * 3600
    with pytest.raises(DeviceInputError, match=f"timestamp {ahead} is more than a day ahead"):
        device.record("jazz", timestamp=ahead)
    device.record("jazz", timestamp=int(time.time()) + 60)  # a clock a minute behind
    assert len(device._history) == 1


def test_cold_start_works_when_the_catalog_has_no_central_direction(
    tmp_path: Path, model: DeviceModel, signing: tuple[object, object]
) -> None:
    private, public = signing
    vector = np.zeros(model.network.config.item_dim, dtype=np.float32)
    vector[0] = 1.0
    bundle = ItemBundle(1, "test", ["up", "down"], np.stack([vector, -vector]))
    blob = sign_bundle(bundle, private)  # type: ignore[arg-type]
    device = Device.create(tmp_path / "dev", KEY, model, public, blob)  # type: ignore[arg-type]
    assert [r.item_id for r in device.recommend(2)] == ["up", "down"]


def test_a_rolled_back_or_missing_bundle_file_is_refused(
    tmp_path: Path, device: Device, model: DeviceModel, signing: tuple[object, object]
) -> None:
    private, public = signing
    folder = tmp_path / "dev"
    old = (folder / "items.bundle").read_bytes()
    device.record("jazz", timestamp=5)
    device.update_bundle(bundle_blob(model, private, 3))
    (folder / "items.bundle").write_bytes(old)  # version 1 put back
    with pytest.raises(BundleError, match="version 1, older than the version 3 this device"):
        Device.open(folder, KEY, model, public)  # type: ignore[arg-type]
    (folder / "items.bundle").unlink()
    with pytest.raises(StoreError, match=r"items\.bundle is missing"):
        Device.open(folder, KEY, model, public)  # type: ignore[arg-type]


def test_a_bundle_rolled_back_before_any_feedback_is_refused(
    tmp_path: Path, model: DeviceModel, signing: tuple[object, object]
) -> None:
    """The version a device was created with is recorded at once, not at its first save."""
    private, public = signing
    folder = tmp_path / "dev"
    Device.create(folder, KEY, model, public, bundle_blob(model, private, 5))  # type: ignore[arg-type]
    (folder / "items.bundle").write_bytes(bundle_blob(model, private, 3))  # signed, older
    with pytest.raises(BundleError, match="version 3, older than the version 5 this device"):
        Device.open(folder, KEY, model, public)  # type: ignore[arg-type]


def test_a_bundle_naming_another_model_is_refused_in_an_update_and_on_disk(
    tmp_path: Path, device: Device, model: DeviceModel, signing: tuple[object, object]
) -> None:
    """A device keeps the model it was created with: another catalog's bundle, signed by the
    same key and of the same dimension, is refused, as an update or put in the bundle file."""
    private, public = signing
    folder = tmp_path / "dev"
    device.record("jazz", timestamp=5)
    before = state_on_disk(folder)
    other = bundle_blob(model, private, 2, name="another catalog")
    with pytest.raises(BundleModelError, match="bundle is for model 'another catalog'"):
        device.update_bundle(other)
    assert state_on_disk(folder) == before
    (folder / "items.bundle").write_bytes(other)
    with pytest.raises(BundleModelError, match="created with 'test': the file was replaced"):
        Device.open(folder, KEY, model, public)  # type: ignore[arg-type]


def test_a_store_made_before_devices_pinned_the_model_takes_the_next_one_and_pins_it(
    tmp_path: Path, device: Device, model: DeviceModel, signing: tuple[object, object]
) -> None:
    """Before 2026-11-24 the server named each round's bundle with its round, and devices
    recorded no model: such a device takes the next bundle whatever it names, then keeps to
    that model."""
    private, public = signing
    folder = tmp_path / "dev"
    device._store.put_json("state_meta", {"bundle": 1, "events": 0})  # as older devices saved
    older = Device.open(folder, KEY, model, public)  # type: ignore[arg-type]
    older.update_bundle(bundle_blob(model, private, 2, name="fedrec-demo-384d"))
    with pytest.raises(BundleModelError, match="the device uses 'fedrec-demo-384d'"):
        older.update_bundle(bundle_blob(model, private, 3, name="test"))
    reopened = Device.open(folder, KEY, model, public)  # type: ignore[arg-type]
    with pytest.raises(BundleModelError, match="the device uses 'fedrec-demo-384d'"):
        reopened.update_bundle(bundle_blob(model, private, 3, name="test"))


def test_a_signed_bundle_that_cannot_be_ranked_is_refused_and_changes_nothing(
    tmp_path: Path, device: Device, model: DeviceModel, signing: tuple[object, object]
) -> None:
    """Rows that are not unit vectors (a server bug) are refused before the file is written:
    the device keeps ranking with the bundle it had, and opens again."""
    private, public = signing
    device.record("jazz", timestamp=5)
    before = state_on_disk(tmp_path / "dev")
    ranked = device.recommend(3)
    good = verify_bundle(bundle_blob(model, private, 2), public)  # type: ignore[arg-type]
    scaled = ItemBundle(2, "test", good.item_ids, good.dense() * 10)
    with pytest.raises(BundleContentError, match=r"cannot be ranked .*L2-normalised"):
        device.update_bundle(sign_bundle(scaled, private))  # type: ignore[arg-type]
    assert state_on_disk(tmp_path / "dev") == before
    assert device.export()["bundle_version"] == 1 and device.recommend(3) == ranked
    reopened = Device.open(tmp_path / "dev", KEY, model, public)  # type: ignore[arg-type]
    assert reopened.recommend(3) == ranked


def test_a_stale_or_forgotten_device_writes_no_bundle(
    tmp_path: Path, device: Device, model: DeviceModel, signing: tuple[object, object]
) -> None:
    private, public = signing
    folder = tmp_path / "dev"
    stale = Device.open(folder, KEY, model, public)  # type: ignore[arg-type]
    device.record("jazz", timestamp=5)
    before = state_on_disk(folder)
    with pytest.raises(StoreError, match="changed on disk since it was opened"):
        stale.update_bundle(bundle_blob(model, private, 2))
    assert state_on_disk(folder) == before
    device.forget()
    for call in (
        lambda: device.update_bundle(bundle_blob(model, private, 2)),
        lambda: device.recommend(),
        lambda: device.export(),
        lambda: device.interest(),
        lambda: device.record("jazz"),
        lambda: device.add_text("after forgetting"),
    ):
        with pytest.raises(StoreError, match="was forgotten"):
            call()
    assert not folder.exists() or not any(folder.iterdir())


def test_export_then_forget(
    tmp_path: Path, device: Device, model: DeviceModel, signing: tuple[object, object]
) -> None:
    device.add_text("film rangefinder advice", timestamp=1)
    device.record("camera", timestamp=2)
    exported = device.export()
    assert [e["kind"] for e in exported["history"]] == ["text", "item"]
    assert exported["history"][0]["text"] == "film rangefinder advice"
    assert len(exported["interest"]) == 384
    device.forget()
    assert not (tmp_path / "dev").exists()  # its files, then the folder they leave empty
    with pytest.raises(StoreNotFoundError):
        Device.open(tmp_path / "dev", KEY, model, signing[1])  # type: ignore[arg-type]
    assert os.path.exists(tmp_path)


def test_a_failed_write_changes_nothing(device: Device, monkeypatch: pytest.MonkeyPatch) -> None:
    device.record("jazz", timestamp=1)
    history, interest = list(device._history), device.interest()
    features = device._text_features.view.copy()

    def disk_full(records: object) -> None:
        raise OSError("No space left on device")

    monkeypatch.setattr(device._store, "append_many", disk_full)
    with pytest.raises(OSError, match="No space left"):
        device.add_text("swing feel on the ride cymbal", timestamp=2)
    with pytest.raises(OSError, match="No space left"):
        device.record("blues", timestamp=3)
    assert device._history == history
    np.testing.assert_array_equal(device._text_features.view, features)
    np.testing.assert_array_equal(device.interest(), interest)
    assert len(device._events.view) == 1 and not device._seen_mask[device._positions["blues"]]
