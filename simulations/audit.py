"""The empirical privacy audit: train with canaries planted, without DP and with DP, and attack
each published model (``fedrec.simulations.canaries``); the privacy report shows the result
beside the theoretical epsilon."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from fedrec.server.federation import load_checkpoint
from fedrec.server.privacy_report import AUDIT, privacy_report
from fedrec.shared.federated.settings import FederationSettings
from fedrec.shared.model.network import Recommender
from fedrec.simulations.canaries import audit, make_canaries
from fedrec.simulations.run import simulate
from fedrec.simulations.world import load_world


def run_audit(base: FederationSettings, out: Path) -> dict[str, Any]:
    """Plant ``base.canaries`` canaries and train twice, without DP and with ``base``'s DP;
    attack each published model. Writes ``audit.json`` into each run folder (the privacy
    report shows it) and ``out/audit.json``; returns the latter's content."""
    if base.canaries < 1:
        raise ValueError("an audit needs canaries: set canaries >= 1")
    results: dict[str, Any] = {}
    for name, privacy in (
        ("no-dp", dataclasses.replace(base.privacy, enabled=False)),
        ("dp", base.privacy),
    ):
        settings = dataclasses.replace(base, out=str(out / name), privacy=privacy)
        simulate(settings)
        world = load_world(settings.data, settings.devices)
        network = Recommender(settings.model)
        load_checkpoint(Path(settings.out), network)
        canaries = make_canaries(
            world.split.num_items, settings.devices, settings.canaries, settings.seed
        )
        found = audit(network, world.features.table[: world.split.num_items], canaries)
        entry = {
            **dataclasses.asdict(found),
            "canaries": settings.canaries,
            "repeats": settings.canary_repeats,
            "record_level_dp": privacy.enabled,
            "target_epsilon": privacy.target_epsilon if privacy.enabled else None,
        }
        (Path(settings.out) / AUDIT).write_text(json.dumps(entry, indent=2) + "\n")
        privacy_report(Path(settings.out))
        results[name] = entry
    (out / AUDIT).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return results
