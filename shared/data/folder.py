"""fedrec's own on-disk format: a folder of three CSV or JSONL files (see docs/data-format.md).

- ``items``: ``item_id``, ``text``, and any further columns, kept as the item's fields.
- ``interactions``: ``user_id``, ``item_id``, ``timestamp``, optional ``value``.
- ``texts`` (optional file): ``user_id``, ``timestamp``, ``text``, optional ``item_id``.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from fedrec.shared.data.dataset import Dataset, IntArray, Interactions, LoadSummary, UserTexts
from fedrec.shared.data.errors import DataError
from fedrec.shared.data.table import MAX_TEXT_CHARS, Table, find_file, read_table, require_file

ITEM_COLUMNS = ("item_id", "text")
INTERACTION_COLUMNS = ("user_id", "item_id", "timestamp")
TEXT_COLUMNS = ("user_id", "timestamp", "text")


def load_folder(folder: Path | str, *, max_text_chars: int = MAX_TEXT_CHARS) -> Dataset:
    """Load and validate a data set in fedrec's format. Raises ``DataError`` on any bad input."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError("data folder not found", folder)
    items = read_table(require_file(folder, "items"), ITEM_COLUMNS)
    interactions = read_table(
        require_file(folder, "interactions"),
        INTERACTION_COLUMNS,
        optional=("value",),
    )
    texts_path = find_file(folder, "texts")
    texts = read_table(texts_path, TEXT_COLUMNS, ("item_id",)) if texts_path else None

    item_ids = items.columns["item_id"]
    item_index = unique_index(items, "item_id")
    item_texts = items.texts("text", max_chars=max_text_chars)
    extra = [c for c in items.columns if c not in ITEM_COLUMNS]
    item_fields = [
        {c: items.columns[c][row] for c in extra if items.columns[c][row]}
        for row in range(len(items))
    ]
    if not len(interactions):
        raise DataError("no interactions: the file has a header but no rows", interactions.path)

    user_ids, user_index = index_users(
        interactions.columns["user_id"], texts.columns["user_id"] if texts else []
    )

    rows = Interactions(
        users=interactions.lookup("user_id", user_index, "user"),
        items=interactions.lookup("item_id", item_index, "item"),
        timestamps=interactions.timestamps(),
        values=interactions.floats("value", optional=True),
    )
    rows, duplicates = drop_duplicate_events(rows, interactions)
    user_texts = (
        UserTexts(
            users=texts.lookup("user_id", user_index, "user"),
            timestamps=texts.timestamps(),
            texts=texts.texts("text", max_chars=max_text_chars),
            items=_optional_lookup(texts, "item_id", item_index),
        )
        if texts is not None
        else UserTexts.empty()
    )
    read = {t.path.name: len(t) for t in (items, interactions, texts) if t is not None}
    return Dataset(
        name=folder.name,
        item_ids=item_ids,
        item_texts=item_texts,
        item_fields=item_fields,
        user_ids=user_ids,
        interactions=rows,
        texts=user_texts,
        summary=LoadSummary(
            rows_read=read,
            dropped={"duplicate interactions (same user, item and timestamp)": duplicates},
        ),
    )


def index_users(*columns: list[str]) -> tuple[list[str], dict[str, int]]:
    """The users in ``columns`` in order of first appearance, and each one's position."""
    order: dict[str, None] = {}
    for column in columns:
        order.update(dict.fromkeys(column))
    user_ids = list(order)
    return user_ids, {u: i for i, u in enumerate(user_ids)}


def unique_index(table: Table, column: str) -> dict[str, int]:
    """Map each id in ``column`` to its row; a repeated id is an error."""
    index: dict[str, int] = {}
    for row, key in enumerate(table.columns[column]):
        if key in index:
            raise table.error(row, f"duplicate {column} {key!r}")
        index[key] = row
    if not index:
        raise DataError(f"no rows: the file has a header but no {column}s", table.path)
    return index


def drop_duplicate_events(rows: Interactions, table: Table) -> tuple[Interactions, int]:
    """Keep the first of rows with the same user, item and timestamp, and return how many
    went. ``rows`` are ``table``'s, in its order; a row that repeats an event with another
    value is an error at its line, since dropping it would lose that value."""
    keys = np.stack([rows.users, rows.items, rows.timestamps], axis=1)
    _, first, event = np.unique(keys, axis=0, return_index=True, return_inverse=True)
    if len(first) == len(rows):
        return rows, 0
    firsts = first[event.ravel()]  # each row's event's first row
    kept, values = rows.values[firsts], rows.values
    conflicts = np.flatnonzero(~((kept == values) | (np.isnan(kept) & np.isnan(values))))
    if len(conflicts):
        row, earlier = int(conflicts[0]), int(firsts[conflicts[0]])
        raise table.error(
            row,
            f"repeats the event of line {table.lines[earlier]} (same user, item and timestamp) "
            f"with another value, {values[row]:g} against {values[earlier]:g}: keep one",
        )
    return rows.select(np.sort(first)), len(rows) - len(first)


def _optional_lookup(table: Table, column: str, index: dict[str, int]) -> IntArray:
    out = np.full(len(table), -1, dtype=np.int64)
    for row, key in enumerate(table.columns[column]):
        if key:
            position = index.get(key)
            if position is None:
                raise table.error(row, f"unknown item {key!r} in column {column}")
            out[row] = position
    return out


def save_folder(
    dataset: Dataset, folder: Path | str, *, fmt: Literal["csv", "jsonl"] = "csv"
) -> Path:
    """Write ``dataset`` in fedrec's format, so that ``load_folder`` reads it back unchanged.
    A ``DataError`` (nothing written) when ``folder`` is a file or already holds a data set's
    file, which the export would overwrite or leave mixed with its own."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise DataError("is a file, not a folder: export into a new or empty folder", folder)
    taken = [
        f"{stem}{ext}"
        for stem in ("items", "interactions", "texts")
        for ext in (".csv", ".jsonl")
        if (folder / f"{stem}{ext}").exists()
    ]
    if taken:
        raise DataError(
            f"already holds {', '.join(taken)}, which an export would overwrite or mix with its "
            "own; export into a new or empty folder (nothing was written)",
            folder,
        )
    folder.mkdir(parents=True, exist_ok=True)
    fields = list(dict.fromkeys(k for f in dataset.item_fields for k in f))
    _write(
        folder / f"items.{fmt}",
        [*ITEM_COLUMNS, *fields],
        (
            [item, text, *(extra.get(k, "") for k in fields)]
            for item, text, extra in zip(
                dataset.item_ids, dataset.item_texts, dataset.item_fields, strict=True
            )
        ),
    )
    rows = dataset.interactions
    _write(
        folder / f"interactions.{fmt}",
        [*INTERACTION_COLUMNS, "value"],
        (
            [dataset.user_ids[u], dataset.item_ids[i], int(t), "" if math.isnan(v) else repr(v)]
            for u, i, t, v in zip(
                rows.users, rows.items, rows.timestamps, rows.values.tolist(), strict=True
            )
        ),
    )
    texts = dataset.texts
    if not len(texts):
        return folder
    _write(
        folder / f"texts.{fmt}",
        [*TEXT_COLUMNS, "item_id"],
        (
            [dataset.user_ids[u], int(t), text, dataset.item_ids[i] if i >= 0 else ""]
            for u, t, text, i in zip(
                texts.users, texts.timestamps, texts.texts, texts.items, strict=True
            )
        ),
    )
    return folder


def _write(path: Path, header: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8", newline="") as out:
        if path.suffix == ".csv":
            writer = csv.writer(out)
            writer.writerow(header)
            writer.writerows(rows)
        else:
            for row in rows:
                record = {k: v for k, v in zip(header, row, strict=True) if v != ""}
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
    tmp.replace(path)
