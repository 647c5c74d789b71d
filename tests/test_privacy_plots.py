"""The epsilon-per-round plot of a run without DP says so, and draws without warnings."""

from __future__ import annotations

import warnings
from pathlib import Path

from fedrec.server.privacy_report import RunPrivacy, _plot_rounds


def _run(epsilon: dict[str, float] | None) -> RunPrivacy:
    return RunPrivacy(
        run="r",
        data="demo",
        devices=2,
        rounds=2,
        record_level=None if epsilon is None else {"epsilon_max": epsilon["max"]},
        user_level=None,
        per_round=[{"round": r, "epsilon": epsilon, "user_epsilon": None} for r in (1, 2)],
        utility={"hr@10": 0.1, "ndcg@10": 0.05},
        ci95={"hr@10": [0.0, 0.2], "ndcg@10": [0.0, 0.1]},
        audit=None,
        settings_changes=[],
    )


def test_a_run_without_dp_plots_its_rounds_without_a_warning(tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _plot_rounds(_run(None), tmp_path / "off.png")
        _plot_rounds(_run({"max": 2.0, "median": 1.0, "min": 0.5}), tmp_path / "on.png")
    assert (tmp_path / "off.png").stat().st_size > 0
    assert (tmp_path / "on.png").stat().st_size > 0
