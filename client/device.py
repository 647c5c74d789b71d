"""The on-device SDK: what a host app embeds to recommend from a person's text and clicks.

Raw texts, events, their features and the interest state live only in the device's encrypted
store. The item vectors come from a signed bundle published by the server; they are public, so
the bundle lies beside the store as a plain file and is verified again every time it is read.
Each event updates the interest vector with one LSTM step; ``recommend`` ranks the catalog by
cosine similarity, in real time.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedrec.client.store import (
    STORE_FILE,
    EncryptedStore,
    StoreError,
    StoreExistsError,
    array_record,
    forget_store,
    json_record,
)
from fedrec.shared.bundle import (
    BundleContentError,
    BundleModelError,
    BundleRollbackError,
    ItemBundle,
    accept_bundle,
    verify_bundle,
)
from fedrec.shared.data.table import MAX_TEXT_CHARS, MAX_TIMESTAMP, is_blank
from fedrec.shared.encoder.model import TextEncoder
from fedrec.shared.federated.records import arrays_digest
from fedrec.shared.files import write_atomic
from fedrec.shared.model.network import ITEM_EVENT, TEXT_EVENT, Recommender, UserState
from fedrec.shared.ranking import ItemIndex

BUNDLE_FILE = "items.bundle"
#: Store logs: one JSON entry per event; the encoder features of each text, float32.
EVENTS_LOG, TEXT_FEATURES_LOG = "events", "text_features"
#: Journal size at which the device saves its interest state and folds the journal in: an event
#: writes only itself, and opening replays at most this much of the history.
JOURNAL_LIMIT = 64 * 1024
#: The longest event label (``record(event=...)``), such as "click" or "rating".
MAX_EVENT_CHARS = 64
#: How many candidates per wanted result MMR re-ranks when diversity is asked for.
DIVERSITY_POOL = 5
#: How many recent events explanations look at.
EXPLAIN_WINDOW = 200
#: How far ahead of the device's clock an event's timestamp may be, in seconds: clocks drift,
#: but one timestamp years ahead would refuse every correct one after it.
MAX_CLOCK_AHEAD = 24 * 3600
#: The store's record of the vectors of history items no longer in the bundle.
RETIRED_RECORD = "retired_items"


logger = logging.getLogger(__name__)


class DeviceInputError(ValueError):
    """An event or text the device cannot take. Nothing is changed when this is raised."""


@dataclass(frozen=True)
class DeviceModel:
    """What the device runs: the two towers and the frozen text encoder for its own texts."""

    network: Recommender
    encoder: TextEncoder


@dataclass(frozen=True)
class Recommendation:
    """One ranked item, its cosine score, and the history event that contributed most."""

    item_id: str
    score: float
    because: str


class Device:
    """A person's device: private history, interest vector, and local ranking.

    Create one with :meth:`create` (first run) or :meth:`open` (later runs); both take the key
    from the host app's keystore (32 bytes). See README "On-device SDK" for an example.
    """

    # Derived from the bundle (and the history) by _use_bundle:
    _bundle: ItemBundle
    _vectors: npt.NDArray[np.float32]
    _index: ItemIndex
    _positions: dict[str, int]
    _centroid: npt.NDArray[np.float32]
    _events: _Rows  # every history event as an item-space vector, oldest first
    _seen_mask: npt.NDArray[np.bool_]

    def __init__(
        self,
        folder: Path,
        store: EncryptedStore,
        model: DeviceModel,
        public_key: Ed25519PublicKey,
        bundle: ItemBundle,
        index: ItemIndex,
    ) -> None:
        self._folder = folder
        self._forgotten = False
        self._store = store
        self._model = model
        self._public_key = public_key
        self._history: list[dict[str, Any]] = [json.loads(e) for e in store.entries(EVENTS_LOG)]
        self._text_features = _Rows(
            _features_from_entries(store.entries(TEXT_FEATURES_LOG), model.encoder.dim)
        )
        self._retired = _retired_vectors(store.get_json(RETIRED_RECORD))
        self._network_digest = arrays_digest(
            {name: value.numpy() for name, value in model.network.state_dict().items()}
        )
        meta = store.get_json("state_meta")
        # the model of every bundle it takes: the first's, or any until a store created before
        # devices recorded it saves the next one's
        self._model_pin: str | None = bundle.model if meta is None else meta.get("model")
        self._use_bundle(bundle, index)
        self._state = self._restore()

    @classmethod
    def create(
        cls,
        folder: Path | str,
        key: bytes,
        model: DeviceModel,
        public_key: Ed25519PublicKey,
        bundle_blob: bytes,
    ) -> Device:
        """A new device in ``folder``, with the server's first signed item bundle, whose version
        it records so that ``open`` refuses an older file. A failed create leaves nothing
        behind."""
        folder = Path(folder).expanduser()
        _check_parts(model, public_key)
        bundle, index = _checked_bundle(verify_bundle(bundle_blob, public_key), model)
        if (folder / STORE_FILE).exists():
            raise StoreExistsError(f"{folder / STORE_FILE} already exists; open the device")
        created = not folder.exists()
        store = None
        try:
            # the bundle first: a create cut short before the store leaves a folder the next
            # create takes over, and one cut short after it a device that opens
            folder.mkdir(parents=True, exist_ok=True)
            write_atomic(folder / BUNDLE_FILE, bundle_blob)
            store = EncryptedStore(folder, key, create=True)
            device = cls(folder, store, model, public_key, bundle, index)
            device._save_state()
            return device
        except BaseException:
            (folder / BUNDLE_FILE).unlink(missing_ok=True)
            if store is not None:
                forget_store(folder)  # and the folder, if that leaves it empty
            if created:
                with contextlib.suppress(OSError):
                    folder.rmdir()
            raise

    @classmethod
    def open(
        cls, folder: Path | str, key: bytes, model: DeviceModel, public_key: Ed25519PublicKey
    ) -> Device:
        """The device saved in ``folder``; its bundle is verified again, and must be the one it
        last installed or newer (an older file is a rollback)."""
        folder = Path(folder).expanduser()
        _check_parts(model, public_key)
        store = EncryptedStore(folder, key)
        path = folder / BUNDLE_FILE
        if not path.is_file():
            raise StoreError(f"{path} is missing: the device has no items to rank; restore it")
        bundle, index = _checked_bundle(verify_bundle(path.read_bytes(), public_key), model)
        meta = store.get_json("state_meta")
        if meta is not None and meta["bundle"] > bundle.version:
            raise BundleRollbackError(
                f"{path} is version {bundle.version}, older than the version {meta['bundle']} "
                "this device installed: the file was rolled back"
            )
        if meta is not None and meta.get("model", bundle.model) != bundle.model:
            raise BundleModelError(
                f"{path} is a bundle of model {bundle.model!r}, this device was created with "
                f"{meta['model']!r}: the file was replaced"
            )
        return cls(folder, store, model, public_key, bundle, index)

    # -- feedback ----------------------------------------------------------------------------

    def record(
        self,
        item: str,
        event: str = "interaction",
        value: float | None = None,
        timestamp: int | None = None,
    ) -> None:
        """The person interacted with ``item`` (a click, a rating ``value``, ...)."""
        self._check_not_forgotten()
        position = self._positions.get(item) if isinstance(item, str) else None
        if position is None:
            raise DeviceInputError(f"unknown item {item!r}: not in the item bundle")
        if not isinstance(event, str) or not event.strip() or len(event) > MAX_EVENT_CHARS:
            raise DeviceInputError(
                f"event must be a non-empty string of at most {MAX_EVENT_CHARS} characters "
                "such as 'click'"
            )
        if not _is_utf8(event):
            raise DeviceInputError("event contains characters that are not valid UTF-8")
        if value is not None and not _is_finite_number(value):
            raise DeviceInputError(f"value must be a finite number or None, got {value!r}")
        when = self._timestamp(timestamp)
        vector = torch.tensor(self._vectors[position])
        self._advance(
            vector,
            ITEM_EVENT,
            {"t": when, "kind": "item", "item": item, "event": event, "value": value},
        )

    def add_text(
        self, text: str | bytes, timestamp: int | None = None, item: str | None = None
    ) -> None:
        """The person wrote ``text`` (a review, a comment, a search), optionally about ``item``."""
        self._check_not_forgotten()
        text = _checked_text(text)
        if item is not None and (not isinstance(item, str) or item not in self._positions):
            raise DeviceInputError(f"unknown item {item!r}: not in the item bundle")
        when = self._timestamp(timestamp)
        with torch.no_grad(), _one_thread():
            features = self._model.encoder.encode([text])
            vector = self._model.network.items(torch.from_numpy(features))[0]
        record = {"t": when, "kind": "text", "text": text, "item": item}
        self._advance(vector, TEXT_EVENT, record, features)

    def _advance(
        self,
        vector: torch.Tensor,
        kind: int,
        record: dict[str, Any],
        text_features: npt.NDArray[np.float32] | None = None,
    ) -> None:
        """Take one event: an LSTM step, then one atomic append of the event (and the text's
        features) to the store; memory changes only after it."""
        with torch.no_grad(), _one_thread():
            state = self._model.network.users.step(
                self._state, vector[None, :], torch.tensor([kind])
            )
        entries = {EVENTS_LOG: [json_record(EVENTS_LOG, record)]}
        if text_features is not None:
            entries[TEXT_FEATURES_LOG] = [text_features.astype(np.float32).tobytes()]
        self._store.append_many(entries)
        self._history.append(record)
        self._state = state
        if text_features is not None:
            self._text_features.append(text_features)
        self._events.append(vector.numpy()[None, :])
        if record["kind"] == "item":
            self._seen_mask[self._positions[record["item"]]] = True
        if self._store.journal_bytes > JOURNAL_LIMIT:
            try:
                self._save_state()
            except (OSError, StoreError) as error:  # the event itself is stored already
                logger.warning("could not save the interest state (%s); will retry", error)

    def _timestamp(self, timestamp: int | None) -> int:
        last = int(self._history[-1]["t"]) if self._history else 0
        if timestamp is None:
            return max(int(time.time()), last)
        if (
            isinstance(timestamp, bool)
            or not isinstance(timestamp, int)
            or not 0 <= timestamp <= MAX_TIMESTAMP
        ):
            raise DeviceInputError(
                f"timestamp must be Unix seconds (an int in 1970-2100), got {timestamp!r}"
            )
        if timestamp < last:
            raise DeviceInputError(
                f"timestamp {timestamp} is before the last event ({last}): events arrive in order"
            )
        if timestamp > time.time() + MAX_CLOCK_AHEAD:
            raise DeviceInputError(
                f"timestamp {timestamp} is more than a day ahead of this device's clock "
                f"({int(time.time())})"
            )
        return timestamp

    # -- ranking -----------------------------------------------------------------------------

    def interest(self) -> npt.NDArray[np.float32] | None:
        """The current interest vector (it never leaves the device), or None before any event."""
        self._check_not_forgotten()
        if not self._history:
            return None
        with torch.no_grad():
            return self._model.network.users.interest(self._state)[0].numpy()

    def recommend(
        self, k: int = 10, *, exclude_seen: bool = True, diversity: float = 0.0
    ) -> list[Recommendation]:
        """The ``k`` best items by cosine similarity to the interest vector.

        ``diversity`` in [0, 1] re-ranks with maximal marginal relevance (0: pure relevance).
        With no history yet (cold start), items central to the catalog, spread out by MMR.
        """
        self._check_not_forgotten()
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise DeviceInputError(f"k must be a positive integer, got {k!r}")
        if (
            isinstance(diversity, bool)
            or not isinstance(diversity, int | float)
            or not 0.0 <= diversity <= 1.0
        ):
            raise DeviceInputError(f"diversity must be a number in [0, 1], got {diversity!r}")
        if not isinstance(exclude_seen, bool):
            raise DeviceInputError(f"exclude_seen must be True or False, got {exclude_seen!r}")
        query = self.interest()
        cold = query is None
        if query is None:
            query = self._centroid
            diversity = max(diversity, 0.5)
        exclude = self._seen_mask if exclude_seen else None
        pool = k * DIVERSITY_POOL if diversity > 0 else k
        items, scores = self._index.search(query, pool, exclude=exclude)
        if diversity > 0:
            chosen = _mmr(self._vectors[items], scores, k, diversity)
            items, scores = items[chosen], scores[chosen]
        items, scores = items[:k], scores[:k]
        reasons = ["a broad pick for a new profile"] * len(items) if cold else self._explain(items)
        return [
            Recommendation(self._bundle.item_ids[i], float(s), reason)
            for i, s, reason in zip(items, scores, reasons, strict=True)
        ]

    def _explain(self, items: npt.NDArray[np.int64]) -> list[str]:
        """For each item, the recent history event whose vector is closest to the item's: the
        one that contributed most to its score."""
        events = self._history[-EXPLAIN_WINDOW:]
        recent = self._events.view[-EXPLAIN_WINDOW:]
        closest = np.argmax(recent @ self._vectors[items].T, axis=0)
        reasons = []
        for row in closest:
            event = events[int(row)]
            if event["kind"] == "item":
                reasons.append(f"you interacted with {event['item']}")
            else:
                text = event["text"] if len(event["text"]) <= 60 else event["text"][:57] + "..."
                reasons.append(f'you wrote "{text}"')
        return reasons

    def _event_vectors(self) -> npt.NDArray[np.float32]:
        """Every history event as an item-space vector, oldest first."""
        if not self._history:
            return np.zeros((0, self._vectors.shape[1]), dtype=np.float32)
        with torch.no_grad():
            texts = self._model.network.items(torch.from_numpy(self._text_features.view)).numpy()
        vectors, text_row = [], 0
        for event in self._history:
            if event["kind"] == "item":
                vectors.append(self._item_vector(event["item"]))
            else:
                vectors.append(texts[text_row])
                text_row += 1
        return np.stack(vectors)

    # -- bundles, export, forget -------------------------------------------------------------

    def update_bundle(self, blob: bytes) -> None:
        """Take a newer signed bundle from the server. A bundle that fails its signature or
        checksum, is not newer, is of another model than the one the device was created with,
        or cannot be ranked raises, and the device keeps the one it had.
        If saving the interest state then fails, the error is raised with the new bundle
        installed, and the next ``open`` rebuilds the state from the history."""
        self._check_not_forgotten()
        accepted = accept_bundle(self._bundle, blob, self._public_key, model=self._model_pin)
        bundle, index = _checked_bundle(accepted, self._model)
        offered = set(bundle.item_ids)
        retired = {  # clicked items the new bundle lacks keep the last vector the device had
            e["item"]: self._item_vector(e["item"])
            for e in self._history
            if e["kind"] == "item" and e["item"] not in offered
        }
        self._store.check_writable()  # before the bundle file: a stale or forgotten device
        if retired or self._retired:
            vectors = {item: vector.tolist() for item, vector in retired.items()}
            self._store.put_json(RETIRED_RECORD, vectors)
            self._retired = _retired_vectors(vectors)
        write_atomic(self._folder / BUNDLE_FILE, blob)
        self._use_bundle(bundle, index)
        self._model_pin = bundle.model
        self._state = self._replay(self._model.network.users.start(), 0)
        self._save_state()

    def export(self) -> dict[str, Any]:
        """Everything this device holds about the person, as JSON-ready data."""
        self._check_not_forgotten()
        interest = self.interest()
        return {
            "history": [dict(e) for e in self._history],
            "interest": None if interest is None else interest.tolist(),
            "bundle_version": self._bundle.version,
        }

    def forget(self) -> None:
        """Delete all of this person's local data (and the bundle). The device is unusable after."""
        (self._folder / BUNDLE_FILE).unlink(missing_ok=True)
        self._store.forget()  # the store's files, and the folder if that leaves it empty
        self._history = []
        self._forgotten = True

    def _check_not_forgotten(self) -> None:
        if self._forgotten:
            raise StoreError(f"the device in {self._folder} was forgotten: create it again")

    # -- internals ---------------------------------------------------------------------------

    def _use_bundle(self, bundle: ItemBundle, index: ItemIndex) -> None:
        """Rank with ``bundle`` (checked by ``_checked_bundle``, which built ``index``)."""
        vectors = np.ascontiguousarray(bundle.dense(), dtype=np.float32)
        centroid = vectors.mean(axis=0)
        self._bundle, self._vectors, self._index = bundle, vectors, index
        self._positions = {item: i for i, item in enumerate(bundle.item_ids)}
        norm = float(np.linalg.norm(centroid))
        if norm < 1e-6:  # items spread evenly: no direction is central, start from the first
            centroid, norm = vectors[0], float(np.linalg.norm(vectors[0]))
        self._centroid = centroid / norm
        self._events = _Rows(self._event_vectors())
        self._seen_mask = np.zeros(len(bundle.item_ids), dtype=bool)
        for event in self._history:
            if event["kind"] == "item" and event["item"] in self._positions:
                self._seen_mask[self._positions[event["item"]]] = True

    def _item_vector(self, item: str) -> npt.NDArray[np.float32]:
        """The vector of history item ``item``: the bundle's, or the last the device had of
        an item the bundle no longer offers; a BundleContentError when it has neither."""
        position = self._positions.get(item)
        if position is not None:
            return np.asarray(self._vectors[position], dtype=np.float32)
        if item in self._retired:
            return self._retired[item]
        raise BundleContentError(
            f"the bundle lacks item {item!r} of this device's history, and the device kept no "
            "vector for it: install the bundle with update_bundle, which keeps one"
        )

    def _save_state(self) -> None:
        """Save the interest state with the number of events it covers (folds the journal in)."""
        meta = {
            "bundle": self._bundle.version,
            "model": self._bundle.model,
            "events": len(self._history),
            "network": self._network_digest,
        }
        self._store.put_many(
            {
                "state": array_record("state", _state_to_array(self._state)),
                "state_meta": json_record("state_meta", meta),
            }
        )

    def _restore(self) -> UserState:
        """The saved interest state, advanced over the events after it; the whole history
        replayed when it was saved under another bundle or by another network (its weights'
        digest)."""
        users = self._model.network.users
        saved, meta = self._store.get_array("state"), self._store.get_json("state_meta")
        if (
            saved is not None
            and meta is not None
            and meta["bundle"] == self._bundle.version
            and meta.get("network") == self._network_digest
            and meta["events"] <= len(self._history)
        ):
            return self._replay(_state_from_array(saved, self._model.network), meta["events"])
        return self._replay(users.start(), 0)

    def _replay(self, state: UserState, start: int) -> UserState:
        """``state`` advanced one LSTM step per history event from ``start`` on."""
        users = self._model.network.users
        types = torch.tensor(
            [ITEM_EVENT if e["kind"] == "item" else TEXT_EVENT for e in self._history]
        )
        with torch.no_grad(), _one_thread():
            for t in range(start, len(self._history)):
                vector = torch.from_numpy(self._events.view[t : t + 1])
                state = users.step(state, vector, types[t : t + 1])
        return state


@contextmanager
def _one_thread() -> Iterator[None]:
    """Run a tiny torch op on one thread: for a single LSTM step, waking a second thread costs
    100x the step itself on a busy 2-core machine (docs/benchmarks.md). Restores the setting."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _check_parts(model: DeviceModel, public_key: Ed25519PublicKey) -> None:
    if not isinstance(model, DeviceModel):
        raise DeviceInputError(f"model must be a DeviceModel, got {type(model).__name__}")
    if not isinstance(public_key, Ed25519PublicKey):
        raise DeviceInputError(
            f"public_key must be the server's Ed25519PublicKey, got {type(public_key).__name__}"
        )


def _checked_bundle(bundle: ItemBundle, model: DeviceModel) -> tuple[ItemBundle, ItemIndex]:
    """``bundle``, whose item vectors must have the dimension the device's model makes and be
    unit vectors, and the index that ranks them; checked before anything is written."""
    dim, expected = bundle.embeddings.shape[1], model.network.config.item_dim
    if dim != expected:
        raise BundleModelError(
            f"the bundle's items are {dim}-d, this device's model makes {expected}-d vectors: "
            "not installed"
        )
    try:
        index = ItemIndex(bundle.embeddings)
    except ValueError as error:
        raise BundleContentError(
            f"the bundle's item vectors cannot be ranked ({error}): not installed"
        ) from None
    return bundle, index


def _is_finite_number(value: object) -> bool:
    """An int or float (not a bool) that a float holds finitely."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:  # an int beyond a float's range
        return False


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _checked_text(text: str | bytes) -> str:
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as err:
            raise DeviceInputError(f"text is not valid UTF-8 (byte {err.start})") from None
    if not isinstance(text, str):
        raise DeviceInputError(f"text must be a string, got {type(text).__name__}")
    if not _is_utf8(text):
        raise DeviceInputError("text contains characters that are not valid UTF-8")
    text = unicodedata.normalize("NFC", text)
    if is_blank(text):
        raise DeviceInputError("text is empty")
    if len(text) > MAX_TEXT_CHARS:
        raise DeviceInputError(
            f"text has {len(text):,} characters, more than the {MAX_TEXT_CHARS:,} allowed"
        )
    if "\x00" in text:
        raise DeviceInputError("text contains a NUL character")
    return text


def _mmr(
    vectors: npt.NDArray[np.float32], scores: npt.NDArray[np.float32], k: int, diversity: float
) -> list[int]:
    """Maximal marginal relevance: greedily pick the item with the best
    ``(1 - diversity) * relevance - diversity * (max similarity to those already picked)``."""
    chosen: list[int] = []
    closest = np.full(len(scores), -np.inf, dtype=np.float32)
    for _ in range(min(k, len(scores))):
        penalty = np.where(np.isfinite(closest), closest, 0.0)
        value = (1 - diversity) * scores - diversity * penalty
        value[chosen] = -np.inf
        best = int(np.argmax(value))
        chosen.append(best)
        closest = np.maximum(closest, vectors @ vectors[best])
    return chosen


def _features_from_entries(entries: list[bytes], dim: int) -> npt.NDArray[np.float32]:
    """The text-features log as a ``(texts, dim)`` matrix."""
    if any(len(entry) != 4 * dim for entry in entries):
        raise ValueError(f"stored text features are not {dim}-d float32: another encoder's store?")
    flat = np.frombuffer(b"".join(entries), dtype=np.float32)
    return flat.reshape(len(entries), dim).copy()


def _state_to_array(state: UserState) -> npt.NDArray[np.float32]:
    parts = [state.hidden[0, 0], state.cell[0, 0], state.recent[0].flatten()]
    return torch.cat([*parts, state.inputs[0].flatten(), state.events]).numpy()


def _state_from_array(saved: npt.NDArray[Any], network: Recommender) -> UserState:
    h, w, d = network.config.hidden_dim, network.config.pool_window, network.config.item_dim
    size = (2 + w) * h + w * d + 1
    if saved.shape != (size,):
        raise ValueError(f"saved interest state has shape {saved.shape}, not ({size},)")
    values = torch.tensor(saved, dtype=torch.float32)
    return UserState(
        values[:h].reshape(1, 1, h),
        values[h : 2 * h].reshape(1, 1, h),
        values[2 * h : (2 + w) * h].reshape(1, w, h),
        values[(2 + w) * h : -1].reshape(1, w, d),
        values[-1:],
    )


class _Rows:
    """A float32 matrix that grows a row block at a time, in amortised constant time (a
    history grows by one event at a time; copying it whole at each would cost its length)."""

    def __init__(self, rows: npt.NDArray[np.float32]) -> None:
        self._data = np.array(rows, dtype=np.float32, copy=True)
        self._count = len(rows)

    @property
    def view(self) -> npt.NDArray[np.float32]:
        """The rows so far (a view: valid until the next append)."""
        return self._data[: self._count]

    def append(self, rows: npt.NDArray[np.float32]) -> None:
        needed = self._count + len(rows)
        if needed > len(self._data):
            capacity = max(needed, 2 * len(self._data), 16)
            grown = np.empty((capacity, self._data.shape[1]), dtype=np.float32)
            grown[: self._count] = self.view
            self._data = grown
        self._data[self._count : needed] = rows
        self._count = needed


def _retired_vectors(saved: Any) -> dict[str, npt.NDArray[np.float32]]:
    """The stored vectors of history items the bundle no longer offers, by item id."""
    if saved is None:
        return {}
    if not isinstance(saved, dict):
        raise StoreError(f"{RETIRED_RECORD} is not a JSON object of item vectors")
    return {item: np.asarray(vector, dtype=np.float32) for item, vector in saved.items()}
