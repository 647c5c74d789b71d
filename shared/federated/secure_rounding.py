"""How far SecAgg+'s rounding moves distributed DP from the Gaussian mechanism it accounts.

Under distributed DP with secure aggregation (docs/secure-aggregation.md) each of the K devices
of a round sends, per coordinate, ``v_k = x_k + z_k``: its clipped gradient sum ``x_k`` and its
share ``z_k ~ N(0, s^2)`` of the step's noise, scaled into SecAgg+'s units. Flower's
``secaggplus_mod`` clips ``v_k`` to ``[-R, R]`` and rounds it stochastically to a lattice of
spacing ``D`` (unbiased, to one of the two nearest points); the server learns only the sum.
The ledger accounts the sum as the Gaussian mechanism ``sum x_k + N(0, K s^2)``, which it is
not exactly: the rounding error depends on the values rounded.

The sum is nevertheless close, in total variation, to a mechanism that is the accounted one
followed by data-independent steps: add ``K - 1`` independent triangular variables on
``[-D, D]``, then round stochastically once. Per coordinate, with ``rho = s / D`` and
``beta = pi^2 rho^2 / 2`` (the proof is in docs/secure-aggregation.md):

- both lattice variables' characteristic functions are ``exp(-K s^2 w^2 / 2) sinc(w D / 2)^(2K)
  exp(i w sum x_k)`` plus aliasing terms; each device's aliasing is at most ``a = 2 exp(-beta)
  / (1 - exp(-8 beta))``, so the two differ by at most ``kappa = (1 + a)^K - 1 + a``, and so do
  their probabilities at each lattice point;
- within ``t sqrt(K) s + K D`` of ``sum x_k`` (``t = pi rho``) lie ``2 K + 2 pi sqrt(K) rho^2
  + 1`` points; beyond it each has probability at most ``2 Phi(-t)``;
- clipping changes nothing unless some ``|v_k| > R``: probability at most ``2 K Phi(-(R - X) /
  s)`` when ``|x_k| <= X < R``.

So the total variation per coordinate is at most ``(2 K + 2 pi sqrt(K) rho^2 + 1) kappa / 2 +
2 Phi(-t) + 2 K Phi(-(R - X) / s)``, over a run at most that times coordinates and rounds
(``eta``), and a run whose accounted mechanism is (epsilon, delta)-DP is (epsilon, delta +
(1 + e^epsilon) eta)-DP as sent. The bound holds whether or not the rounding's random numbers
(numpy's global generator in Flower) are known to the server: knowing them turns the
triangular smoothing into a known shift plus a uniform one, with the same bound. It is an
analysis of exact arithmetic; the floating-point noise itself is outside it.

Everything is in natural logarithms: for fedrec's runs the bound is far below what a float holds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy.special import log_ndtr, logsumexp

#: SecAgg+'s clipping range, quantization levels and modulus, which
#: ``fedrec.server.secure_aggregation.secure_workflow`` gives Flower's ``SecAggPlusWorkflow``.
CLIPPING_RANGE = 8.0
QUANTIZATION_LEVELS = 2**22
MASK_MODULUS = 2**32


@dataclass(frozen=True)
class SecureRounding:
    """One coordinate of a round as SecAgg+ sums it: ``devices`` replies (K), each with a
    noise share of standard deviation ``share_std`` (s) around a value within ``signal_bound``
    (X) of zero, clipped to ``[-clip, clip]`` (R) and rounded to a lattice of spacing
    ``level`` (D)."""

    share_std: float
    level: float
    devices: int
    signal_bound: float
    clip: float = CLIPPING_RANGE

    def __post_init__(self) -> None:
        for name in ("share_std", "level", "clip"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.signal_bound < 0:
            raise ValueError(f"signal_bound must be at least 0, got {self.signal_bound}")
        if self.devices < 1:
            raise ValueError(f"devices must be at least 1, got {self.devices}")


def log_total_variation(rounding: SecureRounding) -> float:
    """The natural log of the bound (module docstring) on the total variation between one
    coordinate's rounded sum and the accounted Gaussian mechanism post-processed; 0 where the
    bound says nothing (a total variation of at most 1)."""
    if rounding.signal_bound >= rounding.clip:
        return 0.0
    k, s = rounding.devices, rounding.share_std
    rho = s / rounding.level
    beta = math.pi**2 * rho**2 / 2
    log_alias = math.log(2) - beta - math.log(-math.expm1(-8 * beta))
    if log_alias + math.log(k + 1) >= 0:
        return 0.0
    alias = math.exp(log_alias)  # may underflow to 0; kappa's log does not
    log_kappa = log_alias + math.log(k * math.exp(k * alias) + 1)  # (1+a)^K - 1 <= K a e^(Ka)
    points = 2 * k + 2 * math.pi * math.sqrt(k) * rho**2 + 1
    terms = [
        math.log(points / 2) + log_kappa,
        math.log(2) + float(log_ndtr(-math.pi * rho)),
        math.log(2 * k) + float(log_ndtr(-(rounding.clip - rounding.signal_bound) / s)),
    ]
    return min(0.0, float(logsumexp(terms)))


def log10_rounding_delta(
    rounding: SecureRounding, coordinates: int, rounds: int, epsilon: float
) -> float:
    """The log10 of what ``rounds`` rounds of ``coordinates`` coordinates add to a run's delta
    at ``epsilon``: ``(1 + e^epsilon)`` times their total variation's bound (at most 1, so
    the figure is never above ``log10(1 + e^epsilon)``)."""
    if coordinates < 1 or rounds < 1:
        raise ValueError(f"coordinates and rounds must be at least 1, got {coordinates}, {rounds}")
    if epsilon < 0:
        raise ValueError(f"epsilon must be at least 0, got {epsilon}")
    log_eta = min(0.0, log_total_variation(rounding) + math.log(coordinates) + math.log(rounds))
    log_factor = epsilon + math.log1p(math.exp(-epsilon))  # log(1 + e^epsilon)
    return (log_factor + log_eta) / math.log(10)


def distributed_rounding(
    share_noise_multiplier: float,
    max_grad_norm: float,
    sample_rate: float,
    max_examples: int,
    devices: int,
) -> SecureRounding:
    """A distributed-DP round as SecAgg+ sums it: a device with ``n`` examples sends its change
    ``-(x + z) / (sample_rate n)`` times SecAgg+'s weight ``n / max_examples``, where each of
    the at most ``max_examples`` clipped gradients in ``x`` has every coordinate within
    ``max_grad_norm`` and ``z`` has standard deviation ``share_noise_multiplier *
    max_grad_norm`` (``fedrec.shared.federated.distributed.share_noise_multiplier``); at most
    ``devices`` replies are summed."""
    scale = 1 / (sample_rate * max_examples)
    return SecureRounding(
        share_std=scale * share_noise_multiplier * max_grad_norm,
        level=2 * CLIPPING_RANGE / QUANTIZATION_LEVELS,
        devices=devices,
        signal_bound=scale * max_grad_norm * max_examples,
    )
