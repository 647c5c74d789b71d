"""User-level differential privacy (DP-FedAvg): its configuration and accounting, in pure
functions.

Each round the server clips every sampled device's whole update (new weights minus global) to
norm ``C``, averages the clipped updates of the ``m`` devices sampled without replacement from
``N``, and adds Gaussian noise of standard deviation ``sigma * C / m`` to the average (Flower's
``DifferentialPrivacyServerSideFixedClipping``). Two federations are neighbours when one
device's data is replaced (everything one person contributes); replacing one clipped update
moves the sum by up to ``2C``, so a round is the Gaussian mechanism with noise multiplier
``sigma / 2``, subsampled without replacement, and the rounds compose under RDP
(``dp_accounting``, the replace-one bound of Wang, Balle and Kasiviswanathan, 2019).
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import dp_accounting
from dp_accounting import rdp

from fedrec.shared.federated.local import RDP_ORDERS, check_dp_target


@dataclass(frozen=True)
class UserPrivacyConfig:
    """DP-FedAvg at the server: off by default. The noise multiplier is the smallest that keeps
    the federation within ``target_epsilon`` at ``delta`` after all planned rounds. The
    clipping norm is about the median norm of a device's round update of the recency weights
    (0.21 on the demo data, 0.20 on ml-latest-small), what devices train under user-level DP
    by default (``fedrec.shared.federated.settings.USER_DP_TRAINED``)."""

    enabled: bool = False
    target_epsilon: float = 8.0
    delta: float = 1e-5
    clipping_norm: float = 0.2

    def __post_init__(self) -> None:
        check_dp_target(
            "user-level ", self.target_epsilon, self.delta, "clipping_norm", self.clipping_norm
        )


def user_level_epsilon(
    noise_multipliers: Sequence[float], population: int, sampled: int, delta: float
) -> float:
    """Epsilon at ``delta`` after one round of DP-FedAvg per noise multiplier (see the module
    docstring)."""
    if not noise_multipliers:
        return 0.0
    if not 1 <= sampled <= population:
        raise ValueError(f"cannot sample {sampled} of {population} devices")
    accountant = rdp.RdpAccountant(
        orders=list(RDP_ORDERS), neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE
    )
    for noise, same in itertools.groupby(noise_multipliers):  # a run of equal rounds at once
        event: dp_accounting.DpEvent = dp_accounting.GaussianDpEvent(noise / 2)
        if sampled < population:
            event = dp_accounting.SampledWithoutReplacementDpEvent(population, sampled, event)
        accountant.compose(event, count=len(list(same)))
    return float(accountant.get_epsilon(delta))


def user_noise_norm(noise_multiplier: float, parameters: int, sampled: int) -> float:
    """The expected norm of the server's noise on a round's average over ``parameters``
    trained parameters, in clipping norms: ``sigma sqrt(d) / m``. An averaged update is at
    most one clipping norm long, so above 1 the noise outweighs any update."""
    return noise_multiplier * math.sqrt(parameters) / sampled


@functools.lru_cache(maxsize=16)
def plan_user_noise(
    config: UserPrivacyConfig,
    population: int,
    sampled: int,
    rounds: int,
    spent: tuple[float, ...] = (),
) -> float:
    """The smallest noise multiplier (to 0.1%) that keeps the rounds already run (their noise
    multipliers ``spent``) and ``rounds`` more within the target."""

    def epsilon(noise: float) -> float:
        return user_level_epsilon([*spent, *[noise] * rounds], population, sampled, config.delta)

    if epsilon(1e6) > config.target_epsilon:
        raise ValueError(
            f"the {len(spent)} rounds already run leave no user-level budget (epsilon "
            f"{config.target_epsilon}) for {rounds} more"
        )
    low, high = 0.0, 1.0
    while epsilon(high) > config.target_epsilon:
        low, high = high, high * 2
    while high - low > 1e-3 * high:
        middle = (low + high) / 2
        low, high = (middle, high) if epsilon(middle) > config.target_epsilon else (low, middle)
    return high
