"""The vectorised sweep computes what the federation's network computes."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fedrec.shared.evaluation.harness import EvaluationConfig, evaluate
from fedrec.shared.federated.examples import DeviceExamples
from fedrec.shared.federated.local import (
    ExampleScorer,
    LocalConfig,
    PrivacyConfig,
    plan_round,
    train_local,
)
from fedrec.shared.model.network import ModelConfig, Recommender, trained_names
from fedrec.shared.model.training import NetworkRecommender
from fedrec.simulations import sweep
from fedrec.simulations.world import load_world

CONFIG = ModelConfig(
    feature_dim=8, item_dim=8, hidden_dim=6, pool_window=4, start_events=2, item_rank=3
)


def _perturbed(seed: int, config: ModelConfig = CONFIG) -> Recommender:
    torch.manual_seed(seed)
    network = Recommender(config)
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
    return network


def _examples(seed: int, batch: int) -> tuple[torch.Tensor, ...]:
    """A feature table of 20 items and 3 texts, and 2 devices' ``batch`` examples: rows,
    types and lengths of 6 events of context, and 5 candidates each."""
    generator = torch.Generator().manual_seed(seed)
    return (
        torch.randn(23, 8, generator=generator),
        torch.randint(23, (2, batch, 6), generator=generator),
        torch.randint(2, (2, batch, 6), generator=generator),
        torch.randint(1, 7, (2, batch), generator=generator),
        torch.randint(20, (2, batch, 5), generator=generator),
    )


@pytest.mark.parametrize("center", [False, True])
def test_the_sweep_network_and_its_gradients_are_the_recommender_s(center: bool) -> None:
    config = dataclasses.replace(CONFIG, center_features=center)
    networks = [_perturbed(1, config), _perturbed(2, config)]
    table, rows, types, lengths, candidates = _examples(seed=0, batch=5)
    if center:
        for network in networks:
            network.items.center_on(table[:20] + 1.0)
    stacked = {
        name: torch.stack([n.state_dict()[name] for n in networks]).requires_grad_()
        for name in networks[0].state_dict()
    }
    logits = sweep.example_logits(
        stacked, table, rows, types, lengths, candidates, CONFIG.temperature, CONFIG.pool_window
    )
    target = torch.zeros(5, dtype=torch.long)
    loss = sum(F.cross_entropy(logits[d], target) for d in range(2))
    grads = dict(zip(stacked, torch.autograd.grad(loss, list(stacked.values())), strict=True))
    for d, network in enumerate(networks):
        expected = ExampleScorer(network, table)(rows[d], types[d], lengths[d], candidates[d])
        torch.testing.assert_close(logits[d], expected, rtol=1e-5, atol=1e-5)
        F.cross_entropy(expected, target).backward()  # type: ignore[no-untyped-call]
        for name, parameter in network.named_parameters():
            assert parameter.grad is not None
            torch.testing.assert_close(grads[name][d], parameter.grad, rtol=1e-4, atol=1e-6)


@pytest.fixture(scope="module")
def demo() -> sweep.SweepData:
    return sweep.pack("demo", devices=20, max_examples=32)


@pytest.mark.parametrize("center", [False, True])
def test_the_sweep_evaluates_as_the_harness_does(demo: sweep.SweepData, center: bool) -> None:
    from fedrec.shared.federated.settings import FederationSettings

    if center:
        demo = sweep.pack("demo", devices=20, max_examples=32, center_features=True)
        assert "items.center" in demo.initial
    settings = FederationSettings.for_data("demo", devices=20)
    world = load_world(settings.data, settings.devices)
    network = Recommender(dataclasses.replace(settings.model, center_features=center))
    network.load_state_dict(demo.initial)
    with torch.no_grad():
        network.users.project.weight.normal_(0.0, 0.1)  # the LSTM branch takes part
    scorer = NetworkRecommender(network.eval())
    scorer.use(world.split, world.sequences, world.features)
    expected = evaluate(scorer, world.split, EvaluationConfig(resamples=1)).metrics
    assert int(demo.history_lengths.max()) < 200  # whole histories: the same input
    got = sweep.evaluate(demo, network.state_dict())
    assert got["hr@10"] == pytest.approx(expected["hr@10"], abs=1e-12)
    assert got["ndcg@10"] == pytest.approx(expected["ndcg@10"], abs=1e-9)


def test_the_server_steps_as_fedavg_and_flower_s_fedadam(demo: sweep.SweepData) -> None:
    delta = {"w": torch.tensor([0.5, -0.02, 0.0])}
    weights = {"w": torch.zeros(3)}
    sweep._server_step(sweep.SweepConfig(), 1, weights, delta, ({}, {}))
    torch.testing.assert_close(weights["w"], delta["w"])  # FedAvg: the averaged update
    adam = sweep.SweepConfig(strategy="fedadam", server_learning_rate=0.01, server_tau=1e-4)
    weights = {"w": torch.zeros(3)}
    sweep._server_step(adam, 1, weights, delta, ({}, {}))
    # Flower's FedAdam in round 1: eta sqrt(1 - 0.99^2) / (1 - 0.9^2) * m / (sqrt(v) + tau)
    eta = 0.01 * np.sqrt(1 - 0.99**2) / (1 - 0.9**2)
    expected = eta * 0.1 * delta["w"] / (np.sqrt(0.01) * delta["w"].abs() + 1e-4)
    torch.testing.assert_close(weights["w"], expected)
    log, _ = sweep.sweep(
        demo,
        sweep.SweepConfig(
            rounds=2, fraction=0.5, max_examples=16, negatives=5, local_optimizer="sgd"
        ),
    )
    assert [line["round"] for line in log] == [1, 2] and "hr@10" in log[-1]
    with pytest.raises(ValueError, match="strategy"):
        sweep.SweepConfig(strategy="fedprox")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="FIELD=VALUE"):
        sweep._config(["rounds"])


def test_a_sweep_trains_only_the_parts_it_is_told_and_its_pack_round_trips(
    demo: sweep.SweepData, tmp_path: Path
) -> None:
    path = str(tmp_path / "pack.pt")
    sweep.save(demo, path)
    loaded = sweep.load(path)
    assert loaded.model == demo.model and torch.equal(loaded.allowed, demo.allowed)
    config = sweep.SweepConfig(rounds=1, fraction=0.5, max_examples=8, negatives=5, trained="items")
    log, weights = sweep.sweep(loaded, config)
    assert np.isfinite(log[0]["loss"])
    changed = {k for k in weights if not torch.equal(weights[k], loaded.initial[k])}
    assert changed == {k for k in weights if k.startswith("items.")}


def test_clipped_gradients_are_each_example_s_gradient_clipped_and_summed() -> None:
    networks = [_perturbed(3), _perturbed(4)]
    table, rows, types, lengths, candidates = _examples(seed=1, batch=4)
    valid = torch.tensor([[True, True, False, True], [True, False, True, True]])
    names = [name for name, _ in networks[0].named_parameters()]
    stacked = {k: torch.stack([n.state_dict()[k] for n in networks]) for k in names}
    trained = {k for k in names if not k.startswith("users.lstm")}
    summed, losses = sweep.clipped_gradients(
        stacked, trained, table, rows, types, lengths, candidates, valid, 0.5, CONFIG
    )
    assert set(summed) == trained
    for d, network in enumerate(networks):
        expected = {k: torch.zeros_like(v) for k, v in network.named_parameters() if k in trained}
        scorer = ExampleScorer(network, table)
        for b in range(4):
            one = slice(b, b + 1)
            logits = scorer(rows[d, one], types[d, one], lengths[d, one], candidates[d, one])
            loss = F.cross_entropy(logits, torch.zeros(1, dtype=torch.long))
            assert float(losses[d, b]) == pytest.approx(loss.item(), rel=1e-5)
            if not valid[d, b]:
                continue
            grads = torch.autograd.grad(
                loss, [dict(network.named_parameters())[k] for k in expected]
            )
            norm = torch.sqrt(sum(g.pow(2).sum() for g in grads))
            for k, g in zip(expected, grads, strict=True):
                expected[k] += g * min(1.0, 0.5 / (float(norm) + 1e-6))
        for k, value in expected.items():
            torch.testing.assert_close(summed[k][d], value, rtol=1e-4, atol=1e-6)


def test_a_private_sweep_adds_each_device_s_planned_noise(demo: sweep.SweepData) -> None:
    """Under DP only the trained parts move, and they move further at a smaller epsilon (more
    noise for the same clipped signal)."""
    moved = {}
    for epsilon in (1000.0, 0.5):
        config = sweep.SweepConfig(
            rounds=1,
            fraction=0.5,
            max_examples=16,
            negatives=5,
            local_optimizer="sgd",
            local_learning_rate=0.1,
            trained="items",
            dp_epsilon=epsilon,
            dp_planned_rounds=2,
        )
        log, weights = sweep.sweep(demo, config)
        assert np.isfinite(log[0]["loss"])
        changed = {k for k in weights if not torch.equal(weights[k], demo.initial[k])}
        assert changed == {k for k in weights if k.startswith("items.")}
        moved[epsilon] = float(
            sum((weights[k] - demo.initial[k]).pow(2).sum() for k in changed) ** 0.5
        )
    assert moved[0.5] > 3 * moved[1000.0] > 0


def test_a_private_sweep_moves_a_device_as_far_as_opacus_does(demo: sweep.SweepData) -> None:
    """Under DP the update of one device is mostly noise: its norm depends on the sampling
    rate, the steps, the planned noise multiplier and the batch Opacus divides by. The sweep's
    private round and ``train_local`` (Opacus) move the same device by the same distance."""
    device, k = 0, 32
    n = int(demo.count[device].clamp(max=k))
    local = LocalConfig(
        batch_size=8,
        epochs=2,
        learning_rate=0.1,
        optimizer="sgd",
        negatives=5,
        max_examples=k,
        trained="items",
    )
    privacy = PrivacyConfig(target_epsilon=4.0)
    config = sweep.SweepConfig(
        max_examples=k,
        batch_size=8,
        epochs=2,
        local_optimizer="sgd",
        local_learning_rate=0.1,
        negatives=5,
        trained="items",
        dp_epsilon=4.0,
        dp_planned_rounds=3,
    )
    examples = DeviceExamples(
        *(getattr(demo, name)[device, -n:].numpy() for name in ("rows", "types", "lengths")),
        demo.targets[device, -n:].numpy(),
    )
    plan = plan_round(n, local, privacy, 3)
    trained = trained_names(Recommender(demo.model), "items")

    def distance(after: dict[str, torch.Tensor]) -> float:
        return float(
            sum((after[k] - demo.initial[k]).pow(2).sum() for k in after if "items." in k) ** 0.5
        )

    opacus, ours = [], []
    for seed in range(6):
        network = Recommender(demo.model)
        network.load_state_dict(demo.initial)
        train_local(network, demo.table, demo.num_items, examples, local, privacy, plan, seed=seed)
        opacus.append(distance(network.state_dict()))
        weights, _ = sweep._train_private(
            demo,
            config,
            dict(demo.initial),
            sweep._Devices.of(demo, torch.tensor([device]), torch.tensor([n]), k, {*trained}),
            torch.Generator().manual_seed(seed),
            sweep._private_plans(config, torch.tensor([n])),
        )
        ours.append(distance({k: v[0] for k, v in weights.items()}))
    assert np.mean(ours) == pytest.approx(np.mean(opacus), rel=0.05)  # 0.4% apart, 2026-11-23
