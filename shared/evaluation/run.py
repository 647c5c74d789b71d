"""The single entry point of an evaluation: data spec and model in, results out."""

from __future__ import annotations

from fedrec.shared.data.spec import load_data
from fedrec.shared.evaluation.baselines import BaselineConfig, make_baseline
from fedrec.shared.evaluation.harness import EvaluationConfig, EvaluationResult, evaluate
from fedrec.shared.evaluation.split import temporal_split


def run_baseline(
    data: str, model: BaselineConfig, config: EvaluationConfig | None = None
) -> EvaluationResult:
    """Load ``data`` (a spec such as ``demo`` or ``movielens:DIR``), split it by time, fit the
    baseline on training + validation and evaluate it on the test items."""
    split = temporal_split(load_data(data))
    recommender = make_baseline(model)
    recommender.fit(split)
    return evaluate(recommender, split, config)
