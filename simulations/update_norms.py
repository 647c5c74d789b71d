"""How long a device's round update is, without DP: the planning tool for user-level DP's
clipping norm (``user-dp-clipping-norm``).

At the federation's initial weights (seeded as the server seeds them), each of a sample of
devices trains one round as ``settings.local`` says, without DP, on its own examples; its
update is its new weights minus the initial ones over the trained parameters. The report gives
the updates' norms and, for each clipping norm C, ``kept``: the norm of the mean of the
updates clipped to C, over C. That is the share of C the server's average keeps: near 1 when
the updates agree and reach C, small when C clips nothing (the noise, which scales with C,
then buys no signal) or when the updates cancel.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from fedrec.shared.federated.local import PrivacyConfig, plan_round, train_local
from fedrec.shared.federated.settings import FederationSettings
from fedrec.shared.model.network import Recommender, initial_network, trained_names
from fedrec.simulations.world import federation_world


@dataclass(frozen=True)
class UpdateNorms:
    """The round updates of ``len(norms)`` sampled devices over ``parameters`` trained
    parameters (``trained``): their norms, by device, and ``kept`` by clipping norm."""

    trained: str
    parameters: int
    devices: list[int]
    norms: list[float]
    kept: dict[float, float]

    def lines(self) -> list[str]:
        low, median, high = np.percentile(self.norms, [10, 50, 90])
        return [
            f"{self.trained}: {self.parameters:,} parameters; round-update norm over "
            f"{len(self.norms)} devices: 10th percentile {low:.4f}, median {median:.4f}, "
            f"90th {high:.4f}",
            "clipping norm C   norm of the mean clipped update / C",
            *(f"{clip:>15g}   {share:.4f}" for clip, share in self.kept.items()),
        ]


def update_norms(
    settings: FederationSettings, sample: int, clipping_norms: Sequence[float], seed: int = 0
) -> UpdateNorms:
    """The round updates of ``sample`` devices (drawn with ``seed``) of the federation
    ``settings`` describes (see the module docstring)."""
    if sample < 1 or not clipping_norms or not all(0 < c < math.inf for c in clipping_norms):
        raise ValueError("update norms need sample >= 1 and finite positive clipping norms")
    world = federation_world(settings)
    initial = initial_network(settings.model, settings.seed, world.features.items)
    names = trained_names(initial, settings.local.trained)
    start = {name: value.detach().clone() for name, value in initial.state_dict().items()}
    off = PrivacyConfig(enabled=False)
    rng = np.random.default_rng(seed)
    devices = sorted(
        int(p) for p in rng.choice(settings.devices, min(sample, settings.devices), replace=False)
    )
    table, num_items = world.features.table, world.split.num_items
    network = Recommender(settings.model)
    updates = []
    for partition in devices:
        examples = world.examples(partition, settings.local)
        network.load_state_dict(start)  # every device trains from the initial weights
        plan = plan_round(len(examples), settings.local, off, 1)
        train_local(network, table, num_items, examples, settings.local, off, plan, seed=partition)
        state = network.state_dict()
        updates.append(torch.cat([(state[n] - start[n]).flatten() for n in names]).double())
    stacked = torch.stack(updates)
    norms = stacked.norm(dim=1)
    kept = {}
    for clip in clipping_norms:
        clipped = stacked * torch.clamp(clip / norms.clamp(min=1e-30), max=1.0)[:, None]
        kept[float(clip)] = float(clipped.mean(0).norm()) / clip
    return UpdateNorms(
        trained=settings.local.trained,
        parameters=stacked.shape[1],
        devices=devices,
        norms=[float(n) for n in norms],
        kept=kept,
    )
