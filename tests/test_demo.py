"""The built-in demo data set: determinism, sizes, referential sanity, structure, validation."""

from __future__ import annotations

import functools
import re
from collections import Counter
from dataclasses import replace

import numpy as np
import pytest

from fedrec.shared.data.dataset import Dataset
from fedrec.shared.data.demo import TOPIC_NAMES, DemoConfig, generate_demo

SMALL = DemoConfig(num_items=400, num_users=50, num_topics=12, min_interactions=10)


@functools.cache
def demo(config: DemoConfig) -> Dataset:
    return generate_demo(config)


def histories(data: Dataset) -> list[np.ndarray]:
    """Each user's items in time order."""
    it = data.interactions
    order = np.lexsort((it.timestamps, it.users))
    return np.split(
        it.items[order], np.cumsum(np.bincount(it.users, minlength=data.num_users))[:-1]
    )


def topic_share(data: Dataset, items: np.ndarray) -> Counter[str]:
    return Counter(data.item_fields[int(i)]["topic"] for i in items)


def same(a: Dataset, b: Dataset) -> bool:
    ia, ib = a.interactions, b.interactions
    return (
        a.item_ids == b.item_ids
        and a.item_texts == b.item_texts
        and a.item_fields == b.item_fields
        and a.user_ids == b.user_ids
        and all(
            np.array_equal(x, y)
            for x, y in zip(
                (ia.users, ia.items, ia.timestamps),
                (ib.users, ib.items, ib.timestamps),
                strict=True,
            )
        )
        and np.array_equal(ia.values, ib.values, equal_nan=True)
        and a.texts.texts == b.texts.texts
        and np.array_equal(a.texts.users, b.texts.users)
        and np.array_equal(a.texts.timestamps, b.texts.timestamps)
        and np.array_equal(a.texts.items, b.texts.items)
    )


def test_same_seed_gives_identical_data_and_another_seed_differs() -> None:
    assert same(generate_demo(SMALL), generate_demo(SMALL))
    other = generate_demo(replace(SMALL, seed=1))
    assert not same(demo(SMALL), other)
    assert demo(SMALL).item_texts != other.item_texts


def test_default_sizes() -> None:
    data = demo(DemoConfig())
    assert (data.num_items, data.num_users) == (3000, 600)
    per_user = np.bincount(data.interactions.users, minlength=600)
    assert per_user.min() >= 20 and per_user.max() <= 80
    assert len(set(data.interactions.items.tolist())) > 2500
    assert 2 * 600 <= len(data.texts) <= 15 * 600


@pytest.mark.parametrize(
    ("items", "users", "low", "high"), [(100, 5, 3, 8), (400, 50, 10, 80), (1000, 120, 30, 30)]
)
def test_sizes_follow_the_config(items: int, users: int, low: int, high: int) -> None:
    config = DemoConfig(
        num_items=items, num_users=users, num_topics=10, min_interactions=low, max_interactions=high
    )
    data = demo(config)
    assert (data.num_items, data.num_users) == (items, users)
    per_user = np.bincount(data.interactions.users, minlength=users)
    assert per_user.min() >= low and per_user.max() <= high
    assert {f["topic"] for f in data.item_fields} <= set(TOPIC_NAMES)
    assert len({f["topic"] for f in data.item_fields}) == 10


def test_ids_are_unique_strings() -> None:
    data = demo(SMALL)
    assert len(set(data.item_ids)) == data.num_items and len(set(data.user_ids)) == data.num_users
    assert data.item_ids[0] == "i001" and data.user_ids[-1] == "u50"


def test_rows_reference_valid_users_and_items() -> None:
    data = demo(SMALL)
    it, tx = data.interactions, data.texts
    assert it.users.min() >= 0 and it.users.max() < data.num_users
    assert it.items.min() >= 0 and it.items.max() < data.num_items
    assert tx.users.min() >= 0 and tx.users.max() < data.num_users
    assert tx.items.min() >= -1 and tx.items.max() < data.num_items
    touched = {
        (int(u), int(i)): int(t) for u, i, t in zip(it.users, it.items, it.timestamps, strict=True)
    }
    assert len(touched) == len(it), "a user meets an item at most once"
    for user, item, when in zip(tx.users, tx.items, tx.timestamps, strict=True):
        if item >= 0:  # a review or comment comes after the interaction it is about
            assert when > touched[(int(user), int(item))]


def test_timestamps_increase_per_user_and_texts_are_sorted() -> None:
    data = demo(SMALL)
    it, tx = data.interactions, data.texts
    for user in range(data.num_users):
        assert np.all(np.diff(it.timestamps[it.users == user]) > 0)
        assert np.all(np.diff(tx.timestamps[tx.users == user]) >= 0)
    assert np.all(np.diff(tx.users) >= 0)
    assert it.timestamps.min() >= DemoConfig().start_time


def test_ratings_are_1_to_5_or_missing() -> None:
    values = demo(SMALL).interactions.values
    rated = values[~np.isnan(values)]
    assert 0 < len(rated) < len(values)
    assert set(rated.tolist()) <= {1.0, 2.0, 3.0, 4.0, 5.0}


def test_texts_are_short_plain_and_varied() -> None:
    data = demo(SMALL)
    for text in data.item_texts + data.texts.texts:
        assert 0 < len(text) < 300 and text == text.strip()
        assert text.isprintable() and text.encode("utf-8").decode("utf-8") == text
    assert len(set(data.item_texts)) > 0.95 * data.num_items
    queries = data.texts.items == -1
    assert 0 < queries.sum() < len(data.texts)
    assert len(set(data.texts.texts)) > 0.8 * len(data.texts)


def test_users_have_several_topics_that_drift() -> None:
    data = demo(DemoConfig(num_users=200))
    changed, spread = 0, 0
    for history in histories(data):
        third = len(history) // 3
        first, last = topic_share(data, history[:third]), topic_share(data, history[-third:])
        overlap = sum(min(first[t], last[t]) for t in first) / third
        changed += overlap < 0.7
        spread += len(topic_share(data, history)) >= 2
    assert changed > 0.85 * data.num_users
    assert spread == data.num_users


def test_no_drift_keeps_the_mix_steadier() -> None:
    def mean_overlap(drift: float) -> float:
        data = demo(DemoConfig(num_users=150, drift=drift))
        overlaps = []
        for history in histories(data):
            third = len(history) // 3
            first, last = topic_share(data, history[:third]), topic_share(data, history[-third:])
            overlaps.append(sum(min(first[t], last[t]) for t in first) / third)
        return float(np.mean(overlaps))

    assert mean_overlap(0.0) > mean_overlap(0.9) + 0.2


def test_recent_items_predict_the_next_topic_but_popularity_does_not() -> None:
    data = demo(DemoConfig())
    recent_hits = 0
    for history in histories(data):
        recent = topic_share(data, history[-6:-1])
        recent_hits += data.item_fields[int(history[-1])]["topic"] in recent
    assert recent_hits > 0.7 * data.num_users
    counts = np.bincount(data.interactions.items, minlength=data.num_items)
    assert np.sort(counts)[-10:].sum() < 0.03 * len(data.interactions)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"num_items": 10}, "num_items must be >= 210"),
        ({"num_users": 0}, "num_users must be >= 1"),
        ({"num_topics": 1}, "num_topics must be in"),
        ({"num_topics": len(TOPIC_NAMES) + 1}, "num_topics must be in"),
        ({"min_interactions": 50, "max_interactions": 40}, "min_interactions <= max_interactions"),
        ({"min_user_topics": 1}, "2 <= min_user_topics"),
        (
            {"max_user_topics": 5, "num_topics": 4, "num_items": 100},
            "max_user_topics <= num_topics",
        ),
        ({"drift": 1.5}, "drift must be in"),
        ({"offtopic_rate": -0.1}, "offtopic_rate must be in"),
        ({"typo_rate": 2.0}, "typo_rate must be in"),
        ({"min_queries": 3, "max_queries": 2}, "min_queries <= max_queries"),
        ({"subtheme_concentration": 0.0}, "subtheme_concentration must be > 0"),
        ({"seed": -1}, "seed must be >= 0"),
    ],
)
def test_config_validation(change: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        DemoConfig(**change)  # type: ignore[arg-type]
