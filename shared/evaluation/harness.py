"""Full-catalog ranking evaluation of any model that scores items for users."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from fedrec.shared.data.dataset import FloatArray, IntArray
from fedrec.shared.evaluation.metrics import (
    METRICS,
    bootstrap_ci,
    point_estimates,
    ranks_of_targets,
    top_k,
)
from fedrec.shared.evaluation.split import Split
from fedrec.shared.files import write_json


class Recommender(Protocol):
    """A model the harness can evaluate: fitted on a split, it scores every item for users."""

    name: str

    def fit(self, split: Split) -> None:
        """Learn from ``split.fit`` (never from the test targets)."""

    def score(self, positions: IntArray) -> FloatArray:
        """Scores of all items, shape (len(positions), num_items), for the evaluated users at
        ``positions`` (indices into ``split.users``). Higher is better."""


@dataclass(frozen=True)
class EvaluationConfig:
    """How to evaluate: bootstrap size and seed, and users scored per batch (memory bound)."""

    resamples: int = 1000
    seed: int = 0
    batch_users: int = 1024

    def __post_init__(self) -> None:
        if self.resamples < 1:
            raise ValueError(f"resamples must be at least 1, got {self.resamples}")
        if self.batch_users < 1:
            raise ValueError(f"batch_users must be at least 1, got {self.batch_users}")


@dataclass(frozen=True)
class EvaluationResult:
    """Metrics with 95% bootstrap intervals, in the JSON layout of ``fedrec evaluate --json``."""

    model: str
    data: str
    split: str
    users: int
    metrics: dict[str, float]
    ci95: dict[str, tuple[float, float]]
    details: str = ""  # who was evaluated and what was left out; printed, not in the JSON

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "data": self.data,
            "split": self.split,
            "users": self.users,
            "metrics": self.metrics,
            "ci95": {name: list(bounds) for name, bounds in self.ci95.items()},
        }

    def write_json(self, path: Path | str) -> None:
        write_json(Path(path), self.to_json())

    def table(self) -> str:
        lines = [f"{self.model} on {self.data} ({self.users:,} users, {self.split})"]
        if self.details:
            lines.append(self.details)
        lines.append(f"{'metric':<13}{'value':>8}   95% CI")
        for name in METRICS:
            low, high = self.ci95[name]
            lines.append(f"{name:<13}{self.metrics[name]:>8.4f}   [{low:.4f}, {high:.4f}]")
        return "\n".join(lines)


def evaluate(
    model: Recommender, split: Split, config: EvaluationConfig | None = None
) -> EvaluationResult:
    """Rank every candidate item for each evaluated user and summarise the test ranks."""
    config = config or EvaluationConfig()
    ranks, top = rank_test_items(model, split, config.batch_users)
    num_candidates = int(split.candidates.sum())
    return EvaluationResult(
        model=model.name,
        data=split.dataset.name,
        split="temporal leave-last-out",
        users=len(split.users),
        metrics=point_estimates(ranks, top, num_candidates),
        ci95=bootstrap_ci(ranks, top, num_candidates, resamples=config.resamples, seed=config.seed),
        details=split.describe(),
    )


def rank_test_items(
    model: Recommender, split: Split, batch_users: int
) -> tuple[IntArray, IntArray]:
    """The rank of each user's test item and each user's top 10, in batches of users."""
    k = min(10, split.num_items)
    ranks = np.empty(len(split.users), dtype=np.int64)
    top = np.empty((len(split.users), k), dtype=np.int64)
    for start in range(0, len(split.users), batch_users):
        positions = np.arange(start, min(start + batch_users, len(split.users)))
        ranks[positions], top[positions] = rank_users(model, split, positions)
    return ranks, top


def rank_users(model: Recommender, split: Split, positions: IntArray) -> tuple[IntArray, IntArray]:
    """The rank of the test item of each evaluated user at ``positions`` among their candidates
    (every item they have not touched), and their top 10."""
    scores = np.asarray(model.score(positions), dtype=np.float64)
    expected = (len(positions), split.num_items)
    if scores.shape != expected:
        raise ValueError(f"{model.name} returned scores of shape {scores.shape}, not {expected}")
    if not np.isfinite(scores).all():
        raise ValueError(f"{model.name} returned NaN or infinite scores")
    allowed = np.broadcast_to(split.candidates, scores.shape).copy()
    rows = np.repeat(np.arange(len(positions)), np.diff(split.history_ptr)[positions])
    seen = np.concatenate([split.history(int(p)) for p in positions])
    allowed[rows, seen] = False
    ranks = ranks_of_targets(scores, split.test_items[positions], allowed)
    return ranks, top_k(scores, allowed, min(10, split.num_items))
