"""MovieLens in the GroupLens layout (ml-latest-small, ml-25m, ...): movies, ratings and tags.

Item text is the public catalog text only, ``"Title (year) | Genre1, Genre2"``. A user's own tags
are that user's raw text; they never go into item text, where other users' tags would leak
evaluation data into the model.
"""

from __future__ import annotations

from pathlib import Path

from fedrec.shared.data.dataset import Dataset, Interactions, LoadSummary, UserTexts
from fedrec.shared.data.errors import DataError
from fedrec.shared.data.folder import drop_duplicate_events, index_users, unique_index
from fedrec.shared.data.table import MAX_TEXT_CHARS, read_table


def movie_text(title: str, genres: str) -> str:
    """The public text of a movie: its title, then its genres separated by commas."""
    return f"{title} | {genres.replace('|', ', ')}"


def load_movielens(folder: Path | str, *, max_text_chars: int = MAX_TEXT_CHARS) -> Dataset:
    """Load ``movies.csv``, ``ratings.csv`` and, if present, ``tags.csv`` from ``folder``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError("MovieLens folder not found", folder)
    movies = read_table(folder / "movies.csv", ("movieId", "title", "genres"))
    ratings = read_table(folder / "ratings.csv", ("userId", "movieId", "rating", "timestamp"))
    tags_path = folder / "tags.csv"
    tags = (
        read_table(tags_path, ("userId", "movieId", "tag", "timestamp"))
        if tags_path.exists()
        else None
    )

    item_index = unique_index(movies, "movieId")
    titles = movies.texts("title", max_chars=max_text_chars)
    genres = movies.columns["genres"]
    user_ids, user_index = index_users(
        ratings.columns["userId"], tags.columns["userId"] if tags else []
    )

    rows, duplicates = drop_duplicate_events(
        Interactions(
            users=ratings.lookup("userId", user_index, "user"),
            items=ratings.lookup("movieId", item_index, "movie"),
            timestamps=ratings.timestamps(),
            values=ratings.floats("rating"),
        ),
        ratings,
    )
    texts = (
        UserTexts(
            users=tags.lookup("userId", user_index, "user"),
            timestamps=tags.timestamps(),
            texts=tags.texts("tag", max_chars=max_text_chars),
            items=tags.lookup("movieId", item_index, "movie"),
        )
        if tags is not None
        else UserTexts.empty()
    )
    read = {t.path.name: len(t) for t in (movies, ratings, tags) if t is not None}
    return Dataset(
        name=f"movielens:{folder.name}",
        item_ids=movies.columns["movieId"],
        item_texts=[movie_text(t, g) for t, g in zip(titles, genres, strict=True)],
        item_fields=[{"title": t, "genres": g} for t, g in zip(titles, genres, strict=True)],
        user_ids=user_ids,
        interactions=rows,
        texts=texts,
        summary=LoadSummary(
            rows_read=read,
            dropped={"duplicate ratings (same user, movie and timestamp)": duplicates},
        ),
    )
