"""The recommender network: item tower, LSTM user model with average pooling, cosine score.

The item tower maps frozen text-encoder features (384-d for MiniLM) to unit item vectors. The
user model reads events as item-space vectors: the vector of the item the user touched, or the
item tower applied to a text the user wrote. So a device needs only the item vectors the server
publishes, the encoder for its own texts, and the two towers' weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

#: Event types: the user interacted with an item, or wrote a text.
ITEM_EVENT, TEXT_EVENT = 0, 1


@dataclass(frozen=True)
class ModelConfig:
    """Sizes of the network and the temperature of its softmax over cosine scores."""

    feature_dim: int = 384
    item_dim: int = 384
    hidden_dim: int = 256
    temperature: float = 0.05

    def __post_init__(self) -> None:
        for name in ("feature_dim", "item_dim", "hidden_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0 < self.temperature <= 1:
            raise ValueError(f"temperature must be in (0, 1], got {self.temperature}")


class ItemTower(nn.Module):
    """Item text features to unit item vectors: a linear map that starts as the identity (when
    the sizes match), so an untrained tower ranks like the frozen encoder."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.project = nn.Linear(config.feature_dim, config.item_dim)
        if config.feature_dim == config.item_dim:
            with torch.no_grad():
                self.project.weight.copy_(torch.eye(config.item_dim))
                self.project.bias.zero_()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.project(features), dim=-1)


class UserState(NamedTuple):
    """What the user model carries from one event to the next: the LSTM's state and the running
    sum of its hidden states (average pooling needs no history)."""

    hidden: torch.Tensor  # (1, B, H)
    cell: torch.Tensor  # (1, B, H)
    hidden_sum: torch.Tensor  # (B, H)
    events: torch.Tensor  # (B,) how many events so far


class UserModel(nn.Module):
    """Events in time order to the user's interest vector.

    Each event vector passes a linear input layer plus an embedding of its type, then an LSTM.
    The interest vector after event t is the mean of hidden states 1..t projected into item
    space and normalised (average pooling).
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Linear(config.item_dim, config.hidden_dim)
        self.event_type = nn.Embedding(2, config.hidden_dim)
        self.lstm = nn.LSTM(config.hidden_dim, config.hidden_dim, batch_first=True)
        self.project = nn.Linear(config.hidden_dim, config.item_dim)

    def _inputs(self, features: torch.Tensor, types: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.embed(features) + self.event_type(types))

    def forward(self, features: torch.Tensor, types: torch.Tensor) -> torch.Tensor:
        """Unit interest vectors after every event, ``(B, T, item_dim)``, for right-padded event
        vectors ``(B, T, item_dim)`` and ``types (B, T)``; padding comes after the events and
        never affects earlier positions."""
        hidden, _ = self.lstm(self._inputs(features, types))
        steps = torch.arange(1, hidden.shape[1] + 1, device=hidden.device, dtype=hidden.dtype)
        steps = steps[None, :, None]
        return self._pooled(hidden.cumsum(dim=1) / steps)

    def _pooled(self, mean_hidden: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.project(mean_hidden), dim=-1)

    def final(
        self, vectors: torch.Tensor, types: torch.Tensor, lengths: torch.Tensor
    ) -> torch.Tensor:
        """Unit interest vectors after each row's last event, ``(B, item_dim)``, for right-padded
        input of ``lengths[b] >= 1`` events per row (the hidden states are pooled, not kept)."""
        hidden, _ = self.lstm(self._inputs(vectors, types))
        valid = torch.arange(hidden.shape[1], device=hidden.device)[None, :] < lengths[:, None]
        valid = valid[:, :, None]
        count = lengths[:, None].to(hidden.dtype)
        return self._pooled((hidden * valid).sum(dim=1) / count)

    def start(self, batch: int = 1) -> UserState:
        """The state before any event."""
        zeros = self.project.weight.new_zeros((1, batch, self.config.hidden_dim))
        return UserState(zeros, zeros.clone(), zeros[0].clone(), zeros.new_zeros(batch))

    def step(self, state: UserState, features: torch.Tensor, types: torch.Tensor) -> UserState:
        """The state after one more event per row: vectors ``(B, item_dim)``, ``types (B,)``."""
        out, (hidden, cell) = self.lstm(
            self._inputs(features, types)[:, None, :], (state.hidden, state.cell)
        )
        return UserState(hidden, cell, state.hidden_sum + out[:, 0], state.events + 1)

    def interest(self, state: UserState) -> torch.Tensor:
        """Unit interest vectors ``(B, item_dim)`` for a state with at least one event."""
        if bool((state.events < 1).any()):
            raise ValueError("the interest vector needs at least one event")
        return self._pooled(state.hidden_sum / state.events[:, None])


class Recommender(nn.Module):
    """The two towers together; scores are cosine similarities."""

    def __init__(self, config: ModelConfig | None = None) -> None:
        super().__init__()
        self.config = config or ModelConfig()
        self.items = ItemTower(self.config)
        self.users = UserModel(self.config)

    def logits(self, interests: torch.Tensor, item_vectors: torch.Tensor) -> torch.Tensor:
        """Cosine scores divided by the temperature, ``(..., num_items)``."""
        return interests @ item_vectors.T / self.config.temperature
