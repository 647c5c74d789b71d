"""Exact top-k cosine search over item embeddings, float32 or int8, for on-device ranking.

Item rows must be L2-normalised (checked when the index is built); queries are normalised here,
so a score is the cosine similarity (for int8, with the dequantized row). Results are sorted by
score, highest first, ties broken by the lower item index.

How each case is computed (measured in ``fedrec.benchmarks.rank``, see docs/benchmarks.md):

- float32, one query: a BLAS matrix-vector product, which reads the matrix at memory speed.
- int8, one query: a compiled single-threaded loop over the codes with the float32 query,
  ``scales[i] * (codes[i] . q)``; it reads 4x fewer bytes than float32.
- float32 batches: BLAS matrix products, 64 queries at a time.
- int8 batches, 64 queries at a time: the queries are quantized to int8 too and multiplied as
  int8 x int8 -> int32 (``torch._int_mm``, VNNI where the CPU has it).
- top-k: one compiled pass keeps a k-sized heap per query; then every item whose approximate
  score is within a proven error bound of the k-th is rescored exactly (float64 sums), so
  results are exact, do not depend on how BLAS rounded, and equal rows tie exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence, Set
from typing import Any, TypeVar, cast

import numba
import numpy as np
import numpy.typing as npt
import torch

from fedrec.shared.quantization import Float32Array, Int8Array, QuantizedMatrix

Int64Array = npt.NDArray[np.int64]
Float64Array = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
Score = float | np.float32
Items = npt.ArrayLike | Set[int]
"""Items to leave out: a boolean mask over the items, or item indices (a sequence or a set)."""

NORM_TOLERANCE = 1e-2
"""How far an item row's L2 norm may be from 1 (plus the rounding bound for int8 rows)."""

_QUERY_BLOCK = 64  # queries scored per matrix product in search_batch

_F = TypeVar("_F", bound=Callable[..., Any])


def _compiled(fastmath: set[str] | None = None) -> Callable[[_F], _F]:
    """Compile with numba: no Python objects, GIL released, machine code cached on disk."""

    def wrap(func: _F) -> _F:
        options: dict[str, Any] = {"cache": True, "nogil": True, "boundscheck": False}
        if fastmath:
            options["fastmath"] = fastmath
        return cast(_F, numba.njit(**options)(func))

    return wrap


# Reassociating the sum lets LLVM vectorise it; the order is still the same for every call.
@_compiled(fastmath={"reassoc", "contract"})
def _int8_scores(
    codes: Int8Array, scales: Float32Array, query: Float32Array, out: Float32Array
) -> None:
    """``out[i] = scales[i] * (codes[i] . query)``."""
    for i in range(codes.shape[0]):
        acc = np.float32(0.0)
        for j in range(codes.shape[1]):
            acc += np.float32(codes[i, j]) * query[j]
        out[i] = acc * scales[i]


@_compiled()
def _worse(score_a: Score, item_a: int, score_b: Score, item_b: int) -> bool:
    """Whether (score_a, item_a) ranks below (score_b, item_b)."""
    return bool(score_a < score_b or (score_a == score_b and item_a > item_b))


@_compiled()
def _sift_down(
    heap_scores: Float32Array,
    heap_items: Int64Array,
    t: int,
    pos: int,
    size: int,
    score: Score,
    item: int,
) -> None:
    """Place (score, item) at ``pos`` of min-heap ``t`` (worst at the root) and sift it down."""
    while True:
        child = 2 * pos + 1
        if child >= size:
            break
        if child + 1 < size and _worse(
            heap_scores[t, child + 1],
            heap_items[t, child + 1],
            heap_scores[t, child],
            heap_items[t, child],
        ):
            child += 1
        if not _worse(heap_scores[t, child], heap_items[t, child], score, item):
            break
        heap_scores[t, pos] = heap_scores[t, child]
        heap_items[t, pos] = heap_items[t, child]
        pos = child
    heap_scores[t, pos] = score
    heap_items[t, pos] = item


@_compiled()
def _push(
    heap_scores: Float32Array, heap_items: Int64Array, t: int, size: int, score: Score, item: int
) -> int:
    """Offer (score, item) to heap ``t`` of the best ``heap_scores.shape[1]``; returns its size."""
    if size < heap_scores.shape[1]:
        pos = size
        while pos > 0:
            parent = (pos - 1) >> 1
            if not _worse(score, item, heap_scores[t, parent], heap_items[t, parent]):
                break
            heap_scores[t, pos] = heap_scores[t, parent]
            heap_items[t, pos] = heap_items[t, parent]
            pos = parent
        heap_scores[t, pos] = score
        heap_items[t, pos] = item
        return size + 1
    if _worse(heap_scores[t, 0], heap_items[t, 0], score, item):
        _sift_down(heap_scores, heap_items, t, 0, size, score, item)
    return size


@_compiled()
def _top_k(
    rows: Float32Array | Int8Array,
    scales: Float32Array,
    queries: Float32Array,
    scores: Float32Array,
    margins: Float64Array,
    top_scores: Float32Array,
    top_items: Int64Array,
    counts: Int64Array,
) -> None:
    """Exact top-k of each query from approximate ``scores`` (queries x items, -inf = excluded).

    Query t's scores may be off by ``margins[t] / 2``, so every item within ``margins[t]`` of
    its k-th best is rescored as ``scales[i] * (rows[i] . query)``, summed in float64 and
    rounded to float32: the same value whatever the row's position or the code path, so equal
    rows tie exactly. Query t's ``counts[t]`` best go, sorted, to ``top_scores[t]`` and
    ``top_items[t]`` (k = ``top_scores.shape[1]``); unused slots get -inf and -1.
    """
    k = top_scores.shape[1]
    lowest = np.finfo(np.float32).min  # below every finite score, above -inf
    for t in range(scores.shape[0]):
        size = 0
        bar = -np.inf  # what enters the heap: anything not excluded until it is full
        for i in range(scores.shape[1]):  # pass 1: the k-th best approximate score
            if scores[t, i] > bar:
                size = _push(top_scores, top_items, t, size, scores[t, i], i)
                if size == k:
                    bar = top_scores[t, 0]
        bar = max(bar - margins[t], lowest)
        size = 0
        for i in range(scores.shape[1]):  # pass 2: rescore the candidates exactly
            if scores[t, i] >= bar:
                exact = 0.0
                for j in range(rows.shape[1]):
                    exact += np.float64(rows[i, j]) * np.float64(queries[t, j])
                size = _push(top_scores, top_items, t, size, np.float32(scales[i] * exact), i)
        counts[t] = size
        for end in range(size - 1, 0, -1):  # heap sort: the worst to the end, the best first
            score, item = top_scores[t, end], top_items[t, end]
            top_scores[t, end], top_items[t, end] = top_scores[t, 0], top_items[t, 0]
            _sift_down(top_scores, top_items, t, 0, end, score, item)
        top_scores[t, size:] = -np.inf
        top_items[t, size:] = -1


class ItemIndex:
    """Exact top-k cosine search over L2-normalised item rows, float32 or int8.

    Build it from an (n, d) float32 matrix (kept without a copy when already float32 and
    C-contiguous) or from a :class:`QuantizedMatrix` of normalised rows.
    """

    def __init__(self, items: npt.ArrayLike | QuantizedMatrix) -> None:
        self._rows: Float32Array | Int8Array
        if isinstance(items, QuantizedMatrix):
            _check_shape(items.codes.shape)
            self._rows = np.ascontiguousarray(items.codes)
            self._scales = np.ascontiguousarray(items.scales)
            if not np.isfinite(self._scales).all():
                raise ValueError("item scales contain NaN or infinite values")
            squares = np.einsum("ij,ij->i", self._rows, self._rows, dtype=np.int64)
            norms = self._scales * np.sqrt(squares)
            # Rounding moves each value by at most scale / 2, so the norm by scale * sqrt(d) / 2.
            _check_unit_rows(norms, self._scales * (np.sqrt(items.codes.shape[1]) / 2))
            # Largest scale * |codes|_1 (abs of -128 is -128, which reads as 128 unsigned).
            l1 = np.abs(self._rows).view(np.uint8).sum(axis=1, dtype=np.int64)
            self._l1_bound = float((self._scales * l1).max())
        else:
            array = np.asarray(items)
            if not np.issubdtype(array.dtype, np.floating):
                raise ValueError(f"item embeddings must be floating point, got {array.dtype}")
            _check_shape(array.shape)
            self._rows = np.ascontiguousarray(array, dtype=np.float32)
            if not np.isfinite(self._rows).all():
                raise ValueError("item embeddings contain NaN or infinite values")
            norms = np.sqrt(np.einsum("ij,ij->i", self._rows, self._rows))
            _check_unit_rows(norms, np.zeros_like(norms))
            self._scales = np.ones(len(self._rows), dtype=np.float32)
            self._l1_bound = 0.0
        # Margins are twice an error bound per score (two scores are compared), rounded up. A
        # float32 dot product of length d is within d * 2**-24 * |row| * |query| of exact.
        self._blas_margin = float((self.dim + 2) * 2.0**-22 * norms.max())

    @property
    def n_items(self) -> int:
        return int(self._rows.shape[0])

    @property
    def dim(self) -> int:
        return int(self._rows.shape[1])

    @property
    def quantized(self) -> bool:
        """Whether the rows are int8 codes with per-row scales."""
        return self._rows.dtype == np.int8

    @property
    def nbytes(self) -> int:
        """Bytes of the stored rows (and, for int8, their scales)."""
        return int(self._rows.nbytes + (self._scales.nbytes if self.quantized else 0))

    def search(
        self, query: npt.ArrayLike, k: int, exclude: Items | None = None
    ) -> tuple[Int64Array, Float32Array]:
        """The best ``k`` items for one query of shape (d,): (item indices, cosine scores).

        ``exclude`` is a boolean mask over the items or a list of item indices never to return.
        Fewer than ``k`` items come back when fewer are allowed.
        """
        _check_k(k)
        q = self._normalised(query, batch=False)
        scores = np.empty((1, self.n_items), dtype=np.float32)
        if self.quantized:
            _int8_scores(cast(Int8Array, self._rows), self._scales, q[0], scores[0])
        else:
            np.dot(self._rows, q[0], out=scores[0])
        if exclude is not None:
            scores[0, self._excluded(exclude, "exclude")] = -np.inf
        items, top, counts = self._select(q, scores, np.full(1, self._blas_margin), k)
        return items[0, : counts[0]], top[0, : counts[0]]

    def search_batch(
        self,
        queries: npt.ArrayLike,
        k: int,
        exclude: Items | Sequence[Items] | None = None,
    ) -> tuple[Int64Array, Float32Array]:
        """The best ``k`` items for each row of ``queries`` (b, d): indices and scores (b, w).

        ``exclude`` is one boolean mask over the items for every query, a (b, n) boolean mask, or
        b lists of item indices, one per query. ``w`` is the largest number of results any query
        gets (at most ``k``); a row with fewer is padded with index -1 and score -inf. Each row
        equals ``search`` of that query.
        """
        _check_k(k)
        q = self._normalised(queries, batch=True)
        shared, per_query = self._batch_exclusions(exclude, len(q))
        width = min(k, self.n_items)
        items = np.empty((len(q), width), dtype=np.int64)
        top = np.empty((len(q), width), dtype=np.float32)
        counts = np.empty(len(q), dtype=np.int64)
        buffer = np.empty(self.n_items * min(len(q), _QUERY_BLOCK), dtype=np.float32)
        for start in range(0, len(q), _QUERY_BLOCK):
            block = q[start : start + _QUERY_BLOCK]
            stop = start + len(block)
            scores = buffer[: self.n_items * len(block)].reshape(len(block), self.n_items)
            margins = self._block_scores(block, scores)
            if shared is not None:
                scores[:, shared] = -np.inf
            if isinstance(per_query, np.ndarray):
                scores[per_query[start:stop]] = -np.inf
            elif per_query is not None:
                for t, excluded in enumerate(per_query[start:stop]):
                    scores[t, excluded] = -np.inf
            items[start:stop], top[start:stop], counts[start:stop] = self._select(
                block, scores, margins, width
            )
        shown = int(counts.max())
        return items[:, :shown], top[:, :shown]

    def _block_scores(self, queries: Float32Array, out: Float32Array) -> Float64Array:
        """Approximate scores (b, n) of a block of unit queries; returns each one's margin.

        Each score is within margin / 2 of its exact value (see ``_top_k``).
        """
        if self.quantized:
            # int8 x int8 -> int32 is exact; quantizing the query to int8 (step = max |q| / 127)
            # moves each value by at most step / 2, so a score by step / 2 * scale * |codes|_1.
            steps = np.abs(queries).max(axis=1) / 127
            codes = np.rint(queries / steps[:, None]).astype(np.int8)
            products = torch._int_mm(torch.from_numpy(codes), torch.from_numpy(self._rows).T)
            np.multiply(products.numpy(), self._scales, out=out)
            out *= steps[:, None]
            margins: Float64Array = steps * self._l1_bound * (1 + 2.0**-10) + 2.0**-20
            return margins
        np.matmul(queries, self._rows.T, out=out)
        return np.full(len(queries), self._blas_margin)

    def _select(
        self, queries: Float32Array, scores: Float32Array, margins: Float64Array, k: int
    ) -> tuple[Int64Array, Float32Array, Int64Array]:
        """(items, scores, counts) of the exact top-k; unused slots hold -1 and -inf."""
        k = min(k, self.n_items)
        top = np.empty((len(queries), k), dtype=np.float32)
        items = np.empty((len(queries), k), dtype=np.int64)
        counts = np.empty(len(queries), dtype=np.int64)
        _top_k(self._rows, self._scales, queries, scores, margins, top, items, counts)
        return items, top, counts

    def _normalised(self, queries: npt.ArrayLike, *, batch: bool) -> Float32Array:
        """Validated queries as a (b, d) float32 array of unit rows."""
        array = np.asarray(queries)
        name, shape = ("queries", "(b, d)") if batch else ("query", "(d,)")
        if not np.issubdtype(array.dtype, np.floating):
            raise ValueError(f"{name} must be floating point, got {array.dtype}")
        if array.ndim != (2 if batch else 1):
            raise ValueError(f"{name} must have shape {shape}, got {array.shape}")
        array = array.reshape(-1, array.shape[-1])
        if array.shape[1] != self.dim:
            raise ValueError(
                f"{name} dimension {array.shape[1]} does not match the index dimension {self.dim}"
            )
        if len(array) == 0:
            raise ValueError("queries must hold at least one query")
        wide = array.astype(np.float64)
        finite = np.isfinite(wide).all(axis=1)
        if not finite.all():
            where = f"queries[{int(np.argmin(finite))}]" if batch else "query"
            raise ValueError(f"{where} contains NaN or infinite values")
        norms = np.sqrt(np.einsum("ij,ij->i", wide, wide))
        if not norms.all():
            where = f"queries[{int(np.argmin(norms))}]" if batch else "query"
            raise ValueError(f"{where} is all zeros, so it has no direction to rank by")
        unit: Float32Array = (wide / norms[:, None]).astype(np.float32)
        return unit

    def _excluded(self, exclude: Items, name: str) -> BoolArray | Int64Array:
        """A boolean mask over the items, or valid item indices, from ``exclude``."""
        array = np.asarray(list(exclude) if isinstance(exclude, Set) else exclude)
        if array.dtype == np.bool_:
            if array.shape != (self.n_items,):
                raise ValueError(
                    f"{name} mask must have shape ({self.n_items},), got {array.shape}"
                )
            return array
        if array.size == 0:
            return np.empty(0, dtype=np.int64)
        if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
            raise ValueError(
                f"{name} must be a boolean mask over the items or a 1-d list of item indices, "
                f"got {array.dtype} of shape {array.shape}"
            )
        if array.min() < 0 or array.max() >= self.n_items:
            bad = int(array.min() if array.min() < 0 else array.max())
            raise ValueError(f"{name} index {bad} is out of range for {self.n_items} items")
        return array.astype(np.int64, copy=False)

    def _batch_exclusions(
        self, exclude: Items | Sequence[Items] | None, n_queries: int
    ) -> tuple[BoolArray | None, BoolArray | list[BoolArray | Int64Array] | None]:
        """(mask of items excluded for every query, per-query exclusions) from ``exclude``."""
        if exclude is None:
            return None, None
        if isinstance(exclude, np.ndarray) and exclude.dtype == np.bool_:
            if exclude.shape == (self.n_items,):
                return exclude, None
            if exclude.shape == (n_queries, self.n_items):
                return None, exclude
            raise ValueError(
                f"exclude mask must have shape ({self.n_items},) or ({n_queries}, "
                f"{self.n_items}), got {exclude.shape}"
            )
        if not isinstance(exclude, Sequence) or isinstance(exclude, (str, bytes)):
            raise ValueError("exclude must be a boolean mask or one list of indices per query")
        if len(exclude) != n_queries:
            raise ValueError(f"exclude has {len(exclude)} lists for {n_queries} queries")
        return None, [self._excluded(each, f"exclude[{t}]") for t, each in enumerate(exclude)]


def _check_shape(shape: tuple[int, ...]) -> None:
    if len(shape) != 2:
        raise ValueError(f"items must be a 2-d (n, d) matrix, got shape {shape}")
    if shape[0] == 0 or shape[1] == 0:
        raise ValueError(f"cannot index an empty item matrix of shape {shape}")


def _check_unit_rows(norms: npt.NDArray[np.floating], slack: npt.NDArray[np.floating]) -> None:
    off = np.abs(norms - 1.0) > NORM_TOLERANCE + slack
    if off.any():
        row = int(np.argmax(off))
        raise ValueError(
            f"item rows must be L2-normalised: row {row} has norm {float(norms[row]):.4g} "
            f"({int(off.sum())} of {len(norms)} rows are off)"
        )


def _check_k(k: int) -> None:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
