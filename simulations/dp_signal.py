"""How much of a federation's averaged update is signal under record-level DP-SGD, by the parts
the devices train: a planning tool for ``local-trained``.

At the initial weights, for a sample of every device's examples, each example's gradient over
the trained parameters is clipped to the clipping norm C, and ``alignment`` is the norm of
their mean over C (1 when all point the same way, near 0 when they cancel). A device k that
plans ``S_k`` steps of expected batch ``B_k`` with noise multiplier ``sigma_k`` adds up, in a
round, clipped gradients whose sum has norm about ``B_k S_k alignment C`` (when the direction
holds) and noise of norm ``sigma_k C sqrt(S_k d)`` over ``d`` trained parameters. Their ratio is
``device_ratio``; averaging ``M`` devices a round divides it by ``sqrt(M)`` and ``R`` rounds
in the same direction by ``sqrt(R)`` more. A whole-run ratio well above 1 means the update is
mostly noise, whatever the optimizer does with it.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

from fedrec.shared.federated.local import ExampleScorer, plan_round
from fedrec.shared.federated.settings import FederationSettings
from fedrec.shared.model.network import Recommender, initial_network, trained_names
from fedrec.simulations.world import World, federation_world


@dataclass(frozen=True)
class DpSignal:
    """The noise-to-signal figures of one trained set (module docstring)."""

    trained: str
    parameters: int
    alignment: float
    noise_multiplier_median: float
    device_ratio_median: float
    round_ratio: float
    run_ratio: float

    def line(self) -> str:
        return (
            f"{self.trained:<40}{self.parameters:>9,}{self.alignment:>11.4f}"
            f"{self.noise_multiplier_median:>8.2f}{self.device_ratio_median:>11.1f}"
            f"{self.round_ratio:>9.2f}{self.run_ratio:>9.2f}"
        )


#: The column heads of ``DpSignal.line``.
HEADER = (
    f"{'trained':<40}{'params':>9}{'alignment':>11}{'sigma':>8}{'device':>11}{'round':>9}{'run':>9}"
)


def device_ratio(
    noise_multiplier: float, batch_size: int, steps: int, parameters: int, alignment: float
) -> float:
    """Noise norm over signal norm of one device's round (module docstring)."""
    return noise_multiplier * math.sqrt(steps * parameters) / (batch_size * steps * alignment)


class Inputs(NamedTuple):
    """A batch of examples as ``ExampleScorer`` takes them; candidate 0 is the target."""

    rows: torch.Tensor
    types: torch.Tensor
    lengths: torch.Tensor
    candidates: torch.Tensor


def sample_examples(
    world: World, settings: FederationSettings, per_device: int, seed: int
) -> Inputs:
    """Up to ``per_device`` random examples of every device, each with its target and
    ``negatives`` random items as candidates."""
    rng = np.random.default_rng(seed)
    batches: list[tuple[npt.NDArray[np.int64], ...]] = []
    for partition in range(settings.devices):
        examples = world.examples(partition, settings.local)
        picked = rng.choice(len(examples), min(per_device, len(examples)), replace=False)
        shape = (len(picked), settings.local.negatives)
        negatives = rng.integers(world.split.num_items, size=shape)
        candidates = np.concatenate([examples.targets[picked, None], negatives], axis=1)
        arrays = (examples.rows, examples.types, examples.lengths)
        batches.append((*(a[picked] for a in arrays), candidates))
    if not sum(len(batch[0]) for batch in batches):
        raise ValueError("no device has examples to measure")
    columns = (torch.from_numpy(np.concatenate(column)) for column in zip(*batches, strict=True))
    return Inputs(*columns)


def clipped_mean_gradients(
    network: Recommender,
    table: torch.Tensor,
    inputs: Inputs,
    name_sets: list[list[str]],
    clip: float,
) -> list[torch.Tensor]:
    """For each set of parameter names, the mean of the examples' gradients over those
    parameters, each clipped to norm ``clip``, divided by ``clip``. Every example is run
    forward and backward once, for all sets together."""
    scorer = ExampleScorer(network, table)
    parameters = dict(network.named_parameters())
    union = sorted({name for names in name_sets for name in names})
    totals = [
        torch.zeros(sum(parameters[n].numel() for n in names), dtype=torch.float64)
        for names in name_sets
    ]
    for i in range(len(inputs.rows)):
        one = (tensor[i : i + 1] for tensor in inputs)
        loss = F.cross_entropy(scorer(*one), torch.zeros(1, dtype=torch.long))
        grads = dict(
            zip(union, torch.autograd.grad(loss, [parameters[n] for n in union]), strict=True)
        )
        for total, names in zip(totals, name_sets, strict=True):
            flat = torch.cat([grads[n].flatten() for n in names]).double()
            total += flat / max(clip, float(flat.norm()))
    return [total / len(inputs.rows) for total in totals]


def dp_signal(
    settings: FederationSettings, trained_sets: list[str], per_device: int = 8, seed: int = 0
) -> list[DpSignal]:
    """The figures of each trained set (``all`` or module paths) for the federation
    ``settings`` describes, at its initial weights (seeded as the server seeds them)."""
    if per_device < 1:
        raise ValueError(f"per_device must be at least 1, got {per_device}")
    if not settings.privacy.enabled:
        raise ValueError("the noise-to-signal ratio needs DP-SGD on")
    world = federation_world(settings)
    network = initial_network(settings.model, settings.seed, world.features.items)
    counts = [len(world.examples(p, settings.local)) for p in range(settings.devices)]
    planned = settings.planned_participations
    plans = [plan_round(n, settings.local, settings.privacy, planned) for n in counts if n]
    sigmas = [p.noise_multiplier for p in plans if p.noise_multiplier is not None]
    inputs = sample_examples(world, settings, per_device, seed)
    name_sets = [trained_names(network, parts) for parts in trained_sets]
    means = clipped_mean_gradients(
        network, world.features.table, inputs, name_sets, settings.privacy.max_grad_norm
    )
    sizes = {name: p.numel() for name, p in network.named_parameters()}
    results = []
    for parts, names, mean in zip(trained_sets, name_sets, means, strict=True):
        parameters = sum(sizes[n] for n in names)
        alignment = float(mean.norm())
        ratios = [
            device_ratio(sigma, p.batch_size, p.steps, parameters, alignment)
            for sigma, p in zip(sigmas, plans, strict=True)
        ]
        median = statistics.median(ratios)
        sampled = settings.sampled_devices
        results.append(
            DpSignal(
                trained=parts,
                parameters=parameters,
                alignment=alignment,
                noise_multiplier_median=statistics.median(sigmas),
                device_ratio_median=median,
                round_ratio=median / math.sqrt(sampled),
                run_ratio=median / math.sqrt(sampled * settings.rounds),
            )
        )
    return results
