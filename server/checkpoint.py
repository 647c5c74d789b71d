"""A run folder's checkpoint: the weights, the server's Adam moments and the round they are
from (``checkpoint.npz``), and the settings the run goes on with (``run-config.json``), which a
resumed run must keep outside ``RESUMABLE_KEYS``."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from flwr.app import ArrayRecord
from flwr.serverapp.strategy import FedAdam

from fedrec.server.strategy import array_record
from fedrec.shared.federated.records import record_arrays
from fedrec.shared.federated.settings import RESUMABLE_KEYS, FederationSettings, resume_conflicts
from fedrec.shared.files import read_json, write_atomic, write_json
from fedrec.shared.model.network import Recommender
from fedrec.simulations.keys import SECRET_FILE

CHECKPOINT = "checkpoint.npz"
#: The prefix of the weights devices train from in a checkpoint, where they differ from the
#: published ones (under a moving average).
TRAINING = "training/"
#: The prefix of the server's Adam moments in a checkpoint (``strategy = "fedadam"``), so that
#: a restarted server steps on from them: ``server-adam/m/NAME`` and ``server-adam/v/NAME``.
SERVER_ADAM = "server-adam/"
#: The prefix of the server's momentum (``server-momentum`` > 0): ``server-momentum/NAME``,
#: read back as the moments' kind ``velocity``.
SERVER_MOMENTUM = "server-momentum/"
RUN_CONFIG = "run-config.json"
#: One line for each time a run resumed with other values of ``RESUMABLE_KEYS`` (the budget, the
#: rounds, ...): the first round they apply to and each key's values before and after.
SETTINGS_CHANGES = "settings-changes.jsonl"


def record_settings(out: Path, settings: FederationSettings, done: int) -> None:
    """Keep ``settings`` in the run folder, for ``check_resumable`` when the run resumes; when
    it resumes after round ``done`` with other values of keys it may change (its folder aside),
    append them to ``SETTINGS_CHANGES`` first."""
    now = settings.to_run_config()
    if done and (out / RUN_CONFIG).exists():
        before = read_json(out / RUN_CONFIG)
        changed = {
            key: [before.get(key), value]
            for key, value in now.items()
            if key != "out" and before.get(key) != value
        }
        if changed:
            line = json.dumps({"from_round": done + 1, "changed": changed})
            with (out / SETTINGS_CHANGES).open("a", encoding="utf-8") as handle:
                handle.write(line + "\n")
    write_json(out / RUN_CONFIG, now, indent=1)


def load_checkpoint(out: Path, network: Recommender) -> int:
    """Load the run's published weights (the global model, or its moving average) from its
    checkpoint into ``network``; the last round it holds (0 without one)."""
    return resume(out, network)[0]


Moments = dict[str, dict[str, npt.NDArray[np.generic]]]


def resume(out: Path, network: Recommender) -> tuple[int, ArrayRecord | None, Moments]:
    """The checkpoint's last round (0 without one), with its published weights loaded into
    ``network``; the weights devices train from when they differ (``training/`` keys: under a
    moving average), else None; and the server's Adam moments by kind (``m``, ``v``) or its
    momentum (``velocity``), empty when the server keeps neither."""
    path = out / CHECKPOINT
    if not path.exists():
        return 0, None, {}
    done, arrays = _read_checkpoint(path)
    training = {k.removeprefix(TRAINING): v for k, v in arrays.items() if k.startswith(TRAINING)}
    moments: Moments = {}
    for key, value in arrays.items():
        if key.startswith(SERVER_ADAM):
            kind, _, name = key.removeprefix(SERVER_ADAM).partition("/")
            moments.setdefault(kind, {})[name] = value
        elif key.startswith(SERVER_MOMENTUM):
            moments.setdefault("velocity", {})[key.removeprefix(SERVER_MOMENTUM)] = value
    state = {k: torch.from_numpy(v) for k, v in arrays.items() if "/" not in k}
    try:
        network.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f"{path} does not hold this run's network: {err}") from None
    return done, array_record(training) if training else None, moments


def _read_checkpoint(path: Path) -> tuple[int, dict[str, npt.NDArray[np.generic]]]:
    """The round and arrays of checkpoint ``path``; a ValueError naming it when it is damaged."""
    try:
        with np.load(path, allow_pickle=False) as saved:
            arrays = {k: saved[k] for k in saved.files if k != "__round__"}
            done = int(saved["__round__"])
    except (OSError, EOFError, KeyError, ValueError, TypeError, zipfile.BadZipFile) as err:
        raise ValueError(
            f"{path} is damaged ({type(err).__name__}: {err}): restore it from a backup, or "
            "start the run in another folder"
        ) from None
    if done < 1:
        raise ValueError(f"{path} is damaged: its round is {done}")
    return done, arrays


def check_same_run(out: Path, settings: FederationSettings) -> None:
    """A ValueError when ``settings`` differ from those the run in ``out`` started with
    (``RUN_CONFIG``, when it has one) outside ``RESUMABLE_KEYS``."""
    path = out / RUN_CONFIG
    if not path.exists():
        return
    started = read_json(path)
    if not isinstance(started, dict):
        raise ValueError(f"{path}: expected a JSON object of run-config keys")
    conflicts = resume_conflicts(started, settings)
    if conflicts:
        raise ValueError(
            f"{out} holds a run with other settings ({'; '.join(conflicts)}); a resumed run "
            f"may change only {', '.join(sorted(RESUMABLE_KEYS))}: resume it with its own "
            "settings, or start the new run in another folder"
        )


def check_resumable(out: Path, settings: FederationSettings) -> int:
    """The rounds the run in ``out`` has done (0 without a checkpoint); a ValueError when
    ``settings`` cannot resume it: settings that change what the run started with outside
    ``RESUMABLE_KEYS``, a damaged checkpoint or one of another network, one past
    ``settings.rounds``, or one whose devices' key (``simulation.key``) is gone."""
    if not (out / CHECKPOINT).exists():
        return 0
    check_same_run(out, settings)
    done = resume(out, Recommender(settings.model))[0]
    if done > settings.rounds:
        raise ValueError(
            f"{out} holds a run that has done {done} rounds, more than the {settings.rounds} "
            f"asked: ask for {done} or more to go on with it"
        )
    if not (out / SECRET_FILE).exists():
        raise ValueError(
            f"{out / SECRET_FILE} is missing: without it the devices of the run in {out} "
            "cannot open their stores (and ledgers); restore it, or start the run in another "
            "folder"
        )
    return done


def checked_moments(moments: Moments, kinds: set[str], names: set[str]) -> Moments:
    """The checkpoint's server state, which must hold ``kinds`` (``{"m", "v"}`` for Adam,
    ``{"velocity"}`` for momentum), each of the parts this run trains."""
    if set(moments) != kinds or any(set(m) != names for m in moments.values()):
        found = {kind: sorted(m) for kind, m in moments.items()}
        raise ValueError(
            f"the checkpoint's server optimiser state is {found}, "
            f"but this run's server keeps {sorted(kinds)} of {sorted(names)}"
        )
    return moments


def trained_part(training: ArrayRecord, published: ArrayRecord) -> ArrayRecord:
    """The checkpoint's training weights, which must be the published ones' parts."""
    if set(training) != set(published):
        raise ValueError(
            f"the checkpoint trains {sorted(training)} but this run trains {sorted(published)}"
        )
    return training


def save_checkpoint(
    out: Path,
    network: Recommender,
    training: ArrayRecord | None,
    adam: FedAdam | None,
    server_round: int,
    velocity: dict[str, npt.NDArray[np.generic]] | None = None,
) -> None:
    """The published weights (``network``), the weights devices train from when they differ
    (``training``, under ``training/`` keys), and the server's Adam moments or momentum once
    it has stepped (under ``server-adam/`` or ``server-momentum/``)."""
    arrays = {k: v.detach().numpy() for k, v in network.state_dict().items()}
    if training is not None:
        arrays.update({TRAINING + k: v for k, v in record_arrays(training).items()})
    if adam is not None and adam.m_t and adam.v_t:
        for kind, moment in (("m", adam.m_t), ("v", adam.v_t)):
            arrays.update({f"{SERVER_ADAM}{kind}/{k}": v for k, v in moment.items()})
    arrays.update({SERVER_MOMENTUM + k: v for k, v in (velocity or {}).items()})
    buffer = io.BytesIO()
    np.savez(buffer, __round__=np.array(server_round), **arrays)
    write_atomic(out / CHECKPOINT, buffer.getvalue())
