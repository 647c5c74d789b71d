"""One device per user, holding that user's data and nothing else."""

from __future__ import annotations

import numpy as np
import pytest

from fedrec.shared.data.dataset import Dataset, Interactions, UserTexts
from fedrec.shared.data.partition import PartitionConfig, partition_by_user


def toy() -> Dataset:
    users = np.array([1, 0, 1, 2, 0], dtype=np.int64)
    return Dataset(
        name="toy",
        item_ids=["a", "b", "c"],
        item_texts=["A", "B", "C"],
        item_fields=[{}, {}, {}],
        user_ids=["x", "y", "z"],
        interactions=Interactions(
            users,
            np.array([0, 1, 2, 0, 2], dtype=np.int64),
            np.array([5, 3, 1, 2, 1], dtype=np.int64),
            np.full(5, np.nan),
        ),
        texts=UserTexts(
            np.array([2, 0], dtype=np.int64),
            np.array([7, 8], dtype=np.int64),
            ["z wrote this", "x wrote this"],
            np.array([-1, 1], dtype=np.int64),
        ),
    )


def test_each_device_holds_only_its_users_data_in_time_order() -> None:
    devices = partition_by_user(toy())
    assert [d.user_id for d in devices] == ["x", "y", "z"]
    x, y, z = devices
    assert x.interactions.items.tolist() == [2, 1] and x.interactions.timestamps.tolist() == [1, 3]
    assert y.interactions.items.tolist() == [2, 0]
    assert z.interactions.items.tolist() == [0] and z.texts.texts == ["z wrote this"]
    assert x.texts.texts == ["x wrote this"] and y.texts.texts == []
    assert all((d.interactions.users == d.user).all() for d in devices)


def test_cap_and_sample() -> None:
    assert [d.user_id for d in partition_by_user(toy(), PartitionConfig(max_devices=2))] == [
        "x",
        "y",
    ]
    sampled = partition_by_user(toy(), PartitionConfig(max_devices=2, sample=True, seed=1))
    assert len(sampled) == 2
    again = partition_by_user(toy(), PartitionConfig(max_devices=2, sample=True, seed=1))
    assert [d.user for d in sampled] == [d.user for d in again]
    assert len(partition_by_user(toy(), PartitionConfig(max_devices=10))) == 3


def test_bad_cap() -> None:
    with pytest.raises(ValueError, match="max_devices must be at least 1, got 0"):
        PartitionConfig(max_devices=0)
