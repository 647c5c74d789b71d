"""A device's training examples: predict each next item from the events before it.

Example i is the window of at most ``context`` events before target ``targets[i]`` (feature-table
rows, right-padded) and the target item. Each is one record for DP-SGD: its gradient is clipped
on its own.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedrec.shared.data.dataset import IntArray
from fedrec.shared.model.events import EventSequences


@dataclass(frozen=True)
class DeviceExamples:
    """``rows``/``types`` ``(N, context)`` right-padded, ``lengths (N,)``, ``targets (N,)``."""

    rows: IntArray
    types: IntArray
    lengths: IntArray
    targets: IntArray

    def __len__(self) -> int:
        return len(self.targets)


def device_examples(
    sequences: EventSequences, user: int, context: int, max_examples: int
) -> DeviceExamples:
    """The latest ``max_examples`` next-item examples of ``user``, ``context`` events each."""
    span = sequences.user(user)
    rows, types = sequences.rows[span], sequences.types[span]
    next_items = sequences.next_items[span]
    ends = np.flatnonzero(next_items >= 0)[-max_examples:]  # example = events up to ``end``
    n = len(ends)
    out_rows = np.zeros((n, context), dtype=np.int64)
    out_types = np.zeros((n, context), dtype=np.int64)
    lengths = np.zeros(n, dtype=np.int64)
    for i, end in enumerate(ends):
        start = max(0, int(end) + 1 - context)
        length = int(end) + 1 - start
        out_rows[i, :length] = rows[start : end + 1]
        out_types[i, :length] = types[start : end + 1]
        lengths[i] = length
    return DeviceExamples(out_rows, out_types, lengths, next_items[ends].astype(np.int64))
