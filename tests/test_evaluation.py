"""The split, the metrics and the harness, against hand-worked examples and brute force."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from fedrec.shared.data.dataset import Dataset, FloatArray, IntArray, Interactions, UserTexts
from fedrec.shared.evaluation.baselines import (
    BaselineConfig,
    Ease,
    FrozenEncoder,
    Popularity,
    make_baseline,
    regularised_gram_inverse,
)
from fedrec.shared.evaluation.harness import EvaluationConfig, evaluate, rank_test_items
from fedrec.shared.evaluation.metrics import (
    bootstrap_ci,
    coverage,
    ndcg,
    point_estimates,
    ranks_of_targets,
)
from fedrec.shared.evaluation.split import Split, temporal_split


def dataset(rows: list[tuple[int, int, int]], num_items: int, num_users: int) -> Dataset:
    users, items, stamps = (np.array(c, dtype=np.int64) for c in zip(*rows, strict=True))
    return Dataset(
        name="toy",
        item_ids=[f"i{j}" for j in range(num_items)],
        item_texts=[f"item {j}" for j in range(num_items)],
        item_fields=[{} for _ in range(num_items)],
        user_ids=[f"u{u}" for u in range(num_users)],
        interactions=Interactions(users, items, stamps, np.full(len(users), np.nan)),
        texts=UserTexts.empty(),
    )


def random_dataset(seed: int, num_users: int = 40, num_items: int = 60) -> Dataset:
    rng = np.random.default_rng(seed)
    rows = [
        (u, int(i), int(t))
        for u in range(num_users)
        for t, i in enumerate(rng.choice(num_items, size=rng.integers(3, 15), replace=False))
    ]
    return dataset(rows, num_items, num_users)


def test_split_orders_by_time_then_catalog_position() -> None:
    # user 0: items 3, 1 at t=5 (tie: catalog order puts 1 before 3), 2 last.
    data = dataset([(0, 2, 9), (0, 3, 5), (0, 1, 5), (0, 0, 1)], num_items=5, num_users=1)
    split = temporal_split(data)
    assert split.test_items.tolist() == [2]
    assert split.validation_items.tolist() == [3]
    assert split.history(0).tolist() == [0, 1, 3]
    assert sorted(split.fit.items.tolist()) == [0, 1, 3]


def test_split_counts_repeats_once_and_skips_short_users() -> None:
    rows = [(0, 0, 1), (0, 1, 2), (0, 0, 3), (0, 2, 4), (1, 0, 1), (1, 1, 2)]
    split = temporal_split(dataset(rows, num_items=4, num_users=2))
    assert split.users.tolist() == [0]
    assert split.history(0).tolist() == [0, 1]
    assert split.test_items.tolist() == [2]
    assert (split.repeats_ignored, split.users_too_short) == (1, 1)
    # the short user's interactions still train models; the test target never does
    assert len(split.fit) == 5 and 2 not in split.fit.items.tolist()
    assert split.candidates.tolist() == [True, True, True, False]


def test_texts_dated_at_or_after_the_test_interaction_are_held_back() -> None:
    data = dataset([(0, 0, 1), (0, 1, 2), (0, 2, 10), (1, 0, 1)], num_items=3, num_users=2)
    texts = UserTexts(
        users=np.array([0, 0, 0, 1], dtype=np.int64),
        timestamps=np.array([5, 10, 11, 99], dtype=np.int64),
        texts=["before", "same second", "after: about the test item", "unevaluated user"],
        items=np.array([-1, 2, 2, -1], dtype=np.int64),
    )
    split = temporal_split(replace(data, texts=texts))
    assert split.test_times.tolist() == [10]
    assert split.texts_before_test().texts == ["before", "unevaluated user"]


def test_ties_count_against_the_target() -> None:
    scores = np.array([[0.5, 0.5, 0.9, 0.1]])
    allowed = np.ones_like(scores, dtype=bool)
    assert ranks_of_targets(scores, np.array([0]), allowed).tolist() == [2]
    allowed[0, 2] = False
    assert ranks_of_targets(scores, np.array([0]), allowed).tolist() == [1]


def test_metric_formulas() -> None:
    ranks = np.array([0, 1, 9, 10, 500])
    top = np.array([[0, 1], [1, 2], [0, 2], [3, 0], [0, 1]])
    est = point_estimates(ranks, top, num_candidates=8)
    assert est["hr@10"] == pytest.approx(3 / 5)
    assert est["ndcg@10"] == pytest.approx((1 + 1 / np.log2(3) + 1 / np.log2(11)) / 5)
    assert est["mrr"] == pytest.approx((1 + 1 / 2 + 1 / 10 + 1 / 11 + 1 / 501) / 5)
    assert est["coverage@10"] == pytest.approx(4 / 8)
    assert ndcg(np.array([10]), 10).tolist() == [0.0]
    assert coverage(np.array([[1, 1]]), 2) == 0.5


def test_bootstrap_is_deterministic_and_brackets_the_estimate() -> None:
    rng = np.random.default_rng(1)
    ranks = rng.integers(0, 50, size=300)
    top = rng.integers(0, 3000, size=(300, 10))
    first = bootstrap_ci(ranks, top, 3000, resamples=300, seed=3)
    assert first == bootstrap_ci(ranks, top, 3000, resamples=300, seed=3)
    assert first != bootstrap_ci(ranks, top, 3000, resamples=300, seed=4)
    estimates = point_estimates(ranks, top, 3000)
    for name, (low, high) in first.items():
        assert low < estimates[name] < high, name


def test_coverage_interval_stays_within_zero_and_one() -> None:
    top = np.tile(np.arange(10), (50, 1))
    low, high = bootstrap_ci(np.zeros(50, dtype=np.int64), top, 10, resamples=50)["coverage@10"]
    assert low == high == 1.0


class Scripted:
    """A recommender whose scores are fixed random numbers, for checking the harness."""

    name = "scripted"

    def __init__(self, scores: FloatArray) -> None:
        self.scores = scores

    def fit(self, split: Split) -> None:
        pass

    def score(self, positions: IntArray) -> FloatArray:
        return self.scores[positions]


@pytest.mark.parametrize("batch_users", [1, 7, 1000])
def test_harness_matches_brute_force(batch_users: int) -> None:
    split = temporal_split(random_dataset(0))
    rng = np.random.default_rng(2)
    scores = rng.integers(0, 5, size=(len(split.users), split.num_items)).astype(float)
    ranks, top = rank_test_items(Scripted(scores), split, batch_users)
    for p in range(len(split.users)):
        seen = set(split.history(p).tolist())
        target = int(split.test_items[p])
        others = [
            j
            for j in range(split.num_items)
            if split.candidates[j] and j not in seen and j != target
        ]
        assert ranks[p] == sum(scores[p, j] >= scores[p, target] for j in others)
        assert not seen & set(top[p].tolist())
        assert all(split.candidates[top[p]])


def test_harness_rejects_bad_scores() -> None:
    split = temporal_split(random_dataset(0))
    bad = np.zeros((len(split.users), split.num_items))
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="scripted returned NaN or infinite scores"):
        evaluate(Scripted(bad), split)
    with pytest.raises(ValueError, match="returned scores of shape"):
        evaluate(Scripted(bad[:, :3]), split)


def test_evaluation_result_json_layout() -> None:
    split = temporal_split(random_dataset(0))
    model = Popularity()
    model.fit(split)
    out = evaluate(model, split, EvaluationConfig(resamples=50)).to_json()
    assert set(out) == {"model", "data", "split", "users", "metrics", "ci95"}
    keys = {"hr@10", "ndcg@10", "mrr", "coverage@10"}
    assert set(out["metrics"]) == keys and set(out["ci95"]) == keys
    assert out["users"] == len(split.users)
    result = evaluate(model, split, EvaluationConfig(resamples=50))
    assert "users with fewer than 3 distinct items not evaluated" in result.table()


def test_evaluation_config_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="resamples must be at least 1, got 0"):
        EvaluationConfig(resamples=0)


def test_popularity_scores_are_fit_counts() -> None:
    split = temporal_split(random_dataset(1))
    model = Popularity()
    model.fit(split)
    counts = np.bincount(split.fit.items, minlength=split.num_items)
    np.testing.assert_array_equal(model.score(np.array([0, 1]))[1], counts)


@pytest.mark.parametrize("center", [False, True])
def test_frozen_encoder_scores_cosines_to_the_mean_of_the_last_items(center: bool) -> None:
    split = temporal_split(random_dataset(2))
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(split.num_items, 8)) + 3.0  # one shared direction
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    model = FrozenEncoder(lambda texts: vectors[[int(t.split()[1]) for t in texts]], 2, center)
    model.fit(split)
    items = vectors - vectors.mean(axis=0) if center else vectors
    items = items / np.linalg.norm(items, axis=1, keepdims=True)
    positions = np.arange(5)
    users = np.stack([items[split.history(int(p))[-2:]].mean(axis=0) for p in positions])
    users /= np.linalg.norm(users, axis=1, keepdims=True)
    np.testing.assert_allclose(model.score(positions), users @ items.T, atol=1e-12)
    assert ("centred" in model.name) == center
    built = make_baseline(BaselineConfig("frozen", frozen_last=2, frozen_center=center))
    assert isinstance(built, FrozenEncoder) and (built.last, built.center) == (2, center)


def test_woodbury_inverse_equals_direct_inverse() -> None:
    rng = np.random.default_rng(0)
    wide = (rng.random((20, 50)) < 0.2).astype(float)
    direct = np.linalg.inv(wide.T @ wide + 7.0 * np.eye(50))
    np.testing.assert_allclose(regularised_gram_inverse(wide, 7.0), direct, atol=1e-12)
    tall = wide.T.copy()
    direct = np.linalg.inv(tall.T @ tall + 7.0 * np.eye(20))
    np.testing.assert_allclose(regularised_gram_inverse(tall, 7.0), direct, atol=1e-12)


def test_ease_has_zero_diagonal_and_beats_popularity_on_structure() -> None:
    # Two disjoint tastes: users 0-19 like items 0-9, users 20-39 like items 10-19.
    rng = np.random.default_rng(0)
    rows = [
        (u, int(i), t)
        for u in range(40)
        for t, i in enumerate(rng.choice(10, size=6, replace=False) + (0 if u < 20 else 10))
    ]
    split = temporal_split(dataset(rows, num_items=20, num_users=40))
    ease, pop = Ease(1.0), Popularity()
    ease.fit(split)
    pop.fit(split)
    assert ease._weights is not None and np.all(np.diag(ease._weights) == 0)
    config = EvaluationConfig(resamples=20)
    assert (
        evaluate(ease, split, config).metrics["mrr"] > evaluate(pop, split, config).metrics["mrr"]
    )
    for bad in (0, -1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="EASE's lambda must be a finite positive number"):
            Ease(bad)
