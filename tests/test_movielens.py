"""The MovieLens loader, on a small folder written here and on the real ml-latest-small."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedrec.shared.data.errors import DataError
from fedrec.shared.data.movielens import load_movielens, movie_text

MOVIES = "movieId,title,genres\n1,Toy Story (1995),Adventure|Animation\n2,Heat (1995),Action\n"
RATINGS = "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,2,3.5,964982224\n2,2,5.0,9\n"
TAGS = "userId,movieId,tag,timestamp\n2,1,pixar,1445714994\n"


def folder(tmp_path: Path, **files: str) -> Path:
    out = tmp_path / "ml"
    out.mkdir(exist_ok=True)
    defaults = {"movies.csv": MOVIES, "ratings.csv": RATINGS, "tags.csv": TAGS}
    defaults.update({k.replace("_", "."): v for k, v in files.items()})
    for name, text in defaults.items():
        if text:
            (out / name).write_text(text, encoding="utf-8")
    return out


def test_item_text_is_title_and_genres_only(tmp_path: Path) -> None:
    data = load_movielens(folder(tmp_path))
    assert data.item_texts == ["Toy Story (1995) | Adventure, Animation", "Heat (1995) | Action"]
    assert all("pixar" not in text for text in data.item_texts)


def test_tags_are_their_authors_texts(tmp_path: Path) -> None:
    data = load_movielens(folder(tmp_path))
    assert data.texts.texts == ["pixar"]
    assert data.user_ids[int(data.texts.users[0])] == "2"
    assert data.item_ids[int(data.texts.items[0])] == "1"


def test_ratings_are_values(tmp_path: Path) -> None:
    data = load_movielens(folder(tmp_path))
    assert data.interactions.values.tolist() == [4.0, 3.5, 5.0]
    assert data.name == "movielens:ml"


def test_tags_file_is_optional(tmp_path: Path) -> None:
    assert len(load_movielens(folder(tmp_path, tags_csv="")).texts) == 0


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"ratings_csv": ""}, "ratings.csv: file not found"),
        (
            {"ratings_csv": "userId,movieId,timestamp\n1,1,5\n"},
            "ratings.csv: missing column(s) rating",
        ),
        (
            {"ratings_csv": "userId,movieId,rating,timestamp\n1,99,4.0,5\n"},
            "ratings.csv, line 2: unknown movie '99' in column movieId",
        ),
        (
            {"tags_csv": "userId,movieId,tag,timestamp\n1,1,,5\n"},
            "tags.csv, line 2: tag is missing",
        ),
        (
            {"ratings_csv": "userId,movieId,rating,timestamp\n1,1,4.0,soon\n"},
            "ratings.csv, line 2: timestamp 'soon' is neither Unix seconds",
        ),
    ],
)
def test_bad_movielens_input(tmp_path: Path, files: dict[str, str], message: str) -> None:
    with pytest.raises(DataError) as raised:
        load_movielens(folder(tmp_path, **files))
    assert message in str(raised.value)


def test_missing_folder() -> None:
    with pytest.raises(DataError, match="MovieLens folder not found"):
        load_movielens("/nonexistent/ml")


def test_real_ml_latest_small(movielens_small: Path) -> None:
    data = load_movielens(movielens_small)
    assert (data.num_users, data.num_items) == (610, 9742)
    assert (len(data.interactions), len(data.texts)) == (100_836, 3_683)
    toy_story = data.item_ids.index("1")
    assert data.item_texts[toy_story] == movie_text(
        "Toy Story (1995)", "Adventure|Animation|Children|Comedy|Fantasy"
    )
    assert data.item_texts[toy_story] == (
        "Toy Story (1995) | Adventure, Animation, Children, Comedy, Fantasy"
    )
    assert sum(data.summary.dropped.values()) == 0
