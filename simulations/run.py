"""``simulate``: one entry point that runs a whole federation of virtual devices through
Flower's simulation engine and returns its summary (also in ``OUT/summary.json``)."""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray
from flwr.simulation import run_simulation

from fedrec.client.app import device_folder, make_client_app
from fedrec.client.store import STORE_FILE
from fedrec.server.app import make_server_app
from fedrec.server.federation import (
    SUMMARY,
    check_run_folder,
    load_budgets,
)
from fedrec.shared.federated.distributed import plan_step
from fedrec.shared.federated.local import plan_round
from fedrec.shared.federated.settings import FederationSettings
from fedrec.shared.files import read_json
from fedrec.simulations.world import World, federation_world

#: How much lower than the devices' the scheduling priority of the simulation engine's own
#: threads is (``os.nice`` steps; docs/federated.md, "Wall time: Flower's engine beside the
#: devices").
DRIVER_NICENESS = 10


def _run_beside_devices(run: Callable[[], None]) -> None:
    """Run Flower's simulation engine (``run``) with its threads below the devices' priority.

    The engine polls its message store for every node ten times a second, a scan that grows
    with the number of nodes times the messages in flight; with 610 nodes it kept about two
    thirds of a core busy through every round, beside the devices' Ray workers. Ray is started
    here first, so its workers keep the caller's priority; the engine then runs in a thread of
    its own that lowers its priority (on Linux, that thread's and those it starts), and takes
    the cores only when the devices leave them idle."""
    if not ray.is_initialized():
        # Flower's RayBackend.init_ray does this inside the engine (it cannot be called alone:
        # the backend also builds its actor pool); its workers import what this process does
        inherited = os.environ.get("PYTHONPATH", "").split(os.pathsep)
        path = os.pathsep.join(dict.fromkeys(filter(None, [*sys.path, *inherited])))
        os.environ["PYTHONPATH"] = path
        # Ray runs its workers at niceness 15 unless told otherwise
        os.environ.setdefault("RAY_worker_niceness", "0")
        ray.init(
            runtime_env={"env_vars": {"PYTHONPATH": path}},
            include_dashboard=False,
            logging_level=logging.WARNING,
        )
    failure: list[BaseException] = []

    def engine() -> None:
        try:
            os.nice(DRIVER_NICENESS)
            run()
        except BaseException as error:  # re-raised in the caller's thread
            failure.append(error)

    # a daemon, so that Ctrl-C in the caller's thread ends the run (which resumes from its
    # last checkpoint)
    thread = threading.Thread(target=engine, name="fedrec-simulation-engine", daemon=True)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]


def _check_noise_plans(settings: FederationSettings, world: World) -> None:
    """A ValueError, before any round, when the devices could not plan record-level DP noise
    for their rounds at the target epsilon (each would fail every round): checked for the
    devices with the fewest and the most examples."""
    privacy = settings.privacy
    if not privacy.enabled:
        return
    rounds = settings.planned_participations
    try:
        if privacy.distributed:
            plan_step(privacy, rounds)
        else:
            counts = {len(world.examples(p, settings.local)) for p in range(settings.devices)}
            for count in {min(counts), max(counts)}:
                plan_round(count, settings.local, privacy, rounds)
    except ValueError as err:
        reason = str(err).rstrip(".")
        raise ValueError(
            f"devices cannot plan DP noise for {rounds} rounds at epsilon "
            f"{privacy.target_epsilon:g} (delta {privacy.delta:g}): {reason}; ask for fewer "
            "rounds or a larger budget"
        ) from None


def simulate(settings: FederationSettings, cpus_per_device: int = 1) -> dict[str, Any]:
    """Run the federation ``settings`` describes (resuming from its checkpoint, if any)."""
    out = Path(settings.out)
    done = check_run_folder(out, settings)  # fail early on a folder the run cannot resume
    world = federation_world(settings)  # and on bad data; warm the caches
    if 0 < done < settings.rounds:  # devices will train on from their stores
        _check_device_stores(out, world)
    _check_noise_plans(settings, world)  # and when devices cannot plan their noise
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    _run_beside_devices(
        lambda: run_simulation(
            server_app=make_server_app(settings),
            client_app=make_client_app(settings),
            num_supernodes=settings.devices,
            backend_config={"client_resources": {"num_cpus": cpus_per_device, "num_gpus": 0.0}},
        )
    )
    summary_file = out / SUMMARY
    if not summary_file.exists():
        raise RuntimeError(f"the federation ended without writing {summary_file}; see the log")
    result: dict[str, Any] = read_json(summary_file)
    return result


def _check_device_stores(out: Path, world: World) -> None:
    """A ValueError when a device that has spent privacy budget in the run in ``out`` (it is
    in ``budgets.json``) has lost its store: a new one would start its ledger, and its
    budget, from zero."""
    for partition, epsilon in load_budgets(out).items():
        if not partition.isdigit() or int(partition) >= len(world.device_users):
            continue  # a Flower node id, from runs before budgets were kept by partition
        user_id = world.split.dataset.user_ids[world.user_of(int(partition))]
        store = device_folder(out, user_id) / STORE_FILE
        if not store.exists():
            raise ValueError(
                f"{store} is missing, but device {partition} (user {user_id}) has spent "
                f"epsilon {epsilon:.2f} in this run: a new store would restart its privacy "
                "budget from zero; restore the store, or start the run in another folder"
            )
