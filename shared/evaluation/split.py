"""Temporal leave-last-out split (the protocol in docs/evaluation.md).

Each user's interactions are ordered by (timestamp, catalog position); only the first interaction
with an item counts (a repeat is re-consumption, not a new item to find). The last distinct item
is the test target and the second-last the validation target; the rest is training. Models are
fitted on training + validation of all users and scored on the test targets. Candidates are the
items with at least one interaction; a user's training and validation items are excluded.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from fedrec.shared.data.dataset import Dataset, IntArray, Interactions, UserTexts

BoolArray = npt.NDArray[np.bool_]

#: A user needs a training item, a validation item and a test item to be evaluated.
MIN_DISTINCT_ITEMS = 3


@dataclass(frozen=True)
class Split:
    """The evaluation split of a data set.

    ``fit`` holds every interaction except the evaluated users' test ones, in time order per
    user. ``users[i]`` is evaluated on ``test_items[i]``, first touched at ``test_times[i]``;
    ``history_items[history_ptr[i]:history_ptr[i+1]]`` are that user's distinct train +
    validation items in time order. A model may use only the texts a user wrote before
    ``test_times[i]`` (``texts_before_test``): a later text may be about the test item.
    """

    dataset: Dataset
    fit: Interactions
    users: IntArray
    test_items: IntArray
    test_times: IntArray
    validation_items: IntArray
    history_ptr: IntArray
    history_items: IntArray
    candidates: BoolArray
    repeats_ignored: int
    users_too_short: int

    @property
    def num_items(self) -> int:
        return self.dataset.num_items

    def history(self, position: int) -> IntArray:
        """Distinct train + validation items of the ``position``-th evaluated user, oldest first."""
        return self.history_items[self.history_ptr[position] : self.history_ptr[position + 1]]

    def texts_before_test(self) -> UserTexts:
        """The user texts a model may learn from: every text of a user who is not evaluated,
        and an evaluated user's texts written strictly before their test interaction."""
        texts = self.dataset.texts
        cutoff = np.full(self.dataset.num_users, np.iinfo(np.int64).max, dtype=np.int64)
        cutoff[self.users] = self.test_times
        return texts.select(texts.timestamps < cutoff[texts.users])

    def describe(self) -> str:
        return (
            f"temporal leave-last-out: {len(self.users):,} users evaluated over "
            f"{int(self.candidates.sum()):,} candidate items; {self.users_too_short:,} users "
            f"with fewer than {MIN_DISTINCT_ITEMS} distinct items not evaluated; "
            f"{self.repeats_ignored:,} repeat interactions not counted as new items"
        )


def temporal_split(dataset: Dataset) -> Split:
    """Split ``dataset`` by time, per user (see the module docstring)."""
    rows = dataset.interactions
    if not len(rows):
        raise ValueError(f"{dataset.name} has no interactions to evaluate on")
    order = np.lexsort((rows.items, rows.timestamps, rows.users))
    users, items, times = rows.users[order], rows.items[order], rows.timestamps[order]

    pair = users * dataset.num_items + items
    _, first = np.unique(pair, return_index=True)
    first = np.sort(first)
    distinct_users, distinct_items = users[first], items[first]

    starts = np.flatnonzero(np.r_[True, distinct_users[1:] != distinct_users[:-1]])
    ends = np.r_[starts[1:], len(distinct_users)]
    long_enough = ends - starts >= MIN_DISTINCT_ITEMS
    is_test_pair = np.zeros(len(first), dtype=bool)
    is_test_pair[(ends - 1)[long_enough]] = True
    in_history = np.repeat(long_enough, ends - starts) & ~is_test_pair
    starts, ends = starts[long_enough], ends[long_enough]
    if not len(starts):
        raise ValueError(
            f"{dataset.name} has no user with {MIN_DISTINCT_ITEMS} or more distinct items: "
            "nobody to evaluate (each needs a history, a validation and a test item)"
        )

    fit = rows.select(order[~np.isin(pair, pair[first][is_test_pair])])
    history_ptr = np.r_[0, np.cumsum(ends - starts - 1)].astype(np.int64)
    return Split(
        dataset=dataset,
        fit=fit,
        users=distinct_users[starts],
        test_items=distinct_items[ends - 1],
        test_times=times[first][ends - 1],
        validation_items=distinct_items[ends - 2],
        history_ptr=history_ptr,
        history_items=distinct_items[in_history],
        candidates=np.bincount(rows.items, minlength=dataset.num_items) > 0,
        repeats_ignored=len(rows) - len(first),
        users_too_short=int((~long_enough).sum()),
    )
