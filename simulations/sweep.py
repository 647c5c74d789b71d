"""A vectorised stand-in for a federation, to sweep the federated optimiser's knobs.

Every device sampled in a round trains at once: the weights carry a leading device axis, the
LSTM is unrolled by hand, and each device takes its own Adam or SGD steps over shuffled batches
of its latest examples with sampled negatives, as ``fedrec.shared.federated.local`` does
(without DP, or with record-level DP-SGD: ``SweepConfig.dp_epsilon``). The server then averages
the updates weighted by example counts and steps as FedAvg or Flower's FedAdam do, with the
same server schedule. On a GPU, 100 rounds of 122 MovieLens devices take a minute or two
instead of the 36 to 45 a federation takes on 2 cores; a configuration found here must still
be measured with ``fedrec simulate``. ``tests/test_sweep.py`` checks it against the network,
the harness and the server's strategies.

``pack`` runs where fedrec is installed; ``run`` needs only torch and fedrec itself (installed
with ``pip install --no-deps .``), so a packed file can be swept on a machine with a GPU and
nothing else::

    python -m fedrec.simulations.sweep pack movielens:../shared/data/ml-latest-small PACK.pt [N]
        [--center-features]
    python -m fedrec.simulations.sweep run PACK.pt strategy=fedadam local_optimizer=sgd ...
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F

from fedrec.shared.federated.schedule import SCHEDULES, Schedule, schedule_share
from fedrec.shared.model.network import ModelConfig, Recommender, initial_network, trained_names

if TYPE_CHECKING:  # Opacus is needed only for private sweeps
    from fedrec.shared.federated.local import RoundPlan

Weights = dict[str, torch.Tensor]
#: Copies of the weights a private step makes at once (one per example; bounds memory).
COPIES = 2048


@dataclass(frozen=True)
class SweepConfig:
    """One configuration: rounds, the share of devices sampled per round, each device's round
    (latest examples, batch, epochs, optimizer, learning rate, negatives), the server's step
    (``fedavg``, or ``fedadam`` with its learning rate and tau; ``cosine`` scales it down over
    the rounds), the parts trained (``all`` or comma-separated module paths, as
    ``local-trained``), record-level DP-SGD as devices run it when ``dp_epsilon`` > 0 (Poisson
    batches, per-example clipping to ``dp_clip``, each device's noise planned by
    ``plan_round`` for ``dp_planned_rounds`` rounds at ``dp_epsilon`` and ``dp_delta``; needs
    Opacus), the seed of sampling, batches, negatives and noise, and how often to evaluate."""

    rounds: int = 60
    fraction: float = 0.2
    max_examples: int = 128
    batch_size: int = 16
    epochs: int = 2
    local_optimizer: Literal["adam", "sgd"] = "adam"
    local_learning_rate: float = 1e-2
    negatives: int = 100
    strategy: Literal["fedavg", "fedadam"] = "fedavg"
    server_learning_rate: float = 1e-2
    server_tau: float = 1e-3
    server_schedule: Schedule = "constant"
    trained: str = "all"
    dp_epsilon: float = 0.0
    dp_delta: float = 1e-5
    dp_clip: float = 1.0
    dp_planned_rounds: int = 9
    seed: int = 0
    evaluate_every: int = 5

    def __post_init__(self) -> None:
        if self.local_optimizer not in ("adam", "sgd") or self.strategy not in (
            "fedavg",
            "fedadam",
        ):
            raise ValueError("local_optimizer must be adam or sgd, strategy fedavg or fedadam")
        if self.server_schedule not in SCHEDULES:
            raise ValueError(f"server_schedule must be one of {SCHEDULES}: {self.server_schedule}")
        if min(self.rounds, self.max_examples, self.batch_size, self.epochs) < 1:
            raise ValueError("rounds, max_examples, batch_size and epochs must be at least 1")
        if not 0 < self.fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {self.fraction}")
        if self.dp_epsilon < 0 or self.dp_clip <= 0 or self.dp_planned_rounds < 1:
            raise ValueError("dp_epsilon must be >= 0, dp_clip > 0, dp_planned_rounds >= 1")


@dataclass(frozen=True)
class SweepData:
    """What a sweep needs, as tensors: the feature table (items first), every device's latest
    examples right-aligned (``rows``/``types`` ``(N, K, context)``, ``lengths``, ``targets``
    ``(N, K)``, ``count (N,)``), the evaluated users' latest events (``history_*``), test items
    and allowed candidates ``(U, num_items)``, and the network's initial weights and
    configuration."""

    table: torch.Tensor
    num_items: int
    rows: torch.Tensor
    types: torch.Tensor
    lengths: torch.Tensor
    targets: torch.Tensor
    count: torch.Tensor
    history_rows: torch.Tensor
    history_types: torch.Tensor
    history_lengths: torch.Tensor
    test_items: torch.Tensor
    allowed: torch.Tensor
    initial: Weights
    model: ModelConfig

    def to(self, device: str) -> SweepData:
        moved = {
            f.name: getattr(self, f.name).to(device)
            for f in dataclasses.fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)
        }
        initial = {k: v.to(device) for k, v in self.initial.items()}
        return dataclasses.replace(self, **moved, initial=initial)


def pack(
    data: str,
    devices: int,
    max_examples: int = 256,
    history: int = 200,
    center_features: bool = False,
) -> SweepData:
    """The federation of ``fedrec simulate --data DATA --devices N`` (its network, seed 0
    initial weights, 20 events of context; ``center_features`` as ``--set
    model-center-features=true``) as a ``SweepData``; users' histories are cut to their latest
    ``history`` events (the LSTM forgets what came before)."""
    import numpy as np

    from fedrec.shared.federated.local import LocalConfig
    from fedrec.shared.federated.settings import FederationSettings
    from fedrec.simulations.world import federation_world

    settings = FederationSettings.for_data(data, devices=devices)
    model = dataclasses.replace(settings.model, center_features=center_features)
    settings = dataclasses.replace(settings, model=model)
    world = federation_world(settings)
    local = LocalConfig(max_examples=max_examples, context=settings.local.context)
    shape = (settings.devices, max_examples, local.context)
    rows, types = np.zeros(shape, np.int64), np.zeros(shape, np.int64)
    lengths, targets = np.ones(shape[:2], np.int64), np.zeros(shape[:2], np.int64)
    count = np.zeros(settings.devices, np.int64)
    for device in range(settings.devices):
        examples = world.examples(device, local)
        n = count[device] = len(examples)
        rows[device, -n:], types[device, -n:] = examples.rows, examples.types
        lengths[device, -n:], targets[device, -n:] = examples.lengths, examples.targets
    split, sequences = world.split, world.sequences
    users = len(split.users)
    history_rows = np.zeros((users, history), np.int64)
    history_types = np.zeros((users, history), np.int64)
    history_lengths = np.zeros(users, np.int64)
    allowed = np.broadcast_to(split.candidates, (users, split.num_items)).copy()
    for position, user in enumerate(split.users):
        span = sequences.user(int(user))
        latest = slice(max(span.start, span.stop - history), span.stop)
        n = latest.stop - latest.start
        history_rows[position, :n] = sequences.rows[latest]
        history_types[position, :n] = sequences.types[latest]
        history_lengths[position] = n
        allowed[position, split.history(position)] = False
    network = initial_network(settings.model, settings.seed, world.features.items)
    return SweepData(
        table=world.features.table.float(),
        num_items=split.num_items,
        **{
            name: torch.from_numpy(value)
            for name, value in (
                ("rows", rows),
                ("types", types),
                ("lengths", lengths),
                ("targets", targets),
                ("count", count),
                ("history_rows", history_rows),
                ("history_types", history_types),
                ("history_lengths", history_lengths),
                ("test_items", split.test_items.astype(np.int64)),
                ("allowed", allowed),
            )
        },
        initial={k: v.detach().clone() for k, v in network.state_dict().items()},
        model=settings.model,
    )


def item_vectors(weights: Weights, features: torch.Tensor) -> torch.Tensor:
    """``ItemTower`` (low-rank) per device: features ``(D, N, F)`` to unit vectors."""
    if "items.center" in weights:  # ModelConfig.center_features
        features = F.normalize(features - weights["items.center"][:, None, :], dim=-1)
    low = torch.einsum("dnf,drf->dnr", features, weights["items.project.weight"])
    expanded = torch.einsum("dnr,dfr->dnf", low, weights["items.expand.weight"])
    return F.normalize(features + expanded + weights["items.expand.bias"][:, None, :], dim=-1)


def interests(
    weights: Weights, vectors: torch.Tensor, types: torch.Tensor, lengths: torch.Tensor, window: int
) -> torch.Tensor:
    """``UserModel.final`` per device: event vectors ``(D, B, T, F)``, right-padded, to unit
    interest vectors ``(D, B, F)`` after each row's last event."""
    devices, batch, steps, _ = vectors.shape
    embedded = torch.einsum("dbtf,dhf->dbth", vectors, weights["users.embed.weight"])
    kinds = weights["users.event_type.weight"][torch.arange(devices)[:, None, None], types]
    inputs = torch.tanh(embedded + weights["users.embed.bias"][:, None, None, :] + kinds)
    gates_in = torch.einsum("dbth,dgh->dbtg", inputs, weights["users.lstm.weight_ih_l0"])
    bias = (weights["users.lstm.bias_ih_l0"] + weights["users.lstm.bias_hh_l0"])[:, None, :]
    recurrent = weights["users.lstm.weight_hh_l0"]
    hidden = vectors.new_zeros(devices, batch, recurrent.shape[-1])
    cell, pooled = torch.zeros_like(hidden), torch.zeros_like(hidden)
    position = torch.arange(steps, device=vectors.device)
    last = lengths[..., None]
    pooling = (position < last) & (position >= last - window)
    for step in range(steps):
        gates = gates_in[:, :, step] + torch.einsum("dbh,dgh->dbg", hidden, recurrent) + bias
        i, f, g, o = gates.chunk(4, dim=-1)
        cell = torch.sigmoid(f) * cell + torch.sigmoid(i) * torch.tanh(g)
        hidden = torch.sigmoid(o) * torch.tanh(cell)
        pooled = pooled + hidden * pooling[:, :, step, None]
    mean_hidden = pooled / lengths.clamp(max=window)[..., None].to(vectors.dtype)
    latest = last - window + torch.arange(window, device=vectors.device)
    index = latest.clamp(min=0)[..., None].expand(devices, batch, window, vectors.shape[-1])
    recent = torch.gather(vectors, 2, index) * (latest >= 0)[..., None]
    weighted = torch.einsum("dbwf,dw->dbf", recent, weights["users.recency.weight"][:, 0])
    projected = torch.einsum("dbh,dfh->dbf", mean_hidden, weights["users.project.weight"])
    return F.normalize(weighted + projected + weights["users.project.bias"][:, None], dim=-1)


def example_logits(
    weights: Weights,
    table: torch.Tensor,
    rows: torch.Tensor,
    types: torch.Tensor,
    lengths: torch.Tensor,
    candidates: torch.Tensor,
    temperature: float,
    window: int,
) -> torch.Tensor:
    """``ExampleScorer`` per device: logits ``(D, B, C)`` of each example's candidates."""
    devices, batch, context = rows.shape
    everything = torch.cat([rows, candidates], dim=2)
    vectors = item_vectors(weights, table[everything.reshape(devices, -1)])
    vectors = vectors.reshape(devices, batch, everything.shape[2], -1)
    interest = interests(weights, vectors[:, :, :context], types, lengths, window)
    return torch.einsum("dbf,dbkf->dbk", interest, vectors[:, :, context:]) / temperature


def evaluate(data: SweepData, weights: Weights) -> dict[str, float]:
    """HR@10 and nDCG@10 of the global ``weights`` as the harness computes them (ties count
    against the target; seen items are not candidates)."""
    stacked = {k: v[None] for k, v in weights.items()}
    with torch.no_grad():
        items = item_vectors(stacked, data.table[None])[0]
        interest = interests(
            stacked,
            items[data.history_rows][None],
            data.history_types[None],
            data.history_lengths[None],
            data.model.pool_window,
        )[0]
        scores = interest @ items[: data.num_items].T
        target = scores.gather(1, data.test_items[:, None])
        ranks = ((scores >= target) & data.allowed).sum(1) - 1
        hit = ranks < 10
        gain = torch.where(hit, 1.0 / torch.log2(ranks.double() + 2), 0.0)
    return {"hr@10": float(hit.double().mean()), "ndcg@10": float(gain.mean())}


def sweep(data: SweepData, config: SweepConfig) -> tuple[list[dict[str, Any]], Weights]:
    """Run ``config``'s federation on ``data`` (on its device): one log line per round, with
    HR@10 and nDCG@10 every ``evaluate_every`` rounds and at the end, and the final global
    weights."""
    device = data.table.device
    generator = torch.Generator().manual_seed(config.seed)
    weights = {k: v.float().clone() for k, v in data.initial.items()}
    names = list(weights)
    k = config.max_examples
    counts = data.count.cpu().clamp(max=k)
    population = len(counts)
    sampled = max(2, round(config.fraction * population))
    trained = set(trained_names(Recommender(data.model), config.trained))
    train: Callable[[SweepData, SweepConfig, Weights, _Devices, torch.Generator], Any]
    if config.dp_epsilon:
        train = functools.partial(_train_private, plans=_private_plans(config, counts))
    else:
        train = _train_devices
    moments: tuple[Weights, Weights] = ({}, {})
    log: list[dict[str, Any]] = []
    started = time.perf_counter()
    for server_round in range(1, config.rounds + 1):
        picked = torch.randperm(population, generator=generator)[:sampled]
        n = counts[picked].to(device)
        devices = _Devices.of(data, picked.to(device), n, k, trained)
        local, loss = train(data, config, weights, devices, generator)
        share = n.double() / n.sum()
        average = {
            name: torch.einsum("d,d...->...", share.float(), local[name] - weights[name][None])
            for name in names
        }
        _server_step(config, server_round, weights, average, moments)
        line: dict[str, Any] = {
            "round": server_round,
            "wall_s": time.perf_counter() - started,
            "loss": loss,
        }
        if server_round % config.evaluate_every == 0 or server_round == config.rounds:
            line.update(evaluate(data, weights))
        log.append(line)
    return log, weights


@dataclass(frozen=True)
class _Devices:
    """The devices of a round: their latest ``k`` examples (right-aligned: the last ``n[d]``
    are device d's), their example counts ``n``, and the names of the weights they train."""

    rows: torch.Tensor
    types: torch.Tensor
    lengths: torch.Tensor
    targets: torch.Tensor
    n: torch.Tensor
    trained: set[str]

    @property
    def examples(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``rows``, ``types``, ``lengths``, ``targets``."""
        return self.rows, self.types, self.lengths, self.targets

    @classmethod
    def of(
        cls, data: SweepData, picked: torch.Tensor, n: torch.Tensor, k: int, trained: set[str]
    ) -> _Devices:
        return cls(
            data.rows[picked, -k:],
            data.types[picked, -k:],
            data.lengths[picked, -k:],
            data.targets[picked, -k:],
            n,
            trained,
        )


def _train_devices(
    data: SweepData,
    config: SweepConfig,
    weights: Weights,
    round_devices: _Devices,
    generator: torch.Generator,
) -> tuple[Weights, float]:
    """Each device's weights after its local round (``(D, ...)`` per name), and the mean
    training loss over every example step."""
    rows, types, lengths, targets = round_devices.examples
    n, trained = round_devices.n, round_devices.trained
    devices, k, device = len(n), config.max_examples, data.table.device
    batch = torch.clamp(n, max=config.batch_size)
    batches = int(((n + batch - 1) // batch).max())
    local = {
        name: value[None].repeat(devices, *[1] * value.dim()).requires_grad_(name in trained)
        for name, value in weights.items()
    }
    first = {name: torch.zeros_like(local[name]) for name in trained}
    second = {name: torch.zeros_like(local[name]) for name in trained}
    steps = torch.zeros(devices, device=device)
    total, examples = torch.zeros((), device=device), 0
    slots = torch.arange(config.batch_size, device=device)
    for _ in range(config.epochs):
        keys = torch.rand((devices, k), generator=generator).to(device)
        keys[torch.arange(k, device=device)[None] >= n[:, None]] = 2.0  # the device's n first
        order = keys.argsort(dim=1)
        for step in range(batches):
            slot = step * batch[:, None] + slots[None]
            valid = (slots[None] < batch[:, None]) & (slot < n[:, None])
            index = (order.gather(1, slot.clamp(max=k - 1)) + k - n[:, None]).clamp(max=k - 1)
            context = index[..., None].expand(-1, -1, rows.shape[-1])
            negatives = torch.randint(
                data.num_items, (devices, config.batch_size, config.negatives), generator=generator
            ).to(device)
            candidates = torch.cat([targets.gather(1, index)[..., None], negatives], dim=2)
            logits = example_logits(
                local,
                data.table,
                rows.gather(1, context),
                types.gather(1, context),
                lengths.gather(1, index),
                candidates,
                data.model.temperature,
                data.model.pool_window,
            )
            losses = F.cross_entropy(
                logits.flatten(0, 1),
                logits.new_zeros(logits.shape[:2]).long().flatten(),
                reduction="none",
            ).view(devices, -1)
            taken = valid.sum(1)
            total += (losses * valid).sum().detach()
            examples += int(taken.sum())
            loss = ((losses * valid).sum(1) / taken.clamp(min=1)).sum()
            learning = {name: value for name, value in local.items() if name in trained}
            grads = torch.autograd.grad(loss, list(learning.values()))
            active = (taken > 0).float()
            steps += active
            with torch.no_grad():
                for (name, value), grad in zip(learning.items(), grads, strict=True):
                    mask = active.view(-1, *[1] * (grad.dim() - 1))
                    value -= mask * _local_step(
                        config, grad, first[name], second[name], steps, mask
                    )
    return {name: value.detach() for name, value in local.items()}, float(total) / examples


def clipped_gradients(
    weights: Weights,
    trained: set[str],
    table: torch.Tensor,
    rows: torch.Tensor,
    types: torch.Tensor,
    lengths: torch.Tensor,
    candidates: torch.Tensor,
    valid: torch.Tensor,
    clip: float,
    model: ModelConfig,
) -> tuple[Weights, torch.Tensor]:
    """Per device, the sum over its ``valid`` examples ``(D, B)`` of each example's gradient of
    its loss, clipped to norm ``clip`` over the ``trained`` weights (DP-SGD before its noise),
    and every example's loss ``(D, B)``. Each example runs on a copy of its device's weights,
    so that the gradient of the summed loss with respect to that copy is the example's own."""
    devices, batch = valid.shape
    per_example = {
        name: value.repeat_interleave(batch, dim=0).requires_grad_(name in trained)
        for name, value in weights.items()
    }
    logits = example_logits(
        per_example,
        table,
        rows.reshape(devices * batch, 1, -1),
        types.reshape(devices * batch, 1, -1),
        lengths.reshape(devices * batch, 1),
        candidates.reshape(devices * batch, 1, -1),
        model.temperature,
        model.pool_window,
    ).view(devices, batch, -1)
    losses = F.cross_entropy(
        logits.flatten(0, 1), logits.new_zeros(devices * batch).long(), reduction="none"
    ).view(devices, batch)
    names = [name for name in weights if name in trained]
    grads = torch.autograd.grad((losses * valid).sum(), [per_example[n] for n in names])
    shaped = {
        name: grad.view(devices, batch, *grad.shape[1:])
        for name, grad in zip(names, grads, strict=True)
    }
    norms = torch.stack([g.flatten(2).pow(2).sum(2) for g in shaped.values()]).sum(0).sqrt()
    factor = (clip / (norms + 1e-6)).clamp(max=1.0) * valid
    summed = {name: torch.einsum("db,db...->d...", factor, g) for name, g in shaped.items()}
    return summed, losses.detach()


def _private_plans(config: SweepConfig, counts: torch.Tensor) -> dict[int, RoundPlan]:
    """Each example count's DP round as ``plan_round`` plans it on a device (its sampling
    rate, steps and noise multiplier), computed once per sweep."""
    from fedrec.shared.federated.local import LocalConfig, PrivacyConfig, plan_round

    local = LocalConfig(batch_size=config.batch_size, epochs=config.epochs)
    privacy = PrivacyConfig(
        target_epsilon=config.dp_epsilon, delta=config.dp_delta, max_grad_norm=config.dp_clip
    )
    return {
        c: plan_round(c, local, privacy, config.dp_planned_rounds) for c in set(counts.tolist())
    }


def _train_private(
    data: SweepData,
    config: SweepConfig,
    weights: Weights,
    round_devices: _Devices,
    generator: torch.Generator,
    plans: dict[int, RoundPlan],
) -> tuple[Weights, float]:
    """``_train_devices`` under record-level DP-SGD, as Opacus runs it on a device: each step
    draws every example with the device's sampling rate (one over its number of batches),
    clips each example's gradient to ``dp_clip``, adds Gaussian noise of the device's planned
    multiplier times ``dp_clip`` to their sum and divides by the expected batch (Opacus'
    ``int(examples * rate)``). A step keeps at most twice the expected batch plus 16 of the
    examples it draws (more are drawn with negligible odds); ``plans`` by example count
    (``_private_plans``)."""
    rows, types, lengths, targets = round_devices.examples
    n, trained = round_devices.n, round_devices.trained
    devices, k, device = len(n), config.max_examples, data.table.device
    rate = torch.tensor([plans[c].sample_rate for c in n.tolist()], device=device)
    noise = torch.tensor([plans[c].noise_multiplier or 0.0 for c in n.tolist()], device=device)
    budget = torch.tensor([plans[c].steps for c in n.tolist()], device=device)
    # Opacus averages over int(examples * sample rate), at least 1 here
    expected_batch = torch.tensor(
        [max(1, int(c * plans[c].sample_rate)) for c in n.tolist()], device=device
    )
    keep = min(2 * config.batch_size + 16, k)
    local = {
        name: value[None].repeat(devices, *[1] * value.dim()) for name, value in weights.items()
    }
    first = {name: torch.zeros_like(local[name]) for name in trained}
    second = {name: torch.zeros_like(local[name]) for name in trained}
    steps = torch.zeros(devices, device=device)
    total, examples = torch.zeros((), device=device), 0
    owned = torch.arange(k, device=device)[None] >= k - n[:, None]  # right-aligned examples
    for step in range(int(budget.max())):
        active = (step < budget).float()
        drawn = (torch.rand((devices, k), generator=generator).to(device) < rate[:, None]) & owned
        drawn &= active[:, None].bool()
        order = (~drawn).float().argsort(dim=1, stable=True)[:, :keep]  # drawn examples first
        valid = drawn.gather(1, order)
        context = order[..., None].expand(-1, -1, rows.shape[-1])
        negatives = torch.randint(
            data.num_items, (devices, keep, config.negatives), generator=generator
        ).to(device)
        step_rows, step_types = rows.gather(1, context), types.gather(1, context)
        step_lengths = lengths.gather(1, order)
        candidates = torch.cat([targets.gather(1, order)[..., None], negatives], dim=2)
        chunks = torch.split(torch.arange(devices, device=device), max(1, COPIES // keep))
        parts = [
            clipped_gradients(
                {name: value[chunk] for name, value in local.items()},
                trained,
                data.table,
                step_rows[chunk],
                step_types[chunk],
                step_lengths[chunk],
                candidates[chunk],
                valid[chunk],
                config.dp_clip,
                data.model,
            )
            for chunk in chunks
        ]
        clipped = {name: torch.cat([part[0][name] for part in parts]) for name in trained}
        losses = torch.cat([part[1] for part in parts])
        total += (losses * valid).sum()
        examples += int(valid.sum())
        steps += active
        with torch.no_grad():
            for name, summed in clipped.items():
                shape = (-1, *[1] * (summed.dim() - 1))
                noised = summed + noise.view(shape) * config.dp_clip * torch.randn(
                    summed.shape, generator=generator
                ).to(device)
                expected = expected_batch.view(shape)
                mask = active.view(shape)
                step_grad = noised / expected
                local[name] = local[name] - mask * _local_step(
                    config, step_grad, first[name], second[name], steps, mask
                )
    return local, float(total) / max(examples, 1)


def _local_step(
    config: SweepConfig,
    grad: torch.Tensor,
    first: torch.Tensor,
    second: torch.Tensor,
    steps: torch.Tensor,
    mask: torch.Tensor,
) -> torch.Tensor:
    """One SGD or Adam step (PyTorch's defaults) per device; ``mask`` 0 leaves a device's
    moments as they are."""
    rate = config.local_learning_rate
    if config.local_optimizer == "sgd":
        return rate * grad
    first.mul_(1 - 0.1 * mask).add_(0.1 * mask * grad)
    second.mul_(1 - 0.001 * mask).add_(0.001 * mask * grad * grad)
    t = steps.clamp(min=1).view(-1, *[1] * (grad.dim() - 1))
    corrected = (first / (1 - 0.9**t)) / ((second / (1 - 0.999**t)).sqrt() + 1e-8)
    return rate * corrected


def _server_step(
    config: SweepConfig,
    server_round: int,
    weights: Weights,
    average: Weights,
    moments: tuple[Weights, Weights],
) -> None:
    """FedAvg (the averaged update) or Flower's FedAdam, scaled by the schedule, in place."""
    scale = schedule_share(config.server_schedule, server_round - 1, config.rounds)
    first, second = moments
    for name, delta in average.items():
        if config.strategy == "fedavg":
            weights[name] += scale * delta
            continue
        first[name] = 0.9 * first.get(name, torch.zeros_like(delta)) + 0.1 * delta
        second[name] = 0.99 * second.get(name, torch.zeros_like(delta)) + 0.01 * delta * delta
        rate = config.server_learning_rate * math.sqrt(1 - 0.99 ** (server_round + 1))
        rate /= 1 - 0.9 ** (server_round + 1)
        weights[name] += scale * rate * first[name] / (second[name].sqrt() + config.server_tau)


def _config(pairs: list[str]) -> SweepConfig:
    """``name=value`` pairs as a ``SweepConfig``; each value takes its field's type."""
    defaults = SweepConfig()
    given: dict[str, Any] = {}
    for pair in pairs:
        name, equals, text = pair.partition("=")
        if not equals or name not in {f.name for f in dataclasses.fields(SweepConfig)}:
            raise ValueError(f"expected FIELD=VALUE with a field of SweepConfig, got {pair!r}")
        given[name] = type(getattr(defaults, name))(text)
    return SweepConfig(**given)


def save(data: SweepData, path: str) -> None:
    """Write ``data`` for ``load``: a torch file of its fields, indices as int32 (half the
    size, so that a MovieLens pack travels to a GPU machine)."""
    fields = {f.name: getattr(data, f.name) for f in dataclasses.fields(data)}
    torch.save({k: _narrow(v) for k, v in fields.items()}, path)


def load(path: str, device: str = "cpu") -> SweepData:
    """The ``SweepData`` that ``save`` wrote, on ``device``."""
    fields = torch.load(path, weights_only=False)
    return SweepData(**{k: _widen(v) for k, v in fields.items()}).to(device)


def _narrow(value: Any) -> Any:
    return value.int() if isinstance(value, torch.Tensor) and value.dtype == torch.int64 else value


def _widen(value: Any) -> Any:
    return value.long() if isinstance(value, torch.Tensor) and value.dtype == torch.int32 else value


def main(argv: list[str]) -> int:
    if len(argv) >= 3 and argv[0] == "pack":
        center = "--center-features" in argv
        argv = [arg for arg in argv if arg != "--center-features"]
        devices = int(argv[3]) if len(argv) > 3 else 610
        save(pack(argv[1], devices, center_features=center), argv[2])
        return 0
    if len(argv) >= 2 and argv[0] == "run":
        config = _config(argv[2:])
        data = load(argv[1], "cuda" if torch.cuda.is_available() else "cpu")
        for line in sweep(data, config)[0]:
            print(json.dumps(line), flush=True)
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
