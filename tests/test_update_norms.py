"""The clipping-norm planning tool: its update norms against rounds trained by hand, and what
the mean of the clipped updates keeps."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from fedrec.cli import main
from fedrec.shared.federated.local import LocalConfig, PrivacyConfig, plan_round, train_local
from fedrec.shared.federated.settings import FederationSettings
from fedrec.shared.model.network import ModelConfig, Recommender, trained_names
from fedrec.simulations.update_norms import update_norms
from fedrec.simulations.world import load_world

OFF = PrivacyConfig(enabled=False)
SETTINGS = FederationSettings(
    data="demo",
    devices=6,
    model=ModelConfig(hidden_dim=16, pool_window=5),
    local=LocalConfig(batch_size=8, negatives=10, max_examples=24, context=5, trained="users"),
    privacy=OFF,
)


def test_the_norms_are_those_of_rounds_trained_by_hand() -> None:
    result = update_norms(SETTINGS, sample=3, clipping_norms=[1e-6, 1e6], seed=2)
    assert len(result.devices) == len(set(result.devices)) == 3
    torch.manual_seed(SETTINGS.seed)
    initial = Recommender(SETTINGS.model)
    names = trained_names(initial, "users")
    assert result.parameters == sum(initial.state_dict()[n].numel() for n in names)
    world = load_world(SETTINGS.data, SETTINGS.devices)
    for partition, norm in zip(result.devices, result.norms, strict=True):
        network = Recommender(SETTINGS.model)
        network.load_state_dict(initial.state_dict())
        examples = world.examples(partition, SETTINGS.local)
        plan = plan_round(len(examples), SETTINGS.local, OFF, 1)
        table, items = world.features.table, world.split.num_items
        train_local(network, table, items, examples, SETTINGS.local, OFF, plan, seed=partition)
        after, before = network.state_dict(), initial.state_dict()
        update = torch.cat([(after[n] - before[n]).flatten() for n in names]).double()
        assert norm == pytest.approx(float(update.norm()), rel=1e-6)
    # unclipped, the plain mean (at most the longest update); clipped to almost nothing, the
    # mean of unit directions (at most 1)
    assert 0 < result.kept[1e6] * 1e6 <= max(result.norms)
    assert 0 < result.kept[1e-6] <= 1


def test_one_device_keeps_its_own_norm_up_to_the_clip() -> None:
    one = dataclasses.replace(SETTINGS, devices=2)
    result = update_norms(one, sample=1, clipping_norms=[1e-6, 1e6])
    (norm,) = result.norms
    assert result.kept[1e-6] == pytest.approx(1.0)
    assert result.kept[1e6] == pytest.approx(norm / 1e6)
    with pytest.raises(ValueError, match="positive clipping norms"):
        update_norms(one, sample=1, clipping_norms=[0.0])


def test_the_command_trains_the_recency_weights_of_a_user_level_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "norms.json"
    args = ["update-norms", "--data", "demo", "--devices", "4", "--sample", "2", "--clip", "0.2"]
    assert main([*args, "--set", "model-hidden-dim=16", "--json", str(out)]) == 0
    assert "users.recency: 20 parameters" in capsys.readouterr().out
    saved = json.loads(out.read_text())
    assert saved["trained"] == "users.recency" and list(saved["kept"]) == ["0.2"]
