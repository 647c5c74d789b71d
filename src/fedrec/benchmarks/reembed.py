"""The ``reembed`` benchmark: re-embedding the public item catalog after a federated round.

From scratch, the server would run every item text through the text encoder (the real MiniLM)
and then the item tower. What ``fedrec.server.federation._publish`` does instead is run only the
item tower, over the frozen-encoder features cached once per catalog: only the trainable part
changes between rounds. Both paths are timed in the same process, round by round; the ratio is
taken within each round and the median over rounds is reported (see docs/benchmarks.md). Both
paths must give the same item vectors to float32 tolerance.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
import torch

from fedrec.benchmarks import BenchmarkReport
from fedrec.benchmarks.rank import machine_facts
from fedrec.shared.data.spec import load_data
from fedrec.shared.encoder.cache import cache_dir, cache_key, encode_cached
from fedrec.shared.encoder.config import EncoderConfig
from fedrec.shared.encoder.model import TextEncoder
from fedrec.shared.model.network import ItemTower, ModelConfig

TOLERANCE = 1e-5
"""Largest absolute difference allowed between the two paths' unit item vectors."""

FIGURES = (  # in the order table() prints them: name, format
    ("cheap_speedup", "{:>12.1f}"),
    ("from_scratch_s", "{:>12.3f}"),
    ("cheap_ms", "{:>12.3f}"),
    ("from_scratch_items_per_s", "{:>12,.0f}"),
    ("cheap_items_per_s", "{:>12,.0f}"),
    ("max_abs_diff", "{:>12.2e}"),
)


@dataclass(frozen=True)
class ReembedBenchmarkResult(BenchmarkReport):
    """Figures of one run of :func:`run_reembed_benchmark`; times are medians."""

    TARGETS: ClassVar[dict[str, tuple[str, float]]] = {"cheap_speedup": (">=", 3.0)}

    data: str
    n_items: int
    encoder: str
    max_length: int
    rounds: int
    cheap_repeats: int
    seed: int
    cheap_speedup: float
    from_scratch_s: float
    cheap_ms: float
    from_scratch_items_per_s: float
    cheap_items_per_s: float
    max_abs_diff: float
    same_vectors: bool
    cache_was_warm: bool
    timings_ms: dict[str, float]
    machine: dict[str, Any]

    def table(self) -> str:
        lines = [
            f"reembed: {self.n_items:,} item texts of {self.data!r}, encoder {self.encoder} "
            f"(max_length {self.max_length}), {self.rounds} rounds x (1 from scratch + "
            f"{self.cheap_repeats} cheap), {self.machine['cpu_count']} CPUs, 1-minute load "
            f"{self.machine['load_average_1min_start']:.2f} at the start, "
            f"{self.machine['load_average_1min']:.2f} at the end"
        ]
        lines += self.figure_lines(FIGURES)
        lines.append(f"{'same_vectors':<28}{self.same_vectors!s:>12}   (|diff| <= {TOLERANCE:g})")
        lines += [f"{name + ' (ms)':<28}{ms:>12.3f}" for name, ms in self.timings_ms.items()]
        return "\n".join(lines)


def run_reembed_benchmark(
    n_items: int | None = None,
    seed: int = 0,
    data: str = "demo",
    rounds: int = 3,
    cheap_repeats: int = 20,
    encoder: EncoderConfig | None = None,
) -> ReembedBenchmarkResult:
    """Time re-embedding the first ``n_items`` item texts of ``data`` (all by default) from
    scratch (encoder + item tower) against the item tower over cached features.

    Each of ``rounds`` rounds times the from-scratch path once and the cheap path
    ``cheap_repeats`` times. The encoder is loaded once, before the rounds (its load time is
    reported, not counted). The cheap path's features come from the on-disk embedding cache
    (``fedrec.shared.encoder.cache``), as the server's do; this fills the cache if it lacks them.
    The from-scratch path never reads the cache.
    """
    if rounds < 1 or cheap_repeats < 1:
        raise ValueError("the reembed benchmark needs at least 1 round and 1 cheap repeat")
    catalog = load_data(data).item_texts
    n = len(catalog) if n_items is None else n_items
    if not 1 <= n <= len(catalog):
        raise ValueError(
            f"the reembed benchmark needs 1 <= items <= {len(catalog)} (the {data} catalog), "
            f"got {n}"
        )
    texts = catalog[:n]
    config = replace(encoder or EncoderConfig(), progress=False)
    load_at_start = os.getloadavg()[0]

    start = time.perf_counter()
    text_encoder = TextEncoder.from_config(config)
    load_s = time.perf_counter() - start
    tower = _trained_tower(ModelConfig(feature_dim=text_encoder.dim), seed)

    # The cheap path's input: features from the cache, filled (untimed) when missing.
    warm = (cache_dir() / f"{cache_key(config, texts)}.npy").is_file()
    encode_cached(config, texts, text_encoder)
    start = time.perf_counter()
    features = torch.from_numpy(encode_cached(config, texts, text_encoder))
    cache_read_s = time.perf_counter() - start

    # Warm-up: one batch through the encoder, one cheap pass (threads, allocator, kernels).
    text_encoder.encode(texts[: config.batch_size])
    cheap_vectors = _tower(tower, features)

    scratch = np.empty(rounds)
    encode = np.empty(rounds)
    cheap = np.empty((rounds, cheap_repeats))
    max_diff = 0.0
    for r in range(rounds):
        start = time.perf_counter()
        encoded = text_encoder.encode(texts)
        encoded_at = time.perf_counter()
        vectors = _tower(tower, torch.from_numpy(encoded))
        scratch[r] = time.perf_counter() - start
        encode[r] = encoded_at - start
        for j in range(cheap_repeats):
            start = time.perf_counter()
            cheap_vectors = _tower(tower, features)
            cheap[r, j] = time.perf_counter() - start
        max_diff = max(max_diff, float(np.max(np.abs(vectors - cheap_vectors))))

    cheap_round = np.median(cheap, axis=1)
    scratch_s = float(np.median(scratch))
    cheap_s = float(np.median(cheap))
    return ReembedBenchmarkResult(
        data=data,
        n_items=n,
        encoder=config.model,
        max_length=config.max_length,
        rounds=rounds,
        cheap_repeats=cheap_repeats,
        seed=seed,
        cheap_speedup=float(np.median(scratch / cheap_round)),
        from_scratch_s=scratch_s,
        cheap_ms=cheap_s * 1e3,
        from_scratch_items_per_s=n / scratch_s,
        cheap_items_per_s=n / cheap_s,
        max_abs_diff=max_diff,
        same_vectors=max_diff <= TOLERANCE,
        cache_was_warm=warm,
        timings_ms={
            "from_scratch_encode": float(np.median(encode)) * 1e3,
            "from_scratch_tower": float(np.median(scratch - encode)) * 1e3,
            "cache_read": cache_read_s * 1e3,
            "encoder_load": load_s * 1e3,
        },
        machine={**machine_facts(), "load_average_1min_start": load_at_start},
    )


def _trained_tower(config: ModelConfig, seed: int) -> ItemTower:
    """An item tower as after some training: its initial weights moved by seeded noise (the
    untrained tower is the identity, which would hide differences between the paths)."""
    torch.manual_seed(seed)
    tower = ItemTower(config).eval()
    with torch.no_grad():
        for weights in tower.parameters():
            weights.add_(0.05 * torch.randn_like(weights))
    return tower


def _tower(tower: ItemTower, features: torch.Tensor) -> npt.NDArray[np.float32]:
    """Unit item vectors for encoder features, as ``_publish`` computes them."""
    with torch.no_grad():
        vectors: npt.NDArray[np.float32] = tower(features).numpy()
    return vectors
