"""The DP-step benchmark on a tiny network (figures are printed, not asserted): the result's
structure, and that both LSTMs give the same clipped gradient."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedrec.benchmarks.dp_step import TOLERANCE, run_dp_step_benchmark
from fedrec.cli import main
from fedrec.shared.model.network import ModelConfig

TINY = ModelConfig(
    feature_dim=16, item_dim=16, hidden_dim=8, item_rank=2, pool_window=4, start_events=2
)


def test_small_run_reports_every_figure_and_equal_gradients(tmp_path: Path) -> None:
    result = run_dp_step_benchmark(
        n_items=50, batch_size=12, rounds=2, config=TINY, context=6, negatives=5
    )
    assert (result.n_items, result.batch_size, result.rounds) == (50, 12, 2)
    assert (result.hidden_dim, result.item_rank, result.context) == (8, 2, 6)
    assert result.same_gradients and result.max_abs_diff <= TOLERANCE
    assert result.dplstm_s > 0 and result.per_example_s > 0 and result.speedup > 0
    assert result.per_example_examples_per_s == pytest.approx(12 / result.per_example_s)
    table = result.table()
    assert "speedup" in table and "target >= 1.5" in table
    result.write_json(tmp_path / "dp-step.json")
    written = json.loads((tmp_path / "dp-step.json").read_text(encoding="utf-8"))
    assert written["targets"] == {"speedup": [">=", 1.5]}
    assert written["same_gradients"] is True


def test_bad_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 1 round"):
        run_dp_step_benchmark(rounds=0, config=TINY)


@pytest.mark.slow
def test_command_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "dp-step.json"
    command = ["bench", "dp-step", "--items", "200", "--batch-size", "16", "--rounds", "2"]
    assert main([*command, "--json", str(out)]) == 0
    assert "same_gradients" in capsys.readouterr().out
    written = json.loads(out.read_text(encoding="utf-8"))
    assert (written["n_items"], written["batch_size"], written["rounds"]) == (200, 16, 2)
    assert main(["bench", "dp-step", "--rounds", "0"]) == 2
    assert "at least 1 round" in capsys.readouterr().err
