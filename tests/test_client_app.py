"""The ClientApp's training round, called below Flower: a device sampled in a fraction of the
rounds plans its DP noise for the rounds it is expected to join, and refuses once they are spent."""

from __future__ import annotations

from pathlib import Path

import pytest
from flwr.app import ArrayRecord, ConfigRecord, RecordDict

from fedrec.client.app import train_device
from fedrec.shared.federated.local import LocalConfig
from fedrec.shared.federated.settings import FederationSettings
from fedrec.shared.model.network import Recommender
from fedrec.simulations.keys import ensure_secret


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
