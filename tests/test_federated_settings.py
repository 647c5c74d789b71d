"""Federation settings: per-data defaults, the run-config round trip, clear errors."""

from __future__ import annotations

import pytest

from fedrec.shared.federated.local import LocalConfig
from fedrec.shared.federated.settings import FederationSettings


def test_each_data_set_has_its_documented_defaults() -> None:
    demo = FederationSettings.for_data("demo")
    assert (demo.devices, demo.rounds, demo.fraction_train) == (50, 5, 1.0)
    movielens = FederationSettings.for_data("movielens:/data/ml-latest-small")
    assert movielens.data == "movielens:/data/ml-latest-small"
    assert (movielens.devices, movielens.rounds, movielens.fraction_train) == (610, 15, 0.2)
    assert movielens.local == LocalConfig(max_examples=128)
    assert FederationSettings.for_data("some/folder", rounds=2).rounds == 2
    assert FederationSettings.for_data("movielens:x", devices=10).devices == 10


def test_run_config_round_trip_and_unknown_keys() -> None:
    settings = FederationSettings.for_data("movielens:x")
    assert FederationSettings.from_run_config(settings.to_run_config()) == settings
    with pytest.raises(ValueError, match=r"unknown run-config keys \['rounds-typo'\]"):
        FederationSettings.from_run_config({"rounds-typo": 3})
    with pytest.raises(ValueError, match="fraction_evaluate must be in"):
        FederationSettings(fraction_evaluate=1.5)
