"""Training the recommender on all data in one place (the non-private upper bound), and the
adapter that lets the evaluation harness score it.

The loss is per example: at every event of a user's history, the softmax cross-entropy of the
next item over the whole catalog. Every parameter's gradient is a sum of per-example gradients.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from fedrec.shared.data.dataset import FloatArray, IntArray
from fedrec.shared.encoder.cache import encode_cached
from fedrec.shared.encoder.config import EncoderConfig
from fedrec.shared.evaluation.split import Split
from fedrec.shared.model.events import EventSequences, build_sequences
from fedrec.shared.model.network import (
    ALL_PARTS,
    ModelConfig,
    Recommender,
    initial_network,
    train_only,
)

#: Users whose interest vectors are computed at once when scoring (bounds memory).
SCORE_BATCH = 32


@dataclass(frozen=True)
class TrainConfig:
    """Central training: epochs over all users, users per batch, a random window of at most
    ``max_events`` events per user and step, at most ``loss_positions`` of its positions
    (drawn at random) in the loss, and the parts of the network trained (``trained``: ``all``
    or module paths, as in a federation's ``local-trained``)."""

    epochs: int = 20
    batch_users: int = 8
    max_events: int = 200
    loss_positions: int = 64
    learning_rate: float = 3e-3
    weight_decay: float = 0.0
    seed: int = 0
    progress: bool = False
    trained: str = ALL_PARTS

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_users", "max_events", "loss_positions"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0 < self.learning_rate < math.inf:
            raise ValueError(f"learning_rate must be a finite number > 0, got {self.learning_rate}")


@dataclass(frozen=True)
class Features:
    """Frozen-encoder features of the items (rows 0..n-1) and then of the user texts."""

    table: torch.Tensor
    num_items: int

    @property
    def items(self) -> torch.Tensor:
        """The catalog's features, ``(num_items, feature_dim)``."""
        return self.table[: self.num_items]


def encode_features(split: Split, encoder: EncoderConfig, texts: list[str]) -> Features:
    """Item texts and user texts through the frozen encoder (cached on disk)."""
    items = encode_cached(encoder, split.dataset.item_texts)
    user_texts = encode_cached(encoder, texts) if texts else items[:0]
    table = torch.from_numpy(np.concatenate([items, user_texts]))
    return Features(table, split.num_items)


def model_inputs(split: Split, encoder: EncoderConfig) -> tuple[EventSequences, Features]:
    """Every user's training events (texts written before their test item included) and the
    frozen-encoder features they point at."""
    texts = split.texts_before_test()
    features = encode_features(split, encoder, texts.texts)
    sequences = build_sequences(split.dataset.num_users, split.num_items, split.fit, texts)
    return sequences, features


@dataclass
class TrainLog:
    """Mean training loss per epoch and the wall time."""

    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0


def train_central(
    model: Recommender, sequences: EventSequences, features: Features, config: TrainConfig
) -> TrainLog:
    """Fit ``model`` to predict each next item from the events before it, over all users."""
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    optimizer = torch.optim.Adam(
        train_only(model, config.trained),
        lr=config.learning_rate,
        weight_decay=config.weight_decay,
    )
    owner = np.repeat(np.arange(sequences.num_users), sequences.lengths())
    users = np.unique(owner[sequences.next_items >= 0])
    log = TrainLog()
    start = time.perf_counter()
    model.train()
    for epoch in range(config.epochs):
        order = rng.permutation(users)
        total, count = 0.0, 0
        batches = range(0, len(order), config.batch_users)
        for first in tqdm(batches, desc=f"epoch {epoch + 1}", disable=not config.progress):
            batch = order[first : first + config.batch_users]
            types, rows, targets = _windows(
                sequences, batch, config.max_events, config.loss_positions, rng
            )
            vectors = model.items(features.table)
            interests = model.users(vectors[rows], types)
            mask = targets >= 0
            logits = model.logits(interests[mask], vectors[: features.num_items])
            loss = F.cross_entropy(logits, targets[mask], reduction="sum")
            optimizer.zero_grad()
            (loss / mask.sum()).backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            total += float(loss.detach())
            count += int(mask.sum())
        log.losses.append(total / max(count, 1))
    log.seconds = time.perf_counter() - start
    model.eval()
    return log


def _windows(
    sequences: EventSequences,
    users: IntArray,
    max_events: int,
    loss_positions: int,
    rng: np.random.Generator,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded (types, feature rows, next-item targets) for a batch of users; a history
    longer than ``max_events`` contributes a random window of that length, and targets beyond
    ``loss_positions`` random positions of it are masked (-1)."""
    spans = []
    for u in users:
        start, end = int(sequences.ptr[u]), int(sequences.ptr[u + 1])
        if end - start > max_events:
            start = int(rng.integers(start, end - max_events + 1))
            end = start + max_events
        spans.append((start, end))
    width = max(end - start for start, end in spans)
    types = np.zeros((len(spans), width), dtype=np.int64)
    rows = np.zeros((len(spans), width), dtype=np.int64)
    targets = np.full((len(spans), width), -1, dtype=np.int64)
    for i, (start, end) in enumerate(spans):
        n = end - start
        types[i, :n] = sequences.types[start:end]
        rows[i, :n] = sequences.rows[start:end]
        targets[i, :n] = sequences.next_items[start:end]
        if n > loss_positions:
            targets[i, rng.choice(n, size=n - loss_positions, replace=False)] = -1
    return torch.from_numpy(types), torch.from_numpy(rows), torch.from_numpy(targets)


class NetworkRecommender:
    """The harness adapter for a given network: scores each evaluated user from their whole
    history before the test item (texts included)."""

    def __init__(
        self, network: Recommender, encoder: EncoderConfig | None = None, name: str = "network"
    ) -> None:
        self.network = network
        self.encoder = encoder or EncoderConfig()
        self.name = name
        self._state: tuple[Split, EventSequences, torch.Tensor, torch.Tensor] | None = None

    def fit(self, split: Split) -> None:
        """Encode the split's items and texts (no training)."""
        sequences, features = model_inputs(split, self.encoder)
        self.use(split, sequences, features)

    def use(self, split: Split, sequences: EventSequences, features: Features) -> None:
        """Score with these sequences and features (already built)."""
        with torch.no_grad():
            vectors = self.network.items(features.table)
        self._state = (split, sequences, vectors, vectors[: features.num_items])

    def score(self, positions: IntArray) -> FloatArray:
        if self._state is None:
            raise RuntimeError("fit() the model first")
        split, sequences, vectors, item_vectors = self._state
        out = np.empty((len(positions), split.num_items), dtype=np.float64)
        # users of like history lengths share a batch, which is padded to its longest
        by_length = np.argsort(sequences.lengths()[split.users[positions]], kind="stable")
        for first in range(0, len(positions), SCORE_BATCH):
            batch = by_length[first : first + SCORE_BATCH]
            spans = [sequences.user(int(u)) for u in split.users[positions[batch]]]
            lengths = torch.tensor([s.stop - s.start for s in spans])
            types = torch.zeros((len(spans), int(lengths.max())), dtype=torch.long)
            rows = torch.zeros_like(types)
            for i, s in enumerate(spans):
                types[i, : lengths[i]] = torch.from_numpy(sequences.types[s])
                rows[i, : lengths[i]] = torch.from_numpy(sequences.rows[s])
            with torch.no_grad():
                interests = self.network.users.final(vectors[rows], types, lengths)
                out[batch] = (interests @ item_vectors.T).double().numpy()
        return out


class TrainedRecommender:
    """The harness adapter for central training: trains the network on the split's training
    data, then scores like :class:`NetworkRecommender`."""

    def __init__(
        self,
        model: ModelConfig | None = None,
        training: TrainConfig | None = None,
        encoder: EncoderConfig | None = None,
    ) -> None:
        self.model_config = model or ModelConfig()
        self.training = training or TrainConfig()
        self.encoder = encoder or EncoderConfig()
        self.name = "central"
        self.network: Recommender | None = None
        self.log: TrainLog | None = None
        self._scorer: NetworkRecommender | None = None

    def fit(self, split: Split) -> None:
        sequences, features = model_inputs(split, self.encoder)
        self.network = initial_network(self.model_config, self.training.seed, features.items)
        self.log = train_central(self.network, sequences, features, self.training)
        self._scorer = NetworkRecommender(self.network, self.encoder, self.name)
        self._scorer.use(split, sequences, features)

    def score(self, positions: IntArray) -> FloatArray:
        if self._scorer is None:
            raise RuntimeError("fit() the model first")
        return self._scorer.score(positions)
