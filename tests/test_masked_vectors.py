"""SecAgg+'s masked vectors packed in 4 bytes a value on the wire and unpacked at the server."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from flwr.common import bytes_to_ndarray, ndarray_to_bytes
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key

from fedrec.shared.federated.masked_vectors import pack_masked_vectors, unpack_masked_vectors


def _reply(*vectors: np.ndarray) -> RecordDict:
    masked = [ndarray_to_bytes(v) for v in vectors]
    return RecordDict(
        {
            RECORD_KEY_CONFIGS: ConfigRecord({Key.MASKED_PARAMETERS: masked, Key.STAGE: "x"}),
            "fitres.metrics": MetricRecord({"num-examples": 3}),
        }
    )


def _vectors(content: RecordDict) -> list[np.ndarray]:
    values = content.config_records[RECORD_KEY_CONFIGS][Key.MASKED_PARAMETERS]
    assert isinstance(values, list)
    return [bytes_to_ndarray(v) for v in values if isinstance(v, bytes)]


def test_masked_vectors_cross_the_wire_in_half_the_bytes_and_come_back_the_same() -> None:
    rng = np.random.default_rng(0)
    sent = [np.array([7]), rng.integers(0, 2**32, size=(50, 40), dtype=np.int64)]
    sent[1][0, :2] = (0, 2**32 - 1)  # the extremes of the modulus
    packed = pack_masked_vectors(_reply(*sent))
    wire = _vectors(packed)
    assert [v.dtype for v in wire] == [np.uint32, np.uint32]
    before = sum(len(b) for b in _reply(*sent)[RECORD_KEY_CONFIGS][Key.MASKED_PARAMETERS])
    after = sum(len(b) for b in packed[RECORD_KEY_CONFIGS][Key.MASKED_PARAMETERS])
    assert after < 0.51 * before + 512  # 4 bytes a value instead of 8, plus the headers
    received = _vectors(unpack_masked_vectors(packed))
    assert [v.dtype for v in received] == [np.int64, np.int64]
    for got, want in zip(received, sent, strict=True):
        np.testing.assert_array_equal(got, want)
    assert packed[RECORD_KEY_CONFIGS][Key.STAGE] == "x"
    assert packed.metric_records["fitres.metrics"]["num-examples"] == 3


@pytest.mark.parametrize(
    "vector",
    [np.array([2**32]), np.array([-1]), np.array([0.5])],
    ids=["past the modulus", "negative", "not an integer"],
)
def test_a_value_that_is_no_residue_modulo_2_32_is_refused(vector: np.ndarray) -> None:
    with pytest.raises(ValueError, match=r"integers in \[0, 2\*\*32\)"):
        pack_masked_vectors(_reply(np.array([1]), vector))


def test_messages_without_masked_vectors_pass_untouched() -> None:
    content = RecordDict({"arrays": ArrayRecord(), RECORD_KEY_CONFIGS: ConfigRecord({"a": 1})})
    assert pack_masked_vectors(content) is content
    assert unpack_masked_vectors(content) is content
    broken = RecordDict({RECORD_KEY_CONFIGS: ConfigRecord({Key.MASKED_PARAMETERS: "x"})})
    with pytest.raises(ValueError, match="list of serialised arrays"):
        unpack_masked_vectors(broken)
