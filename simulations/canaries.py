"""Canaries for the empirical privacy audit (``fedrec.simulations.audit``): plant them in
some devices' data, and measure how well an attacker who sees only what the server publishes
(the global model and the item embeddings) tells planted canaries from ones never planted
(membership inference).

A canary is a made-up habit: "after item a, item b", with a and b drawn at random from the
catalog. Half of the canaries are planted, each in one device, as ``repeats`` extra training
examples (context: item a; target: item b); the other half are controls, never seen by anyone.
The attacker scores every canary by the rank of b among all items for a user whose only event
is a, under the published model; a planted habit the model memorised ranks b higher. The audit
reports the AUC of that score between planted canaries and controls (0.5: no better than a
coin) and the mean ranks. ``repeats`` examples are ``repeats`` records: record-level DP
protects them as a group, at up to ``repeats`` times the epsilon.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch

from fedrec.shared.federated.examples import DeviceExamples
from fedrec.shared.model.network import ITEM_EVENT, Recommender


@dataclass(frozen=True)
class Canary:
    """Context item ``context``, then target item ``target``; planted in device ``device``
    (a partition), or a control (None)."""

    context: int
    target: int
    device: int | None


@dataclass(frozen=True)
class AuditResult:
    """What the attacker achieves: membership AUC and the mean rank of canary targets."""

    auc: float
    planted_mean_rank: float
    control_mean_rank: float
    planted: int
    controls: int


def make_canaries(num_items: int, devices: int, count: int, seed: int) -> list[Canary]:
    """``count`` canaries planted in devices 0..count-1 and ``count`` controls."""
    if not 1 <= count <= devices:
        raise ValueError(f"canaries must be between 1 and the {devices} devices, got {count}")
    rng = np.random.default_rng([seed, 0xCA7A])
    pairs = rng.choice(num_items, size=(2 * count, 2), replace=True)
    pairs[:, 1] = np.where(pairs[:, 1] == pairs[:, 0], (pairs[:, 1] + 1) % num_items, pairs[:, 1])
    return [Canary(int(a), int(b), i if i < count else None) for i, (a, b) in enumerate(pairs)]


def plant(
    examples: DeviceExamples,
    canaries: list[Canary],
    device: int,
    repeats: int,
    max_examples: int,
) -> DeviceExamples:
    """Device ``device``'s examples with its canaries' ``repeats`` copies appended, as its
    latest examples: the oldest of its own make room, so that it still trains on at most
    ``max_examples`` (what the server accepts from a device)."""
    mine = [c for c in canaries if c.device == device]
    if not mine:
        return examples
    if len(mine) * repeats > max_examples:
        raise ValueError(
            f"{len(mine)} canaries planted {repeats} times do not fit a device's "
            f"{max_examples} examples"
        )
    context = examples.rows.shape[1]
    rows = np.zeros((len(mine) * repeats, context), dtype=np.int64)
    rows[:, 0] = np.repeat([c.context for c in mine], repeats)
    targets = np.repeat([c.target for c in mine], repeats).astype(np.int64)
    keep = slice(-max_examples, None)
    return DeviceExamples(
        rows=np.concatenate([examples.rows, rows])[keep],
        types=np.concatenate([examples.types, np.full_like(rows, ITEM_EVENT)])[keep],
        lengths=np.concatenate([examples.lengths, np.ones(len(targets), dtype=np.int64)])[keep],
        targets=np.concatenate([examples.targets, targets])[keep],
    )


def audit(network: Recommender, item_features: torch.Tensor, canaries: list[Canary]) -> AuditResult:
    """The attack on the published model: rank of each canary's target after its context."""
    with torch.no_grad():
        vectors = network.eval().items(item_features)
        contexts = torch.tensor([c.context for c in canaries])
        interests = network.users.final(
            vectors[contexts][:, None, :],
            torch.full((len(canaries), 1), ITEM_EVENT),
            torch.ones(len(canaries), dtype=torch.long),
        )
        scores = interests @ vectors.T
    scores[torch.arange(len(canaries)), contexts] = -torch.inf  # the context itself is seen
    targets = torch.tensor([c.target for c in canaries])
    ranks = (scores > scores[torch.arange(len(canaries)), targets][:, None]).sum(dim=1).numpy()
    planted = np.array([c.device is not None for c in canaries])
    return AuditResult(
        auc=_auc(-ranks[planted], -ranks[~planted]),
        planted_mean_rank=float(ranks[planted].mean()),
        control_mean_rank=float(ranks[~planted].mean()),
        planted=int(planted.sum()),
        controls=int((~planted).sum()),
    )


def _auc(positives: npt.NDArray[np.int64], negatives: npt.NDArray[np.int64]) -> float:
    """P(a positive scores above a negative), ties counting one half (Mann-Whitney)."""
    greater = (positives[:, None] > negatives[None, :]).mean()
    ties = (positives[:, None] == negatives[None, :]).mean()
    return float(greater + ties / 2)
