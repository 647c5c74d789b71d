"""Distributed DP: a device's share of one DP-SGD step of the whole federation.

With record-level DP-SGD on each device (``fedrec.shared.federated.local``), every device adds
all the noise its own guarantee needs, and a round's average carries the noise of every device.
Here a round is one DP-SGD step over the sampled devices' records together, as ``fedrec
pooled`` takes it over all records in one place: each device samples each of its examples with
probability ``sample_rate`` (Poisson sampling, from a generator the server cannot predict:
``fedrec.shared.federated.randomness``), clips each sampled example's gradient at the global
weights to ``max_grad_norm``, sums them, and adds Gaussian noise of standard deviation ``sigma
* max_grad_norm / sqrt(shares)``, where ``sigma`` is the noise multiplier of the whole step and
``shares`` the fewest updates the server may aggregate (``FederationSettings.noise_shares``).
The sum of the replies then holds Gaussian noise of at least ``sigma * max_grad_norm``: one DP-
SGD step at ``sample_rate``, which every device's ledger accounts.

The device replies with its weights moved by ``-(sum + noise) / (sample_rate * n)`` for its
``n`` examples; FedAvg's average weighted by ``n`` is then the global weights moved by the
step's noised clipped gradient sum over its expected batch, ``sample_rate * sum(n)``, as Opacus
normalises it. The server steps from there (``server_momentum``, ``server_schedule``).

The guarantee holds against whoever sees only the aggregate: the published model and item
embeddings, the other devices, and a server that aggregates without looking at single replies
(secure aggregation makes that a protocol, not a promise: docs/secure-aggregation.md). A
single reply carries only its share of the noise.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from opacus import GradSampleModule
from opacus.optimizers import DPOptimizer

from fedrec.shared.federated.dp_lstm import to_per_example_lstms, to_torch_lstms
from fedrec.shared.federated.examples import DeviceExamples
from fedrec.shared.federated.local import (
    ExampleScorer,
    LocalConfig,
    PrivacyConfig,
    RoundPlan,
    plan_noise,
)
from fedrec.shared.federated.randomness import secret_generator
from fedrec.shared.model.network import Recommender, train_only


@dataclass(frozen=True)
class ShareResult:
    """What a device's share of a round produced: its examples, how many Poisson sampling
    drew, and their mean loss before the step (0 when none was drawn)."""

    num_examples: int
    sampled: int
    loss: float


def plan_step(privacy: PrivacyConfig, planned_rounds: int) -> RoundPlan:
    """A distributed round as the ledger accounts it: one step at ``privacy.sample_rate``
    with the noise multiplier that keeps ``planned_rounds`` of them within the target."""
    noise = plan_noise(privacy, privacy.sample_rate, planned_rounds)
    return RoundPlan(batch_size=0, sample_rate=privacy.sample_rate, steps=1, noise_multiplier=noise)


def share_noise_multiplier(noise_multiplier: float, shares: int) -> float:
    """The noise multiplier of one device's share: ``shares`` of them sum to
    ``noise_multiplier`` (variances add)."""
    if shares < 1:
        raise ValueError(f"shares must be at least 1, got {shares}")
    return noise_multiplier / math.sqrt(shares)


def gradient_share(
    network: Recommender,
    table: torch.Tensor,
    num_items: int,
    examples: DeviceExamples,
    local: LocalConfig,
    privacy: PrivacyConfig,
    noise_multiplier: float,
    shares: int,
    seed: int = 0,
) -> ShareResult:
    """Move ``network``'s ``local.trained`` weights in place by this device's share of one
    distributed DP-SGD step (the module docstring); ``table`` holds the item features and
    then the device's text features, as for ``train_local``. ``seed`` draws the negatives
    (public, like the catalog); the sampling and the noise come from the OS."""
    n = len(examples)
    if n == 0:
        raise ValueError("this device has no examples to train on")
    secret = secret_generator()
    chosen = torch.nonzero(torch.rand(n, generator=secret) < privacy.sample_rate).flatten()
    sampled = len(chosen)
    rows, types, lengths, targets = (
        torch.from_numpy(a)[chosen]
        for a in (examples.rows, examples.types, examples.lengths, examples.targets)
    )
    if sampled == 0:  # a zero-gradient row: the share of the noise is added all the same
        rows = types = torch.zeros((1, local.context), dtype=torch.long)
        lengths, targets = torch.ones(1, dtype=torch.long), torch.zeros(1, dtype=torch.long)
    trained = copy.deepcopy(network).train()
    to_per_example_lstms(trained)
    # after the swap, which gives the LSTM new parameter names under the same module path
    trainable = train_only(trained, local.trained)
    scorer = GradSampleModule(ExampleScorer(trained, table), loss_reduction="sum")
    optimizer = DPOptimizer(
        torch.optim.SGD(trainable, lr=1 / (privacy.sample_rate * n)),
        noise_multiplier=share_noise_multiplier(noise_multiplier, shares),
        max_grad_norm=privacy.max_grad_norm,
        expected_batch_size=1,  # the sum: the learning rate divides by the expected batch
        loss_reduction="sum",
        generator=secret,
    )
    # drawn for every example and picked by index: what a sampled example is compared with does
    # not depend on which others were sampled
    every = torch.randint(
        num_items, (n, local.negatives), generator=torch.Generator().manual_seed(seed)
    )
    negatives = every[chosen] if sampled else every[:1]
    logits = scorer(rows, types, lengths, torch.cat([targets[:, None], negatives], 1))
    losses = F.cross_entropy(logits, torch.zeros(len(targets), dtype=torch.long), reduction="none")
    loss = losses.sum() * (1.0 if sampled else 0.0)
    optimizer.zero_grad()
    loss.backward()  # type: ignore[no-untyped-call]
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    scorer._close()  # release Opacus' hooks and per-example gradients now
    to_torch_lstms(trained)
    network.load_state_dict(trained.state_dict())
    return ShareResult(num_examples=n, sampled=sampled, loss=float(loss.detach()) / max(sampled, 1))
