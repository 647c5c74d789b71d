"""``simulate``: one entry point that runs a whole federation of virtual devices through
Flower's simulation engine and returns its summary (also in ``OUT/summary.json``)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from flwr.simulation import run_simulation

from fedrec.client.app import make_client_app
from fedrec.server.app import make_server_app
from fedrec.server.federation import SUMMARY, recorded_user_noises, user_level_noise
from fedrec.shared.federated.settings import FederationSettings
from fedrec.simulations.world import load_world


def simulate(settings: FederationSettings, cpus_per_device: int = 1) -> dict[str, Any]:
    """Run the federation ``settings`` describes (resuming from its checkpoint, if any)."""
    load_world(settings.data, settings.devices)  # fail early on bad data, warm the caches
    # fail early when a resumed run has no user-level budget left
    user_level_noise(settings, recorded_user_noises(Path(settings.out)))
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    run_simulation(
        server_app=make_server_app(settings),
        client_app=make_client_app(settings),
        num_supernodes=settings.devices,
        backend_config={"client_resources": {"num_cpus": cpus_per_device, "num_gpus": 0.0}},
    )
    summary_file = Path(settings.out) / SUMMARY
    if not summary_file.exists():
        raise RuntimeError(f"the federation ended without writing {summary_file}; see the log")
    result: dict[str, Any] = json.loads(summary_file.read_text(encoding="utf-8"))
    return result
