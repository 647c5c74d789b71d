"""The privacy report of a federated run: what privacy each user got, round by round.

``privacy_report(RUN_DIR)`` reads what the server wrote (``summary.json``, ``metrics.jsonl``,
``budgets.json``) and writes ``privacy.json``, ``privacy.md`` and three plots into the run
folder. Two guarantees, reported side by side:

- **record-level** (DP-SGD on each device): one record (one next-item example) of a user is
  protected; epsilon is each device's own, from its accountant, and differs between devices
  (their sampling rates and the rounds they trained differ). Under distributed DP each
  round is one step of the whole federation whose noise the devices add in shares: the
  epsilon holds against whoever sees only the aggregate, and the report gives beside it what
  a server that reads single replies could learn (``distributed``).
- **user-level** (DP-FedAvg at the server, when on): everything one user contributes is
  protected, against anyone who sees the published model and item bundles; one figure for
  the federation.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from fedrec.server.checkpoint import SETTINGS_CHANGES
from fedrec.server.federation import (
    BUDGETS,
    METRICS,
    SUMMARY,
    load_budgets,
    read_metrics,
    recorded_user_noises,
    user_epsilon,
)
from fedrec.shared.federated.distributed import plan_step, share_noise_multiplier
from fedrec.shared.federated.ledger import epsilon_of
from fedrec.shared.federated.secure_rounding import distributed_rounding, log10_rounding_delta
from fedrec.shared.federated.settings import FederationSettings
from fedrec.shared.files import json_number, json_object, read_json, read_json_lines, write_json
from fedrec.shared.model.network import Recommender, trained_names

#: An audit's figures in a run folder (``fedrec.simulations.audit`` writes them).
AUDIT = "audit.json"
REPORT_JSON = "privacy.json"
REPORT_MD = "privacy.md"
PLOTS = ("epsilon_per_round.png", "budgets.png", "utility_vs_epsilon.png")


@dataclass(frozen=True)
class RunPrivacy:
    """One run's privacy and utility, as ``privacy.json`` holds them."""

    run: str
    data: str
    devices: int
    rounds: int
    record_level: dict[str, Any] | None
    user_level: dict[str, Any] | None
    per_round: list[dict[str, Any]]
    utility: dict[str, float]
    ci95: dict[str, list[float]]
    audit: dict[str, Any] | None
    settings_changes: list[dict[str, Any]]


def read_run(folder: Path) -> RunPrivacy:
    """The privacy figures of the run in ``folder`` (a clear error when it is not one)."""
    missing = [name for name in (SUMMARY, METRICS) if not (folder / name).exists()]
    if missing:
        raise ValueError(f"{folder} is not a finished fedrec run: it has no {missing}")
    summary = read_json(folder / SUMMARY)
    if not isinstance(summary, dict) or not {"settings", "metrics", "ci95"} <= set(summary):
        raise ValueError(
            f"{folder / SUMMARY}: not a fedrec run's summary (settings, metrics, ci95)"
        )
    where = folder / SUMMARY
    settings = FederationSettings.from_run_config(
        json_object(summary["settings"], f"{where} settings")
    )
    lines = read_metrics(folder)
    if not lines:
        raise ValueError(f"{folder / METRICS} has no rounds")
    for line in lines:
        _check_round(folder / METRICS, line, settings.user_privacy.enabled)
    for name in ("metrics", "ci95"):
        json_object(summary[name], f"{where} {name}")
    for key in ("hr@10", "ndcg@10"):
        json_number(summary["metrics"].get(key), f"{where} metrics {key}")
        bounds = summary["ci95"].get(key)
        if not (isinstance(bounds, list) and len(bounds) == 2):
            raise ValueError(f"{where} ci95 {key} must be [low, high], got {bounds!r}")
        for bound in bounds:
            json_number(bound, f"{where} ci95 {key}")
    spent = sorted(load_budgets(folder).values())
    if settings.privacy.enabled and not spent:
        raise ValueError(
            f"{folder} is a run with record-level DP, but its {BUDGETS} is missing or empty: "
            "the epsilons its devices spent are not recorded"
        )
    record = None
    if settings.privacy.enabled:
        record = {
            "epsilon_max": spent[-1],
            "epsilon_median": statistics.median(spent),
            "epsilon_min": spent[0],
            "delta": settings.privacy.delta,
            "accountant": settings.privacy.accountant,
            "budget": settings.privacy.target_epsilon,
            "clipping_norm": settings.privacy.max_grad_norm,
            "devices_reporting": len(spent),
            "devices_out_of_budget": lines[-1].get("out_of_budget", 0) if lines else 0,
            "spent": spent,
            "distributed": (
                _single_replies(settings, spent[-1]) if settings.privacy.distributed else None
            ),
        }
    user = None
    if settings.user_privacy.enabled:
        noises = recorded_user_noises(folder)
        user = {
            "epsilon": user_epsilon(settings, noises),
            "delta": settings.user_privacy.delta,
            "noise_multipliers": noises,
            "clipping_norm": settings.user_privacy.clipping_norm,
            "devices": settings.devices,
            "sampled_per_round": settings.sampled_devices,
        }
    per_round = [
        {
            "round": line["round"],
            "epsilon": line["epsilon"],
            "user_epsilon": line.get("user_epsilon"),
            "hr@10": line["metrics"]["hr@10"],
            "ndcg@10": line["metrics"]["ndcg@10"],
        }
        for line in lines
    ]
    return RunPrivacy(
        run=str(folder),
        data=settings.data,
        devices=settings.devices,
        rounds=len(lines),
        record_level=record,
        user_level=user,
        per_round=per_round,
        utility={k: summary["metrics"][k] for k in ("hr@10", "ndcg@10")},
        ci95={k: summary["ci95"][k] for k in ("hr@10", "ndcg@10")},
        audit=_read_audit(folder / AUDIT) if (folder / AUDIT).exists() else None,
        settings_changes=_settings_changes(folder / SETTINGS_CHANGES),
    )


def _settings_changes(path: Path) -> list[dict[str, Any]]:
    """The run's resumes with other settings (``SETTINGS_CHANGES``), oldest first."""
    if not path.exists():
        return []
    changes = read_json_lines(path, ("from_round", "changed"))
    for number, change in enumerate(changes, start=1):
        json_object(change["changed"], f"{path}, change {number}")
    return changes


def _single_replies(settings: FederationSettings, epsilon: float) -> dict[str, Any]:
    """Under distributed DP, what one device's replies alone reveal: each carries the share
    of the noise ``share_noise_multiplier`` gives, so against a server that reads them one by
    one a device that trains its planned rounds spends ``epsilon_single_replies``. Under
    secure aggregation also ``rounding_delta_log10``: the log10 of what SecAgg+'s rounding
    adds at most to delta at ``epsilon`` (``fedrec.shared.federated.secure_rounding``)."""
    privacy = settings.privacy
    plan = plan_step(privacy, settings.planned_participations)
    assert plan.noise_multiplier is not None  # distributed DP is record-level DP
    share = share_noise_multiplier(plan.noise_multiplier, settings.noise_shares)
    mechanism = (share, plan.sample_rate, settings.planned_participations)
    return {
        "noise_multiplier": plan.noise_multiplier,
        "sample_rate": plan.sample_rate,
        "noise_shares": settings.noise_shares,
        "share_noise_multiplier": share,
        "planned_rounds": settings.planned_participations,
        "epsilon_single_replies": epsilon_of(privacy.accountant, [mechanism], privacy.delta),
        "secure_aggregation": settings.secure_aggregation,
        "rounding_delta_log10": (
            _rounding_delta_log10(settings, share, epsilon) if settings.secure_aggregation else None
        ),
    }


def _rounding_delta_log10(settings: FederationSettings, share: float, epsilon: float) -> float:
    """What SecAgg+'s rounding adds to delta, over every trained weight and round of the run,
    for noise shares of noise multiplier ``share``."""
    rounding = distributed_rounding(
        share,
        settings.privacy.max_grad_norm,
        settings.privacy.sample_rate,
        settings.local.max_examples,
        settings.sampled_devices,
    )
    network = Recommender(settings.model)
    weights = dict(network.named_parameters())
    trained = sum(weights[name].numel() for name in trained_names(network, settings.local.trained))
    return log10_rounding_delta(rounding, trained, settings.rounds, epsilon)


#: What an audit's figures in a run folder must hold (``fedrec.simulations.audit``).
AUDIT_FIELDS = ("auc", "planted_mean_rank", "control_mean_rank", "canaries", "repeats")


def _read_audit(path: Path) -> dict[str, Any]:
    audit = json_object(read_json(path), str(path))
    for key in AUDIT_FIELDS:
        json_number(audit.get(key), f"{path} {key}")
    if "untrained_auc" in audit:
        json_number(audit["untrained_auc"], f"{path} untrained_auc")
    return audit


def _check_round(path: Path, line: dict[str, Any], user_level: bool) -> None:
    """A ValueError naming ``path`` and the round when a ``metrics.jsonl`` line lacks what the
    report reads: the harness metrics, and the epsilons where the run accounted them."""
    where = f"{path} round {line['round']}"
    metrics = json_object(line["metrics"], f"{where} metrics")
    for key in ("hr@10", "ndcg@10"):
        json_number(metrics.get(key), f"{where} {key}")
    if line["epsilon"] is not None:
        epsilon = json_object(line["epsilon"], f"{where} epsilon")
        for key in ("min", "median", "max"):
            json_number(epsilon.get(key), f"{where} epsilon {key}")
    if user_level:
        json_number(line["user_noise"], f"{where} user_noise")
    if user_level or line["user_epsilon"] is not None:
        json_number(line["user_epsilon"], f"{where} user_epsilon")


def privacy_report(folder: Path, compare: tuple[Path, ...] = ()) -> RunPrivacy:
    """Write the report of the run in ``folder`` (utility against epsilon across it and the
    ``compare`` runs) into that folder; returns its figures."""
    run = read_run(folder)
    others = [read_run(other) for other in compare]
    markdown = _markdown(run, others)  # before anything is written: it formats every figure
    write_json(folder / REPORT_JSON, asdict(run))
    (folder / REPORT_MD).write_text(markdown, encoding="utf-8")
    _plot_rounds(run, folder / PLOTS[0])
    _plot_budgets(run, folder / PLOTS[1])
    _plot_utility([run, *others], folder / PLOTS[2])
    return run


def _markdown(run: RunPrivacy, others: list[RunPrivacy]) -> str:
    record, user = run.record_level, run.user_level
    lines = [
        f"# Privacy report: {run.run}",
        "",
        f"{run.data}, {run.devices} devices, {run.rounds} rounds. "
        f"HR@10 {run.utility['hr@10']:.4f} {_interval(run.ci95['hr@10'])}, "
        f"nDCG@10 {run.utility['ndcg@10']:.4f} {_interval(run.ci95['ndcg@10'])}.",
        "",
        "| guarantee | protects | epsilon | delta | how |",
        "| --- | --- | --- | --- | --- |",
    ]
    if record is None:
        lines.append("| record-level | (off) | | | |")
    elif record.get("distributed") is not None:
        shares = record["distributed"]
        secure = shares.get("secure_aggregation") is True
        server = (
            "the server, which receives the replies masked (SecAgg+)"
            if secure
            else "a server that aggregates without reading single replies"
        )
        closing = (
            "secure aggregation is on: only a server that breaks SecAgg+, or colludes with "
            "secagg-threshold of a device's neighbours, reads single replies"
            if secure
            else "secure aggregation (off in this run) would close this"
        )
        lines.append(
            f"| record-level, distributed (one DP-SGD step of the federation per round, its "
            f"noise added by the devices in {shares['noise_shares']} shares) | one example of a "
            f"user, against anyone who sees only the sum of the replies: the published model "
            f"and bundles, the other devices, {server} | max {record['epsilon_max']:.4f}, "
            f"median {record['epsilon_median']:.4f} "
            f"(budget {record['budget']}) | {record['delta']} | noise multiplier "
            f"{shares['noise_multiplier']:.4f} at sampling rate {shares['sample_rate']}; "
            f"{record['accountant'].upper()} accountant on each device; clipping norm "
            f"{record['clipping_norm']}{_rounding_note(shares.get('rounding_delta_log10'))} |"
        )
        lines.append(
            f"| record-level, against a server that reads single replies | one example of a "
            f"user | {shares['epsilon_single_replies']:.4g} over {shares['planned_rounds']} "
            f"rounds | {record['delta']} | each reply carries noise multiplier "
            f"{shares['share_noise_multiplier']:.4f}; {closing} |"
        )
    else:
        lines.append(
            f"| record-level (DP-SGD on each device) | one example of a user, against "
            f"anyone, the server included | max {record['epsilon_max']:.4f}, median "
            f"{record['epsilon_median']:.4f} (budget {record['budget']}) | {record['delta']} | "
            f"{record['accountant'].upper()} accountant on each device; clipping norm "
            f"{record['clipping_norm']} |"
        )
    if user is None:
        lines.append("| user-level | (off) | | | |")
    else:
        lines.append(
            f"| user-level (DP-FedAvg at the server) | everything one user contributes, "
            f"against anyone who sees the published model and bundles | {user['epsilon']:.4f} "
            f"| {user['delta']} | {user['sampled_per_round']} of {user['devices']} devices per "
            f"round, updates clipped to {user['clipping_norm']}, RDP (replace-one) |"
        )
    if record is not None:
        lines += [
            "",
            f"{record['devices_reporting']} devices reported a spent budget; "
            f"{record['devices_out_of_budget']} are out of budget. Every figure is recomputed "
            "by each device's accountant from its ledger (in its encrypted store).",
        ]
    for change in run.settings_changes:
        what = ", ".join(f"{key} {old} to {new}" for key, (old, new) in change["changed"].items())
        lines += [
            "",
            f"Resumed from round {change['from_round']} with {what}. The devices' epsilons come "
            "from their ledgers, which record each round as it ran; the figures derived from "
            "the settings (distributed DP's noise, what single replies reveal) use the final "
            "ones.",
        ]
    lines += ["", "| round | epsilon min | median | max | user-level | HR@10 |"]
    lines.append("| --- | --- | --- | --- | --- | --- |")
    for r in run.per_round:
        eps = r["epsilon"] or {}
        user_eps = "" if r["user_epsilon"] is None else f"{r['user_epsilon']:.4f}"
        lines.append(
            f"| {r['round']} | {_fmt(eps.get('min'))} | {_fmt(eps.get('median'))} | "
            f"{_fmt(eps.get('max'))} | {user_eps} | {r['hr@10']:.4f} |"
        )
    if run.audit is not None:
        audit = run.audit
        chance = (
            f" The same attack on the initial weights, before any training, gets AUC "
            f"{audit['untrained_auc']:.3f}: its chance level for these canaries."
            if "untrained_auc" in audit  # audits before 2026-11-24 did not attack them
            else ""
        )
        lines += [
            "",
            f"Empirical audit ({audit['canaries']} canaries planted {audit['repeats']} times "
            f"each, as many controls): an attacker who sees the published model tells planted "
            f"canaries from controls with AUC **{audit['auc']:.3f}** (0.5 is guessing); mean "
            f"rank of a canary's item {audit['planted_mean_rank']:.0f} planted, "
            f"{audit['control_mean_rank']:.0f} not.{chance} Each canary is {audit['repeats']} "
            "records of one user: user-level DP covers it whole, record-level DP as a group.",
        ]
    if others:
        lines += ["", "Runs compared (utility against epsilon):", ""]
        for other in [run, *others]:
            eps = (
                "no DP"
                if other.record_level is None
                else f"{other.record_level['epsilon_max']:.2f}"
            )
            lines.append(
                f"- {other.run}: record-level epsilon {eps}, HR@10 {other.utility['hr@10']:.4f}"
            )
    lines += ["", *(f"![{name}]({name})" for name in PLOTS), ""]
    return "\n".join(lines)


def _rounding_note(delta_log10: float | None) -> str:
    """What SecAgg+'s rounding adds to delta, for the report's table (nothing without it)."""
    if delta_log10 is None:
        return ""
    if delta_log10 >= 0:
        return "; SecAgg+'s rounding is not covered: its clipping can bind"
    return f"; SecAgg+'s rounding adds at most 10^{math.floor(delta_log10) + 1} to delta"


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def _interval(bounds: list[float]) -> str:
    return f"[{bounds[0]:.4f}, {bounds[1]:.4f}]"


def _plot_rounds(run: RunPrivacy, path: Path) -> None:
    figure, axes = plt.subplots(figsize=(6, 4))
    rounds = [r["round"] for r in run.per_round]
    for key, style in (("max", "-"), ("median", "--"), ("min", ":")):
        values = [float((r["epsilon"] or {}).get(key, "nan")) for r in run.per_round]
        if any(v == v for v in values):  # not all NaN (rounds without DP replies)
            axes.plot(rounds, values, style, marker="o", label=f"record-level, {key} over devices")
    if run.user_level is not None:
        user = [r["user_epsilon"] for r in run.per_round]
        axes.plot(rounds, user, "-", marker="s", color="black", label="user-level")
    dp_off = run.record_level is None and run.user_level is None
    title = f"Privacy spent: {run.data}" + (" (DP off)" if dp_off else "")
    axes.set(xlabel="round", ylabel="epsilon spent", title=title)
    if axes.get_legend_handles_labels()[1]:
        axes.legend(fontsize=8)
    _save(figure, path)


def _plot_budgets(run: RunPrivacy, path: Path) -> None:
    figure, axes = plt.subplots(figsize=(6, 4))
    spent = [] if run.record_level is None else run.record_level["spent"]
    if spent:
        axes.hist(spent, bins=min(30, max(5, len(spent) // 5)))
        axes.axvline(run.record_level["budget"], color="red", label="budget")  # type: ignore[index]
        axes.legend(fontsize=8)
    axes.set(
        xlabel="record-level epsilon spent at the end",
        ylabel="devices",
        title="Spent budgets" if spent else "Spent budgets (record-level DP off)",
    )
    _save(figure, path)


def _plot_utility(runs: list[RunPrivacy], path: Path) -> None:
    figure, axes = plt.subplots(figsize=(6, 4))
    for run in runs:
        hr = run.utility["hr@10"]
        if run.record_level is None and run.user_level is None:
            axes.axhline(hr, linestyle="--", color="grey", label=f"no DP ({hr:.3f})")
            continue
        if run.record_level is not None:
            axes.plot(run.record_level["epsilon_max"], hr, "o", color="tab:blue")
        if run.user_level is not None:
            axes.plot(run.user_level["epsilon"], hr, "s", color="black")
    axes.set(
        xlabel="epsilon (circles: record-level max; squares: user-level)",
        ylabel="HR@10",
        title="Utility against privacy",
    )
    if axes.get_legend_handles_labels()[0]:
        axes.legend(fontsize=8)
    _save(figure, path)


def _save(figure: Any, path: Path) -> None:
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
