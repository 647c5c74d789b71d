"""The feedback benchmark runs end to end on a real device (figures are printed, not asserted)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedrec.benchmarks.feedback import run_feedback_benchmark
from fedrec.shared.encoder.config import EncoderConfig


@pytest.mark.slow
def test_small_run_reports_every_figure(tmp_path: Path) -> None:
    result = run_feedback_benchmark(
        n_items=64, history=5, item_events=4, text_events=2, encoder=EncoderConfig(max_length=16)
    )
    assert result.item_event_p99_ms >= result.item_event_p50_ms > 0
    assert result.text_event_p99_ms >= result.text_event_p50_ms > 0
    assert set(result.parts_p50_ms) == {"record", "add_text", "recommend"}
    assert "item_event_p99_ms" in result.table()
    result.write_json(tmp_path / "feedback.json")
    written = json.loads((tmp_path / "feedback.json").read_text(encoding="utf-8"))
    assert written["targets"]["item_event_p99_ms"] == ["<=", 5.0]


def test_rejects_a_history_larger_than_the_catalog() -> None:
    with pytest.raises(ValueError, match="needs n_items >= history"):
        run_feedback_benchmark(n_items=10, history=20)
