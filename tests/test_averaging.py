"""The server's moving average of the global weights: its weight per round and its maths."""

from __future__ import annotations

import numpy as np
import pytest

from fedrec.server.averaging import average_weight, moving_average
from fedrec.shared.federated.settings import FederationSettings


def test_the_average_weighs_rounds_by_decay_normalised() -> None:
    assert average_weight(0.0, 5) == 0.0  # off: the weights themselves
    assert average_weight(0.9, 1) == 0.0  # the initial weights never count
    assert average_weight(0.5, 2) == pytest.approx(1 / 3)  # (0.5 w1 + w2) / 1.5
    assert average_weight(0.9, 1000) == pytest.approx(0.9)
    rng = np.random.default_rng(0)
    rounds = [{"w": rng.normal(size=3)} for _ in range(6)]
    average = {"w": np.zeros(3)}
    for t, weights in enumerate(rounds, start=1):
        average = moving_average(average, weights, average_weight(0.8, t))
    factors = 0.8 ** np.arange(5, -1, -1)
    expected = sum(f * r["w"] for f, r in zip(factors, rounds, strict=True)) / factors.sum()
    np.testing.assert_allclose(average["w"], expected, rtol=1e-12)


def test_the_average_mixes_each_array_in_its_dtype() -> None:
    old = {"a": np.zeros((2, 2), np.float32), "b": np.full(3, 4.0, np.float32)}
    new = {"a": np.ones((2, 2), np.float32), "b": np.zeros(3, np.float32)}
    mixed = moving_average(old, new, 0.75)
    np.testing.assert_array_equal(mixed["a"], np.full((2, 2), 0.25, np.float32))
    np.testing.assert_array_equal(mixed["b"], np.full(3, 3.0, np.float32))
    assert all(v.dtype == np.float32 for v in mixed.values())
    assert moving_average(old, new, 0.0)["b"] is not new["b"]  # a copy, never an alias
    np.testing.assert_array_equal(moving_average(old, new, 0.0)["b"], new["b"])


def test_averages_of_different_arrays_are_an_error() -> None:
    with pytest.raises(ValueError, match="the average has"):
        moving_average({"a": np.zeros(1)}, {"b": np.zeros(1)}, 0.5)


@pytest.mark.parametrize("decay", [-0.1, 1.0, 1.5])
def test_a_decay_outside_0_1_is_an_error_that_names_it(decay: float) -> None:
    with pytest.raises(ValueError, match="average_decay"):
        FederationSettings(average_decay=decay)
    with pytest.raises(ValueError, match="average_decay"):
        FederationSettings().with_run_config({"average-decay": decay})
