"""The privacy-utility study: the same federation at several privacy levels, record-level and
user-level, with a table of utility (95% intervals) against epsilon.

``privacy_study(data, out)`` runs every configuration into ``out/<name>`` (a finished one is
resumed, so an interrupted study continues), writes each run's privacy report, and writes
``out/study.json`` and ``out/study.md``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedrec.server.privacy_report import RunPrivacy, privacy_report
from fedrec.shared.federated.settings import FederationSettings, user_level_local
from fedrec.shared.files import check_output_folder, write_json
from fedrec.simulations.run import simulate

#: The epsilons of the study (None: without DP).
EPSILONS: tuple[float, ...] = (1.0, 3.0, 8.0)


@dataclass(frozen=True)
class StudyRun:
    """One configuration: its folder name, the DP level and epsilon (None: no DP)."""

    name: str
    level: str
    epsilon: float | None

    def settings(self, base: FederationSettings, out: Path) -> FederationSettings:
        """``base`` at this level; a user-level run trains what ``user_level_local`` gives (the
        recency weights where ``base`` trains every part), as ``fedrec simulate --user-dp``
        does."""
        epsilon = self.epsilon or 8.0
        record = dataclasses.replace(
            base.privacy, enabled=self.level == "record", target_epsilon=epsilon
        )
        user = dataclasses.replace(
            base.user_privacy, enabled=self.level == "user", target_epsilon=epsilon
        )
        local = user_level_local(base.local) if self.level == "user" else base.local
        return dataclasses.replace(
            base, out=str(out / self.name), privacy=record, user_privacy=user, local=local
        )


def study_runs(epsilons: tuple[float, ...] = EPSILONS) -> list[StudyRun]:
    """No DP, then record-level and user-level DP at each epsilon."""
    runs = [StudyRun("no-dp", "none", None)]
    for level in ("record", "user"):
        runs += [StudyRun(f"{level}-eps{e:g}", level, e) for e in epsilons]
    return runs


def privacy_study(
    base: FederationSettings, out: Path, epsilons: tuple[float, ...] = EPSILONS
) -> list[dict[str, Any]]:
    """Run the study for ``base`` (its data, devices and rounds); returns the table's rows."""
    check_output_folder(out, "the study folder")
    runs = study_runs(epsilons)
    every = [run.settings(base, out) for run in runs]  # a run that cannot work fails first
    out.mkdir(parents=True, exist_ok=True)
    folders = [out / run.name for run in runs]
    for settings in every:
        simulate(settings)
    reports = [
        privacy_report(folder, tuple(f for f in folders if f != folder)) for folder in folders
    ]
    rows = [_row(run, report) for run, report in zip(runs, reports, strict=True)]
    write_json(out / "study.json", rows)
    (out / "study.md").write_text(_table(base, rows), encoding="utf-8")
    return rows


def _row(run: StudyRun, report: RunPrivacy) -> dict[str, Any]:
    record, user = report.record_level, report.user_level
    return {
        "run": run.name,
        "level": run.level,
        "target_epsilon": run.epsilon,
        "epsilon_spent": (record["epsilon_max"] if record else user["epsilon"] if user else None),
        "hr@10": report.utility["hr@10"],
        "hr@10_ci95": report.ci95["hr@10"],
        "ndcg@10": report.utility["ndcg@10"],
        "ndcg@10_ci95": report.ci95["ndcg@10"],
    }


def _table(base: FederationSettings, rows: list[dict[str, Any]]) -> str:
    reference = next(r for r in rows if r["level"] == "none")
    lines = [
        f"# Privacy-utility study: {base.data}, {base.devices} devices, {base.rounds} rounds",
        "",
        "| DP | target epsilon | epsilon spent | HR@10 [95% CI] | nDCG@10 [95% CI] | "
        "HR@10 vs no DP |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        spent = "" if row["epsilon_spent"] is None else f"{row['epsilon_spent']:.3f}"
        target = "" if row["target_epsilon"] is None else f"{row['target_epsilon']:g}"
        ratio = row["hr@10"] / reference["hr@10"] - 1 if reference["hr@10"] else float("nan")
        lines.append(
            f"| {row['level']} | {target} | {spent} | {row['hr@10']:.4f} "
            f"[{row['hr@10_ci95'][0]:.4f}, {row['hr@10_ci95'][1]:.4f}] | {row['ndcg@10']:.4f} "
            f"[{row['ndcg@10_ci95'][0]:.4f}, {row['ndcg@10_ci95'][1]:.4f}] | {ratio:+.1%} |"
        )
    return "\n".join(lines) + "\n"
