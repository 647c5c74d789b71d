"""The ClientApp's training round, called below Flower: a device sampled in a fraction of the
rounds plans its DP noise for the rounds it is expected to join, and refuses once they are spent."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, RecordDict
from flwr.serverapp.strategy import FedAvg

from fedrec.client.app import _train, device_partition, evaluate_device, train_device
from fedrec.server.federation import inner_strategy, make_strategy
from fedrec.shared.federated.examples import DeviceExamples
from fedrec.shared.federated.ledger import PrivacyLedger, epsilon_of
from fedrec.shared.federated.local import LocalConfig, plan_round
from fedrec.shared.federated.settings import FederationSettings
from fedrec.shared.model.network import Recommender
from fedrec.simulations.keys import ensure_secret
from fedrec.simulations.world import federation_world


@pytest.mark.slow
def test_a_sampled_device_spends_its_budget_over_its_planned_participations(
    tmp_path: Path,
) -> None:
    settings = FederationSettings.for_data(
        "demo",
        devices=10,
        rounds=10,
        fraction_train=0.2,
        out=str(tmp_path),
        local=LocalConfig(epochs=1, max_examples=32),
    )
    assert settings.planned_participations == 5  # mean 2, deviation 1.26: 2 + 2 * 1.26
    ensure_secret(tmp_path)  # the simulation's server makes the secret device keys derive from
    weights = ArrayRecord(Recommender(settings.model).state_dict())
    spent = []
    for server_round in range(1, 7):
        content = RecordDict(
            {"arrays": weights, "config": ConfigRecord({"server-round": server_round})}
        )
        metrics = train_device(settings, 0, content).metric_records["metrics"]
        spent.append((metrics["epsilon"], metrics.get("budget-refused", 0)))
    epsilons = [float(e) for e, _ in spent]
    assert [refused for _, refused in spent] == [0, 0, 0, 0, 0, 1]
    assert epsilons[:5] == sorted(epsilons[:5]) and epsilons[5] == epsilons[4]
    # Planned for 5 of the 10 rounds, not all 10: the fifth spends nearly the whole budget.
    assert 7.0 < epsilons[4] <= settings.privacy.target_epsilon


def test_a_device_refuses_messages_it_cannot_train_from_and_spends_nothing(
    tmp_path: Path,
) -> None:
    settings = FederationSettings.for_data(
        "demo", devices=3, rounds=2, out=str(tmp_path), local=LocalConfig(max_examples=8)
    )
    ensure_secret(tmp_path)
    state = Recommender(settings.model).state_dict()
    good = ArrayRecord(state)
    name = next(iter(state))
    nan = ArrayRecord({**state, name: torch.full_like(state[name], float("nan"))})
    ints = ArrayRecord({**state, name: state[name].to(torch.int64)})
    round_1 = ConfigRecord({"server-round": 1})
    for records, message in [
        ({"config": round_1}, r"no global weights \(no 'arrays' record\)"),
        ({"arrays": nan, "config": round_1}, rf"weight '{name}' is not finite floats"),
        ({"arrays": ints, "config": round_1}, rf"weight '{name}' is not finite floats"),
        (
            {"arrays": good, "frozen": ArrayRecord({name: state[name]}), "config": round_1},
            rf"sends weight '{name}' twice",
        ),
        (
            {"arrays": ArrayRecord({"bogus": state[name]}), "config": round_1},
            "weights are not this run's network",
        ),
        ({"arrays": good}, "server-round must be an integer >= 1, got None"),
        ({"arrays": good, "config": ConfigRecord({"server-round": -7})}, "got -7"),
        ({"arrays": good, "config": ConfigRecord({"server-round": True})}, "got True"),
    ]:
        with pytest.raises(ValueError, match=message):
            train_device(settings, 0, RecordDict(records))
    assert not (tmp_path / "devices").exists()  # no store made, no budget spent


def test_a_device_names_a_partition_id_it_cannot_be() -> None:
    settings = FederationSettings(devices=3)
    for partition in (None, "0", 1.9, True, -3, 3):
        config = {} if partition is None else {"partition-id": partition}
        context = Context(
            run_id=1, node_id=1, node_config=config, state=RecordDict(), run_config={}
        )
        with pytest.raises(ValueError, match=r"partition-id must be an integer in \[0, 3\)"):
            device_partition(context, settings)
    context = Context(
        run_id=1, node_id=1, node_config={"partition-id": 2}, state=RecordDict(), run_config={}
    )
    assert device_partition(context, settings) == 2


def test_a_device_evaluates_under_dp_only_where_the_run_config_allows_it(tmp_path: Path) -> None:
    """Its held-out item's metrics leave it without noise: under DP at either level it refuses
    to evaluate unless ``evaluate-outside-dp`` is set; without DP it evaluates."""
    record_level = FederationSettings.for_data("demo", devices=3, out=str(tmp_path))
    no_record = dataclasses.replace(record_level.privacy, enabled=False)
    user_level = dataclasses.replace(
        record_level,
        privacy=no_record,
        user_privacy=dataclasses.replace(record_level.user_privacy, enabled=True),
    )
    content = RecordDict({"arrays": ArrayRecord(Recommender(record_level.model).state_dict())})
    for settings in (record_level, user_level):
        assert not settings.device_evaluation
        inner = inner_strategy(make_strategy(settings, user_noise=1.0), FedAvg)
        assert inner is not None and inner.fraction_evaluate == 0.0  # the server asks none
        with pytest.raises(PermissionError, match="device 1 does not evaluate under DP"):
            evaluate_device(settings, 1, content)
    for settings in (
        dataclasses.replace(record_level, evaluate_outside_dp=True),
        dataclasses.replace(record_level, privacy=no_record),
    ):
        assert settings.device_evaluation
        inner = inner_strategy(make_strategy(settings), FedAvg)
        assert inner is not None and inner.fraction_evaluate == settings.fraction_evaluate > 0
        metrics = evaluate_device(settings, 1, content).metric_records["metrics"]
        assert set(metrics) == {"hr@10", "ndcg@10", "mrr", "num-examples", "device-weight"}


def test_a_device_records_the_epsilon_of_the_steps_that_ran(tmp_path: Path) -> None:
    """With 93 batches Opacus' loader runs int(1 / (1/93)) = 92 steps and its accountant takes
    the sampling rate 1/92: the device records the epsilon of what ran (92 steps at 1/93) from
    its ledger, so the figure it reports is the one a recomputation gives."""
    settings = FederationSettings.for_data(
        "demo", devices=3, out=str(tmp_path), local=LocalConfig(batch_size=1, epochs=1)
    )
    world = federation_world(settings)
    some = world.examples(2, settings.local)
    take = np.arange(93) % len(some)
    arrays = (some.rows, some.types, some.lengths, some.targets)
    examples = DeviceExamples(*(a[take] for a in arrays))
    plan = plan_round(len(examples), settings.local, settings.privacy, 5)
    assert (plan.sample_rate, plan.steps) == (1 / 93, 93)
    network = Recommender(settings.model)
    _, _, epsilon, recorded = _train(settings, world, network, examples, PrivacyLedger(), plan, 0)
    assert (recorded.sample_rate, recorded.steps) == (1 / 93, 92)
    mechanism = (recorded.noise_multiplier, 1 / 93, 92)
    assert epsilon == epsilon_of("rdp", [mechanism], settings.privacy.delta)
    opacus = epsilon_of("rdp", [(recorded.noise_multiplier, 1 / 92, 92)], settings.privacy.delta)
    assert epsilon is not None and epsilon < opacus  # Opacus' figure, safe but not the ledger's
