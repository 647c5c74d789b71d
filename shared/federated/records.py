"""Names of the records in the messages between the server and the devices, beyond Flower's
own ``arrays`` (the weights a strategy aggregates) and ``metrics``; the metrics a device's
replies hold; and the digest of named arrays (which names the frozen weights, and on a device
the network its saved interest state came from)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import numpy as np
import numpy.typing as npt
from flwr.app import ArrayRecord

#: The global weights of the parts a federation does not train: devices load them, never send
#: them back, and the strategies never aggregate them. They do not change during a run, so the
#: server sends them to a device until it has answered a request that carried them; after that
#: it sends only their digest (``FROZEN_DIGEST_KEY``), and the device loads its copy.
FROZEN_RECORD = "frozen"

#: The key, in a request's ``config`` record, of the digest of the frozen weights
#: (``arrays_digest``) the device must build its network with.
FROZEN_DIGEST_KEY = "frozen-digest"

#: The ``FitIns`` config keys of a secure round (SecAgg+ speaks Flower's legacy records): the
#: round, the names of the arrays sent (in order, one per line) and how many of the first are
#: trained (the rest are frozen).
SECURE_ROUND_KEY, SECURE_NAMES_KEY, SECURE_TRAINED_KEY = "server-round", "names", "trained"


#: The metrics of a device's evaluation reply: its held-out item's figures and its weights.
EVALUATE_METRICS = frozenset({"hr@10", "ndcg@10", "mrr", "num-examples", "device-weight"})


def train_metrics(dp: bool) -> frozenset[str]:
    """The metrics of a device's training reply: its example count, the epsilon it has spent
    (-1 without DP), whether it can afford another round, its aggregation weight, and, only
    without DP (no noise covers it), its training loss."""
    names = {"num-examples", "epsilon", "budget-exhausted", "device-weight"}
    return frozenset(names if dp else names | {"train-loss"})


def record_arrays(record: ArrayRecord) -> dict[str, npt.NDArray[np.generic]]:
    """An ArrayRecord as numpy arrays by name."""
    return {name: array.numpy() for name, array in record.items()}


def arrays_digest(arrays: Mapping[str, npt.NDArray[np.generic]]) -> str:
    """SHA-256, in hex, of named arrays: their names, dtypes, shapes and values, by name."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        header = f"{name}\0{array.dtype.str}\0{array.shape}\0".encode()
        digest.update(len(header).to_bytes(8, "big") + header)
        digest.update(array.nbytes.to_bytes(8, "big") + array.tobytes())
    return digest.hexdigest()
