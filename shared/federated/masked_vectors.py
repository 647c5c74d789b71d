"""SecAgg+'s masked updates on the wire: 4 bytes a weight instead of 8.

SecAgg+ (docs/secure-aggregation.md) sends each device's masked update as integers modulo its
modulus, at most 2**32, which Flower's ``secaggplus_mod`` stores as int64. Every value fits an
unsigned 32-bit integer, so the device packs them as uint32 before its reply leaves
(``pack_masked_vectors``), and the server unpacks them to int64 before SecAgg+ sums them
(``unpack_masked_vectors``): the same residues, half the upload. Both act on the reply's
SecAgg+ config record and leave every other message alone.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import numpy as np
from flwr.app import ConfigRecord, RecordDict
from flwr.common import bytes_to_ndarray, ndarray_to_bytes
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key

#: The dtype masked values travel in; SecAgg+'s modulus is at most 2**32.
WIRE_DTYPE = np.dtype(np.uint32)


def pack_masked_vectors(content: RecordDict) -> RecordDict:
    """``content`` with its masked vectors, if any, as uint32; a ValueError if a value is not
    an integer in ``[0, 2**32)`` (a modulus SecAgg+ does not allow)."""
    return _convert(content, _narrow)


def unpack_masked_vectors(content: RecordDict) -> RecordDict:
    """``content`` with its uint32 masked vectors, if any, as int64 (what SecAgg+ sums)."""
    return _convert(content, _widen)


def _narrow(array: np.ndarray) -> np.ndarray:
    if array.dtype == WIRE_DTYPE:
        return array
    limit = np.iinfo(WIRE_DTYPE).max
    if array.dtype.kind not in "iu" or (array.size and (array.min() < 0 or array.max() > limit)):
        raise ValueError(
            f"a masked vector must hold integers in [0, 2**32), got dtype {array.dtype}"
            + (f" from {array.min()} to {array.max()}" if array.size else "")
        )
    return array.astype(WIRE_DTYPE)


def _widen(array: np.ndarray) -> np.ndarray:
    return array.astype(np.int64) if array.dtype == WIRE_DTYPE else array


def _convert(content: RecordDict, convert: Callable[[np.ndarray], np.ndarray]) -> RecordDict:
    record = content.config_records.get(RECORD_KEY_CONFIGS)
    if record is None or Key.MASKED_PARAMETERS not in record:
        return content
    values = record[Key.MASKED_PARAMETERS]
    if not isinstance(values, list) or not all(isinstance(v, bytes) for v in values):
        raise ValueError("SecAgg+'s masked parameters must be a list of serialised arrays")
    converted = ConfigRecord(dict(record))
    converted[Key.MASKED_PARAMETERS] = [
        ndarray_to_bytes(convert(bytes_to_ndarray(value))) for value in cast(list[bytes], values)
    ]
    packed = RecordDict(dict(content))
    packed[RECORD_KEY_CONFIGS] = converted
    return packed
