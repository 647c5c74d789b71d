"""The server's checks on every update: names, shapes, dtypes, finite values, a norm bound."""

from __future__ import annotations

import re

import numpy as np
import pytest

from fedrec.shared.federated.validation import too_few_updates, update_problem, weight_problem

REFERENCE = {"a": np.zeros((3, 4), np.float32), "b": np.ones(5, np.float32)}


def update(**changes: np.ndarray) -> dict[str, np.ndarray]:
    return {**{k: v.copy() for k, v in REFERENCE.items()}, **changes}


def test_a_good_update_passes() -> None:
    good = update(a=np.full((3, 4), 0.1, np.float32))
    assert update_problem(REFERENCE, good, max_norm=1.0) is None


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (update(a=np.zeros((4, 3), np.float32)), r"a has shape \(4, 3\), expected \(3, 4\)"),
        (update(b=np.ones(5, np.float64)), "b has dtype float64, expected float32"),
        (update(b=np.array([1, 1, np.nan, 1, 1], np.float32)), "b has NaN or infinite"),
        (update(b=np.array([1, 1, np.inf, 1, 1], np.float32)), "b has NaN or infinite"),
        (update(a=np.full((3, 4), 10.0, np.float32)), "update norm 34.6 exceeds the bound 1"),
        ({"a": REFERENCE["a"]}, r"wrong arrays \(missing \['b'\], unexpected \[\]\)"),
        (update(c=np.zeros(1, np.float32)), r"unexpected \['c'\]"),
    ],
)
def test_bad_updates_are_refused_with_the_reason(bad: dict[str, np.ndarray], reason: str) -> None:
    problem = update_problem(REFERENCE, bad, max_norm=1.0)
    assert problem is not None
    assert re.search(reason, problem), problem


def test_a_round_with_too_few_usable_updates_is_not_applied() -> None:
    assert too_few_updates(usable=2, replies=3, min_share=0.5) is None
    assert too_few_updates(usable=1, replies=2, min_share=0.5) is None  # exactly half
    reason = too_few_updates(usable=1, replies=120, min_share=0.5)
    assert reason == "1 of 120 updates usable, below min-update-share 0.5"
    assert too_few_updates(usable=0, replies=3, min_share=0.0) is None  # the check off


def test_aggregation_weights_a_device_cannot_have_are_refused() -> None:
    """FedAvg weighs an update by its example count: a device that claimed a billion would
    outweigh every other; so would a device weight other than 1 under user-level DP."""
    assert weight_problem({"num-examples": 128, "device-weight": 1}, max_examples=128) is None
    assert weight_problem({"num-examples": 3.0, "device-weight": 1}, max_examples=128) is None
    for count in (0, 129, 1e9, float("nan"), float("inf"), -5, None, "7", True):
        problem = weight_problem({"num-examples": count, "device-weight": 1}, max_examples=128)
        assert problem == f"bad num-examples {count!r}: a device trains on 1 to 128 examples"
    for weight in (2, 0, 1e9, None, True):
        problem = weight_problem({"num-examples": 5, "device-weight": weight}, max_examples=128)
        assert problem == f"bad device-weight {weight!r}: every device weighs 1"
