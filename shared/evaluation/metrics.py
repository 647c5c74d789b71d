"""Ranking metrics and bootstrap confidence intervals, as pure functions on arrays.

A rank is the number of other candidate items that score at least as high as the target, so
ties count against the target and rank 0 is a hit at position one.
"""

from __future__ import annotations

import numpy as np

from fedrec.shared.data.dataset import FloatArray, IntArray

METRICS = ("hr@10", "ndcg@10", "mrr", "coverage@10")


def ranks_of_targets(scores: FloatArray, targets: IntArray, allowed: np.ndarray) -> IntArray:
    """Rank of ``targets[u]`` among the ``allowed[u]`` items of row ``u`` of ``scores``."""
    target_scores = scores[np.arange(len(targets)), targets]
    at_least_as_good = (scores >= target_scores[:, None]) & allowed
    ranks: IntArray = at_least_as_good.sum(axis=1).astype(np.int64) - 1
    return ranks


def top_k(scores: FloatArray, allowed: np.ndarray, k: int) -> IntArray:
    """The ``k`` best allowed items of each row (unordered); -1 where a row allows fewer."""
    masked = np.where(allowed, scores, -np.inf)
    top = np.argpartition(-masked, k - 1, axis=1)[:, :k].astype(np.int64)
    top[~np.take_along_axis(allowed, top, axis=1)] = -1
    return top


def hit_rate(ranks: IntArray, k: int) -> FloatArray:
    """Per user: 1 if the target is in the top ``k``."""
    return (ranks < k).astype(np.float64)


def ndcg(ranks: IntArray, k: int) -> FloatArray:
    """Per user: 1 / log2(rank + 2) if the target is in the top ``k``, else 0."""
    return np.where(ranks < k, 1.0 / np.log2(ranks + 2.0), 0.0)


def reciprocal_rank(ranks: IntArray) -> FloatArray:
    """Per user: 1 / (rank + 1)."""
    return np.asarray(1.0 / (ranks + 1.0), dtype=np.float64)


def coverage(top: IntArray, num_candidates: int) -> float:
    """Share of the candidate items that appear in at least one user's top list (-1: none)."""
    return len(np.setdiff1d(top, [-1])) / num_candidates


def point_estimates(ranks: IntArray, top: IntArray, num_candidates: int) -> dict[str, float]:
    """HR@10, nDCG@10, MRR and coverage@10 over all users."""
    return {
        "hr@10": float(hit_rate(ranks, 10).mean()),
        "ndcg@10": float(ndcg(ranks, 10).mean()),
        "mrr": float(reciprocal_rank(ranks).mean()),
        "coverage@10": coverage(top, num_candidates),
    }


def bootstrap_ci(
    ranks: IntArray,
    top: IntArray,
    num_candidates: int,
    *,
    resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap intervals of each metric, resampling users with replacement."""
    rng = np.random.default_rng(seed)
    per_user = {
        "hr@10": hit_rate(ranks, 10),
        "ndcg@10": ndcg(ranks, 10),
        "mrr": reciprocal_rank(ranks),
    }
    draws: dict[str, list[float]] = {name: [] for name in METRICS}
    for _ in range(resamples):
        pick = rng.integers(0, len(ranks), size=len(ranks))
        for name, values in per_user.items():
            draws[name].append(float(values[pick].mean()))
        draws["coverage@10"].append(coverage(top[pick], num_candidates))
    # Resampling with replacement repeats users, and repeats add nothing to a set: coverage
    # draws sit below the estimate. Its interval is their spread, re-centred on the estimate.
    estimate = coverage(top, num_candidates)
    shift = estimate - float(np.mean(draws["coverage@10"]))
    draws["coverage@10"] = [min(max(d + shift, 0.0), 1.0) for d in draws["coverage@10"]]
    tail = (1.0 - level) / 2.0 * 100.0
    return {
        name: (float(np.percentile(d, tail)), float(np.percentile(d, 100.0 - tail)))
        for name, d in draws.items()
    }
