"""The ``rank`` benchmark: on-device top-k ranking over 100,000 x 384 item embeddings.

Every ratio is taken within one round, against a reference timed in the same round (the machine
may be shared and noisy), and the median over rounds is reported; see docs/benchmarks.md.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, ClassVar, cast

import numba
import numpy as np
import numpy.typing as npt
import torch

from fedrec.benchmarks import BenchmarkReport
from fedrec.shared.quantization import Float32Array, quantize_int8
from fedrec.shared.ranking import ItemIndex

FIGURES = (  # in the order table() prints them
    "fp32_floor_ratio",
    "int8_fp32_ratio",
    "int8_recall_at_k",
    "int8_recall_at_k_noise_queries",
    "int8_size_ratio",
    "batch_speedup",
    "int8_batch_speedup",
)
READS = ("read_numpy", "read_1_thread", "read_all_threads")  # ways to read the matrix once


@dataclass(frozen=True)
class RankBenchmarkResult(BenchmarkReport):
    """Figures of one run of :func:`run_rank_benchmark`; timings are medians in milliseconds."""

    TARGETS: ClassVar[dict[str, tuple[str, float]]] = {
        "fp32_floor_ratio": ("<=", 1.2),
        "int8_fp32_ratio": ("<=", 0.8),
        "int8_recall_at_k": (">=", 0.97),
        "batch_speedup": (">=", 8.0),
    }

    n_items: int
    dim: int
    k: int
    batch_size: int
    rounds: int
    seed: int
    fp32_floor_ratio: float
    int8_fp32_ratio: float
    int8_recall_at_k: float
    int8_recall_at_k_noise_queries: float
    int8_size_ratio: float
    batch_speedup: float
    int8_batch_speedup: float
    timings_ms: dict[str, float]
    machine: dict[str, Any]

    def table(self) -> str:
        lines = [
            f"rank: top-{self.k} over {self.n_items:,} x {self.dim} items, median of "
            f"{self.rounds} rounds, {self.machine['cpu_count']} CPUs"
        ]
        for name in FIGURES:
            value = getattr(self, name)
            lines.append(f"{name:<32}{value:>9.3f}{self.verdict(name, value)}")
        lines += [f"{name + ' (ms)':<32}{ms:>9.3f}" for name, ms in self.timings_ms.items()]
        return "\n".join(lines)


def run_rank_benchmark(
    n_items: int = 100_000,
    dim: int = 384,
    k: int = 10,
    batch_size: int = 64,
    recall_queries: int = 200,
    rounds: int = 20,
    seed: int = 0,
) -> RankBenchmarkResult:
    """Time top-``k`` search over synthetic normalised embeddings; a few seconds at full size."""
    if batch_size < 2 or rounds < 1 or min(n_items, dim, k, recall_queries) < 1:
        raise ValueError("the rank benchmark needs a batch of 2 or more and positive sizes")
    rng = np.random.default_rng(seed)
    items = _unit_rows(rng.standard_normal((n_items, dim), dtype=np.float32))
    fp32 = ItemIndex(items)
    int8 = ItemIndex(quantize_int8(items))
    queries = realistic_queries(items, max(recall_queries, batch_size, rounds), rng)
    batch = queries[:batch_size]

    # Recall of int8 against the exact float32 top-k, for realistic and for pure-noise queries.
    recall = _recall(fp32, int8, queries[:recall_queries], k)
    noise = _unit_rows(rng.standard_normal((recall_queries, dim), dtype=np.float32))
    recall_noise = _recall(fp32, int8, noise, k)

    words = items.reshape(-1).view(np.uint64)
    blocks = np.array_split(words, os.cpu_count() or 1)
    with ThreadPoolExecutor(len(blocks)) as pool:
        cases: dict[str, Callable[[int], object]] = {
            "read_numpy": lambda r: items.max(),
            "read_1_thread": lambda r: _read(words),
            "read_all_threads": lambda r: list(pool.map(_read, blocks)),
            "fp32_single": lambda r: fp32.search(queries[r], k),
            "int8_single": lambda r: int8.search(queries[r], k),
            "fp32_batch": lambda r: fp32.search_batch(batch, k),
            "int8_batch": lambda r: int8.search_batch(batch, k),
        }
        times = {name: np.empty(rounds) for name in cases}
        for case in cases.values():  # warm-up: compile, fault pages in, start threads
            case(0)
        for r in range(rounds):
            for name, case in cases.items():
                start = time.perf_counter()
                case(r)
                times[name][r] = time.perf_counter() - start

    # The floor: the fastest way to read the matrix here, paired round by round.
    floor = min((times[name] for name in READS), key=_median)
    return RankBenchmarkResult(
        n_items=n_items,
        dim=dim,
        k=k,
        batch_size=batch_size,
        rounds=rounds,
        seed=seed,
        fp32_floor_ratio=_median(times["fp32_single"] / floor),
        int8_fp32_ratio=_median(times["int8_single"] / times["fp32_single"]),
        int8_recall_at_k=recall,
        int8_recall_at_k_noise_queries=recall_noise,
        int8_size_ratio=int8.nbytes / fp32.nbytes,
        batch_speedup=_median(batch_size * times["fp32_single"] / times["fp32_batch"]),
        int8_batch_speedup=_median(batch_size * times["int8_single"] / times["int8_batch"]),
        timings_ms={name: _median(t) * 1e3 for name, t in times.items()},
        machine=machine_facts(),
    )


def realistic_queries(items: Float32Array, count: int, rng: np.random.Generator) -> Float32Array:
    """Unit queries like a user profile: a random mix of 3 items plus noise of half their size.

    A recommender's query sits near items the user liked, so its top-k holds clear winners; a
    pure noise query is far from every item and its whole top-k is a crowd of near-ties from
    the bulk, the hardest case for int8 (also measured, as ``*_noise_queries``).
    """
    picks = items[rng.integers(0, len(items), size=(count, 3))]
    mix = np.einsum("qi,qid->qd", rng.dirichlet(np.ones(3), size=count).astype(np.float32), picks)
    noise = _unit_rows(rng.standard_normal(mix.shape, dtype=np.float32))
    return _unit_rows(_unit_rows(mix) + 0.5 * noise)


def machine_facts() -> dict[str, Any]:
    """CPU, library and thread facts to publish beside the figures."""
    config = np.show_config(mode="dicts")
    blas = config["Build Dependencies"]["blas"]
    return {
        "cpu_count": os.cpu_count(),
        "load_average_1min": os.getloadavg()[0],
        "cpu_model": _cpu_model(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": numba.__version__,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "blas": f"{blas['name']} {blas['version']}",
        "blas_configuration": blas.get("openblas configuration", ""),
        "simd": config["SIMD Extensions"]["found"],
    }


def _or_all(words: npt.NDArray[np.uint64]) -> int:
    """Bitwise OR of all words: reads each byte once, vectorised, no floating-point rules."""
    acc = np.uint64(0)
    for i in range(len(words)):
        acc |= words[i]
    return int(acc)


_read = cast(Callable[[npt.NDArray[np.uint64]], int], numba.njit(cache=True, nogil=True)(_or_all))


def _recall(exact: ItemIndex, approx: ItemIndex, queries: Float32Array, k: int) -> float:
    truth, _ = exact.search_batch(queries, k)
    found, _ = approx.search_batch(queries, k)
    hits = [len(np.intersect1d(t, f)) for t, f in zip(truth, found, strict=True)]
    return float(np.mean(hits)) / k


def _unit_rows(matrix: Float32Array) -> Float32Array:
    unit: Float32Array = matrix / np.linalg.norm(matrix, axis=1, keepdims=True)
    return unit


def _median(values: np.ndarray[Any, np.dtype[np.float64]]) -> float:
    return float(np.median(values))


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()
