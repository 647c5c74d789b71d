"""fedrec's own data format: round trips, and a clear error for every kind of bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fedrec.shared.data.errors import DataError
from fedrec.shared.data.folder import load_folder, save_folder

ITEMS = "item_id,text,genre\na,Sourdough starter guide,baking\nb,Trail shoes review,running\n"
INTERACTIONS = "user_id,item_id,timestamp,value\nu1,a,100,4.5\nu1,b,200,\nu2,b,150,3\n"
TEXTS = "user_id,timestamp,text,item_id\nu1,120,my starter died twice,a\nu2,90,best trail shoes,\n"


def write(folder: Path, **files: str | bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        path = folder / name.replace("_csv", ".csv").replace("_jsonl", ".jsonl")
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
    return folder


def good(tmp_path: Path, **overrides: str | bytes) -> Path:
    files: dict[str, str | bytes] = {
        "items_csv": ITEMS,
        "interactions_csv": INTERACTIONS,
        "texts_csv": TEXTS,
    }
    files.update(overrides)
    return write(tmp_path / "data", **files)


def test_loads_all_three_files(tmp_path: Path) -> None:
    data = load_folder(good(tmp_path))
    assert data.item_ids == ["a", "b"]
    assert data.item_fields == [{"genre": "baking"}, {"genre": "running"}]
    assert data.user_ids == ["u1", "u2"]
    assert data.interactions.items.tolist() == [0, 1, 1]
    assert data.interactions.timestamps.tolist() == [100, 200, 150]
    assert data.interactions.values[0] == 4.5 and np.isnan(data.interactions.values[1])
    assert data.texts.texts == ["my starter died twice", "best trail shoes"]
    assert data.texts.items.tolist() == [0, -1]
    assert data.summary.rows_read == {"items.csv": 2, "interactions.csv": 3, "texts.csv": 2}


def test_texts_file_is_optional(tmp_path: Path) -> None:
    folder = write(tmp_path / "d", items_csv=ITEMS, interactions_csv=INTERACTIONS)
    assert len(load_folder(folder).texts) == 0


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_save_then_load_round_trips(tmp_path: Path, fmt: str) -> None:
    data = load_folder(good(tmp_path))
    again = load_folder(save_folder(data, tmp_path / fmt, fmt=fmt))  # type: ignore[arg-type]
    assert again.item_ids == data.item_ids and again.item_texts == data.item_texts
    assert again.item_fields == data.item_fields and again.user_ids == data.user_ids
    np.testing.assert_array_equal(again.interactions.items, data.interactions.items)
    np.testing.assert_array_equal(again.interactions.values, data.interactions.values)
    assert again.texts.texts == data.texts.texts
    np.testing.assert_array_equal(again.texts.items, data.texts.items)


def test_export_refuses_a_folder_that_holds_a_data_set_or_is_a_file(tmp_path: Path) -> None:
    data = load_folder(good(tmp_path))
    folder = save_folder(data, tmp_path / "out")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    for fmt in ("csv", "jsonl"):  # again, or in the other format: nothing overwritten or mixed
        with pytest.raises(DataError, match=r"already holds items\.csv, interactions\.csv, texts"):
            save_folder(data, folder, fmt=fmt)  # type: ignore[arg-type]
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "interactions.csv").write_text("user_id,x\n")
    with pytest.raises(DataError, match=r"already holds interactions\.csv"):
        save_folder(data, tmp_path / "notes")
    assert (tmp_path / "notes" / "interactions.csv").read_text() == "user_id,x\n"
    (tmp_path / "a-file").write_text("keep me")
    with pytest.raises(DataError, match="is a file, not a folder"):
        save_folder(data, tmp_path / "a-file")
    assert (tmp_path / "a-file").read_text() == "keep me"


def test_a_folder_or_a_dangling_link_where_a_file_belongs_is_an_error(tmp_path: Path) -> None:
    folder = good(tmp_path)
    (folder / "texts.csv").unlink()
    (folder / "texts.csv").symlink_to(tmp_path / "gone.csv")
    with pytest.raises(DataError, match=r"texts\.csv: file not found \(a link to nothing\)"):
        load_folder(folder)
    (folder / "texts.csv").unlink()
    (folder / "texts.csv").mkdir()
    with pytest.raises(DataError, match=r"texts\.csv: is a folder, not a file"):
        load_folder(folder)


def test_json_numbers_in_float_form_are_whole_seconds(tmp_path: Path) -> None:
    rows = '{"user_id": "u1", "item_id": "a", "timestamp": 1.7e9}\n'
    rows += '{"user_id": "u1", "item_id": "b", "timestamp": 1700000100}\n'
    data = load_folder(write(tmp_path / "d", items_csv=ITEMS, interactions_jsonl=rows))
    assert data.interactions.timestamps.tolist() == [1_700_000_000, 1_700_000_100]


def test_iso_timestamps_are_read_as_utc_seconds(tmp_path: Path) -> None:
    rows = "user_id,item_id,timestamp\nu1,a,1970-01-01T00:01:40\nu1,b,1970-01-01T01:00:00+01:00\n"
    data = load_folder(good(tmp_path, interactions_csv=rows))
    assert data.interactions.timestamps.tolist() == [100, 0]


def test_jsonl_input(tmp_path: Path) -> None:
    items = '{"item_id": "a", "text": "Jazz piano"}\n{"item_id": "b", "text": "Telescopes"}\n'
    rows = '{"user_id": "u1", "item_id": "a", "timestamp": 5, "value": 4.0}\n\n'
    folder = write(tmp_path / "j", items_jsonl=items, interactions_jsonl=rows)
    data = load_folder(folder)
    assert data.item_texts == ["Jazz piano", "Telescopes"]
    assert data.interactions.values.tolist() == [4.0]


def test_jsonl_strings_may_hold_unicode_line_separators(tmp_path: Path) -> None:
    """JSON Lines ends a line at a newline only: U+2028, U+2029 and U+0085 are text inside a
    string, as fedrec's own export writes them."""
    text = "Alpha\u2028line two\u2029and \u0085three"
    items = json.dumps({"item_id": "a", "text": text}, ensure_ascii=False) + "\r\n"
    rows = '{"user_id": "u1", "item_id": "a", "timestamp": 5}\n'
    data = load_folder(write(tmp_path / "j", items_jsonl=items, interactions_jsonl=rows))
    assert data.item_texts == [text]
    save_folder(data, tmp_path / "out", fmt="jsonl")
    assert load_folder(tmp_path / "out").item_texts == [text]


def test_duplicate_events_are_dropped_and_counted(tmp_path: Path) -> None:
    rows = "user_id,item_id,timestamp,value\nu1,a,100,4\nu1,a,100,4.0\nu1,a,300,\nu1,a,300,\n"
    data = load_folder(good(tmp_path, interactions_csv=rows))
    assert len(data.interactions) == 2
    assert data.summary.dropped == {"duplicate interactions (same user, item and timestamp)": 2}
    assert "left out 2 rows: duplicate interactions" in " ".join(data.summary.lines())


BAD_INPUTS = {
    "missing folder": ({}, "data folder not found"),
    "missing items file": ({"items_csv": None}, "missing file: expected items.csv or items.jsonl"),
    "missing column": (
        {"interactions_csv": "user_id,item_id\nu1,a\n"},
        "interactions.csv: missing column(s) timestamp; found user_id, item_id",
    ),
    "unknown item": (
        {"interactions_csv": "user_id,item_id,timestamp\nu1,a,1\nu1,zz,2\n"},
        "interactions.csv, line 3: unknown item 'zz' in column item_id",
    ),
    "unknown item in texts": (
        {"texts_csv": "user_id,timestamp,text,item_id\nu1,1,nice,q\n"},
        "texts.csv, line 2: unknown item 'q' in column item_id",
    ),
    "bad timestamp": (
        {"interactions_csv": "user_id,item_id,timestamp\nu1,a,yesterday\n"},
        "interactions.csv, line 2: timestamp 'yesterday' is neither Unix seconds nor an ISO 8601",
    ),
    "negative timestamp": (
        {"interactions_csv": "user_id,item_id,timestamp\nu1,a,5\nu1,b,-3\n"},
        "interactions.csv, line 3: timestamp -3 is outside 1970-2100 in Unix seconds",
    ),
    "fractional timestamp": (
        {"interactions_csv": "user_id,item_id,timestamp\nu1,a,5\nu1,b,1.5\n"},
        "interactions.csv, line 3: timestamp '1.5' is not a whole number of Unix seconds",
    ),
    "timestamp beyond int64": (
        {"interactions_csv": "user_id,item_id,timestamp\nu1,a,1" + "0" * 30 + "\n"},
        "interactions.csv, line 2: timestamp 1" + "0" * 30 + " is outside 1970-2100",
    ),
    "milliseconds": (
        {"interactions_csv": "user_id,item_id,timestamp\nu1,a,1445714994000\n"},
        "line 2: timestamp 1445714994000 is outside 1970-2100 in Unix seconds (milliseconds?",
    ),
    "empty text": (
        {"items_csv": 'item_id,text\na,Jazz\nb,"   "\n'},
        "items.csv, line 3: text is empty",
    ),
    "zero-width text": (
        {"texts_csv": "user_id,timestamp,text\nu1,5,\u200b\u200d\n"},
        "texts.csv, line 2: text is empty",
    ),
    "missing text": (
        {"texts_csv": "user_id,timestamp,text\nu1,5,\n"},
        "texts.csv, line 2: text is missing",
    ),
    "huge text": (
        {"texts_csv": "user_id,timestamp,text\nu1,5," + "x" * 10_001 + "\n"},
        "texts.csv, line 2: text has 10,001 characters, more than the 10,000 allowed",
    ),
    "non-UTF-8": (
        {"texts_csv": b"user_id,timestamp,text\nu1,5,ok\nu2,6,caf\xe9\n"},
        "texts.csv, line 3: not valid UTF-8 (byte 0xe9",
    ),
    "NUL in text": (
        {"texts_csv": "user_id,timestamp,text\nu1,5,a\x00b\n"},
        "texts.csv, line 2: text contains a NUL character",
    ),
    "bad value": (
        {"interactions_csv": "user_id,item_id,timestamp,value\nu1,a,5,great\n"},
        "interactions.csv, line 2: value must be a number, got 'great'",
    ),
    "infinite value": (
        {"interactions_csv": "user_id,item_id,timestamp,value\nu1,a,5,inf\n"},
        "interactions.csv, line 2: value must be finite, got 'inf'",
    ),
    "conflicting duplicate event": (
        {"interactions_csv": "user_id,item_id,timestamp,value\nu1,a,5,4\nu2,a,5,1\nu1,a,5,2\n"},
        "interactions.csv, line 4: repeats the event of line 2 (same user, item and timestamp) "
        "with another value, 2 against 4: keep one",
    ),
    "duplicate item id": (
        {"items_csv": "item_id,text\na,x\na,y\n"},
        "items.csv, line 3: duplicate item_id 'a'",
    ),
    "ragged row": (
        {"interactions_csv": "user_id,item_id,timestamp\nu1,a,5\nu1,b\n"},
        "interactions.csv, line 3: expected 3 fields (user_id, item_id, timestamp), found 2",
    ),
    "empty file": ({"items_csv": ""}, "items.csv, line 1: file is empty: expected a header row"),
    "header only": (
        {"interactions_csv": "user_id,item_id,timestamp\n"},
        "interactions.csv: no interactions: the file has a header but no rows",
    ),
    "no items": ({"items_csv": "item_id,text\n"}, "no rows: the file has a header but no item_ids"),
    "both csv and jsonl": (
        {"items_jsonl": '{"item_id": "a", "text": "x"}\n'},
        "both items.csv and items.jsonl exist; keep one",
    ),
    "invalid json": (
        {"interactions_csv": None, "interactions_jsonl": '{"user_id": "u1"\n'},
        "interactions.jsonl, line 1: invalid JSON",
    ),
    "unclosed quote": (
        {"items_csv": 'item_id,text\na,Jazz\nb,"Trail shoes\nc,Tea\n'},
        "items.csv, line 3: malformed CSV: unexpected end of data (a quoted field that opens",
    ),
    "empty column name": (
        {"items_csv": "item_id,text,\na,Jazz,x\n"},
        "items.csv, line 1: empty column name in header",
    ),
    "json array line": (
        {"interactions_csv": None, "interactions_jsonl": "[1, 2]\n"},
        "interactions.jsonl, line 1: each line must be a JSON object",
    ),
    "json nested value": (
        {"interactions_csv": None, "interactions_jsonl": '{"user_id": {"a": 1}}\n'},
        "interactions.jsonl, line 1: user_id must be a string or a number, got dict",
    ),
    "json nested too deep": (
        {"interactions_csv": None, "interactions_jsonl": '{"a": ' + "[" * 100_000 + "\n"},
        "interactions.jsonl, line 1: invalid JSON",
    ),
    "json number too long": (
        {"interactions_csv": None, "interactions_jsonl": '{"timestamp": ' + "9" * 5000 + "}\n"},
        "interactions.jsonl, line 1: invalid JSON",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_names_file_and_line(tmp_path: Path, case: str) -> None:
    overrides, message = BAD_INPUTS[case]
    if case == "missing folder":
        folder = tmp_path / "nowhere"
    else:
        files: dict[str, str | bytes | None] = {
            "items_csv": ITEMS,
            "interactions_csv": INTERACTIONS,
            "texts_csv": TEXTS,
        }
        files.update(overrides)
        folder = write(tmp_path / "data", **{k: v for k, v in files.items() if v is not None})
    with pytest.raises(DataError) as raised:
        load_folder(folder)
    assert message in str(raised.value)


def test_error_carries_path_and_line(tmp_path: Path) -> None:
    rows = "user_id,item_id,timestamp\nu1,a,5\nu1,nope,6\n"
    with pytest.raises(DataError) as raised:
        load_folder(good(tmp_path, interactions_csv=rows))
    assert raised.value.path == tmp_path / "data" / "interactions.csv"
    assert raised.value.line == 3


def test_line_numbers_count_multiline_fields(tmp_path: Path) -> None:
    texts = 'user_id,timestamp,text\nu1,5,"two\nlines"\nu1,6,\n'
    with pytest.raises(DataError, match=r"texts.csv, line 4: text is missing"):
        load_folder(good(tmp_path, texts_csv=texts))


def test_jsonl_numbers_keep_their_value(tmp_path: Path) -> None:
    rows = [{"user_id": 7, "item_id": "a", "timestamp": 12, "value": 0.1}]
    text = "\n".join(json.dumps(r) for r in rows) + "\n"
    data = load_folder(write(tmp_path / "j", items_csv=ITEMS, interactions_jsonl=text))
    assert data.user_ids[0] == "7" and data.interactions.values.tolist() == [0.1]


def test_jsonl_ids_written_as_whole_floats_are_the_same_ids(tmp_path: Path) -> None:
    rows = '{"user_id": 7.0, "item_id": "a", "timestamp": 12}\n'
    rows += '{"user_id": "7", "item_id": "b", "timestamp": 13}\n'
    rows += '{"user_id": 7, "item_id": "a", "timestamp": 14, "value": 2.5}\n'
    data = load_folder(write(tmp_path / "j", items_csv=ITEMS, interactions_jsonl=rows))
    assert data.user_ids == ["7"]
    assert data.interactions.users.tolist() == [0, 0, 0]
    assert data.interactions.values.tolist()[2] == 2.5
