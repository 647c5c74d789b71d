"""Partitioning a data set into devices: one device per user, holding only that user's data."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedrec.shared.data.dataset import Dataset, Interactions, UserTexts


@dataclass(frozen=True)
class PartitionConfig:
    """Which users become devices: all, the first ``max_devices``, or a random sample of them."""

    max_devices: int | None = None
    sample: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_devices is not None and self.max_devices < 1:
            raise ValueError(f"max_devices must be at least 1, got {self.max_devices}")


@dataclass(frozen=True)
class DeviceData:
    """Everything one device holds: its user's interactions and texts, oldest first."""

    user: int
    user_id: str
    interactions: Interactions
    texts: UserTexts


def partition_by_user(dataset: Dataset, config: PartitionConfig | None = None) -> list[DeviceData]:
    """One ``DeviceData`` per chosen user, in the order of ``dataset.user_ids``."""
    config = config or PartitionConfig()
    users = np.arange(dataset.num_users)
    if config.max_devices is not None and config.max_devices < len(users):
        if config.sample:
            rng = np.random.default_rng(config.seed)
            users = np.sort(rng.choice(users, size=config.max_devices, replace=False))
        else:
            users = users[: config.max_devices]
    rows, texts = dataset.interactions, dataset.texts
    row_order = np.lexsort((rows.items, rows.timestamps, rows.users))
    text_order = np.lexsort((texts.timestamps, texts.users))
    row_bounds = np.searchsorted(rows.users[row_order], [users, users + 1])
    text_bounds = np.searchsorted(texts.users[text_order], [users, users + 1])
    return [
        DeviceData(
            user=int(user),
            user_id=dataset.user_ids[user],
            interactions=rows.select(row_order[row_bounds[0, i] : row_bounds[1, i]]),
            texts=texts.select(text_order[text_bounds[0, i] : text_bounds[1, i]]),
        )
        for i, user in enumerate(users)
    ]
