"""Training on the devices' examples pooled: the examples are every device's, the DP round is
planned for exactly its own steps, and ``fedrec pooled`` runs it as a user would."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from opacus.accountants import RDPAccountant

from fedrec.cli import main
from fedrec.shared.federated.local import RDP_ORDERS, LocalConfig
from fedrec.shared.federated.settings import FederationSettings
from fedrec.shared.model.network import ModelConfig
from fedrec.simulations import pooled
from fedrec.simulations.pooled import pooled_examples, train_pooled
from fedrec.simulations.world import load_world

TINY = {"model-hidden-dim": 16, "model-item-rank": 4}
SETTINGS = FederationSettings(
    data="demo",
    devices=6,
    model=ModelConfig(hidden_dim=16, item_rank=4),
    local=LocalConfig(epochs=2, batch_size=64, max_examples=40),
)


def test_the_pool_is_every_devices_examples_in_turn() -> None:
    world = load_world(SETTINGS.data, SETTINGS.devices)
    pooled = pooled_examples(world, SETTINGS.devices, SETTINGS.local)
    start = 0
    for device in range(SETTINGS.devices):
        own = world.examples(device, SETTINGS.local)
        assert 0 < len(own) <= SETTINGS.local.max_examples
        stop = start + len(own)
        for name in ("rows", "types", "lengths", "targets"):
            assert np.array_equal(getattr(pooled, name)[start:stop], getattr(own, name))
        start = stop
    assert len(pooled) == start


def test_dp_spends_the_target_over_exactly_its_own_steps() -> None:
    result = train_pooled(SETTINGS, resamples=10)
    assert result.epsilon is not None and result.noise_multiplier is not None
    batches = math.ceil(result.examples / SETTINGS.local.batch_size)
    assert result.sample_rate == 1 / batches
    assert result.steps == SETTINGS.local.epochs * batches
    # planned for these steps alone: the smallest noise that fits spends nearly all of it
    assert 0.97 * 8.0 <= result.epsilon <= 8.0
    accountant = RDPAccountant()
    accountant.history = [(result.noise_multiplier, result.sample_rate, result.steps)]
    assert result.epsilon == pytest.approx(accountant.get_epsilon(1e-5, alphas=list(RDP_ORDERS)))
    assert result.evaluation.users == len(load_world("demo", 6).split.users)
    assert math.isfinite(result.loss) and result.delta == 1e-5


def test_without_dp_it_repeats_itself_and_learns() -> None:
    settings = SETTINGS.with_run_config({"dp-enabled": False, "local-epochs": 4})
    first, again = train_pooled(settings, resamples=10), train_pooled(settings, resamples=10)
    assert first.epsilon is None and first.noise_multiplier is None and first.delta is None
    assert first.evaluation.metrics == again.evaluation.metrics and first.loss == again.loss
    fewer = train_pooled(settings.with_run_config({"local-epochs": 1}), resamples=10)
    assert first.loss < fewer.loss  # more epochs fit the examples better


def test_the_command_takes_the_local_round_from_its_flags(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "pooled.json"
    sets = [f"--set={key}={value}" for key, value in TINY.items()]
    flags = ["--epochs", "1", "--batch-size", "32", "--resamples", "10", "--json", str(out)]
    assert main(["pooled", "--data", "demo", "--devices", "6", *flags, *sets]) == 0
    printed = capsys.readouterr().out
    written = json.loads(out.read_text(encoding="utf-8"))
    assert written["steps"] == math.ceil(written["examples"] / 32)
    assert 0 < written["epsilon"] <= 8.0 and written["noise_multiplier"] > 0
    assert f"{written['examples']:,} pooled examples of 6 devices" in printed
    assert "hr@10" in written["metrics"] and "epsilon" in printed
    with pytest.raises(SystemExit):  # rounds mean nothing here
        main(["pooled", "--data", "demo", "--rounds", "3"])


def test_under_dp_the_command_trains_with_sgd_momentum_on_a_cosine_without_with_adam(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[tuple[FederationSettings, str]] = []

    def recording(settings: FederationSettings, resamples: int, device: str) -> None:
        seen.append((settings, device))
        raise SystemExit(0)

    monkeypatch.setattr(pooled, "train_pooled", recording)
    for flags in (
        [],
        ["--no-dp"],
        ["--learning-rate", "0.5", "--device", "meta"],
        ["--set", "local-momentum=0", "--set", "local-schedule=constant"],
        ["--optimizer", "adam"],
    ):
        with pytest.raises(SystemExit):
            main(["pooled", "--data", "demo", "--devices", "6", *flags])
    (dp, dp_device), (no_dp, _), (rate, rate_device), (plain, _), (adam, _) = seen
    assert (dp.local.optimizer, dp.local.momentum, dp.local.schedule) == ("sgd", 0.9, "cosine")
    assert (dp.local.learning_rate, dp.privacy.enabled, dp_device) == (3.0, True, "cpu")
    assert (no_dp.local.optimizer, no_dp.local.learning_rate) == ("adam", 3e-3)
    assert no_dp.local.momentum == 0.0 and not no_dp.privacy.enabled
    assert (rate.local.learning_rate, rate.local.optimizer, rate_device) == (0.5, "sgd", "meta")
    assert (plain.local.momentum, plain.local.schedule) == (0.0, "constant")
    assert (adam.local.optimizer, adam.local.learning_rate) == ("adam", 3e-3)
    assert adam.privacy.enabled and (adam.local.momentum, adam.local.schedule) == (0, "constant")
