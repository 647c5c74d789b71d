"""The single entry point of an evaluation: data spec and model in, results out."""

from __future__ import annotations

from fedrec.shared.data.spec import load_data
from fedrec.shared.encoder.config import EncoderConfig
from fedrec.shared.evaluation.baselines import BaselineConfig, make_baseline
from fedrec.shared.evaluation.harness import EvaluationConfig, EvaluationResult, evaluate
from fedrec.shared.evaluation.split import temporal_split
from fedrec.shared.model.network import ModelConfig
from fedrec.shared.model.training import TrainConfig, TrainedRecommender


def run_baseline(
    data: str, model: BaselineConfig, config: EvaluationConfig | None = None
) -> EvaluationResult:
    """Load ``data`` (a spec such as ``demo`` or ``movielens:DIR``), split it by time, fit the
    baseline on training + validation and evaluate it on the test items."""
    split = temporal_split(load_data(data))
    recommender = make_baseline(model)
    recommender.fit(split)
    return evaluate(recommender, split, config)


def run_central(
    data: str,
    model: ModelConfig | None = None,
    training: TrainConfig | None = None,
    encoder: EncoderConfig | None = None,
    config: EvaluationConfig | None = None,
) -> tuple[EvaluationResult, TrainedRecommender]:
    """Train the recommender on all of ``data``'s training + validation data in one place
    (no federation, no privacy: the upper bound) and evaluate it on the test items."""
    split = temporal_split(load_data(data))
    recommender = TrainedRecommender(model, training, encoder)
    recommender.fit(split)
    return evaluate(recommender, split, config), recommender
