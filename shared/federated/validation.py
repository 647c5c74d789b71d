"""Checks the server runs on every update before it may enter the aggregate."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import numpy.typing as npt
from flwr.app import RecordDict

from fedrec.shared.federated.records import EVALUATE_METRICS

Arrays = Mapping[str, npt.NDArray[np.generic]]


def too_few_updates(
    usable: int, replies: int, min_share: float, noise_shares: int = 0
) -> str | None:
    """Why a round whose ``replies`` gave ``usable`` updates (the rest failed or were dropped)
    must leave the global model as it was, or None: fewer than ``min_share`` of them usable, or
    under distributed DP fewer than the ``noise_shares`` whose noise the step's needs."""
    if usable < min_share * replies:
        return f"{usable} of {replies} updates usable, below min-update-share {min_share:g}"
    if usable < noise_shares:
        return (
            f"{usable} updates usable, fewer than the {noise_shares} noise shares distributed "
            "DP needs in the aggregate"
        )
    return None


def records_problem(content: RecordDict, arrays: set[str], metrics: frozenset[str]) -> str | None:
    """Why a reply's records are not those a device sends, or None: exactly the array records
    ``arrays``, one metric record ``metrics`` holding exactly the keys ``metrics``, and no
    config record. Flower's strategies refuse a round whose replies differ in these (an
    exception, not a dropped reply), so one reply must not reach them."""
    got = set(content.array_records), set(content.metric_records), set(content.config_records)
    if got != (arrays, {"metrics"}, set()):
        return (
            f"its records are not a device's (arrays {sorted(got[0])}, metrics "
            f"{sorted(got[1])}, configs {sorted(got[2])})"
        )
    keys = set(content.metric_records["metrics"])
    if keys != metrics:
        missing, extra = sorted(metrics - keys), sorted(keys - metrics)
        return f"its metrics are not a device's (missing {missing}, unexpected {extra})"
    return None


def evaluation_problem(content: RecordDict) -> str | None:
    """Why an evaluation reply cannot enter the average, or None: a device's records
    (``records_problem``), HR@10, nDCG@10 and MRR in [0, 1], and weights of one example, one
    device (every device evaluates its one held-out item)."""
    records = records_problem(content, set(), EVALUATE_METRICS)
    if records is not None:
        return records
    metrics = content.metric_records["metrics"]
    for name in ("hr@10", "ndcg@10", "mrr"):
        value = metrics[name]
        if isinstance(value, bool) or not (isinstance(value, int | float) and 0 <= value <= 1):
            return f"bad {name} {value!r}: must be in [0, 1]"
    if metrics["num-examples"] != 1 or metrics["device-weight"] != 1:
        return "bad weights: a device evaluates one example and weighs 1"
    return None


def weight_problem(metrics: Mapping[str, object], max_examples: int) -> str | None:
    """Why a training reply's aggregation weights cannot be trusted, or None: its example
    count must be 1 to ``max_examples`` (what a device trains on at most; FedAvg weighs it by
    this, so an inflated count would let one device outweigh all others) and its
    ``device-weight`` 1 (user-level DP weighs devices equally)."""
    count = metrics.get("num-examples")
    if (
        isinstance(count, bool)
        or not isinstance(count, int | float)
        or not 1 <= count <= max_examples
    ):
        return f"bad num-examples {count!r}: a device trains on 1 to {max_examples} examples"
    weight = metrics.get("device-weight")
    if weight != 1 or isinstance(weight, bool):
        return f"bad device-weight {weight!r}: every device weighs 1"
    return None


def update_problem(reference: Arrays, update: Arrays, max_norm: float) -> str | None:
    """Why ``update`` (a device's weights) cannot be aggregated against the global weights
    ``reference``, or None when it can: the same names, shapes and float dtypes, finite values,
    and an L2 distance from the global weights of at most ``max_norm``."""
    if set(update) != set(reference):
        missing, extra = sorted(set(reference) - set(update)), sorted(set(update) - set(reference))
        return f"wrong arrays (missing {missing[:3]}, unexpected {extra[:3]})"
    squared = 0.0
    for name, expected in reference.items():
        got = update[name]
        if got.shape != expected.shape:
            return f"{name} has shape {got.shape}, expected {expected.shape}"
        if got.dtype != expected.dtype:
            return f"{name} has dtype {got.dtype}, expected {expected.dtype}"
        if not np.isfinite(got).all():
            return f"{name} has NaN or infinite values"
        squared += float(np.sum((got.astype(np.float64) - expected.astype(np.float64)) ** 2))
    norm = math.sqrt(squared)
    if norm > max_norm:
        return f"update norm {norm:.3g} exceeds the bound {max_norm:.3g}"
    return None
