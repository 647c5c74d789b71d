"""The empirical privacy audit: train with canaries planted, without DP, with record-level DP
and with user-level DP, and attack each published model (``fedrec.simulations.canaries``);
the privacy report shows the result beside the theoretical epsilon."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from fedrec.server.checkpoint import load_checkpoint
from fedrec.server.privacy_report import AUDIT, privacy_report
from fedrec.shared.federated.settings import FederationSettings
from fedrec.shared.files import check_output_folder, write_json
from fedrec.shared.model.network import Recommender, initial_network
from fedrec.simulations.canaries import audit, make_canaries
from fedrec.simulations.run import simulate
from fedrec.simulations.study import StudyRun
from fedrec.simulations.world import federation_world

#: The key of the attack on the initial weights in ``out/audit.json``.
UNTRAINED = "untrained"


def audit_runs(base: FederationSettings, out: Path) -> dict[str, FederationSettings]:
    """The audit's federations by run folder: without DP, with ``base``'s record-level DP, and
    with user-level DP alone at ``base``'s user-level budget (training what ``--user-dp``
    trains by default)."""
    runs = (
        StudyRun("no-dp", "none", None),
        StudyRun("dp", "record", base.privacy.target_epsilon),
        StudyRun("user-dp", "user", base.user_privacy.target_epsilon),
    )
    return {run.name: run.settings(base, out) for run in runs}


def run_audit(base: FederationSettings, out: Path) -> dict[str, Any]:
    """Plant ``base.canaries`` canaries, train each of ``audit_runs`` and attack its published
    model, and the initial weights (``untrained``: the attack's chance level for this draw of
    canaries). Writes ``audit.json`` into each run folder (the privacy report shows it) and
    ``out/audit.json``; returns the latter's content."""
    if base.canaries < 1:
        raise ValueError("an audit needs canaries: set canaries >= 1")
    check_output_folder(out, "the audit folder")
    world = federation_world(base)
    canaries = make_canaries(world.split.num_items, base.devices, base.canaries, base.seed)
    items = world.features.items
    untrained = audit(initial_network(base.model, base.seed, items), items, canaries)
    results: dict[str, Any] = {UNTRAINED: dataclasses.asdict(untrained)}
    for name, settings in audit_runs(base, out).items():
        simulate(settings)
        network = Recommender(settings.model)
        load_checkpoint(Path(settings.out), network)
        found = audit(network, items, canaries)
        record, user = settings.privacy, settings.user_privacy
        entry = {
            **dataclasses.asdict(found),
            "untrained_auc": untrained.auc,
            "canaries": settings.canaries,
            "repeats": settings.canary_repeats,
            "record_level_dp": record.enabled,
            "target_epsilon": record.target_epsilon if record.enabled else None,
            "user_level_dp": user.enabled,
            "user_target_epsilon": user.target_epsilon if user.enabled else None,
        }
        write_json(Path(settings.out) / AUDIT, entry)
        privacy_report(Path(settings.out))
        results[name] = entry
    write_json(out / AUDIT, results)
    return results
