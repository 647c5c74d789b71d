"""The server's moving average of the global weights.

Devices train from the global weights themselves; the server evaluates, publishes and hands
devices for ranking an exponential moving average of them over rounds (Polyak averaging with
a window). The average is post-processing of what the server already holds, so it costs no
privacy; it smooths the round-to-round noise that DP and client drift put into the weights
(De et al. 2022 average DP-SGD's iterates the same way).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

Arrays = dict[str, npt.NDArray[np.generic]]


def average_weight(decay: float, server_round: int) -> float:
    """How much the old average keeps in round ``server_round`` (from 1), so that the average
    after round t weighs the weights of rounds 1..t by ``decay ** (t - i)``, normalised:
    ``decay * (1 - decay ** (t - 1)) / (1 - decay ** t)``. Round 1 keeps nothing (the
    initial weights never enter the average, as Adam's bias correction); 0 turns it off."""
    if decay == 0:
        return 0.0
    return decay * (1 - decay ** (server_round - 1)) / (1 - decay**server_round)


def moving_average(average: Arrays, weights: Arrays, keep: float) -> Arrays:
    """``keep * average + (1 - keep) * weights``, array by array, in each array's dtype."""
    if set(average) != set(weights):
        raise ValueError(f"the average has {sorted(average)}, the weights {sorted(weights)}")
    return {
        name: (
            keep * average[name].astype(np.float64) + (1 - keep) * value.astype(np.float64)
        ).astype(value.dtype)
        for name, value in weights.items()
    }
