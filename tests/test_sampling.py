"""Device sampling: the server draws each round's devices by partition id with the run's seed,
not with Flower's unseeded ``random`` over random node ids; under user-level DP, from the
operating system's randomness."""

from __future__ import annotations

import dataclasses
import logging
import random
from typing import cast

import numpy as np
import pytest
from flwr.app import ConfigRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from flwr.supercore.task_identity import TaskIdentity

from fedrec.server.federation import sampling_strategy
from fedrec.server.strategy import (
    QUERY_ATTEMPTS,
    SecretSampling,
    SeededSamplingStrategy,
    _unique_partitions,
    array_record,
    seeded_sample,
)
from fedrec.shared.federated.settings import FederationSettings
from fedrec.shared.federated.user_level import UserPrivacyConfig


def test_the_same_seed_draws_the_same_devices_whatever_their_node_ids() -> None:
    partitions = {1000 + p: p for p in range(50)}
    drawn = seeded_sample(partitions, 10, seed=3, server_round=4, purpose="train")
    assert len(set(drawn)) == 10 and set(drawn) <= set(partitions)
    relabelled = {random.getrandbits(63): p for p in range(50)}  # another run's node ids
    again = seeded_sample(relabelled, 10, seed=3, server_round=4, purpose="train")
    assert [relabelled[n] for n in again] == [partitions[n] for n in drawn]


def test_the_seed_the_round_and_the_purpose_each_change_the_draw() -> None:
    partitions = {p: p for p in range(50)}
    base = seeded_sample(partitions, 10, 3, 4, "train")
    assert seeded_sample(partitions, 10, 4, 4, "train") != base
    assert seeded_sample(partitions, 10, 3, 5, "train") != base
    assert seeded_sample(partitions, 10, 3, 4, "evaluate") != base


def test_a_sample_larger_than_the_devices_is_an_error() -> None:
    with pytest.raises(ValueError, match="cannot sample 3 of 2 devices"):
        seeded_sample({1: 0, 2: 1}, 3, 0, 1, "train")


class Nodes:
    """The part of a Grid that sampling uses: the node ids online."""

    def __init__(self, nodes: list[int]) -> None:
        self.nodes = nodes

    def get_node_ids(self) -> list[int]:
        return list(self.nodes)


class Query:
    """Answers which partition each node is, except for ``silent`` nodes; counts the asks."""

    def __init__(self, partitions: dict[int, int], silent: set[int]) -> None:
        self.partitions, self.silent = partitions, silent
        self.asked: list[list[int]] = []

    def __call__(self, grid: Grid, nodes: list[int]) -> dict[int, int]:
        self.asked.append(nodes)
        return {n: self.partitions[n] for n in nodes if n not in self.silent}


def test_requests_go_to_the_seeded_devices_and_silent_nodes_are_asked_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # what a ServerApp's process knows when Flower runs it: its task, run and node
    for name in ("_task_id", "_run_id", "_node_id"):
        monkeypatch.setattr(TaskIdentity, name, 1)
    partitions = {random.getrandbits(63): p for p in range(20)}
    silent = {next(n for n, p in partitions.items() if p == 7)}
    query = Query(partitions, silent)
    inner = FedAvg(fraction_train=0.25, fraction_evaluate=0.5, min_available_nodes=20)
    strategy = SeededSamplingStrategy(inner, seed=11, query=query)
    grid = cast(Grid, Nodes(list(partitions)))
    arrays = array_record({"w": np.zeros(2, np.float32)})
    known = {n: p for n, p in partitions.items() if n not in silent}
    for server_round in (1, 2):
        trained = list(strategy.configure_train(server_round, arrays, ConfigRecord(), grid))
        assert [m.metadata.dst_node_id for m in trained] == seeded_sample(
            known, 5, 11, server_round, "train"
        )
        evaluated = list(strategy.configure_evaluate(server_round, arrays, ConfigRecord(), grid))
        assert [m.metadata.dst_node_id for m in evaluated] == seeded_sample(
            known, 10, 11, server_round, "evaluate"
        )
        assert all(m.metadata.dst_node_id not in silent for m in trained + evaluated)
    # every node once before round 1; the silent one again each time the strategy samples,
    # up to QUERY_ATTEMPTS asks in all
    assert query.asked == [sorted(partitions), *[sorted(silent)] * (QUERY_ATTEMPTS - 1)]
    newcomer = random.getrandbits(63)
    partitions[newcomer] = 20
    cast(Nodes, grid).nodes.append(newcomer)
    query.silent.add(newcomer)  # silent when first asked, answers the second time
    list(strategy.configure_train(3, arrays, ConfigRecord(), grid))
    query.silent.discard(newcomer)
    for server_round in (4, 5):
        trained = list(strategy.configure_train(server_round, arrays, ConfigRecord(), grid))
    assert query.asked[QUERY_ATTEMPTS:] == [[newcomer], [newcomer]]
    assert strategy.partitions[newcomer] == 20 and silent.isdisjoint(strategy.partitions)
    assert [m.metadata.dst_node_id for m in trained] == seeded_sample(
        {**known, newcomer: 20}, 5, 11, 5, "train"
    )


def test_nodes_claiming_one_device_are_left_out(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        known = _unique_partitions({101: 0, 102: 0, 103: 1, 104: 2})
    assert known == {103: 1, 104: 2}
    assert "nodes claiming the same device are left out: partitions [0]" in caplog.text


def test_secret_sampling_draws_exactly_its_share_of_all_devices_from_the_os(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """User-level accounting assumes m of N devices without replacement, which nobody can
    predict: the draw comes from the operating system's bytes, not the run's seed."""
    sampling = SecretSampling(devices=100, sampled=10)
    first, second = sampling.draw(), sampling.draw()
    assert len(set(first)) == 10 and first == sorted(first) and set(first) <= set(range(100))
    assert first != second  # the same draw twice: 1 chance in 1.7e13
    monkeypatch.setattr(random, "_urandom", random.Random(7).randbytes)  # what SystemRandom reads
    replayed = sampling.draw()
    monkeypatch.setattr(random, "_urandom", random.Random(7).randbytes)
    assert sampling.draw() == replayed
    with pytest.raises(ValueError, match="cannot sample 11 of 10 devices"):
        SecretSampling(devices=10, sampled=11)


def test_secret_sampling_trains_the_drawn_devices_it_can_reach_and_no_others(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Exactly the drawn devices, however many requests Flower made; a drawn device whose
    node is silent misses the round instead of another taking its place. Evaluation requests
    still follow the seed."""
    for name in ("_task_id", "_run_id", "_node_id"):
        monkeypatch.setattr(TaskIdentity, name, 1)
    partitions = {1000 + p: p for p in range(100)}
    silent = {1000 + p for p in range(0, 100, 2)}  # the even devices do not answer
    grid = cast(Grid, Nodes(list(partitions)))
    arrays = array_record({"w": np.zeros(2, np.float32)})
    sampling = SecretSampling(devices=100, sampled=10)
    inner = FedAvg(fraction_train=0.5, fraction_evaluate=0.2, min_available_nodes=100)
    strategy = SeededSamplingStrategy(inner, 11, Query(partitions, silent), sampling)
    monkeypatch.setattr(random, "_urandom", random.Random(3).randbytes)
    drawn = sampling.draw()
    monkeypatch.setattr(random, "_urandom", random.Random(3).randbytes)
    trained = [
        m.metadata.dst_node_id
        for m in strategy.configure_train(1, arrays, ConfigRecord(), grid)  # 50 requests
    ]
    assert trained == [1000 + p for p in drawn if p % 2]
    known = {n: p for n, p in partitions.items() if n not in silent}
    evaluated = strategy.configure_evaluate(1, arrays, ConfigRecord(), grid)
    assert [m.metadata.dst_node_id for m in evaluated] == seeded_sample(
        known, 20, 11, 1, "evaluate"
    )


def test_the_server_samples_secretly_exactly_under_user_level_dp() -> None:
    inner = FedAvg()
    settings = FederationSettings(devices=40, fraction_train=0.25)
    assert sampling_strategy(settings, inner).secret is None
    user_level = dataclasses.replace(settings, user_privacy=UserPrivacyConfig(enabled=True))
    assert sampling_strategy(user_level, inner).secret == SecretSampling(40, 10)
