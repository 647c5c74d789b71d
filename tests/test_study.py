"""The privacy-utility study's configurations (the runs themselves are simulations)."""

from __future__ import annotations

from pathlib import Path

from fedrec.shared.federated.settings import FederationSettings
from fedrec.simulations.study import study_runs


def test_the_study_covers_no_dp_and_both_levels_at_each_epsilon(tmp_path: Path) -> None:
    runs = study_runs((1.0, 3.0))
    assert [r.name for r in runs] == [
        "no-dp",
        "record-eps1",
        "record-eps3",
        "user-eps1",
        "user-eps3",
    ]
    base = FederationSettings.for_data("demo", rounds=2)
    plain, record, user = (runs[0], runs[2], runs[4])
    settings = plain.settings(base, tmp_path)
    assert not settings.privacy.enabled and not settings.user_privacy.enabled
    settings = record.settings(base, tmp_path)
    assert settings.privacy.enabled and settings.privacy.target_epsilon == 3.0
    assert not settings.user_privacy.enabled and settings.out == str(tmp_path / "record-eps3")
    assert settings.local.trained == "all"
    settings = user.settings(base, tmp_path)
    assert not settings.privacy.enabled and settings.user_privacy.enabled
    assert settings.user_privacy.target_epsilon == 3.0 and settings.rounds == 2
    assert settings.local.trained == "users.recency"  # what --user-dp trains by default
    chosen = base.with_run_config({"local-trained": "items,users.recency"})
    assert user.settings(chosen, tmp_path).local.trained == "items,users.recency"


def test_each_run_keeps_the_base_privacy_knobs_it_does_not_set(tmp_path: Path) -> None:
    base = FederationSettings.for_data("demo").with_run_config(
        {"dp-max-grad-norm": 0.5, "dp-accountant": "prv", "user-dp-clipping-norm": 2.0}
    )
    for run in study_runs((3.0,)):
        settings = run.settings(base, tmp_path)
        assert settings.privacy.max_grad_norm == 0.5 and settings.privacy.accountant == "prv"
        assert settings.user_privacy.clipping_norm == 2.0
