"""A user's history as one sequence of events: items touched and texts written, in time order.

Each event points at a row of a feature table that stacks the item features (rows 0..n-1) and the
user-text features (rows n...). At equal timestamps an item event comes before a text event.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedrec.shared.data.dataset import IntArray, Interactions, UserTexts
from fedrec.shared.model.network import ITEM_EVENT, TEXT_EVENT


@dataclass(frozen=True)
class EventSequences:
    """The events of ``num_users`` users, concatenated; user u's are ``ptr[u]:ptr[u+1]``.

    ``rows`` index the feature table; ``items`` is the item of an item event (-1 for texts);
    ``next_items`` is the item of the first item event after each event (-1 where none follows),
    the target the user model learns to predict there.
    """

    ptr: IntArray
    types: IntArray
    rows: IntArray
    items: IntArray
    next_items: IntArray

    @property
    def num_users(self) -> int:
        return len(self.ptr) - 1

    def user(self, u: int) -> slice:
        return slice(int(self.ptr[u]), int(self.ptr[u + 1]))

    def lengths(self) -> IntArray:
        return np.diff(self.ptr)


def build_sequences(
    num_users: int, num_items: int, interactions: Interactions, texts: UserTexts
) -> EventSequences:
    """Merge ``interactions`` and ``texts`` into per-user sequences (text row j is feature row
    ``num_items + j``)."""
    users = np.concatenate([interactions.users, texts.users])
    times = np.concatenate([interactions.timestamps, texts.timestamps])
    types = np.concatenate(
        [
            np.full(len(interactions), ITEM_EVENT, dtype=np.int64),
            np.full(len(texts), TEXT_EVENT, dtype=np.int64),
        ]
    )
    rows = np.concatenate([interactions.items, num_items + np.arange(len(texts), dtype=np.int64)])
    items = np.concatenate([interactions.items, np.full(len(texts), -1, dtype=np.int64)])
    order = np.lexsort((types, times, users))
    users, types, rows, items = users[order], types[order], rows[order], items[order]
    ptr = np.searchsorted(users, np.arange(num_users + 1)).astype(np.int64)
    return EventSequences(ptr, types, rows, items, _next_items(users, items))


def _next_items(users: IntArray, items: IntArray) -> IntArray:
    """For each event, the item of the next item event of the same user (-1 if none)."""
    out = np.full(len(items), -1, dtype=np.int64)
    upcoming, owner = -1, -1
    for i in range(len(items) - 1, -1, -1):
        if users[i] != owner:
            upcoming, owner = -1, int(users[i])
        out[i] = upcoming
        if items[i] >= 0:
            upcoming = int(items[i])
    return out
