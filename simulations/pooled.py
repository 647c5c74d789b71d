"""Train the federation's network once, on every device's examples pooled: what record-level DP
can reach when one mechanism noises the sum of everyone's gradients.

The devices' local round (``train_local``: the same network, examples, sampled negatives,
Opacus DP-SGD with Poisson sampling, per-example clipping and Gaussian noise) runs over the
union of the devices' examples, as if they were one device's, for ``local.epochs`` epochs of
expected batch ``local.batch_size``, with noise planned for exactly those steps. Each record
is then protected at ``privacy.target_epsilon`` by noise added once to a sum over the whole
batch. A federation gets the same noise only when its server sees nothing but the sum of the
devices' updates (secure aggregation, each device sampling its own examples and adding its
share of the noise); with record-level DP-SGD on each device, as fedrec runs it, every device
adds all the noise its own guarantee needs. So this is the reference a federation's DP runs
are measured against, not a private deployment: it needs a curator who sees every record.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from fedrec.shared.encoder.config import torch_device
from fedrec.shared.evaluation.harness import EvaluationConfig, EvaluationResult, evaluate
from fedrec.shared.federated.examples import DeviceExamples
from fedrec.shared.federated.local import LocalConfig, plan_round, train_local
from fedrec.shared.federated.settings import FederationSettings
from fedrec.shared.model.network import initial_network
from fedrec.simulations.world import World, federation_world


@dataclass(frozen=True)
class PooledResult:
    """The harness's figures for the pooled model, and its round: examples, mean training
    loss, steps, the sampling rate, the noise multiplier and the epsilon spent at ``delta``
    (None without DP)."""

    evaluation: EvaluationResult
    examples: int
    loss: float
    steps: int
    sample_rate: float
    noise_multiplier: float | None
    epsilon: float | None
    delta: float | None
    wall_s: float

    def to_json(self) -> dict[str, Any]:
        return {
            **self.evaluation.to_json(),
            "examples": self.examples,
            "loss": self.loss,
            "steps": self.steps,
            "sample_rate": self.sample_rate,
            "noise_multiplier": self.noise_multiplier,
            "epsilon": self.epsilon,
            "delta": self.delta,
            "wall_s": self.wall_s,
        }


#: The pooled run's optimisers (run-config keys). ``sgd``, the default under DP: momentum 0.9
#: at 3 (in units of the clipped gradient) falling along a cosine, which learns through the
#: noise where Adam stays near the frozen encoder. ``adam``, the default without DP: Adam at
#: 3e-3, whose unclipped gradients (norm about 40 at the start) need no step of SGD's size
#: (docs/privacy.md).
POOLED_OPTIMIZERS: dict[str, dict[str, Any]] = {
    "sgd": {
        "local-optimizer": "sgd",
        "local-momentum": 0.9,
        "local-learning-rate": 3.0,
        "local-schedule": "cosine",
    },
    "adam": {
        "local-optimizer": "adam",
        "local-momentum": 0.0,
        "local-learning-rate": 3e-3,
        "local-schedule": "constant",
    },
}


def pooled_optimizer(private: bool, name: str | None = None) -> dict[str, Any]:
    """The run-config keys of optimiser ``name`` in ``POOLED_OPTIMIZERS``; None: ``sgd``
    under DP, ``adam`` without."""
    return POOLED_OPTIMIZERS[name or ("sgd" if private else "adam")]


def pooled_examples(world: World, devices: int, local: LocalConfig) -> DeviceExamples:
    """Every device's examples (each its latest ``local.max_examples``), one device after
    another."""
    parts = [world.examples(device, local) for device in range(devices)]
    return DeviceExamples(
        *(np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(DeviceExamples))
    )


def train_pooled(
    settings: FederationSettings, resamples: int = 1000, device: str = "cpu"
) -> PooledResult:
    """Train ``settings.model`` (initial weights from ``settings.seed``, as the server's) with
    one local round of ``settings.local`` and ``settings.privacy`` over the pooled examples of
    ``settings.devices`` devices, computing on torch ``device``, and evaluate it with the
    harness on every user's held-out item (``resamples`` bootstrap resamples)."""
    started = time.perf_counter()
    device = str(torch_device(device))  # fail before the data loads; "auto" resolved
    harness = EvaluationConfig(resamples=resamples)  # and before training
    world = federation_world(settings)
    examples = pooled_examples(world, settings.devices, settings.local)
    network = initial_network(settings.model, settings.seed, world.features.items)
    plan = plan_round(len(examples), settings.local, settings.privacy, planned_rounds=1)
    result = train_local(
        network,
        world.features.table,
        world.split.num_items,
        examples,
        settings.local,
        settings.privacy,
        plan=plan,
        seed=settings.seed,
        device=device,
    )
    evaluation = evaluate(world.recommender(network, "pooled"), world.split, harness)
    return PooledResult(
        evaluation=evaluation,
        examples=len(examples),
        loss=result.loss,
        steps=result.steps,
        sample_rate=result.sample_rate,
        noise_multiplier=result.noise_multiplier,
        epsilon=result.epsilon,
        delta=settings.privacy.delta if settings.privacy.enabled else None,
        wall_s=time.perf_counter() - started,
    )
