"""Reference models the learned ones are judged against (docs/evaluation.md)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from fedrec.shared.data.dataset import FloatArray, IntArray
from fedrec.shared.encoder.cache import encode_cached
from fedrec.shared.encoder.config import EncoderConfig
from fedrec.shared.evaluation.harness import Recommender
from fedrec.shared.evaluation.split import Split

#: The largest catalog EASE accepts: it inverts a dense items x items matrix.
EASE_MAX_ITEMS = 40_000


class Popularity:
    """Every user gets the same ranking: interaction counts over training + validation."""

    name = "popularity"

    def __init__(self) -> None:
        self._counts: FloatArray | None = None

    def fit(self, split: Split) -> None:
        self._counts = np.bincount(split.fit.items, minlength=split.num_items).astype(np.float64)

    def score(self, positions: IntArray) -> FloatArray:
        if self._counts is None:
            raise RuntimeError("fit() the model first")
        return np.broadcast_to(self._counts, (len(positions), len(self._counts)))


class Ease:
    """EASE (Steck, 2019): a closed-form item-item model on the binary user-item matrix.

    B = I - P diagMat(1 / diag(P)) with P = (X'X + lambda I)^-1, scores = X B.
    """

    def __init__(self, l2: float = 100.0) -> None:
        if not (math.isfinite(l2) and l2 > 0):
            raise ValueError(f"EASE's lambda must be a finite positive number, got {l2}")
        self.l2 = l2
        self.name = f"ease(lambda={l2:g})"
        self._weights: FloatArray | None = None
        self._split: Split | None = None

    def fit(self, split: Split) -> None:
        if split.num_items > EASE_MAX_ITEMS:
            raise ValueError(
                f"EASE needs a dense {split.num_items:,} x {split.num_items:,} matrix; "
                f"it is limited to {EASE_MAX_ITEMS:,} items"
            )
        matrix = np.zeros((split.dataset.num_users, split.num_items), dtype=np.float64)
        matrix[split.fit.users, split.fit.items] = 1.0
        inverse = regularised_gram_inverse(matrix, self.l2)
        weights = inverse / -np.diag(inverse)
        weights[np.diag_indices_from(weights)] = 0.0
        self._weights, self._split = weights, split

    def score(self, positions: IntArray) -> FloatArray:
        if self._weights is None or self._split is None:
            raise RuntimeError("fit() the model first")
        rows = np.zeros((len(positions), self._split.num_items), dtype=np.float64)
        for row, position in enumerate(positions):
            rows[row, self._split.history(int(position))] = 1.0
        return rows @ self._weights


def regularised_gram_inverse(matrix: FloatArray, l2: float) -> FloatArray:
    """(X'X + l2 I)^-1, through the Woodbury identity when X has fewer rows than columns:
    (X'X + l2 I)^-1 = (I - X' (XX' + l2 I)^-1 X) / l2, inverting users x users, not items x items.
    """
    rows, cols = matrix.shape
    if rows >= cols:
        gram = matrix.T @ matrix
        gram[np.diag_indices_from(gram)] += l2
        return np.asarray(np.linalg.inv(gram), dtype=np.float64)
    outer = matrix @ matrix.T
    outer[np.diag_indices_from(outer)] += l2
    inverse = -(matrix.T @ np.linalg.solve(outer, matrix))
    inverse[np.diag_indices_from(inverse)] += 1.0
    return inverse / l2


class FrozenEncoder:
    """Cosine between each item's text embedding and the mean of the user's last k items.

    ``embed`` maps item texts to L2-normalised vectors (the frozen text encoder). With
    ``center`` the embeddings are first centred on the catalog's mean and renormalised, as the
    network's item tower does under ``ModelConfig.center_features``.
    """

    def __init__(
        self, embed: Callable[[list[str]], FloatArray], last: int = 5, center: bool = False
    ) -> None:
        if last < 1:
            raise ValueError(f"last must be at least 1, got {last}")
        self.last = last
        self.center = center
        self.name = f"frozen(last={last}{', centred' if center else ''})"
        self._embed = embed
        self._items: FloatArray | None = None
        self._split: Split | None = None

    def fit(self, split: Split) -> None:
        items = np.asarray(self._embed(split.dataset.item_texts), dtype=np.float64)
        if self.center:
            items = items - items.mean(axis=0)
            items /= np.maximum(np.linalg.norm(items, axis=1, keepdims=True), 1e-12)
        self._items = items
        self._split = split

    def score(self, positions: IntArray) -> FloatArray:
        if self._items is None or self._split is None:
            raise RuntimeError("fit() the model first")
        users = np.stack(
            [self._items[self._split.history(int(p))[-self.last :]].mean(axis=0) for p in positions]
        )
        users /= np.maximum(np.linalg.norm(users, axis=1, keepdims=True), 1e-12)
        return users @ self._items.T


BASELINES = ("popularity", "ease", "frozen")


@dataclass(frozen=True)
class BaselineConfig:
    """Which baseline to build, with its one knob each, and the encoder the frozen one uses."""

    name: str
    ease_lambda: float = 100.0
    frozen_last: int = 5
    frozen_center: bool = False
    encoder: EncoderConfig = field(default_factory=lambda: EncoderConfig(max_length=48))

    def __post_init__(self) -> None:
        if self.name not in BASELINES:
            raise ValueError(f"unknown model {self.name!r}: choose from {', '.join(BASELINES)}")


def make_baseline(config: BaselineConfig) -> Recommender:
    """A fresh, unfitted baseline."""
    if config.name == "popularity":
        return Popularity()
    if config.name == "ease":
        return Ease(config.ease_lambda)

    def embed(texts: list[str]) -> FloatArray:
        return encode_cached(config.encoder, texts).astype(np.float64)

    return FrozenEncoder(embed, last=config.frozen_last, center=config.frozen_center)
