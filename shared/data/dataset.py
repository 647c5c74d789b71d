"""The in-memory data set: an item catalog, interactions and user texts, stored column-wise.

Ids are strings as they appear on disk; rows refer to items and users by their position in
``Dataset.item_ids`` / ``Dataset.user_ids`` so that evaluation can work on integer arrays.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class LoadSummary:
    """What a loader read, and every row it left out, counted by reason."""

    rows_read: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)

    def lines(self) -> list[str]:
        out = [f"read {n:,} rows from {name}" for name, n in self.rows_read.items()]
        out += [f"left out {n:,} rows: {reason}" for reason, n in self.dropped.items() if n]
        return out


@dataclass(frozen=True)
class Interactions:
    """One row per event: ``users[i]`` touched ``items[i]`` at ``timestamps[i]`` (Unix seconds).

    ``values[i]`` is the optional explicit value (a rating, a dwell time); NaN where absent.
    """

    users: IntArray
    items: IntArray
    timestamps: IntArray
    values: FloatArray

    def __post_init__(self) -> None:
        n = len(self.users)
        if not (len(self.items) == len(self.timestamps) == len(self.values) == n):
            raise ValueError("interaction columns have different lengths")

    def __len__(self) -> int:
        return len(self.users)

    def select(self, mask: npt.NDArray[np.bool_] | IntArray) -> Interactions:
        """The rows picked by a boolean mask or an index array."""
        return Interactions(
            self.users[mask], self.items[mask], self.timestamps[mask], self.values[mask]
        )


@dataclass(frozen=True)
class UserTexts:
    """Text a user wrote (review, comment, search query, tag), optionally about an item.

    ``items[i]`` is -1 where the text is about no item in particular.
    """

    users: IntArray
    timestamps: IntArray
    texts: list[str]
    items: IntArray

    def __post_init__(self) -> None:
        n = len(self.users)
        if not (len(self.timestamps) == len(self.texts) == len(self.items) == n):
            raise ValueError("user-text columns have different lengths")

    def __len__(self) -> int:
        return len(self.users)

    def select(self, mask: npt.NDArray[np.bool_] | IntArray) -> UserTexts:
        """The rows picked by a boolean mask or an index array."""
        index = np.arange(len(self.users))[mask]
        return UserTexts(
            self.users[index],
            self.timestamps[index],
            [self.texts[i] for i in index],
            self.items[index],
        )

    @staticmethod
    def empty() -> UserTexts:
        none = np.zeros(0, dtype=np.int64)
        return UserTexts(none, none.copy(), [], none.copy())


@dataclass(frozen=True)
class Dataset:
    """A catalog, its users' interactions and their texts.

    ``item_texts[j]`` is the public text of item ``item_ids[j]`` used to embed it;
    ``item_fields[j]`` holds its optional extra fields (for example ``genres``).
    """

    name: str
    item_ids: list[str]
    item_texts: list[str]
    item_fields: list[dict[str, str]]
    user_ids: list[str]
    interactions: Interactions
    texts: UserTexts
    summary: LoadSummary = field(default_factory=LoadSummary)

    def __post_init__(self) -> None:
        if not (len(self.item_ids) == len(self.item_texts) == len(self.item_fields)):
            raise ValueError("item columns have different lengths")

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    @property
    def num_users(self) -> int:
        return len(self.user_ids)

    def describe(self) -> str:
        return (
            f"{self.name}: {self.num_users:,} users, {self.num_items:,} items, "
            f"{len(self.interactions):,} interactions, {len(self.texts):,} user texts"
        )
