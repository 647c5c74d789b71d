"""The noise-to-signal planning tool: its clipped mean gradient against Opacus' per-sample
gradients, its ratios against their formula."""

from __future__ import annotations

import copy
import dataclasses
import math
import statistics

import pytest
import torch
import torch.nn.functional as F
from opacus import GradSampleModule
from opacus.validators import ModuleValidator

from fedrec.shared.federated.local import ExampleScorer, PrivacyConfig, plan_round
from fedrec.shared.federated.settings import FederationSettings
from fedrec.shared.model.network import ModelConfig, Recommender, trained_names
from fedrec.simulations.dp_signal import (
    clipped_mean_gradients,
    device_ratio,
    dp_signal,
    sample_examples,
)
from fedrec.simulations.world import load_world

SETTINGS = FederationSettings(
    data="demo", devices=6, rounds=3, model=ModelConfig(hidden_dim=16, item_rank=4)
)
PARTS = "items,users.recency,users.project"


def test_the_clipped_mean_gradient_equals_opacus_per_sample_gradients_clipped() -> None:
    world = load_world(SETTINGS.data, SETTINGS.devices)
    inputs = sample_examples(world, SETTINGS, per_device=3, seed=1)
    assert len(inputs.rows) == 3 * SETTINGS.devices
    assert inputs.candidates.shape[1] == 1 + SETTINGS.local.negatives
    torch.manual_seed(0)
    network = Recommender(SETTINGS.model)
    with torch.no_grad():  # away from the zero init, so every trained part has a gradient
        network.users.project.weight.normal_(0, 0.1)
    names = trained_names(network, PARTS)

    scorer = ModuleValidator.fix(ExampleScorer(copy.deepcopy(network), world.features.table))
    for name, parameter in scorer.network.named_parameters():
        parameter.requires_grad_(name in names)
    sampled = GradSampleModule(scorer, loss_reduction="sum")
    loss = F.cross_entropy(sampled(*inputs), torch.zeros(len(inputs.rows), dtype=torch.long))
    (loss * len(inputs.rows)).backward()  # type: ignore[no-untyped-call]
    per_sample = dict(scorer.network.named_parameters())
    flat = torch.cat([per_sample[n].grad_sample.flatten(1) for n in names], dim=1).double()
    norms = flat.norm(dim=1)
    clip = float(norms.median())  # some examples are clipped, some are not
    expected = (flat * (clip / norms).clamp(max=1.0)[:, None]).mean(dim=0) / clip

    (ours,) = clipped_mean_gradients(network, world.features.table, inputs, [names], clip)
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-7)
    assert 0 < float(ours.norm()) <= 1


def test_the_ratios_follow_their_formula() -> None:
    assert device_ratio(2.0, 16, 4, 100, 0.5) == pytest.approx(2.0 * 20 / (16 * 4 * 0.5))
    (row,) = dp_signal(SETTINGS, [PARTS], per_device=2)
    world = load_world(SETTINGS.data, SETTINGS.devices)
    counts = [len(world.examples(p, SETTINGS.local)) for p in range(SETTINGS.devices)]
    plans = [
        plan_round(n, SETTINGS.local, SETTINGS.privacy, SETTINGS.planned_participations)
        for n in counts
    ]
    assert row.noise_multiplier_median == statistics.median(p.noise_multiplier for p in plans)
    network = Recommender(SETTINGS.model)
    params = dict(network.named_parameters())
    assert row.parameters == sum(params[n].numel() for n in trained_names(network, PARTS))
    expected = statistics.median(
        device_ratio(p.noise_multiplier, p.batch_size, p.steps, row.parameters, row.alignment)
        for p in plans
    )
    assert row.device_ratio_median == pytest.approx(expected, rel=1e-12)
    sampled = SETTINGS.sampled_devices
    assert row.round_ratio == pytest.approx(expected / math.sqrt(sampled), rel=1e-12)
    assert row.run_ratio == pytest.approx(expected / math.sqrt(sampled * 3), rel=1e-12)


def test_it_needs_dp_and_real_module_paths() -> None:
    off = dataclasses.replace(SETTINGS, privacy=PrivacyConfig(enabled=False))
    with pytest.raises(ValueError, match="needs DP-SGD on"):
        dp_signal(off, ["all"])
    with pytest.raises(ValueError, match="name no module"):
        dp_signal(SETTINGS, ["items,user"])
    with pytest.raises(ValueError, match="per_device must be at least 1"):
        dp_signal(SETTINGS, ["all"], per_device=0)
