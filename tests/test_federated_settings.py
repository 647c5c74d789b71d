"""Federation settings: per-data defaults, the run-config round trip, clear errors."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from pathlib import Path

import dp_accounting
import numpy as np
import pytest
from dp_accounting import rdp
from flwr.app import Array, ArrayRecord
from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping

from fedrec.server.checkpoint import save_checkpoint
from fedrec.server.federation import (
    ROUND_FIELDS,
    USER_NOISE,
    _log_user_noise,
    make_strategy,
    user_level_noise,
)
from fedrec.shared.federated.local import RDP_ORDERS, LocalConfig, PrivacyConfig
from fedrec.shared.federated.settings import (
    FederationSettings,
    resume_conflicts,
    user_level_local,
)
from fedrec.shared.federated.user_level import (
    UserPrivacyConfig,
    user_level_epsilon,
    user_noise_norm,
)
from fedrec.shared.model.network import initial_network
from fedrec.simulations.keys import ensure_secret
from fedrec.simulations.run import simulate


def test_each_data_set_has_its_documented_defaults() -> None:
    demo = FederationSettings.for_data("demo")
    assert (demo.devices, demo.rounds, demo.fraction_train) == (50, 5, 1.0)
    movielens = FederationSettings.for_data("movielens:/data/ml-latest-small")
    assert movielens.data == "movielens:/data/ml-latest-small"
    assert (movielens.devices, movielens.rounds, movielens.fraction_train) == (610, 25, 0.2)
    assert movielens.local == LocalConfig(max_examples=128)
    assert FederationSettings.for_data("some/folder", rounds=2).rounds == 2
    assert FederationSettings.for_data("movielens:x", devices=10).devices == 10


def test_movielens_without_dp_defaults_to_the_run_that_met_its_target() -> None:
    off = PrivacyConfig(enabled=False)
    no_dp = FederationSettings.for_data("movielens:x", privacy=off)
    # the command measured in docs/federated.md, given as flags over the DP defaults
    measured = FederationSettings.for_data("movielens:x").with_run_config(
        {
            "dp-enabled": False,
            "rounds": 100,
            "strategy": "fedadam",
            "local-optimizer": "sgd",
            "local-learning-rate": 0.1,
            "server-tau": 1e-4,
            "server-schedule": "cosine",
        }
    )
    assert no_dp == measured
    assert FederationSettings.for_data("movielens:x", privacy=off, rounds=5).rounds == 5
    dp = FederationSettings.for_data("movielens:x")
    assert (dp.strategy, dp.rounds, dp.local.optimizer) == ("fedavg", 25, "adam")
    user_only = UserPrivacyConfig(enabled=True)
    user = FederationSettings.for_data("movielens:x", privacy=off, user_privacy=user_only)
    recency = dataclasses.replace(dp.local, trained="users.recency")  # the user-level default
    assert user == dataclasses.replace(dp, privacy=off, user_privacy=user_only, local=recency)
    both = FederationSettings.for_data("demo", user_privacy=user_only)
    assert both.privacy.enabled and both.local.trained == "users.recency"
    # the server draws devices secretly only where user-level accounting amplifies by it
    assert [s.secret_sampling for s in (no_dp, dp, user, both)] == [False, False, True, True]
    # devices evaluate without noise only without DP, or where the run config allows it
    assert [s.device_evaluation for s in (no_dp, dp, user)] == [True, False, False]
    assert dataclasses.replace(dp, evaluate_outside_dp=True).device_evaluation
    assert not dataclasses.replace(no_dp, fraction_evaluate=0.0).device_evaluation
    # the server drops updates by their norm only where that is not part of a DP release
    distributed = dataclasses.replace(dp, privacy=PrivacyConfig(distributed=True))
    bounds = [s.update_norm_bound for s in (no_dp, dp, user, both, distributed)]
    assert bounds == [50.0, 50.0, math.inf, math.inf, math.inf]
    chosen = LocalConfig(trained="items")  # parts given are kept
    assert user_level_local(chosen) == chosen
    assert user_level_local(LocalConfig()) == LocalConfig(trained="users.recency")
    given_back = {  # docs/federated.md: the DP defaults without DP
        "local-optimizer": "adam",
        "local-learning-rate": 0.01,
        "server-schedule": "constant",
        "server-tau": 0.001,
    }
    same_run = FederationSettings.for_data(
        "movielens:x", privacy=off, strategy="fedavg", rounds=25
    ).with_run_config(given_back)
    assert same_run == dataclasses.replace(dp, privacy=off)
    demo = FederationSettings.for_data("demo", privacy=off)
    assert demo == dataclasses.replace(FederationSettings.for_data("demo"), privacy=off)


def _more_than(planned: int, rounds: int, share: float) -> float:
    """P(a device is sampled in more than ``planned`` of ``rounds`` rounds)."""
    return sum(
        math.comb(rounds, k) * share**k * (1 - share) ** (rounds - k)
        for k in range(planned + 1, rounds + 1)
    )


def test_devices_plan_noise_for_the_rounds_they_are_expected_to_join() -> None:
    movielens = FederationSettings.for_data("movielens:x")  # 122 of 610 a round, 25 rounds
    assert movielens.planned_participations == 9  # mean 5, deviation 2: 5 + 2 * 2
    share = movielens.sampled_devices / movielens.devices
    assert _more_than(9, 25, share) < 0.05 < _more_than(7, 25, share)
    tight = FederationSettings.for_data("movielens:x", participation_margin=0.0)
    assert tight.planned_participations == 5
    everyone = FederationSettings.for_data("demo")  # every device trains every round
    assert everyone.planned_participations == everyone.rounds == 5
    capped = FederationSettings(devices=10, rounds=3, fraction_train=0.5, participation_margin=10)
    assert capped.planned_participations == 3
    with pytest.raises(ValueError, match="participation_margin must be in"):
        FederationSettings(participation_margin=-1.0)


def test_run_config_round_trip_and_unknown_keys() -> None:
    settings = FederationSettings.for_data("movielens:x")
    assert FederationSettings.from_run_config(settings.to_run_config()) == settings
    with pytest.raises(ValueError, match=r"unknown run-config keys \['rounds-typo'\]"):
        FederationSettings.from_run_config({"rounds-typo": 3})
    with pytest.raises(ValueError, match="fraction_evaluate must be in"):
        FederationSettings(fraction_evaluate=1.5)
    with pytest.raises(ValueError, match="min_update_share must be in"):
        FederationSettings(min_update_share=1.5)
    with pytest.raises(ValueError, match="a federation needs devices >= 2, got 1"):
        FederationSettings(devices=1)
    with pytest.raises(ValueError, match="a federation needs rounds >= 1, got 0"):
        FederationSettings(rounds=0)


def test_a_resumed_run_without_user_level_budget_fails_before_it_starts(tmp_path: Path) -> None:
    settings = FederationSettings(
        devices=3, rounds=3, out=str(tmp_path), user_privacy=UserPrivacyConfig(enabled=True)
    )
    # two rounds already run with little noise: their epsilon is far above 8
    lines = [{**dict.fromkeys(ROUND_FIELDS), "round": r, "user_noise": 0.5} for r in (1, 2)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    (tmp_path / USER_NOISE).write_text(json.dumps([0.5, 0.5]))
    save_checkpoint(tmp_path, initial_network(settings.model, settings.seed), None, None, 2)
    ensure_secret(tmp_path)
    with pytest.raises(ValueError, match=r"the 2 rounds already run leave no user-level budget"):
        simulate(settings)
    assert not (tmp_path / "summary.json").exists()


def test_a_run_started_before_a_key_existed_resumes_with_its_default() -> None:
    settings = FederationSettings(devices=3, rounds=2)
    older = settings.to_run_config()
    del older["model-center-features"]  # a run folder from before the key was added
    assert resume_conflicts(older, settings) == []
    centred = dataclasses.replace(
        settings, model=dataclasses.replace(settings.model, center_features=True)
    )
    assert resume_conflicts(older, centred) == ["model-center-features: False -> True"]


def test_a_resumed_run_must_keep_what_fixes_its_training_and_accounting(tmp_path: Path) -> None:
    """A run's folder keeps the settings it started with; resuming it with other ones outside
    RESUMABLE_KEYS fails before anything runs, and names each change."""
    settings = FederationSettings(devices=3, rounds=2, out=str(tmp_path))
    (tmp_path / "run-config.json").write_text(json.dumps(settings.to_run_config()))
    save_checkpoint(tmp_path, initial_network(settings.model, settings.seed), None, None, 2)
    ensure_secret(tmp_path)
    checkpoint = (tmp_path / "checkpoint.npz").read_bytes()
    other = dataclasses.replace(
        settings,
        rounds=4,  # may change: the run goes on for longer
        fraction_train=0.5,
        user_privacy=UserPrivacyConfig(enabled=True, clipping_norm=1.0),
        local=dataclasses.replace(settings.local, trained="items"),
    )
    changes = [
        "fraction-train: 1.0 -> 0.5",
        "local-trained: 'all' -> 'items'",
        "user-dp-clipping-norm: 0.2 -> 1.0",
        "user-dp-enabled: False -> True",
    ]
    with pytest.raises(ValueError, match="; ".join(changes).replace(".", r"\.")) as caught:
        simulate(other)
    assert "may change only" in str(caught.value) and "another folder" in str(caught.value)
    assert (tmp_path / "checkpoint.npz").read_bytes() == checkpoint
    assert json.loads((tmp_path / "run-config.json").read_text()) == settings.to_run_config()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoint.npz",
        "run-config.json",
        "simulation.key",
    ]


def test_a_finished_user_level_run_keeps_its_last_noise() -> None:
    settings = FederationSettings(
        devices=50, rounds=3, user_privacy=UserPrivacyConfig(enabled=True)
    )
    assert user_level_noise(settings, [2.5, 2.5, 2.0], 3) == 2.0  # resuming it costs no search
    assert user_level_noise(settings, [2.5, 2.5], 2) != 2.5
    # a crash between round 3's metrics line and its checkpoint: round 3 runs again, planned
    # around all three releases, and the four rounds still fit the budget
    again = user_level_noise(settings, [2.5, 2.5, 2.5], 2)
    assert again is not None and again > 2.5
    epsilon = user_level_epsilon([2.5, 2.5, 2.5, again], 50, settings.sampled_devices, 1e-5)
    assert epsilon <= settings.user_privacy.target_epsilon


def test_user_noise_norm_is_the_norm_of_the_noise_flowers_wrapper_adds(
    caplog: pytest.LogCaptureFixture,
) -> None:
    user = UserPrivacyConfig(enabled=True, clipping_norm=0.5)
    settings = FederationSettings(devices=40, fraction_train=0.25, user_privacy=user)
    strategy = make_strategy(settings, user_noise=2.0)
    assert isinstance(strategy, DifferentialPrivacyServerSideFixedClipping)
    zeros = ArrayRecord({"w": Array(np.zeros(10_000, dtype=np.float32))})
    noised = strategy._add_noise_to_aggregated_arrays(zeros)  # the server's noise, alone
    norm = float(np.linalg.norm(noised["w"].numpy())) / user.clipping_norm
    assert user_noise_norm(2.0, 10_000, settings.sampled_devices) == 20.0
    assert norm == pytest.approx(20.0, rel=0.03)
    # the server says how loud the noise is, and warns when it outweighs any update
    with caplog.at_level(logging.INFO, logger="fedrec.server.federation"):
        _log_user_noise(2.0, 20, settings)
        _log_user_noise(2.0, 10_000, settings)
    quiet, loud = [r for r in caplog.records if r.name == "fedrec.server.federation"]
    assert quiet.levelno == logging.INFO and "about 0.89 clipping norms" in quiet.getMessage()
    assert loud.levelno == logging.WARNING and "about 20.00 clipping norms" in loud.getMessage()
    assert "local-trained = 'users.recency'" in loud.getMessage()


def test_user_level_epsilon_composes_equal_rounds_as_one_by_one() -> None:
    noises, population, sampled, delta = [1.5, 1.5, 1.5, 2.0, 1.5], 50, 10, 1e-5
    accountant = rdp.RdpAccountant(
        orders=list(RDP_ORDERS), neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE
    )
    for noise in noises:
        gaussian = dp_accounting.GaussianDpEvent(noise / 2)
        accountant.compose(
            dp_accounting.SampledWithoutReplacementDpEvent(population, sampled, gaussian)
        )
    expected = accountant.get_epsilon(delta)
    assert user_level_epsilon(noises, population, sampled, delta) == pytest.approx(expected, 1e-9)


def test_run_config_values_must_have_their_keys_types() -> None:
    settings = FederationSettings().with_run_config({"server-learning-rate": 1, "rounds": 7})
    assert settings.server_learning_rate == 1.0 and isinstance(settings.server_learning_rate, float)
    assert settings.rounds == 7 and settings.local == LocalConfig()
    for key, value, kind in [
        ("rounds", 7.5, "an integer"),
        ("rounds", True, "an integer"),
        ("dp-enabled", "yes", "true or false"),
        ("local-optimizer", 3, "text"),
        ("dp-noise-multiplier", "high", "a number"),
        ("max-update-norm", math.nan, "a finite number"),
        ("local-learning-rate", math.inf, "a finite number"),
        ("server-tau", -math.inf, "a finite number"),
    ]:
        with pytest.raises(ValueError, match=f"run-config key '{key}' takes {kind}, got"):
            FederationSettings().with_run_config({key: value})


def test_settings_built_in_code_refuse_what_no_run_can_use() -> None:
    for make, message in [
        (lambda: PrivacyConfig(target_epsilon=math.inf), "target_epsilon must be a finite"),
        (lambda: PrivacyConfig(max_grad_norm=math.nan), "max_grad_norm must be a finite"),
        (lambda: PrivacyConfig(noise_multiplier=math.inf), "noise_multiplier must be a finite"),
        (
            lambda: UserPrivacyConfig(enabled=True, target_epsilon=math.inf),
            "user-level target_epsilon must be a finite",
        ),
        (lambda: LocalConfig(learning_rate=math.nan), "learning_rate must be a finite"),
        (lambda: FederationSettings(max_update_norm=math.nan), "max_update_norm must be a"),
        (lambda: FederationSettings(server_learning_rate=math.inf), "server_learning_rate must"),
        (
            lambda: FederationSettings(strategy="fedadam", user_privacy=UserPrivacyConfig(True)),
            "user-level DP adds its noise to the aggregate",
        ),
        (lambda: FederationSettings(seed=-1), r"seed must be in \[0, 4294967295\], got -1"),
        (lambda: FederationSettings(seed=2**64), r"seed must be in \[0, 4294967295\]"),
    ]:
        with pytest.raises(ValueError, match=message):
            make()


def test_a_network_too_large_to_build_is_checked_without_building_it() -> None:
    huge = FederationSettings().with_run_config({"model-hidden-dim": 10_000_000})
    assert huge.model.hidden_dim == 10_000_000  # its module paths checked on the meta device


def test_a_network_the_encoder_cannot_feed_fails_before_the_federation(
    tmp_path: Path,
) -> None:
    base = FederationSettings(devices=3, rounds=1, out=str(tmp_path / "run"))
    for overrides, message in [
        (
            {"model-feature-dim": 100, "model-item-dim": 100},
            "model-feature-dim is 100, but the encoder's features have 384 dimensions",
        ),
    ]:
        with pytest.raises(ValueError, match=message):
            simulate(base.with_run_config(overrides))
    assert not (tmp_path / "run").exists()
