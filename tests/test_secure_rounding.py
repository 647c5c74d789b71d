"""The bound on how far SecAgg+'s rounding moves distributed DP from the Gaussian mechanism,
checked against exact distributions where it is not negligible."""

from __future__ import annotations

import math

import numpy as np
import pytest
from flwr.common.secure_aggregation.quantization import quantize
from scipy.stats import norm

from fedrec.server.secure_aggregation import secure_workflow
from fedrec.shared.federated.secure_rounding import (
    CLIPPING_RANGE,
    QUANTIZATION_LEVELS,
    SecureRounding,
    distributed_rounding,
    log10_rounding_delta,
    log_total_variation,
)
from fedrec.shared.federated.settings import FederationSettings


def _call(mean: float, std: float, strike: np.ndarray) -> np.ndarray:
    """E[(Y - strike)+] for Y ~ N(mean, std^2)."""
    z = (mean - strike) / std
    return (mean - strike) * norm.cdf(z) + std * norm.pdf(z)


def _rounded_pmf(mean: float, std: float, points: np.ndarray) -> np.ndarray:
    """P(stochastic rounding of N(mean, std^2) to the integers = j), for j in ``points``: the
    expectation of the hat function 1 - |Y - j| (its second difference of call prices)."""
    below, at, above = (_call(mean, std, points + shift) for shift in (-1, 0, 1))
    return below - 2 * at + above


def _sent_sum_pmf(means: list[float], std: float, points: np.ndarray) -> np.ndarray:
    """The exact distribution of the sum SecAgg+ computes (lattice spacing 1, no clipping):
    each device's noised value rounded on its own, then summed."""
    span = np.arange(-60, 61)
    total = _rounded_pmf(means[0], std, span)
    start = int(span[0])
    for mean in means[1:]:
        total = np.convolve(total, _rounded_pmf(mean, std, span))
        start += span[0]
    out = np.zeros(len(points))
    inside = (points - start >= 0) & (points - start < len(total))
    out[inside] = total[points[inside] - start]
    return out


def _reference_pmf(total: float, std: float, devices: int, points: np.ndarray) -> np.ndarray:
    """The accounted Gaussian mechanism N(total, devices std^2), plus devices - 1 triangular
    variables on [-1, 1], rounded once (data-independent steps after the mechanism): for two
    devices, one triangular, integrated numerically."""
    assert devices == 2
    w = np.linspace(-1, 1, 8001)
    weights = 1 - np.abs(w)
    inner = np.array([_rounded_pmf(total + shift, std * math.sqrt(devices), points) for shift in w])
    return np.trapezoid(weights[:, None] * inner, w, axis=0)


@pytest.mark.parametrize("rho", [0.3, 0.6, 1.0, 1.4])
@pytest.mark.parametrize("means", [(0.1, 0.37), (2.5, -0.8)])
def test_the_bound_covers_the_exact_total_variation(rho: float, means: tuple[float, float]) -> None:
    points = np.arange(-80, 81)
    sent = _sent_sum_pmf(list(means), rho, points)
    reference = _reference_pmf(sum(means), rho, 2, points)
    assert sent.sum() == pytest.approx(1, abs=1e-9)
    assert reference.sum() == pytest.approx(1, abs=1e-7)
    exact = 0.5 * float(np.abs(sent - reference).sum())
    bound = math.exp(log_total_variation(SecureRounding(rho, 1.0, 2, signal_bound=0, clip=1e9)))
    assert exact <= bound
    if rho <= 0.6:  # where the rounding visibly moves the sum, the bound says so too
        assert exact > 1e-4 and bound > exact


def test_the_gap_and_the_bound_fall_as_the_noise_outgrows_the_lattice() -> None:
    points = np.arange(-80, 81)
    gaps, bounds = [], []
    for rho in (0.3, 0.6, 1.0, 1.4):
        sent = _sent_sum_pmf([0.1, 0.37], rho, points)
        gaps.append(0.5 * float(np.abs(sent - _reference_pmf(0.47, rho, 2, points)).sum()))
        bounds.append(log_total_variation(SecureRounding(rho, 1.0, 2, 0, clip=1e9)))
    assert gaps == sorted(gaps, reverse=True) and bounds == sorted(bounds, reverse=True)
    assert bounds[-1] < math.log(1e-2)


def test_the_rounding_modelled_is_flowers() -> None:
    """Flower's quantize rounds to one of the two nearest levels, unbiased: the hat-function
    distribution the bound is about."""
    levels = QUANTIZATION_LEVELS / (2 * CLIPPING_RANGE)
    value = 0.3 / levels + 1.0  # 30% of the way from one level to the next
    draws = quantize([np.full(200_000, value)], CLIPPING_RANGE, QUANTIZATION_LEVELS)[0]
    base = math.floor((value + CLIPPING_RANGE) * levels)
    assert set(np.unique(draws)) == {base, base + 1}
    assert float(np.mean(draws == base + 1)) == pytest.approx(0.3, abs=5 * math.sqrt(0.21 / 2e5))


def test_the_lattice_is_the_one_fedrecs_workflow_asks_for() -> None:
    workflow = secure_workflow(FederationSettings(), timeout=1.0)
    assert workflow.clipping_range == CLIPPING_RANGE
    assert workflow.quantization_range == QUANTIZATION_LEVELS


def test_clipping_that_can_bind_leaves_no_bound() -> None:
    assert log_total_variation(SecureRounding(1e-3, 1e-6, 10, signal_bound=8.0, clip=8.0)) == 0
    near = log_total_variation(SecureRounding(1e-3, 1e-6, 10, signal_bound=7.99, clip=8.0))
    far = log_total_variation(SecureRounding(1e-3, 1e-6, 10, signal_bound=7.9, clip=8.0))
    assert far < near < 0
    assert near == pytest.approx(math.log(20) + norm.logcdf(-10), rel=1e-9)  # the clip term


def test_the_movielens_defaults_add_nothing_a_float_can_hold() -> None:
    """Distributed DP's MovieLens defaults (noise multiplier 1.3086 in 110 shares at sampling
    rate 0.2, 128 examples a device, 122 devices a round): the rounding adds to delta less than
    10^-80000 over 243,860 weights and 230 rounds; the clipping margin sets it."""
    rounding = distributed_rounding(1.3086 / math.sqrt(110), 1.0, 0.2, 128, 122)
    assert rounding.signal_bound == pytest.approx(5.0)
    assert rounding.share_std == pytest.approx(1.3086 / math.sqrt(110) / 25.6)
    delta = log10_rounding_delta(rounding, 243_860, 230, epsilon=8.0)
    assert delta < -80_000
    clip_term = (math.log(2 * 122) + norm.logcdf(-3.0 / rounding.share_std)) / math.log(10)
    assert delta == pytest.approx(clip_term + math.log10((1 + math.exp(8)) * 243_860 * 230))


def test_a_small_sampling_rate_lets_the_clipping_bind() -> None:
    """At sampling rate 0.1 a device's clipped sum can reach 10 > 8 in SecAgg+'s units."""
    rounding = distributed_rounding(1.0 / math.sqrt(10), 1.0, 0.1, 128, 12)
    assert log10_rounding_delta(rounding, 1000, 10, 8.0) == pytest.approx(math.log10(1 + math.e**8))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"share_std": 0.0, "level": 1.0, "devices": 2, "signal_bound": 0.0},
        {"share_std": 1.0, "level": -1.0, "devices": 2, "signal_bound": 0.0},
        {"share_std": 1.0, "level": 1.0, "devices": 0, "signal_bound": 0.0},
        {"share_std": 1.0, "level": 1.0, "devices": 2, "signal_bound": -1.0},
    ],
)
def test_bad_parameters_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must be"):
        SecureRounding(**kwargs)  # type: ignore[arg-type]


def test_bad_run_sizes_are_refused() -> None:
    rounding = SecureRounding(1.0, 1e-3, 2, 0.0)
    with pytest.raises(ValueError, match="coordinates and rounds"):
        log10_rounding_delta(rounding, 0, 1, 1.0)
    with pytest.raises(ValueError, match="epsilon"):
        log10_rounding_delta(rounding, 1, 1, -1.0)
