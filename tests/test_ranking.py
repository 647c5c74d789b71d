"""The on-device ranking engine: exact top-k, ties, exclusions, validation, and its benchmark."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from fedrec.benchmarks.rank import RankBenchmarkResult, realistic_queries, run_rank_benchmark
from fedrec.shared.quantization import QuantizedMatrix, quantize_int8
from fedrec.shared.ranking import ItemIndex

Matrix = npt.NDArray[np.float32]


def unit_rows(rng: np.random.Generator, n: int, d: int) -> Matrix:
    rows = rng.standard_normal((n, d)).astype(np.float32)
    unit: Matrix = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    return unit


def brute_force(
    rows: npt.NDArray[Any], scales: npt.NDArray[Any], query: npt.ArrayLike, k: int, exclude: Any
) -> tuple[npt.NDArray[np.int64], Matrix]:
    """The documented result by sorting: exact scores rounded to float32, lower index on ties."""
    q = np.asarray(query, dtype=np.float64)
    q = (q / np.linalg.norm(q)).astype(np.float32).astype(np.float64)
    scores = (scales.astype(np.float64) * (rows.astype(np.float64) @ q)).astype(np.float32)
    allowed = np.ones(len(rows), dtype=bool)
    if exclude is not None:
        allowed[np.asarray(list(exclude) if isinstance(exclude, set) else exclude)] = False
    order = [i for i in np.lexsort((np.arange(len(rows)), -scores)) if allowed[i]][:k]
    return np.array(order, dtype=np.int64), scores[order]


def both_indexes(rows: Matrix) -> list[tuple[ItemIndex, npt.NDArray[Any], npt.NDArray[Any]]]:
    """(index, rows, scales) for float32 and for int8 of the same rows."""
    quantized = quantize_int8(rows)
    return [
        (ItemIndex(rows), rows, np.ones(len(rows), dtype=np.float32)),
        (ItemIndex(quantized), quantized.codes, quantized.scales),
    ]


@pytest.mark.parametrize("k", [1, 10, 57])
@pytest.mark.parametrize("exclusion", ["none", "mask", "indices", "set"])
def test_search_equals_brute_force(k: int, exclusion: str) -> None:
    rng = np.random.default_rng(k)
    rows = unit_rows(rng, 1500, 24)
    excluded = rng.choice(len(rows), size=300, replace=False)
    mask = np.zeros(len(rows), dtype=bool)
    mask[excluded] = True
    exclude = {"none": None, "mask": mask, "indices": excluded, "set": set(excluded.tolist())}
    for index, stored, scales in both_indexes(rows):
        for query in realistic_queries(rows, 5, rng):
            items, scores = index.search(query, k, exclude=exclude[exclusion])
            expected_items, expected_scores = brute_force(
                stored, scales, query, k, None if exclusion == "none" else excluded
            )
            np.testing.assert_array_equal(items, expected_items)
            np.testing.assert_array_equal(scores, expected_scores)
            assert items.dtype == np.int64 and scores.dtype == np.float32


def test_int8_equals_brute_force_over_the_dequantized_matrix() -> None:
    rng = np.random.default_rng(1)
    rows = unit_rows(rng, 3000, 48)
    quantized = quantize_int8(rows)
    index, dequantized = ItemIndex(quantized), quantized.dequantize()
    for query in realistic_queries(rows, 20, rng):
        items, scores = index.search(query, 10)
        reference = dequantized @ (query / np.linalg.norm(query))
        np.testing.assert_array_equal(items, np.argsort(-reference, kind="stable")[:10])
        np.testing.assert_allclose(scores, reference[items], atol=1e-6)


def test_equal_rows_tie_exactly_and_the_lower_index_wins() -> None:
    rng = np.random.default_rng(2)
    rows = unit_rows(rng, 4000, 40)
    copies = [7, 100, 201, 2999, 3998]  # positions BLAS kernels may round differently
    rows[copies] = rows[copies[0]]
    queries = rows[copies[0]] + 0.3 * unit_rows(rng, 70, 40)
    for index, _, _ in both_indexes(rows):
        batch_items, batch_scores = index.search_batch(queries, 8)
        for query, row_items, row_scores in zip(queries, batch_items, batch_scores, strict=True):
            items, scores = index.search(query, 8)
            np.testing.assert_array_equal(items, row_items)
            np.testing.assert_array_equal(scores, row_scores)
            found = [i for i in items if i in copies]
            assert found == sorted(found) and len(set(scores[np.isin(items, copies)])) <= 1


def test_ties_between_different_rows_go_to_the_lower_index() -> None:
    rows = np.zeros((6, 4), dtype=np.float32)
    rows[[5, 1, 3, 0, 2, 4], [0, 1, 2, 3, 3, 3]] = 1.0  # rows 0, 2, 4 equal; 5, 1, 3 distinct
    query = np.array([1.0, 1.0, 1.0, 0.0])
    for index, _, _ in both_indexes(rows):
        items, scores = index.search(query, 6)
        np.testing.assert_array_equal(items, [1, 3, 5, 0, 2, 4])
        np.testing.assert_allclose(scores, [1 / math.sqrt(3)] * 3 + [0.0] * 3, atol=1e-6)
        np.testing.assert_array_equal(index.search_batch(query[None], 6)[0][0], items)


@pytest.mark.parametrize("quantized", [False, True])
def test_batch_equals_single_queries_with_every_kind_of_exclusion(quantized: bool) -> None:
    rng = np.random.default_rng(3)
    rows = unit_rows(rng, 2000, 32)
    index = ItemIndex(quantize_int8(rows) if quantized else rows)
    queries = realistic_queries(rows, 70, rng)  # more than one block of 64
    per_query = [rng.choice(len(rows), size=t % 5 * 10, replace=False) for t in range(70)]
    masks = np.zeros((70, len(rows)), dtype=bool)
    for mask, excluded in zip(masks, per_query, strict=True):
        mask[excluded] = True
    shared = masks[3]
    cases: list[tuple[Any, Callable[[int], Any]]] = [
        (None, lambda t: None),
        (shared, lambda t: shared),
        (masks, lambda t: masks[t]),
        (per_query, lambda t: per_query[t]),
    ]
    for batch_exclude, single_exclude in cases:
        items, scores = index.search_batch(queries, 12, exclude=batch_exclude)
        assert items.shape == scores.shape == (70, 12)
        for t, query in enumerate(queries):
            single_items, single_scores = index.search(query, 12, exclude=single_exclude(t))
            np.testing.assert_array_equal(items[t], single_items)
            np.testing.assert_array_equal(scores[t], single_scores)


def test_fewer_results_when_fewer_items_are_allowed() -> None:
    rng = np.random.default_rng(4)
    rows = unit_rows(rng, 20, 8)
    for index, stored, scales in both_indexes(rows):
        query = rng.standard_normal(8)
        items, scores = index.search(query, 10, exclude=np.arange(15))
        assert len(items) == len(scores) == 5 and set(items) == set(range(15, 20))
        items, _ = index.search(query, 100)
        np.testing.assert_array_equal(items, brute_force(stored, scales, query, 100, None)[0])
        all_but_one = np.ones(20, dtype=bool)
        all_but_one[7] = False
        per_query: list[npt.ArrayLike] = [np.arange(19), [0, 1]]
        items, scores = index.search_batch(np.stack([query, query]), 3, exclude=per_query)
        assert items.shape == (2, 3)
        np.testing.assert_array_equal(items[0], [19, -1, -1])
        assert np.isneginf(scores[0, 1:]).all() and np.isfinite(scores[1]).all()
        items, _ = index.search_batch(np.stack([query, query]), 3, exclude=all_but_one)
        assert items.shape == (2, 1) and (items == 7).all()


def test_index_facts() -> None:
    rows = unit_rows(np.random.default_rng(5), 50, 16)
    index = ItemIndex(rows)
    assert (index.n_items, index.dim, index.quantized) == (50, 16, False)
    assert index.nbytes == rows.nbytes
    quantized = ItemIndex(quantize_int8(rows))
    assert quantized.quantized and quantized.nbytes == 50 * 16 + 50 * 4
    wide = ItemIndex(rows.astype(np.float64))
    np.testing.assert_array_equal(wide.search(rows[3], 5)[0], index.search(rows[3], 5)[0])


ROWS = unit_rows(np.random.default_rng(6), 30, 8)
INDEX = ItemIndex(ROWS)
QUERY = ROWS[0]
NAN_QUERY = np.array([np.nan] + [1.0] * 7)
BAD_BATCH = np.stack([QUERY, QUERY, NAN_QUERY])
UNNORMALISED = ROWS.copy()
UNNORMALISED[3] *= 2


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: INDEX.search(np.ones(7), 3), r"query dimension 7 does not match .* 8"),
        (lambda: INDEX.search_batch(np.ones((2, 9)), 3), r"queries dimension 9 does not match"),
        (lambda: INDEX.search(NAN_QUERY, 3), r"query contains NaN or infinite values"),
        (lambda: INDEX.search(np.full(8, np.inf), 3), r"query contains NaN or infinite"),
        (lambda: INDEX.search_batch(BAD_BATCH, 3), r"queries\[2\] contains NaN"),
        (lambda: INDEX.search(np.zeros(8), 3), r"query is all zeros"),
        (lambda: INDEX.search(QUERY, 0), r"k must be a positive integer, got 0"),
        (lambda: INDEX.search(QUERY, -2), r"k must be a positive integer, got -2"),
        (lambda: INDEX.search(QUERY, 2.5), r"k must be a positive integer, got 2.5"),  # type: ignore[arg-type]
        (lambda: INDEX.search_batch(QUERY[None], True), r"k must be a positive integer"),
        (lambda: INDEX.search(np.ones(8, dtype=int), 3), r"query must be floating point, got int"),
        (lambda: INDEX.search(QUERY[None], 3), r"query must have shape \(d,\), got \(1, 8\)"),
        (lambda: INDEX.search_batch(QUERY, 3), r"queries must have shape \(b, d\), got \(8,\)"),
        (lambda: INDEX.search_batch(np.ones((0, 8)), 3), r"at least one query"),
        (lambda: ItemIndex(np.empty((0, 8), dtype=np.float32)), r"cannot index an empty item"),
        (lambda: ItemIndex(np.ones(8, dtype=np.float32)), r"items must be a 2-d \(n, d\) matrix"),
        (lambda: ItemIndex(np.eye(3, dtype=np.int64)), r"embeddings must be floating point"),
        (lambda: ItemIndex(ROWS * np.nan), r"item embeddings contain NaN or infinite values"),
        (
            lambda: ItemIndex(UNNORMALISED),
            r"must be L2-normalised: row 3 has norm 2 \(1 of 30 rows are off\)",
        ),
        (
            lambda: ItemIndex(quantize_int8(UNNORMALISED)),
            r"must be L2-normalised: row 3 has norm (2|1\.99)",
        ),
        (
            lambda: ItemIndex(
                QuantizedMatrix(np.ones((2, 2), np.int8), np.array([np.nan, 1.0], np.float32))
            ),
            r"item scales contain NaN",
        ),
        (lambda: INDEX.search(QUERY, 3, exclude=[30]), r"exclude index 30 is out of range for 30"),
        (lambda: INDEX.search(QUERY, 3, exclude=[2, -1]), r"exclude index -1 is out of range"),
        (lambda: INDEX.search(QUERY, 3, exclude=[1.0]), r"exclude must be a boolean mask .* float"),
        (lambda: INDEX.search(QUERY, 3, exclude=np.ones(29, bool)), r"mask must have shape \(30,"),
        (
            lambda: INDEX.search_batch(ROWS[:2], 3, exclude=np.ones((3, 30), bool)),
            r"mask must have shape \(30,\) or \(2, 30\), got \(3, 30\)",
        ),
        (lambda: INDEX.search_batch(ROWS[:2], 3, exclude=[[1]]), r"exclude has 1 lists for 2"),
        (lambda: INDEX.search_batch(ROWS[:2], 3, exclude=[[1], [40]]), r"exclude\[1\] index 40"),
        (lambda: INDEX.search_batch(ROWS[:2], 3, exclude=5), r"one list of indices per query"),
        (lambda: run_rank_benchmark(batch_size=1), r"needs a batch of 2 or more"),
    ],
)
def test_invalid_input_is_refused_with_a_clear_message(
    call: Callable[[], object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        call()


def test_benchmark_runs_small_and_writes_json(tmp_path: Path) -> None:
    result = run_rank_benchmark(n_items=3000, dim=16, batch_size=8, recall_queries=20, rounds=2)
    assert isinstance(result, RankBenchmarkResult)
    figures = [
        result.fp32_floor_ratio,
        result.int8_fp32_ratio,
        result.int8_recall_at_k,
        result.int8_recall_at_k_noise_queries,
        result.int8_size_ratio,
        result.batch_speedup,
        result.int8_batch_speedup,
        *result.timings_ms.values(),
    ]
    assert all(math.isfinite(x) and x > 0 for x in figures)
    assert 0 < result.int8_recall_at_k <= 1 and result.int8_size_ratio == (16 + 4) / (16 * 4)
    result.write_json(tmp_path / "rank.json")
    written = json.loads((tmp_path / "rank.json").read_text(encoding="utf-8"))
    assert written["n_items"] == 3000 and written["machine"]["cpu_count"] >= 1
    assert written["targets"]["fp32_floor_ratio"] == ["<=", 1.2]
    assert "int8_fp32_ratio" in result.table()
