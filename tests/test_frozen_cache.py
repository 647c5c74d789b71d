"""The frozen weights are sent to a device once: it keeps them under their digest, loads them
when a request names the digest alone, and never loads a copy that is not the one named."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import cast

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.app.error import Error
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from flwr.supercore.task_identity import TaskIdentity

from fedrec.client.app import evaluate_device, train_device
from fedrec.client.frozen_cache import FROZEN_FILE, FrozenCache
from fedrec.server.strategy import FrozenPartsStrategy, WrappedStrategy, array_record
from fedrec.shared.federated.local import LocalConfig
from fedrec.shared.federated.records import FROZEN_DIGEST_KEY, FROZEN_RECORD, arrays_digest
from fedrec.shared.federated.settings import FederationSettings
from fedrec.shared.model.network import Recommender, split_state
from fedrec.simulations.keys import ensure_secret
from fedrec.simulations.world import federation_world

NO_GRID = cast(Grid, None)
ARRAYS = {"b": np.arange(3, dtype=np.float32), "a": np.ones((2, 2), np.float32)}


def test_the_digest_names_every_name_dtype_shape_and_value() -> None:
    digest = arrays_digest(ARRAYS)
    assert digest == arrays_digest(dict(reversed(ARRAYS.items())))  # not the order
    assert len(digest) == 64
    for other in (
        {**ARRAYS, "b": np.array([0, 1, 2.5], np.float32)},
        {**ARRAYS, "b": ARRAYS["b"].astype(np.float64)},
        {**ARRAYS, "a": ARRAYS["a"].reshape(4)},
        {"c": ARRAYS["b"], "a": ARRAYS["a"]},
        {"a": ARRAYS["a"]},
    ):
        assert arrays_digest(other) != digest


def test_the_cache_loads_only_the_copy_with_the_digest_named(tmp_path: Path) -> None:
    cache = FrozenCache(tmp_path / "device")
    digest = arrays_digest(ARRAYS)
    assert cache.load(digest) is None  # nothing kept yet
    cache.save(ARRAYS)
    kept = cache.load(digest)
    assert kept is not None and kept.keys() == ARRAYS.keys()
    for name, value in ARRAYS.items():
        np.testing.assert_array_equal(kept[name], value)
    assert cache.load(arrays_digest({"a": ARRAYS["a"]})) is None  # other weights
    raw = bytearray(cache.file.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    cache.file.write_bytes(bytes(raw))
    assert cache.load(digest) is None  # damaged: unreadable, or other values
    cache.file.write_bytes(b"not an npz")
    assert cache.load(digest) is None
    with cache.file.open("wb") as lone:  # a .npy array where the .npz was
        np.save(lone, ARRAYS["a"])
    assert cache.load(digest) is None
    cache.save(ARRAYS)
    raw = bytearray(cache.file.read_bytes())
    directory = raw.rindex(b"PK\x01\x02")  # an entry of the zip's central directory
    raw[directory + 10 : directory + 12] = (99).to_bytes(2, "little")  # a method zip lacks
    cache.file.write_bytes(bytes(raw))
    assert cache.load(digest) is None


@pytest.fixture
def device(tmp_path: Path) -> tuple[FederationSettings, dict[str, ArrayRecord]]:
    settings = FederationSettings.for_data(
        "demo",
        devices=5,
        out=str(tmp_path),
        evaluate_outside_dp=True,
        local=LocalConfig(epochs=1, max_examples=16, trained="users.recency"),
    )
    ensure_secret(tmp_path)
    trained, frozen = split_state(Recommender(settings.model), "users.recency")
    return settings, {"arrays": ArrayRecord(trained), FROZEN_RECORD: ArrayRecord(frozen)}


def _request(records: dict[str, ArrayRecord], digest: str | None) -> RecordDict:
    config = {"server-round": 1, **({FROZEN_DIGEST_KEY: digest} if digest else {})}
    return RecordDict({**records, "config": ConfigRecord(config)})


def test_a_device_keeps_the_frozen_weights_and_trains_from_its_copy(
    device: tuple[FederationSettings, dict[str, ArrayRecord]],
) -> None:
    settings, records = device
    frozen = {name: a.numpy() for name, a in records[FROZEN_RECORD].items()}
    digest = arrays_digest(frozen)
    alone = {"arrays": records["arrays"]}
    with pytest.raises(ValueError, match="holds none with digest"):
        train_device(settings, 0, _request(alone, digest))
    with pytest.raises(ValueError, match="not those their digest names"):
        train_device(settings, 0, _request(records, arrays_digest({"a": ARRAYS["a"]})))
    world = federation_world(settings)
    folder = Path(settings.out) / "devices" / world.split.dataset.user_ids[world.user_of(0)]
    assert not (folder / FROZEN_FILE).exists()  # refused requests keep nothing
    train_device(settings, 0, _request(records, None))  # no digest: nothing to keep by
    assert not (folder / FROZEN_FILE).exists()
    sent = train_device(settings, 0, _request(records, digest))
    assert (folder / FROZEN_FILE).is_file()
    kept = train_device(settings, 0, _request(alone, digest))
    assert set(kept.array_records["arrays"]) == set(sent.array_records["arrays"])
    assert kept.metric_records["metrics"]["num-examples"] > 0
    with pytest.raises(ValueError, match="holds none with digest"):  # another device
        train_device(settings, 1, _request(alone, digest))
    evaluated = evaluate_device(settings, 0, _request(alone, digest))
    assert 0 <= evaluated.metric_records["metrics"]["hr@10"] <= 1


class _Fixed(WrappedStrategy):
    """Sends ``arrays`` to nodes 1, 2 and 3 with one shared record, as Flower's strategies do."""

    def __init__(self) -> None:
        super().__init__(inner=cast(Strategy, None))

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> list[Message]:
        content = RecordDict({"arrays": arrays, "config": ConfigRecord({"server-round": 1})})
        return [
            Message(content=content, dst_node_id=node, message_type="train") for node in (1, 2, 3)
        ]

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        return None, None


def test_the_server_sends_the_frozen_weights_until_a_device_answered_a_request_with_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("_task_id", "_run_id", "_node_id"):
        monkeypatch.setattr(TaskIdentity, name, 1)
    strategy = FrozenPartsStrategy(_Fixed(), array_record(ARRAYS))
    weights = array_record({"w": np.zeros(2, np.float32)})

    def carried(requests: list[Message]) -> dict[int, bool]:
        for request in requests:
            assert request.content.config_records["config"][FROZEN_DIGEST_KEY] == strategy.digest
            assert request.content.config_records["config"]["server-round"] == 1
        return {m.metadata.dst_node_id: FROZEN_RECORD in m.content.array_records for m in requests}

    first = list(strategy.configure_train(1, weights, ConfigRecord(), NO_GRID))
    assert carried(first) == {1: True, 2: True, 3: True}
    ok = Message(content=RecordDict(), reply_to=first[0])
    failed = Message(error=Error(code=0, reason="offline"), reply_to=first[1])
    strategy.aggregate_train(1, [ok, failed])  # node 3 never answered
    second = list(strategy.configure_train(2, weights, ConfigRecord(), NO_GRID))
    assert carried(second) == {1: False, 2: True, 3: True}
    strategy.aggregate_train(2, [Message(error=Error(code=0, reason="lost"), reply_to=second[0])])
    third = list(strategy.configure_train(3, weights, ConfigRecord(), NO_GRID))
    assert carried(third) == {1: True, 2: True, 3: True}
