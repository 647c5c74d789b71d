"""The ``feedback`` benchmark: from a person's event to a refreshed top-10 on the device.

A real :class:`fedrec.client.device.Device` (encrypted store, signed bundle, LSTM step, exact
ranking, the real text encoder) over synthetic unit item vectors; each event is timed from the
call that records it to the end of the ``recommend(10)`` that follows. Weights are untrained:
latency does not depend on their values.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from fedrec.benchmarks import BenchmarkReport
from fedrec.benchmarks.rank import machine_facts
from fedrec.client.device import Device, DeviceModel
from fedrec.shared.bundle import ItemBundle, generate_signing_key, sign_bundle
from fedrec.shared.encoder.config import EncoderConfig
from fedrec.shared.encoder.model import TextEncoder
from fedrec.shared.model.network import ModelConfig, Recommender

TEXTS = (
    "looking for a beginner telescope to see the rings of saturn",
    "loved the part about sourdough starters, more of that please",
    "not a fan of long runs in the heat",
    "jazz piano voicings for a total beginner?",
    "the photos in this one were great but the text was thin",
)


@dataclass(frozen=True)
class FeedbackBenchmarkResult(BenchmarkReport):
    """Latencies in milliseconds of one run of :func:`run_feedback_benchmark`."""

    TARGETS: ClassVar[dict[str, tuple[str, float]]] = {
        "item_event_p99_ms": ("<=", 5.0),
        "text_event_p99_ms": ("<=", 60.0),
    }

    n_items: int
    history: int
    item_events: int
    text_events: int
    item_event_p50_ms: float
    item_event_p99_ms: float
    text_event_p50_ms: float
    text_event_p99_ms: float
    parts_p50_ms: dict[str, float]
    machine: dict[str, Any]

    def table(self) -> str:
        lines = [
            f"feedback: event -> refreshed top-10 over {self.n_items:,} items, "
            f"{self.history} events of history, {self.machine['cpu_count']} CPUs"
        ]
        for name in (
            "item_event_p50_ms",
            "item_event_p99_ms",
            "text_event_p50_ms",
            "text_event_p99_ms",
        ):
            value = getattr(self, name)
            lines.append(f"{name:<24}{value:>9.2f}{self.verdict(name, value)}")
        lines += [f"{name + ' p50 (ms)':<24}{ms:>9.2f}" for name, ms in self.parts_p50_ms.items()]
        return "\n".join(lines)


def run_feedback_benchmark(
    n_items: int = 10_000,
    history: int = 200,
    item_events: int = 300,
    text_events: int = 50,
    seed: int = 0,
    encoder: EncoderConfig | None = None,
) -> FeedbackBenchmarkResult:
    """Time item and text events on a device with ``history`` past events."""
    if min(n_items, item_events, text_events) < 1 or history < 0 or n_items < history + item_events:
        raise ValueError("the feedback benchmark needs n_items >= history + item_events >= 1")
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    vectors = rng.normal(size=(n_items, 384)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = [f"i{j}" for j in range(n_items)]
    key = generate_signing_key()
    blob = sign_bundle(ItemBundle(version=1, model="bench", item_ids=ids, embeddings=vectors), key)
    model = DeviceModel(
        Recommender(ModelConfig()).eval(), TextEncoder.from_config(encoder or EncoderConfig())
    )
    parts: dict[str, list[float]] = {"record": [], "add_text": [], "recommend": []}
    with tempfile.TemporaryDirectory() as folder:
        device = Device.create(Path(folder) / "device", bytes(32), model, key.public_key(), blob)
        for j in range(history):
            device.record(ids[j], timestamp=j)
        device.recommend(10)  # warm-up: compiled kernels, caches
        item_ms = [
            _timed(partial(device.record, ids[t], timestamp=t), device, parts, "record")
            for t in range(history, history + item_events)
        ]
        start = history + item_events
        text_ms = [
            _timed(
                partial(device.add_text, TEXTS[j % len(TEXTS)], timestamp=start + j),
                device,
                parts,
                "add_text",
            )
            for j in range(text_events)
        ]
    return FeedbackBenchmarkResult(
        n_items=n_items,
        history=history,
        item_events=item_events,
        text_events=text_events,
        item_event_p50_ms=float(np.percentile(item_ms, 50)),
        item_event_p99_ms=float(np.percentile(item_ms, 99)),
        text_event_p50_ms=float(np.percentile(text_ms, 50)),
        text_event_p99_ms=float(np.percentile(text_ms, 99)),
        parts_p50_ms={name: float(np.percentile(ms, 50)) for name, ms in parts.items()},
        machine=machine_facts(),
    )


def _timed(
    event: Callable[[], None], device: Device, parts: dict[str, list[float]], name: str
) -> float:
    """Milliseconds from the event to the end of the ``recommend(10)`` after it."""
    start = time.perf_counter()
    event()
    recorded = time.perf_counter()
    device.recommend(10)
    done = time.perf_counter()
    parts[name].append((recorded - start) * 1e3)
    parts["recommend"].append((done - recorded) * 1e3)
    return (done - start) * 1e3
