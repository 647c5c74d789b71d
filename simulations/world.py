"""The data behind a simulated federation: which user each virtual device is, the features of
the public catalog and of every user's texts, and the held-out split the server evaluates on.

In a real deployment none of this exists in one place: each device holds its own part. The
simulation builds it once per process (cached) and hands each ClientApp only its user's part.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from fedrec.shared.data.dataset import IntArray
from fedrec.shared.data.spec import load_data
from fedrec.shared.encoder.config import EncoderConfig
from fedrec.shared.evaluation.split import Split, temporal_split
from fedrec.shared.federated.examples import DeviceExamples, device_examples
from fedrec.shared.federated.local import LocalConfig
from fedrec.shared.federated.settings import FederationSettings
from fedrec.shared.model.events import EventSequences
from fedrec.shared.model.network import Recommender
from fedrec.shared.model.training import Features, NetworkRecommender, model_inputs


@dataclass(frozen=True)
class World:
    """A data set split for evaluation, its event sequences and features, and device users."""

    split: Split
    sequences: EventSequences
    features: Features
    device_users: IntArray

    def user_of(self, partition: int) -> int:
        """The user that virtual device ``partition`` belongs to."""
        if not 0 <= partition < len(self.device_users):
            raise ValueError(f"no device {partition}: this federation has {len(self.device_users)}")
        return int(self.device_users[partition])

    def position_of(self, partition: int) -> int:
        """Where device ``partition``'s user is in ``split.users`` (its held-out test item)."""
        user = self.user_of(partition)
        position = int(np.searchsorted(self.split.users, user))
        if position == len(self.split.users) or self.split.users[position] != user:
            raise ValueError(f"device {partition} has no held-out item to evaluate on")
        return position

    def recommender(self, network: Recommender, name: str) -> NetworkRecommender:
        """The harness adapter that ranks with ``network`` (put in eval mode) over this world's
        histories, texts and catalog."""
        scorer = NetworkRecommender(network.eval(), name=name)
        scorer.use(self.split, self.sequences, self.features)
        return scorer

    def examples(self, partition: int, local: LocalConfig) -> DeviceExamples:
        """Device ``partition``'s training examples (its training events only)."""
        return device_examples(
            self.sequences, self.user_of(partition), local.context, local.max_examples
        )


@functools.lru_cache(maxsize=2)
def load_world(data: str, devices: int) -> World:
    """The world for data spec ``data`` with the first ``devices`` users that have training
    examples as devices (at most every user)."""
    dataset = load_data(data)
    split = temporal_split(dataset)
    sequences, features = model_inputs(split, EncoderConfig())
    owner = np.repeat(np.arange(dataset.num_users), sequences.lengths())
    trainable = np.unique(owner[sequences.next_items >= 0])
    if devices > len(trainable):
        raise ValueError(
            f"{data} has {len(trainable)} users with training data; cannot make {devices} devices"
        )
    return World(split, sequences, features, trainable[:devices])


def federation_world(settings: FederationSettings) -> World:
    """The world of federation ``settings`` (``load_world``), whose item and text features
    must be as wide as its network's input."""
    world = load_world(settings.data, settings.devices)
    width = world.features.table.shape[1]
    if settings.model.feature_dim != width:
        raise ValueError(
            f"model-feature-dim is {settings.model.feature_dim}, but the encoder's features "
            f"have {width} dimensions"
        )
    return world
