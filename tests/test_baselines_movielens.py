"""The harness reproduces the baseline table of NOTES-stack.md on the real ml-latest-small."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedrec.shared.evaluation.baselines import BaselineConfig
from fedrec.shared.evaluation.harness import EvaluationConfig
from fedrec.shared.evaluation.run import run_baseline

# Test split of ml-latest-small, 610 users: (HR@10, nDCG@10, MRR), from ../shared/NOTES-stack.md.
REFERENCE = {
    "popularity": (0.0410, 0.0189, 0.0181),
    "ease": (0.0852, 0.0409, 0.0390),
    "frozen": (0.0377, 0.0176, 0.0158),
}


@pytest.mark.slow
@pytest.mark.parametrize("model", sorted(REFERENCE))
def test_reproduces_reference_table(movielens_small: Path, model: str) -> None:
    result = run_baseline(
        f"movielens:{movielens_small}", BaselineConfig(model), EvaluationConfig(resamples=200)
    )
    assert result.users == 610
    measured = (result.metrics["hr@10"], result.metrics["ndcg@10"], result.metrics["mrr"])
    assert measured == pytest.approx(REFERENCE[model], abs=5e-4)
    for name, (low, high) in result.ci95.items():
        assert low <= result.metrics[name] <= high
