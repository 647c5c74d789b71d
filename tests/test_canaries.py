"""The privacy audit: planting canaries, an attack that finds memorised ones, and the
federations it trains and attacks."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fedrec.shared.federated.examples import DeviceExamples
from fedrec.shared.federated.local import LocalConfig, PrivacyConfig, plan_round, train_local
from fedrec.shared.federated.settings import FederationSettings
from fedrec.shared.model.network import ModelConfig, Recommender, initial_network
from fedrec.simulations.audit import UNTRAINED, audit_runs, run_audit
from fedrec.simulations.canaries import audit, make_canaries, plant
from fedrec.simulations.world import load_world

ITEMS = 40
SMALL = ModelConfig(feature_dim=12, item_dim=12, hidden_dim=8, pool_window=3, start_events=1)
NO_ROWS, NO_VALUES = np.zeros((0, 3), dtype=np.int64), np.zeros(0, dtype=np.int64)
EMPTY = DeviceExamples(NO_ROWS, NO_ROWS, NO_VALUES, NO_VALUES)


def test_canaries_are_planted_one_device_each_with_as_many_controls() -> None:
    canaries = make_canaries(ITEMS, devices=10, count=4, seed=0)
    assert [c.device for c in canaries] == [0, 1, 2, 3, None, None, None, None]
    assert all(c.context != c.target for c in canaries)
    assert canaries == make_canaries(ITEMS, devices=10, count=4, seed=0)
    with pytest.raises(ValueError, match="canaries must be between 1 and the 10 devices"):
        make_canaries(ITEMS, devices=10, count=11, seed=0)
    planted = plant(EMPTY, canaries, device=2, repeats=5, max_examples=128)
    assert len(planted) == 5 and (planted.targets == canaries[2].target).all()
    assert (planted.rows[:, 0] == canaries[2].context).all() and (planted.lengths == 1).all()
    assert len(plant(EMPTY, canaries, device=7, repeats=5, max_examples=128)) == 0  # none


def test_canaries_take_the_place_of_a_full_devices_oldest_examples() -> None:
    """A device trains on at most ``max_examples`` (the server drops an update that claims
    more), so its canaries replace its oldest examples rather than push it past the bound."""
    canaries = make_canaries(ITEMS, devices=10, count=4, seed=0)
    own = DeviceExamples(
        rows=np.arange(24, dtype=np.int64).reshape(8, 3),
        types=np.zeros((8, 3), dtype=np.int64),
        lengths=np.full(8, 3, dtype=np.int64),
        targets=np.arange(8, dtype=np.int64),
    )
    planted = plant(own, canaries, device=1, repeats=3, max_examples=8)
    assert len(planted) == 8
    assert planted.targets.tolist() == [3, 4, 5, 6, 7] + [canaries[1].target] * 3
    with pytest.raises(ValueError, match="1 canaries planted 9 times do not fit a device's 8"):
        plant(own, canaries, device=1, repeats=9, max_examples=8)


def test_the_attack_tells_memorised_canaries_from_controls() -> None:
    torch.manual_seed(0)
    table = torch.randn(ITEMS, 12, generator=torch.Generator().manual_seed(1))
    canaries = make_canaries(ITEMS, devices=8, count=8, seed=3)
    network = Recommender(SMALL)
    before = audit(network, table, canaries)
    examples = EMPTY
    for device in range(8):
        examples = plant(examples, canaries, device, repeats=4, max_examples=32)
    local = LocalConfig(epochs=40, batch_size=8, learning_rate=3e-2, context=3, negatives=10)
    off = PrivacyConfig(enabled=False)
    train_local(
        network, table, ITEMS, examples, local, off, plan_round(len(examples), local, off, 1)
    )
    after = audit(network, table, canaries)
    assert (before.planted, before.controls) == (after.planted, after.controls) == (8, 8)
    assert after.auc > 0.85 > before.auc, (before, after)
    assert after.planted_mean_rank < after.control_mean_rank


def test_the_audit_trains_without_dp_and_at_each_level_alone(tmp_path: Path) -> None:
    base = FederationSettings.for_data("demo", canaries=4).with_run_config(
        {"dp-target-epsilon": 3.0, "user-dp-target-epsilon": 5.0}
    )
    runs = audit_runs(base, tmp_path)
    assert list(runs) == ["no-dp", "dp", "user-dp"]
    levels = {
        name: (s.privacy.enabled, s.user_privacy.enabled, s.local.trained)
        for name, s in runs.items()
    }
    assert levels == {
        "no-dp": (False, False, "all"),
        "dp": (True, False, "all"),
        "user-dp": (False, True, "users.recency"),
    }
    assert runs["dp"].privacy.target_epsilon == 3.0
    assert runs["user-dp"].user_privacy.target_epsilon == 5.0
    assert {s.out for s in runs.values()} == {str(tmp_path / n) for n in runs}
    assert {s.canaries for s in runs.values()} == {4}


@pytest.mark.slow
def test_the_audit_attacks_each_trained_model_and_the_initial_weights(tmp_path: Path) -> None:
    base = FederationSettings(
        data="demo",
        devices=3,
        rounds=1,
        canaries=2,
        canary_repeats=4,
        model=ModelConfig(hidden_dim=16, pool_window=5),
        local=LocalConfig(batch_size=8, negatives=10, max_examples=24, context=5),
    )
    results = run_audit(base, tmp_path)
    assert list(results) == [UNTRAINED, "no-dp", "dp", "user-dp"]
    world = load_world("demo", 3)
    canaries = make_canaries(world.split.num_items, 3, 2, base.seed)
    initial = audit(
        initial_network(base.model, base.seed),
        world.features.items,
        canaries,
    )
    assert results[UNTRAINED] == dataclasses.asdict(initial)
    for name in ("no-dp", "dp", "user-dp"):
        entry = json.loads((tmp_path / name / "audit.json").read_text(encoding="utf-8"))
        assert entry == results[name] and entry["untrained_auc"] == initial.auc
        assert (entry["planted"], entry["controls"]) == (2, 2)
        report = (tmp_path / name / "privacy.md").read_text(encoding="utf-8")
        assert f"AUC **{entry['auc']:.3f}**" in report
        assert f"before any training, gets AUC {initial.auc:.3f}" in report
    assert results["dp"]["record_level_dp"] and results["user-dp"]["user_level_dp"]
    assert json.loads((tmp_path / "audit.json").read_text(encoding="utf-8")) == results
