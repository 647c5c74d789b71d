"""The server's step schedule: how far the global weights move towards each round's aggregate."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from typing import cast

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import (
    DifferentialPrivacyServerSideFixedClipping,
    FedAvg,
    Strategy,
)
from flwr.supercore.task_identity import TaskIdentity

from fedrec.server.federation import inner_strategy, make_strategy
from fedrec.server.strategy import (
    BudgetStrategy,
    MomentumStrategy,
    SampledMeanStrategy,
    ScheduledStepStrategy,
    ValidatedStrategy,
    WrappedStrategy,
    array_record,
    server_step,
)
from fedrec.shared.federated.local import PrivacyConfig
from fedrec.shared.federated.records import record_arrays, train_metrics
from fedrec.shared.federated.settings import FederationSettings
from fedrec.shared.federated.user_level import UserPrivacyConfig


def test_the_cosine_schedule_falls_from_a_whole_step() -> None:
    assert [server_step("constant", r, 10) for r in (1, 5, 10)] == [1.0, 1.0, 1.0]
    steps = [server_step("cosine", r, 10) for r in range(1, 11)]
    assert steps[0] == 1.0 and steps[5] == pytest.approx(0.5)  # round 6 of 10: halfway
    assert all(a > b > 0 for a, b in itertools.pairwise(steps))
    assert steps[-1] == pytest.approx((1 + np.cos(np.pi * 0.9)) / 2)


def test_an_unknown_schedule_is_an_error_that_names_it() -> None:
    with pytest.raises(ValueError, match="server-schedule"):
        server_step("linear", 1, 10)
    with pytest.raises(ValueError, match="server_schedule"):
        FederationSettings().with_run_config({"server-schedule": "linear"})


class FixedAggregate(WrappedStrategy):
    """An inner strategy whose aggregate is always ``target``."""

    def __init__(self, target: dict[str, np.ndarray]) -> None:
        super().__init__(cast(Strategy, None))
        self.target = target

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return []

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        return array_record(self.target), MetricRecord({"train-loss": 1.0})


def test_the_server_moves_its_step_of_the_way_towards_the_aggregate() -> None:
    start = {"w": np.zeros(4, np.float32), "b": np.full(2, 2.0, np.float32)}
    target = {"w": np.ones(4, np.float32), "b": np.zeros(2, np.float32)}
    strategy = ScheduledStepStrategy(FixedAggregate(target), "cosine", rounds=10)
    for server_round in (1, 6, 10):
        strategy.configure_train(
            server_round, array_record(start), ConfigRecord(), cast(Grid, None)
        )
        moved, metrics = strategy.aggregate_train(server_round, [])
        assert moved is not None and metrics is not None
        step = server_step("cosine", server_round, 10)
        got = record_arrays(moved)
        np.testing.assert_allclose(got["w"], np.full(4, step), rtol=1e-6)
        np.testing.assert_allclose(got["b"], np.full(2, 2.0 * (1 - step)), rtol=1e-6)
        assert got["w"].dtype == np.float32
    with pytest.raises(ValueError, match="server-schedule"):
        ScheduledStepStrategy(FixedAggregate(target), "steps", rounds=10)


def test_the_server_wraps_its_strategy_only_for_a_schedule_that_changes_the_step() -> None:
    assert not isinstance(make_strategy(FederationSettings()), ScheduledStepStrategy)
    scheduled = make_strategy(FederationSettings(server_schedule="cosine", rounds=7))
    assert isinstance(scheduled, ScheduledStepStrategy)
    assert (scheduled.schedule, scheduled.rounds) == ("cosine", 7)


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_the_servers_momentum_steps_as_torch_sgd_with_its_schedule(schedule: str) -> None:
    """Each round's pseudo-gradient (the weights sent minus the aggregate) is stepped as
    ``torch.optim.SGD`` with momentum steps a gradient under a ``LambdaLR`` schedule, in the
    order ``make_strategy`` wraps them: the schedule outside, the momentum inside, each round
    stepping from the weights the schedule moved to."""
    settings = FederationSettings(
        rounds=4, server_momentum=0.9, server_learning_rate=0.5, server_schedule=schedule
    )
    rng = np.random.default_rng(0)
    weights = {"w": rng.normal(size=(3, 2)).astype(np.float32)}
    inner = FixedAggregate({})
    strategy = make_strategy(settings)
    momentum = inner_strategy(strategy, MomentumStrategy)
    assert momentum is not None and isinstance(momentum.inner, FedAvg)
    momentum.inner = inner
    parameter = torch.nn.Parameter(torch.from_numpy(weights["w"].copy()))
    sgd = torch.optim.SGD([parameter], lr=0.5, momentum=0.9)
    rate = torch.optim.lr_scheduler.LambdaLR(
        sgd, lambda step: server_step(schedule, step + 1, settings.rounds)
    )
    for server_round in range(1, settings.rounds + 1):
        gradient = rng.normal(size=(3, 2)).astype(np.float32)
        strategy.configure_train(
            server_round, array_record(weights), ConfigRecord(), cast(Grid, None)
        )
        inner.target = {"w": weights["w"] - gradient}
        stepped, _ = strategy.aggregate_train(server_round, [])
        assert stepped is not None
        parameter.grad = torch.from_numpy(gradient)
        sgd.step()
        rate.step()
        weights = record_arrays(stepped)
        np.testing.assert_allclose(weights["w"], parameter.detach().numpy(), rtol=1e-5)
    assert set(momentum.velocity) == {"w"}


def test_distributed_dp_always_steps_with_the_servers_learning_rate() -> None:
    """Under distributed DP the server's step is SGD at ``server_learning_rate`` also without
    momentum, not FedAvg's whole step."""
    settings = FederationSettings(privacy=PrivacyConfig(distributed=True), server_learning_rate=3)
    momentum = inner_strategy(make_strategy(settings), MomentumStrategy)
    assert momentum is not None and (momentum.learning_rate, momentum.momentum) == (3.0, 0.0)
    assert inner_strategy(make_strategy(FederationSettings()), MomentumStrategy) is None


class Nodes:
    """The part of a Grid that FedAvg's sampling uses: the node ids online."""

    def __init__(self, nodes: list[int]) -> None:
        self.nodes = nodes

    def get_node_ids(self) -> list[int]:
        return list(self.nodes)


def test_user_level_dp_divides_by_the_devices_sampled_whatever_arrives(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Flower's server-side clipping adds noise sigma C / m for m devices sampled; its inner
    FedAvg would average over the k that reply, and the wrapper skips a round with a failed
    reply, both a function of single devices. Through the server's own stack, a failed, a
    dropped and a missing device count as zero updates: the clipped sum over m. A reply's
    arrays in another order are put back in order before they are clipped."""
    for name in ("_task_id", "_run_id", "_node_id"):
        monkeypatch.setattr(TaskIdentity, name, 1)
    user = UserPrivacyConfig(enabled=True, clipping_norm=1.0)
    settings = FederationSettings(devices=8, fraction_train=0.5, user_privacy=user)
    assert settings.sampled_devices == 4 and settings.update_norm_bound == math.inf
    assert settings.usable_update_share == 0.0
    strategy = ValidatedStrategy(  # as run_federation builds it
        make_strategy(settings, user_noise=1e-9),  # next to no noise: the sum shows
        settings.update_norm_bound,
        settings.usable_update_share,
        max_examples=128,
        metrics=frozenset({"num-examples", "device-weight"}),
    )
    start = {"w": np.zeros(3, np.float32), "b": np.zeros(2, np.float32)}
    grid = cast(Grid, Nodes(list(range(8))))
    requests = list(strategy.configure_train(1, array_record(start), ConfigRecord(), grid))
    assert len(requests) == 4
    metrics = MetricRecord({"num-examples": 5, "device-weight": 1})
    backwards = {"b": np.zeros(2, np.float32), "w": np.array([3.0, 0, 0], np.float32)}
    nan = {"w": np.full(3, np.nan, np.float32), "b": np.zeros(2, np.float32)}

    def update(arrays: dict[str, np.ndarray], request: Message) -> Message:
        content = RecordDict({"arrays": array_record(arrays), "metrics": metrics})
        return Message(content=content, reply_to=request)

    replies = [  # clipped to norm 1; failed; NaN, dropped; the fourth never replies
        update(backwards, requests[0]),
        Message(error=Error(code=0, reason="the device went away"), reply_to=requests[1]),
        update(nan, requests[2]),
    ]
    aggregated, _ = strategy.aggregate_train(1, replies)
    assert aggregated is not None
    got = record_arrays(aggregated)
    np.testing.assert_allclose(got["w"], [0.25, 0, 0], atol=1e-6)
    np.testing.assert_allclose(got["b"], [0, 0], atol=1e-6)
    assert inner_strategy(strategy, SampledMeanStrategy) is not None
    # a round in which no update is usable releases the noise alone, not the old weights
    strategy.configure_train(2, array_record(start), ConfigRecord(), grid)
    loud = inner_strategy(strategy, DifferentialPrivacyServerSideFixedClipping)
    assert loud is not None
    loud.noise_multiplier = 1.0
    noised, _ = strategy.aggregate_train(2, replies[1:])  # failed; NaN
    assert noised is not None
    moved = record_arrays(noised)
    assert all(np.all(moved[name] != 0) for name in start)  # sigma C / m on every coordinate
    with pytest.raises(ValueError, match="6 updates from 4 devices asked"):
        SampledMeanStrategy(FedAvg(), 4).aggregate_train(1, [replies[0]] * 6)


def test_replies_that_would_stop_flowers_strategies_are_dropped_not_raised(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Flower's FedAvg raises on a round whose replies differ in their records or metric keys,
    and an array that does not decode raises too: one such reply must be dropped with its
    reason, not stop the server. Evaluation replies are checked the same way."""
    for name in ("_task_id", "_run_id", "_node_id"):
        monkeypatch.setattr(TaskIdentity, name, 1)
    settings = FederationSettings(devices=4, fraction_train=1.0)
    names = train_metrics(dp=True)
    strategy = ValidatedStrategy(make_strategy(settings), 10.0, 0.25, 128, names)
    start = {"w": np.zeros(3, np.float32)}
    grid = cast(Grid, Nodes(list(range(4))))
    requests = list(strategy.configure_train(1, array_record(start), ConfigRecord(), grid))
    good = {"num-examples": 5, "epsilon": 1.0, "budget-exhausted": 0, "device-weight": 1}
    moved = array_record({"w": np.ones(3, np.float32)})

    def reply(request: Message, **records: object) -> Message:
        return Message(content=RecordDict(records), reply_to=request)  # type: ignore[arg-type]

    garbage = Array(dtype="float32", shape=(3,), stype="numpy.ndarray", data=b"not an array")
    undecodable = ArrayRecord({"w": garbage})
    replies = [
        reply(requests[0], arrays=moved, metrics=MetricRecord(good)),
        reply(requests[1], arrays=moved, metrics=MetricRecord({**good, "extra": 1})),
        reply(requests[2], arrays=moved, other=moved, metrics=MetricRecord(good)),
        reply(requests[3], arrays=undecodable, metrics=MetricRecord(good)),
    ]
    aggregated, _ = strategy.aggregate_train(1, replies)
    assert aggregated is not None
    np.testing.assert_allclose(record_arrays(aggregated)["w"], np.ones(3))
    reasons = [reason for _, _, reason in strategy.dropped]
    assert reasons[0] == "its metrics are not a device's (missing [], unexpected ['extra'])"
    assert reasons[1].startswith("its records are not a device's (arrays ['arrays', 'other']")
    assert reasons[2].startswith("its arrays do not decode")
    asked = [Message(RecordDict(), dst_node_id=n, message_type="evaluate") for n in range(4)]
    scores = {"hr@10": 1.0, "ndcg@10": 0.5, "mrr": 0.5, "num-examples": 1, "device-weight": 1}
    answers = [
        reply(asked[0], metrics=MetricRecord(scores)),
        reply(asked[1], metrics=MetricRecord({**scores, "hr@10": 50.0})),
        reply(asked[2], metrics=MetricRecord({**scores, "extra": 0.0})),
        reply(asked[3], metrics=MetricRecord({**scores, "num-examples": 1000})),
    ]
    averaged = strategy.aggregate_evaluate(1, answers)
    assert averaged is not None and averaged["hr@10"] == 1.0


def test_a_devices_budget_is_the_one_its_node_answered_it_was(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A reply that names another device (or one that does not exist) cannot put that device
    out of budget: the reply counts for the device its node said it was when asked."""
    for name in ("_task_id", "_run_id", "_node_id"):
        monkeypatch.setattr(TaskIdentity, name, 1)
    replies = []
    for node, claimed in ((11, 0), (12, 10**6)):
        metrics = MetricRecord({"budget-exhausted": 1, "device": claimed})
        request = Message(content=RecordDict(), dst_node_id=node, message_type="train")
        replies.append(Message(content=RecordDict({"metrics": metrics}), reply_to=request))
    strategy = BudgetStrategy(FixedAggregate({"w": np.zeros(1, np.float32)}), {11: 1, 12: 2})
    strategy.aggregate_train(1, replies)
    assert strategy.exhausted == {1, 2}
