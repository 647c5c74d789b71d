"""The recommender network: item tower, LSTM user model with average pooling, cosine score.

The item tower maps frozen text-encoder features (384-d for MiniLM) to unit item vectors. The
user model reads events as item-space vectors: the vector of the item the user touched, or the
item tower applied to a text the user wrote. So a device needs only the item vectors the server
publishes, the encoder for its own texts, and the two towers' weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

#: Event types: the user interacted with an item, or wrote a text.
ITEM_EVENT, TEXT_EVENT = 0, 1


@dataclass(frozen=True)
class ModelConfig:
    """Sizes of the network, the temperature of its softmax over cosine scores, how many of the
    latest events the interest vector pools (``pool_window``), how many of them the untrained
    interest vector averages (``start_events``: the frozen-encoder baseline), and the rank of
    the item tower's trainable part (``item_rank``; 0 trains the whole linear map). With
    ``center_features`` the item tower first subtracts the public catalog's mean feature from
    every feature and renormalises: sentence encoders' features share one direction (the
    mean of MiniLM's unit features on MovieLens has norm 0.54), which crowds every cosine
    score near one value and slows SGD under DP (docs/model.md)."""

    feature_dim: int = 384
    item_dim: int = 384
    hidden_dim: int = 256
    temperature: float = 0.05
    pool_window: int = 20
    start_events: int = 5
    item_rank: int = 0
    center_features: bool = False

    def __post_init__(self) -> None:
        for name in ("feature_dim", "item_dim", "hidden_dim", "pool_window", "start_events"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0 < self.temperature <= 1:
            raise ValueError(f"temperature must be in (0, 1], got {self.temperature}")
        if self.start_events > self.pool_window:
            raise ValueError(
                f"start_events ({self.start_events}) cannot exceed pool_window ({self.pool_window})"
            )
        if self.item_rank < 0:
            raise ValueError(f"item_rank must be >= 0, got {self.item_rank}")
        if self.item_rank and self.feature_dim != self.item_dim:
            raise ValueError("a low-rank item tower (item_rank > 0) needs feature_dim == item_dim")


class ItemTower(nn.Module):
    """Item text features to unit item vectors: a linear map that starts as the identity (when
    the sizes match), so an untrained tower ranks like the frozen encoder. With ``item_rank``
    r > 0 the map is the identity plus a trainable rank-r term (a low-rank adapter on top of
    the frozen encoder: ``2 r d`` parameters instead of ``d**2``). With
    ``config.center_features`` it centres the features on the catalog's mean first (the
    ``center`` buffer, set by ``center_on``; a frozen weight that travels with the network)."""

    center: torch.Tensor | None

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        rank = config.item_rank
        self.register_buffer(
            "center",
            torch.full((config.feature_dim,), math.nan) if config.center_features else None,
        )
        #: whether ``center`` holds a finite mean: checked where it is set or loaded, not on
        #: every forward (which would make a GPU wait for each batch)
        self._center_set = False
        self.register_load_state_dict_post_hook(ItemTower._note_loaded_center)  # type: ignore[no-untyped-call]
        self.project = nn.Linear(config.feature_dim, rank or config.item_dim, bias=not rank)
        self.expand = nn.Linear(rank, config.item_dim) if rank else None
        with torch.no_grad():
            if self.expand is not None:
                self.expand.weight.zero_()
                self.expand.bias.zero_()
            elif config.feature_dim == config.item_dim:
                self.project.weight.copy_(torch.eye(config.item_dim))
                self.project.bias.zero_()

    def center_on(self, catalog: torch.Tensor) -> None:
        """Centre on the mean of the catalog's features ``catalog (num_items, feature_dim)``."""
        if self.center is None:
            raise ValueError("this item tower does not centre its features (center_features)")
        if catalog.ndim != 2 or catalog.shape[1] != self.center.shape[0] or not len(catalog):
            raise ValueError(
                f"the catalog's features must be (items, {self.center.shape[0]}), "
                f"got {tuple(catalog.shape)}"
            )
        mean = catalog.double().mean(dim=0)
        if not torch.isfinite(mean).all():
            raise ValueError("the catalog's features are not finite")
        self.center.copy_(mean.to(self.center.dtype))
        self._center_set = True

    @staticmethod
    def _note_loaded_center(module: nn.Module, _incompatible: object) -> None:
        if isinstance(module, ItemTower) and module.center is not None:
            module._center_set = bool(torch.isfinite(module.center).all())

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.center is not None:
            if not self._center_set:
                raise RuntimeError(
                    "the item tower centres features on the catalog's mean, which was never "
                    "set: build the network with initial_network(..., catalog=...)"
                )
            features = F.normalize(features - self.center, dim=-1)
        if self.expand is None:
            return F.normalize(self.project(features), dim=-1)
        return F.normalize(features + self.expand(self.project(features)), dim=-1)


class UserState(NamedTuple):
    """What the user model carries from one event to the next: the LSTM's state, its latest
    ``pool_window`` hidden states and event vectors (pooling needs no older history)."""

    hidden: torch.Tensor  # (1, B, H)
    cell: torch.Tensor  # (1, B, H)
    recent: torch.Tensor  # (B, W, H), oldest first; zeros before the first W events
    inputs: torch.Tensor  # (B, W, item_dim), the event vectors of the same events
    events: torch.Tensor  # (B,) how many events so far


class UserModel(nn.Module):
    """Events in time order to the user's interest vector.

    Each event vector passes a linear input layer plus an embedding of its type, then an LSTM.
    The interest vector after event t is, normalised, a learned weighting of the event vectors
    of the latest ``pool_window`` events up to t (the residual path) plus the mean of their
    hidden states projected into item space (average pooling). The weighting starts as the mean
    of the latest ``start_events`` and the projection at zero, so an untrained model ranks like
    the frozen encoder's recent items and training starts from that baseline.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Linear(config.item_dim, config.hidden_dim)
        self.event_type = nn.Embedding(2, config.hidden_dim)
        self.lstm = nn.LSTM(config.hidden_dim, config.hidden_dim, batch_first=True)
        self.project = nn.Linear(config.hidden_dim, config.item_dim)
        #: weight of each of the latest ``pool_window`` event vectors, oldest first
        self.recency = nn.Linear(config.pool_window, 1, bias=False)
        with torch.no_grad():
            # Event vectors are unit vectors: unit-variance weights give the LSTM inputs of unit
            # scale that differ between events. PyTorch's default (about 1/sqrt(d)) with an N(0, 1)
            # type embedding makes every input nearly the same, and training then sits for
            # epochs at the loss of a uniform guess.
            self.embed.weight.normal_(0.0, 1.0)
            self.embed.bias.zero_()
            self.event_type.weight.normal_(0.0, 0.1)
            self.project.weight.zero_()
            self.project.bias.zero_()
            self.recency.weight.zero_()
            self.recency.weight[0, -config.start_events :] = 1.0 / config.start_events

    def _inputs(self, features: torch.Tensor, types: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.embed(features) + self.event_type(types))

    def forward(self, features: torch.Tensor, types: torch.Tensor) -> torch.Tensor:
        """Unit interest vectors after every event, ``(B, T, item_dim)``, for right-padded event
        vectors ``(B, T, item_dim)`` and ``types (B, T)``; padding comes after the events and
        never affects earlier positions."""
        hidden, _ = self.lstm(self._inputs(features, types))
        window = self.config.pool_window
        total = hidden.cumsum(dim=1)
        if hidden.shape[1] > window:
            total = torch.cat([total[:, :window], total[:, window:] - total[:, :-window]], dim=1)
        steps = torch.arange(1, hidden.shape[1] + 1, device=hidden.device, dtype=hidden.dtype)
        # (B, T, item_dim, W): the event vectors of the window ending at each position
        windows = F.pad(features, (0, 0, window - 1, 0)).unfold(1, window, 1)
        return self._pooled(total / steps.clamp(max=window)[None, :, None], windows)

    def _pooled(self, mean_hidden: torch.Tensor, windows: torch.Tensor) -> torch.Tensor:
        """``windows (..., item_dim, W)``: each row's latest event vectors, oldest first."""
        return F.normalize(self.recency(windows)[..., 0] + self.project(mean_hidden), dim=-1)

    def final(
        self, vectors: torch.Tensor, types: torch.Tensor, lengths: torch.Tensor
    ) -> torch.Tensor:
        """Unit interest vectors after each row's last event, ``(B, item_dim)``, for right-padded
        input of ``lengths[b] >= 1`` events per row (the hidden states are pooled, not kept)."""
        hidden, _ = self.lstm(self._inputs(vectors, types))
        window = self.config.pool_window
        position = torch.arange(hidden.shape[1], device=hidden.device)[None, :]
        last = lengths[:, None]
        valid = (position < last) & (position >= last - window)
        count = lengths.clamp(max=window)[:, None].to(hidden.dtype)
        mean_hidden = (hidden * valid[:, :, None]).sum(dim=1) / count
        latest = last - window + torch.arange(window, device=hidden.device)[None, :]  # (B, W)
        gathered = vectors[torch.arange(len(vectors))[:, None], latest.clamp(min=0)]
        windows = (gathered * (latest >= 0)[:, :, None]).transpose(1, 2)
        return self._pooled(mean_hidden, windows)

    def start(self, batch: int = 1) -> UserState:
        """The state before any event."""
        zeros = self.project.weight.new_zeros((1, batch, self.config.hidden_dim))
        window = self.config.pool_window
        recent = zeros.new_zeros((batch, window, self.config.hidden_dim))
        inputs = zeros.new_zeros((batch, window, self.config.item_dim))
        return UserState(zeros, zeros.clone(), recent, inputs, zeros.new_zeros(batch))

    def step(self, state: UserState, features: torch.Tensor, types: torch.Tensor) -> UserState:
        """The state after one more event per row: vectors ``(B, item_dim)``, ``types (B,)``."""
        out, (hidden, cell) = self.lstm(
            self._inputs(features, types)[:, None, :], (state.hidden, state.cell)
        )
        recent = torch.cat([state.recent[:, 1:], out], dim=1)
        inputs = torch.cat([state.inputs[:, 1:], features[:, None, :]], dim=1)
        return UserState(hidden, cell, recent, inputs, state.events + 1)

    def interest(self, state: UserState) -> torch.Tensor:
        """Unit interest vectors ``(B, item_dim)`` for a state with at least one event."""
        if bool((state.events < 1).any()):
            raise ValueError("the interest vector needs at least one event")
        count = state.events.clamp(max=self.config.pool_window)[:, None]
        return self._pooled(state.recent.sum(dim=1) / count, state.inputs.transpose(1, 2))


#: ``trained`` value that trains every parameter.
ALL_PARTS = "all"


def trained_names(network: nn.Module, parts: str) -> list[str]:
    """Names of the parameters of ``network`` that ``parts`` selects: ``all``, or comma-separated
    module paths (``items,users.recency``); a path that names no module is an error."""
    names = [name for name, _ in network.named_parameters()]
    if parts == ALL_PARTS:
        return names
    paths = [path.strip() for path in parts.split(",")]
    modules = {name for name, _ in network.named_modules() if name}
    unknown = [path for path in paths if path not in modules]
    if unknown:
        raise ValueError(f"trained parts {unknown} name no module; modules: {sorted(modules)}")
    return [n for n in names if any(n.startswith(f"{path}.") for path in paths)]


def train_only(network: nn.Module, parts: str) -> list[nn.Parameter]:
    """Freeze every parameter of ``network`` that ``parts`` does not select (so no gradient is
    computed for it); the parameters left to train."""
    selected = set(trained_names(network, parts))
    for name, parameter in network.named_parameters():
        parameter.requires_grad_(name in selected)
    return [p for name, p in network.named_parameters() if name in selected]


def split_state(
    network: nn.Module, parts: str
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The network's weights as two state dicts: the ``parts`` trained (``trained_names``) and
    the frozen rest."""
    state = network.state_dict()
    trained = set(trained_names(network, parts))
    return (
        {k: v for k, v in state.items() if k in trained},
        {k: v for k, v in state.items() if k not in trained},
    )


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


def initial_network(
    config: ModelConfig, seed: int, catalog: torch.Tensor | None = None
) -> Recommender:
    """The network a run starts from: ``config``'s initial weights drawn after seeding torch's
    global generator with ``seed`` (the server, the devices' plans and the measurements share
    them), centred on the features of the public ``catalog`` where ``config.center_features``
    asks for it (an error without them)."""
    torch.manual_seed(seed)
    network = Recommender(config)
    if config.center_features:
        if catalog is None:
            raise ValueError("center_features needs the catalog's features to centre on")
        network.items.center_on(catalog)
    return network
