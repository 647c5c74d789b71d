"""One device's local training round: DP-SGD from Opacus over its next-item examples.

The loss of an example is the softmax cross-entropy of its target against ``negatives`` items
drawn uniformly from the catalog (the same for everyone, independent of anyone's data). The
item tower runs on the example's own events and candidates, so every trainable parameter's
gradient is a sum of per-example gradients, which Opacus clips one by one and noises.
"""

from __future__ import annotations

import copy
import functools
import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from opacus import GradSampleModule, PrivacyEngine
from opacus.accountants.utils import get_noise_multiplier
from opacus.data_loader import DPDataLoader
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fedrec.shared.federated.dp_lstm import to_per_example_lstms, to_torch_lstms
from fedrec.shared.federated.examples import DeviceExamples
from fedrec.shared.federated.randomness import secret_generator
from fedrec.shared.federated.schedule import SCHEDULES, Schedule, schedule_share
from fedrec.shared.model.network import ALL_PARTS, Recommender, train_only

Accountant = Literal["rdp", "prv"]
Optimizer = Literal["adam", "sgd"]
#: Integer RDP orders: Opacus' default fractional orders cost seconds per epsilon at the high
#: sampling rates of small devices; integer orders give a valid bound in milliseconds.
RDP_ORDERS: tuple[float, ...] = (*range(2, 64), 80, 96, 128, 192, 256)


def check_dp_target(
    level: str, target_epsilon: float, delta: float, norm_name: str, norm: float
) -> None:
    """A ValueError naming the first of a DP level's target epsilon, delta and clipping norm
    (``norm_name``) that is out of range; ``level`` prefixes the message."""
    if not 0 < target_epsilon < math.inf:
        raise ValueError(f"{level}target_epsilon must be a finite number > 0, got {target_epsilon}")
    if not 0 < delta < 1:
        raise ValueError(f"{level}delta must be in (0, 1), got {delta}")
    if not 0 < norm < math.inf:
        raise ValueError(f"{level}{norm_name} must be a finite number > 0, got {norm}")


@dataclass(frozen=True)
class PrivacyConfig:
    """Record-level DP-SGD on a device. ``noise_multiplier`` None: the smallest that keeps the
    device within ``target_epsilon`` at ``delta`` after ``planned_rounds`` rounds of training.
    ``distributed``: each round is one DP-SGD step of the whole federation, to which every
    device adds a share of the noise after sampling each of its examples at ``sample_rate``
    (``fedrec.shared.federated.distributed``)."""

    enabled: bool = True
    target_epsilon: float = 8.0
    delta: float = 1e-5
    max_grad_norm: float = 1.0
    accountant: Accountant = "rdp"
    noise_multiplier: float | None = None
    distributed: bool = False
    sample_rate: float = 0.2

    def __post_init__(self) -> None:
        check_dp_target("", self.target_epsilon, self.delta, "max_grad_norm", self.max_grad_norm)
        if self.accountant not in ("rdp", "prv"):
            raise ValueError(f"accountant must be 'rdp' or 'prv', got {self.accountant!r}")
        if self.noise_multiplier is not None and not 0 < self.noise_multiplier < math.inf:
            raise ValueError(
                f"noise_multiplier must be a finite number > 0, got {self.noise_multiplier}"
            )
        if not 0 < self.sample_rate <= 1:
            raise ValueError(f"sample_rate must be in (0, 1], got {self.sample_rate}")
        if self.distributed and not self.enabled:
            raise ValueError("distributed DP needs record-level DP enabled")


@dataclass(frozen=True)
class LocalConfig:
    """A device's round: epochs over its examples, expected batch size (Poisson sampling under
    DP), the optimizer, its learning rate and how that moves over the round's steps
    (``schedule``), SGD's ``momentum``, events of context per example, sampled negatives, a
    cap on examples (the latest are kept), and the parts of the network it trains
    (``trained``: ``all`` or module paths, ``fedrec.shared.model.network.trained_names``);
    only those leave the device."""

    epochs: int = 2
    batch_size: int = 16
    learning_rate: float = 1e-2
    context: int = 20
    negatives: int = 100
    max_examples: int = 256
    optimizer: Optimizer = "adam"
    momentum: float = 0.0
    schedule: Schedule = "constant"
    trained: str = ALL_PARTS

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "context", "negatives", "max_examples"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0 < self.learning_rate < math.inf:
            raise ValueError(f"learning_rate must be a finite number > 0, got {self.learning_rate}")
        if self.optimizer not in ("adam", "sgd"):
            raise ValueError(f"optimizer must be 'adam' or 'sgd', got {self.optimizer!r}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.momentum and self.optimizer != "sgd":
            raise ValueError("momentum applies to the 'sgd' optimizer only (Adam has its own)")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if not self.trained.strip():
            raise ValueError("trained must be 'all' or comma-separated module paths, got ''")


@dataclass(frozen=True)
class RoundPlan:
    """A device's round: its expected batch, the rate at which Opacus' Poisson sampling draws
    each example (one over the number of batches), the steps, and the noise multiplier (None
    without DP)."""

    batch_size: int
    sample_rate: float
    steps: int
    noise_multiplier: float | None


@dataclass(frozen=True)
class LocalResult:
    """What a round of local training produced; ``epsilon`` is None without DP."""

    num_examples: int
    loss: float
    epsilon: float | None
    noise_multiplier: float | None
    sample_rate: float
    steps: int


class ExampleScorer(nn.Module):
    """Logits of each example's candidates ``(B, 1 + negatives)``; every input is per example."""

    def __init__(self, network: Recommender, table: torch.Tensor) -> None:
        super().__init__()
        self.network = network
        self.table: torch.Tensor
        self.register_buffer("table", table, persistent=False)

    def forward(
        self,
        rows: torch.Tensor,
        types: torch.Tensor,
        lengths: torch.Tensor,
        candidates: torch.Tensor,
    ) -> torch.Tensor:
        context = rows.shape[1]
        vectors = self.network.items(self.table[torch.cat([rows, candidates], dim=1)])
        interests = self.network.users.final(vectors[:, :context], types, lengths)
        logits = torch.einsum("bd,bkd->bk", interests, vectors[:, context:])
        return logits / self.network.config.temperature


def accountant_options(accountant: Accountant) -> dict[str, Any]:
    """Keyword arguments for the accountant's ``get_epsilon`` (the RDP orders for RDP)."""
    return {"alphas": list(RDP_ORDERS)} if accountant == "rdp" else {}


@functools.lru_cache(maxsize=1024)
def plan_noise(privacy: PrivacyConfig, sample_rate: float, steps: int) -> float:
    """The noise multiplier ``privacy`` asks for, or the smallest that meets its target.
    Cached: Opacus' search takes 0.1 s (RDP) to several seconds (PRV), and a device, or the
    devices sharing a simulation actor, plan the same rounds again and again."""
    if privacy.noise_multiplier is not None:
        return privacy.noise_multiplier
    return float(
        get_noise_multiplier(
            target_epsilon=privacy.target_epsilon,
            target_delta=privacy.delta,
            sample_rate=sample_rate,
            steps=steps,
            accountant=privacy.accountant,
            **accountant_options(privacy.accountant),
        )
    )


def plan_round(
    num_examples: int, local: LocalConfig, privacy: PrivacyConfig, planned_rounds: int
) -> RoundPlan:
    """The round a device with ``num_examples`` examples trains: the noise is the smallest
    that keeps ``planned_rounds`` such rounds within the privacy target."""
    if num_examples < 1:
        raise ValueError("this device has no examples to train on")
    batch = min(local.batch_size, num_examples)
    batches = math.ceil(num_examples / batch)
    steps = local.epochs * batches
    noise = None
    if privacy.enabled:
        noise = plan_noise(privacy, 1 / batches, planned_rounds * steps)
    return RoundPlan(batch, 1 / batches, steps, noise)


def train_local(
    network: Recommender,
    table: torch.Tensor,
    num_items: int,
    examples: DeviceExamples,
    local: LocalConfig,
    privacy: PrivacyConfig,
    plan: RoundPlan,
    seed: int = 0,
    device: str = "cpu",
) -> LocalResult:
    """Train ``network`` in place on ``examples`` for one round as ``plan`` (``plan_round``)
    says; ``table`` holds the item features (rows ``0..num_items-1``) and then the device's
    text features; under DP, ``epsilon`` is this round's alone (a device accounts its history
    in its ledger, ``fedrec.shared.federated.ledger``). The round computes on torch ``device``
    (a GPU for ``fedrec pooled``); the sampling of batches and negatives does not depend on
    it."""
    if len(examples) == 0:
        raise ValueError("this device has no examples to train on")
    generator = torch.Generator().manual_seed(seed)
    data = TensorDataset(
        *(torch.from_numpy(a) for a in (examples.rows, examples.types, examples.lengths)),
        torch.from_numpy(examples.targets),
        torch.arange(len(examples)),  # each example's index: its negatives under DP
    )
    loader = DataLoader(data, batch_size=plan.batch_size, shuffle=True, generator=generator)
    trained = copy.deepcopy(network).train()
    engine = None
    if privacy.enabled:
        to_per_example_lstms(trained)  # per-example gradients in one product over time
        engine = PrivacyEngine(accountant=privacy.accountant)
    scorer: nn.Module = ExampleScorer(trained, table).to(device)
    # after the swap, which gives the LSTM new parameter names under the same module path
    trainable = train_only(trained, local.trained)
    optimizer: torch.optim.Optimizer = (
        torch.optim.SGD(trainable, lr=local.learning_rate, momentum=local.momentum)
        if local.optimizer == "sgd"
        else torch.optim.Adam(trainable, lr=local.learning_rate)
    )
    if engine is not None:
        # Sampling and noise the server cannot predict: from the OS, never from ``seed``.
        loader = DPDataLoader.from_data_loader(loader, generator=secret_generator())
        scorer, optimizer, loader = engine.make_private(
            module=scorer,
            optimizer=optimizer,
            data_loader=loader,
            noise_multiplier=plan.noise_multiplier,
            max_grad_norm=privacy.max_grad_norm,
            poisson_sampling=False,  # the loader above samples, from the secret generator
            noise_generator=secret_generator(device),
        )
        if isinstance(scorer, GradSampleModule):  # as make_private does when it samples itself
            scorer.forbid_grad_accumulation()
    rate = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: schedule_share(local.schedule, step, plan.steps)
    )
    total, count, steps = 0.0, 0, 0
    for _ in range(local.epochs):
        for rows, types, lengths, targets, index in loader:
            n = len(targets)
            if n == 0:  # Poisson sampling drew no example: a zero-gradient row, still noised
                rows = types = torch.zeros((1, local.context), dtype=torch.long)
                lengths, targets = torch.ones(1, dtype=torch.long), torch.zeros(1, dtype=torch.long)
                index = torch.zeros(1, dtype=torch.long)
            if engine is not None:
                # Negatives drawn for every example and picked by its index: what a sampled
                # example is compared with does not depend on which others the secret batch
                # holds, so one record changes one clipped gradient, as DP-SGD's analysis needs.
                every = (len(examples), local.negatives)
                negatives = torch.randint(num_items, every, generator=generator)[index]
            else:
                negatives = torch.randint(
                    num_items, (len(targets), local.negatives), generator=generator
                )
            candidates = torch.cat([targets[:, None], negatives], 1)
            inputs = (t.to(device) for t in (rows, types, lengths, candidates))
            logits = scorer(*inputs)
            zero = torch.zeros(len(targets), dtype=torch.long, device=device)
            loss = F.cross_entropy(logits, zero) * (1.0 if n else 0.0)
            optimizer.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            rate.step()
            steps += 1
            total += float(loss.detach()) * n
            count += n
    to_torch_lstms(trained)
    network.load_state_dict(trained.state_dict())
    if isinstance(scorer, GradSampleModule):
        # Opacus' hooks hold the per-example gradients in reference cycles, which only a
        # full garbage collection frees: release them now (without this, a Ray actor grew
        # from 0.7 to 2.0 GB over 50 devices' rounds on MovieLens)
        optimizer.zero_grad(set_to_none=True)
        scorer._close()
    epsilon = None
    if engine is not None:
        options = accountant_options(privacy.accountant)
        epsilon = float(engine.accountant.get_epsilon(privacy.delta, **options))
    return LocalResult(
        num_examples=len(examples),
        loss=total / max(count, 1),
        epsilon=epsilon,
        noise_multiplier=plan.noise_multiplier,
        sample_rate=plan.sample_rate,
        steps=steps,
    )
