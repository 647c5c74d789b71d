"""The re-embedding benchmark runs both paths on a few real item texts (figures are printed, not
asserted): the result's structure, and that both paths give the same item vectors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fedrec.benchmarks.reembed import TOLERANCE, run_reembed_benchmark
from fedrec.cli import main
from fedrec.shared.encoder.config import EncoderConfig


@pytest.fixture(autouse=True)
def own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the embedding cache the benchmark fills out of the user's own."""
    monkeypatch.setenv("FEDREC_CACHE_DIR", str(tmp_path / "cache"))


@pytest.mark.slow
def test_small_run_reports_every_figure_and_equal_vectors(tmp_path: Path) -> None:
    result = run_reembed_benchmark(
        n_items=12, rounds=2, cheap_repeats=3, encoder=EncoderConfig(max_length=16, batch_size=8)
    )
    assert (result.data, result.n_items, result.rounds, result.cheap_repeats) == ("demo", 12, 2, 3)
    assert result.same_vectors and result.max_abs_diff <= TOLERANCE
    assert not result.cache_was_warm  # a fresh cache folder: filled by this run
    assert result.from_scratch_s > 0 and result.cheap_ms > 0 and result.cheap_speedup > 0
    assert result.from_scratch_items_per_s == pytest.approx(12 / result.from_scratch_s)
    assert set(result.timings_ms) == {
        "from_scratch_encode",
        "from_scratch_tower",
        "cache_read",
        "encoder_load",
    }
    assert {"cpu_count", "load_average_1min", "load_average_1min_start"} <= set(result.machine)
    table = result.table()
    assert "cheap_speedup" in table and "target >= 3" in table
    result.write_json(tmp_path / "reembed.json")
    written = json.loads((tmp_path / "reembed.json").read_text(encoding="utf-8"))
    assert written["targets"] == {"cheap_speedup": [">=", 3.0]}
    assert written["same_vectors"] is True and written["n_items"] == 12


@pytest.mark.slow
def test_command_runs_on_a_subset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "reembed.json"
    assert main(["bench", "reembed", "--items", "8", "--json", str(out)]) == 0
    written = json.loads(out.read_text(encoding="utf-8"))
    assert written["n_items"] == 8 and written["same_vectors"] is True
    assert "cheap_speedup" in capsys.readouterr().out


def test_command_has_help() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "fedrec", "bench", "reembed", "--help"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0 and "--items" in done.stdout and "default all" in done.stdout


@pytest.mark.parametrize("items", [0, 3001])
def test_rejects_a_subset_outside_the_catalog(items: int) -> None:
    with pytest.raises(ValueError, match="needs 1 <= items <= 3000"):
        run_reembed_benchmark(n_items=items)


def test_rejects_no_rounds() -> None:
    with pytest.raises(ValueError, match="at least 1 round"):
        run_reembed_benchmark(rounds=0)
