"""A real federation through Flower's simulation engine: Opacus on every device, the server's
validation, checkpoints and bundles, and what devices send (never their texts or interests)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pickle
import shutil
import statistics
from pathlib import Path
from typing import Any

import dp_accounting
import numpy as np
import pytest
import ray
import torch
from dp_accounting import rdp
from flwr.app import Array, Context, Message
from flwr.clientapp.typing import ClientAppCallable, Mod
from flwr.common import bytes_to_ndarray
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.serverapp.strategy import FedAdam
from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

from fedrec.client.app import LEDGER_RECORD
from fedrec.client.frozen_cache import FROZEN_FILE
from fedrec.client.secure_aggregation import unpack_request
from fedrec.client.store import STORE_FILE, EncryptedStore
from fedrec.server.checkpoint import (
    CHECKPOINT,
    SERVER_ADAM,
    SERVER_MOMENTUM,
    checked_moments,
    load_checkpoint,
    resume,
)
from fedrec.server.federation import (
    OUT_OF_BUDGET,
    USER_NOISE,
    check_run_folder,
    inner_strategy,
    make_strategy,
    recorded_user_noises,
    trim_metrics,
)
from fedrec.server.privacy_report import PLOTS, privacy_report
from fedrec.server.strategy import seeded_sample
from fedrec.shared.bundle import load_private_key, verify_bundle
from fedrec.shared.evaluation.harness import rank_users
from fedrec.shared.evaluation.metrics import point_estimates
from fedrec.shared.federated.ledger import PrivacyLedger, epsilon_of
from fedrec.shared.federated.local import RDP_ORDERS, LocalConfig, PrivacyConfig, plan_noise
from fedrec.shared.federated.records import FROZEN_DIGEST_KEY, FROZEN_RECORD, arrays_digest
from fedrec.shared.federated.settings import FederationSettings
from fedrec.shared.federated.user_level import UserPrivacyConfig
from fedrec.shared.model.network import (
    ModelConfig,
    Recommender,
    initial_network,
    split_state,
    trained_names,
)
from fedrec.shared.model.training import NetworkRecommender
from fedrec.simulations import run as simulation_run
from fedrec.simulations.keys import SECRET_FILE, device_key
from fedrec.simulations.world import federation_world, load_world

DEVICES = 3
#: What the devices of this federation train: the item tower and the user model's output
#: layers; the LSTM and its input layers stay as initialised.
TRAINED = "items,users.recency,users.project"
Run = tuple[FederationSettings, dict[str, Any], Path]


class Capture:
    """A client mod that keeps the bytes of every reply a device sends, training and evaluation
    (in the run folder, as the devices run in other processes), fails device 0 in round 1 and
    poisons device 1's update with NaN in round 2."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def __call__(self, msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        partition = int(context.node_config["partition-id"])
        server_round = int(msg.content.config_records["config"]["server-round"])
        if partition == 0 and server_round == 1:
            raise RuntimeError("device 0 went offline")
        reply = call_next(msg, context)
        if partition == 1 and server_round == 2 and "arrays" in reply.content.array_records:
            arrays = reply.content.array_records["arrays"]
            name = next(iter(arrays))
            arrays[name] = Array(np.full(arrays[name].shape, np.nan, dtype=np.float32))
        content = reply.content
        sent = [
            (name, array.data)
            for record in content.array_records.values()
            for name, array in record.items()
        ]
        sent += [(name, repr(dict(r))) for name, r in content.metric_records.items()]
        sent += [(name, repr(dict(r))) for name, r in content.config_records.items()]
        self.folder.mkdir(exist_ok=True)
        path = self.folder / f"{partition}-round{server_round}-{msg.metadata.message_type}.pkl"
        path.write_bytes(pickle.dumps(sent))
        return reply


class NoisesRecorded:
    """A client mod that notes, as each training request arrives, how many user-level noise
    multipliers the server has recorded (``user-noise.json``)."""

    def __init__(self, out: Path) -> None:
        self.out = out

    def __call__(self, msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        if msg.metadata.message_type == "train":
            server_round = int(msg.content.config_records["config"]["server-round"])
            partition = int(context.node_config["partition-id"])
            recorded = len(json.loads((self.out / USER_NOISE).read_text()))
            folder = self.out / "noises-recorded"
            folder.mkdir(exist_ok=True)
            (folder / f"{partition}-round{server_round}").write_text(str(recorded))
        return call_next(msg, context)


class RecordFrozen:
    """A client mod that notes, for every training and evaluation request, whether it carried
    the frozen weights (``carried``) or only named their digest (``named``)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def __call__(self, msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        if msg.metadata.message_type not in ("train", "evaluate"):
            return call_next(msg, context)
        partition = int(context.node_config["partition-id"])
        server_round = int(msg.content.config_records["config"]["server-round"])
        carried = FROZEN_RECORD in msg.content.array_records
        named = FROZEN_DIGEST_KEY in msg.content.config_records["config"]
        self.folder.mkdir(exist_ok=True)
        path = self.folder / f"{partition}-round{server_round}-{msg.metadata.message_type}"
        path.write_text(f"{'carried' if carried else ''}{' named' if named else ''}".strip())
        return call_next(msg, context)


def small_federation(out: Path, **overrides: Any) -> FederationSettings:
    """A federation of ``DEVICES`` devices on the demo data with a tiny network that trains
    ``TRAINED``, writing to ``out``; ``overrides`` set the rest (or replace those)."""
    tiny = {
        "data": "demo",
        "devices": DEVICES,
        "out": str(out),
        "model": ModelConfig(hidden_dim=16, pool_window=5),
        "local": LocalConfig(
            batch_size=8, negatives=10, max_examples=24, context=5, trained=TRAINED
        ),
    }
    return FederationSettings(**{**tiny, **overrides})


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    out = tmp_path_factory.mktemp("federation")
    settings = small_federation(
        out, rounds=2, user_privacy=UserPrivacyConfig(enabled=True), evaluate_outside_dp=True
    )
    with pytest.MonkeyPatch.context() as patch:
        mods = (
            RecordFrozen(out / "frozen"),
            Capture(out / "captured"),
            RecordPriority(out / "priorities"),
            NoisesRecorded(out),
        )
        wrap_devices(patch, *mods)
        summary = simulation_run.simulate(settings)
    return settings, summary, out


@pytest.fixture(scope="module")
def distributed_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """The same federation under distributed DP: each round one DP-SGD step, to which each
    device adds its share of the noise, stepped by the server with momentum."""
    out = tmp_path_factory.mktemp("distributed")
    privacy = PrivacyConfig(distributed=True, sample_rate=0.5)
    settings = small_federation(out, rounds=2, privacy=privacy, server_momentum=0.9)
    with pytest.MonkeyPatch.context() as patch:
        wrap_devices(patch, Capture(out / "captured"))
        summary = simulation_run.simulate(settings)
    return settings, summary, out


def wrap_devices(patch: pytest.MonkeyPatch, *mods: Mod) -> None:
    """Wrap every device's ClientApp in the simulations that follow with ``mods``."""
    original = simulation_run.make_client_app
    patch.setattr(simulation_run, "make_client_app", lambda s: original(s, mods=list(mods)))


class RecordPriority:
    """A client mod that writes the scheduling priority (niceness) a device runs at."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def __call__(self, msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        self.folder.mkdir(exist_ok=True)
        partition = int(context.node_config["partition-id"])
        (self.folder / str(partition)).write_text(str(os.getpriority(os.PRIO_PROCESS, 0)))
        return call_next(msg, context)


def test_rounds_are_reported_with_failed_and_poisoned_devices_left_out(run: Run) -> None:
    _, summary, out = run
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [line["round"] for line in lines] == [1, 2]
    assert lines[0]["failed"] == 1 and lines[0]["dropped"] == 0  # offline device, round 1
    assert lines[1]["failed"] == 0 and lines[1]["dropped"] == 1  # NaN update, round 2
    # under user-level DP a failed or dropped device counts as a zero update, and every round
    # is applied: no round is skipped because of what single devices sent
    assert [line["applied"] for line in lines] == [True, True]
    for line in lines:
        assert 0 < line["epsilon"]["min"] <= line["epsilon"]["max"] <= 8.0
        assert line["bytes_up"] > 0 and line["bytes_down"] > 0
        assert set(line["metrics"]) >= {"hr@10", "ndcg@10"}
    assert summary["epsilon_max"] == lines[-1]["epsilon"]["max"]
    assert summary["metrics"]["hr@10"] == lines[-1]["metrics"]["hr@10"]
    assert summary["users"] == 600 and summary["bytes_up_per_device_round"] > 0


def test_devices_run_at_the_callers_priority(run: Run) -> None:
    # Ray would run them at niceness 15, below the simulation engine's polling
    _, _, out = run
    recorded = {int(path.read_text()) for path in (out / "priorities").iterdir()}
    assert recorded == {os.getpriority(os.PRIO_PROCESS, 0)}


def test_the_simulation_engine_runs_below_the_devices_priority() -> None:
    caller = os.getpriority(os.PRIO_PROCESS, 0)
    seen: list[int] = []
    try:
        simulation_run._run_beside_devices(lambda: seen.append(os.getpriority(os.PRIO_PROCESS, 0)))
        with pytest.raises(RuntimeError, match="engine failed"):
            simulation_run._run_beside_devices(_fail)
    finally:
        ray.shutdown()
    assert seen == [min(19, caller + simulation_run.DRIVER_NICENESS)]
    assert os.getpriority(os.PRIO_PROCESS, 0) == caller  # only the engine's thread


def _fail() -> None:
    raise RuntimeError("engine failed")


def test_devices_send_only_the_trained_parts_and_the_rest_stays_as_initialised(
    run: Run,
) -> None:
    settings, _, out = run
    torch.manual_seed(settings.seed)
    initial = Recommender(settings.model).state_dict()
    trained = set(trained_names(Recommender(settings.model), TRAINED))
    assert trained and len(trained) < len(initial)
    for path in (out / "captured").glob("*-train.pkl"):
        sent = {name for name, _ in pickle.loads(path.read_bytes()) if name != "metrics"}
        assert sent == trained, path.name
    with np.load(out / CHECKPOINT) as saved:
        for name, value in initial.items():
            unchanged = np.array_equal(saved[name], value.numpy())
            assert unchanged == (name not in trained), name
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    trained_bytes = sum(initial[name].numel() * 4 for name in trained)
    assert lines[-1]["bytes_up"] == trained_bytes * lines[-1]["devices"]


def test_devices_are_sent_the_frozen_parts_until_they_answer_a_request_that_carried_them(
    run: Run,
) -> None:
    settings, _, out = run
    seen = {path.name: path.read_text() for path in (out / "frozen").iterdir()}
    # device 0 failed every request of round 1 (offline), so round 2 carries them to it again
    assert seen == {
        **{f"{p}-round1-train": "carried named" for p in range(DEVICES)},
        "0-round1-evaluate": "carried named",
        **{f"{p}-round1-evaluate": "named" for p in (1, 2)},
        "0-round2-train": "carried named",
        **{f"{p}-round2-train": "named" for p in (1, 2)},
        **{f"{p}-round2-evaluate": "named" for p in range(DEVICES)},
    }
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    _, frozen = split_state(initial_network(settings.model, settings.seed), TRAINED)
    frozen_bytes = sum(value.numel() * 4 for value in frozen.values())
    assert lines[0]["bytes_down"] - lines[1]["bytes_down"] == 2 * frozen_bytes
    world = load_world(settings.data, settings.devices)
    for partition in range(DEVICES):
        user_id = world.split.dataset.user_ids[world.user_of(partition)]
        with np.load(out / "devices" / user_id / FROZEN_FILE) as kept:
            assert set(kept.files) == set(frozen)
            for name, value in frozen.items():
                np.testing.assert_array_equal(kept[name], value.numpy())


@pytest.mark.parametrize("kind", ["run", "distributed_run"])
def test_devices_keep_their_privacy_ledger_in_their_encrypted_store(
    kind: str, request: pytest.FixtureRequest
) -> None:
    settings, _, out = request.getfixturevalue(kind)
    world = load_world(settings.data, settings.devices)
    assert len(list((out / "devices").iterdir())) == DEVICES
    for partition in range(DEVICES):
        user_id = world.split.dataset.user_ids[world.user_of(partition)]
        folder = out / "devices" / user_id
        assert b"history" not in (folder / "store.fedrec").read_bytes()  # sealed
        saved = EncryptedStore(folder, device_key(out, user_id)).get_json(LEDGER_RECORD)
        ledger = PrivacyLedger.from_json(saved)
        rounds_trained = [2] if partition == 0 else [1, 2]  # device 0 was offline in round 1
        assert [e.round for e in ledger.entries] == rounds_trained
        for i, entry in enumerate(ledger.entries):
            assert entry.accountant == "rdp" and entry.delta == 1e-5 and entry.max_grad_norm == 1.0
            assert entry.steps >= 1 and 0 < entry.sample_rate <= 1 and entry.noise_multiplier > 0
            independent = epsilon_of("rdp", [e.mechanism for e in ledger.entries[: i + 1]], 1e-5)
            assert entry.epsilon == pytest.approx(independent, rel=1e-9)
            if settings.privacy.distributed:  # one step of the whole noise at the public rate
                noise = plan_noise(settings.privacy, 0.5, settings.planned_participations)
                assert entry.mechanism == (noise, 0.5, 1)
        assert 0 < ledger.spent <= 8.0


def test_bundles_are_signed_and_track_the_item_tower(run: Run) -> None:
    settings, _, out = run
    public = load_private_key(out / "server.key").public_key()
    bundles = [
        verify_bundle((out / "bundles" / f"items-{r}.bundle").read_bytes(), public) for r in (1, 2)
    ]
    assert [b.version for b in bundles] == [1, 2] and [b.round for b in bundles] == [1, 2]
    assert {b.model for b in bundles} == {"fedrec-demo-384d"}  # what devices pin: no round
    world = load_world(settings.data, settings.devices)
    network = Recommender(settings.model)
    load_checkpoint(out, network)
    with torch.no_grad():
        expected = network.items(world.features.items).numpy()
    np.testing.assert_allclose(bundles[1].dense(), expected, atol=1e-6)


@pytest.mark.parametrize("kind", ["run", "distributed_run"])
def test_no_device_sends_its_texts_or_interest_vector(
    kind: str, request: pytest.FixtureRequest
) -> None:
    settings, _, out = request.getfixturevalue(kind)
    world = load_world(settings.data, settings.devices)
    network = Recommender(settings.model)
    load_checkpoint(out, network)
    texts = world.split.dataset.texts
    captured = sorted((out / "captured").glob("*.pkl"))
    kinds = [path.stem.rsplit("-", 1)[1] for path in captured]
    # each device said once which it is (for seeded sampling); device 0 failed in round 1;
    # under DP devices evaluate only where the run config allows it (the first run)
    evaluated = ["evaluate"] if settings.device_evaluation else []
    assert sorted(set(kinds)) == [*evaluated, "query", "train"], kinds
    assert kinds.count("train") == DEVICES * 2 - 1, kinds
    assert kinds.count("evaluate") == len(evaluated) * (DEVICES * 2 - 1), kinds
    assert kinds.count("query") == DEVICES, kinds
    for partition in range(DEVICES):
        user = world.user_of(partition)
        sent = [
            value if isinstance(value, bytes) else value.encode()
            for path in captured
            if path.name.startswith(f"{partition}-")
            for _, value in pickle.loads(path.read_bytes())
        ]
        blob = b"".join(sent)
        assert b"train-loss" not in blob  # under DP no noise covers the loss: not sent
        own = [t for t, u in zip(texts.texts, texts.users, strict=True) if u == user]
        for text in own:
            for start in range(0, max(1, len(text) - 12), 6):
                assert text[start : start + 12].encode() not in blob
        span = world.sequences.user(user)
        vectors = network.items(world.features.table[world.sequences.rows[span]])[None]
        types = torch.from_numpy(world.sequences.types[span])[None]
        with torch.no_grad():
            interest = network.users(vectors, types)[0, -1].numpy()
        for dtype in (np.float32, np.float64, np.float16):
            assert interest.astype(dtype)[:4].tobytes() not in blob
        for value in sent:
            if len(value) % 4 == 0 and len(value) >= 4 * interest.size:
                floats = np.frombuffer(value, dtype=np.float32)
                rows = floats[: len(floats) // interest.size * interest.size].reshape(
                    -1, interest.size
                )
                assert not np.isclose(rows, interest, atol=1e-4).all(axis=1).any()


def test_distributed_rounds_are_applied_and_the_servers_momentum_is_resumed(
    distributed_run: Run, tmp_path: Path
) -> None:
    """Both rounds were applied with the failed and the poisoned device left out (two usable
    updates, the two noise shares the step needs); the server's momentum is checkpointed, and
    a run resumed with a larger budget reads it back and steps on; with one update left, a
    round is not applied."""
    settings, summary, out = distributed_run
    lines = [json.loads(text) for text in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(line["applied"], line["failed"], line["dropped"]) for line in lines] == [
        (True, 1, 0),
        (True, 0, 1),
    ]
    assert settings.noise_shares == 2 and summary["epsilon_max"] <= 8.0
    # under DP no device is asked to evaluate: its metrics would leave it without noise
    assert all(line["devices_evaluated"] == 0 for line in lines)
    assert all(line["device_metrics"] is None for line in lines)
    trained = trained_names(Recommender(settings.model), TRAINED)
    saved = _checkpoint(out)
    assert sorted(k for k in saved if k.startswith(SERVER_MOMENTUM)) == sorted(
        SERVER_MOMENTUM + name for name in trained
    )
    _, _, moments = resume(out, Recommender(settings.model))
    assert set(moments) == {"velocity"}
    # the report gives, beside the guarantee of the sum, what single replies would reveal
    record = privacy_report(out).record_level
    assert record is not None and record["distributed"] is not None
    shares = record["distributed"]
    sigma = plan_noise(settings.privacy, 0.5, settings.planned_participations)
    assert (shares["noise_multiplier"], shares["noise_shares"]) == (sigma, 2)
    accountant = rdp.RdpAccountant(orders=list(RDP_ORDERS))  # Google's, not Opacus'
    event = dp_accounting.GaussianDpEvent(sigma / math.sqrt(2))
    accountant.compose(dp_accounting.PoissonSampledDpEvent(0.5, event), 2)
    single = accountant.get_epsilon(1e-5)
    assert shares["epsilon_single_replies"] == pytest.approx(single, rel=1e-6)
    assert single > record["epsilon_max"] + 1  # a single reply carries a share of the noise
    text = (out / "privacy.md").read_text()
    assert "in 2 shares" in text and f"{single:.4g} over 2 rounds" in text
    assert shares["secure_aggregation"] is False and "(off in this run)" in text
    assert shares["rounding_delta_log10"] is None and "rounding" not in text
    copy = tmp_path / "resumed"
    shutil.copytree(out, copy)
    budget = dataclasses.replace(settings.privacy, target_epsilon=100.0)  # room for round 3
    simulation_run.simulate(dataclasses.replace(settings, out=str(copy), rounds=3, privacy=budget))
    lines = [json.loads(text) for text in (copy / "metrics.jsonl").read_text().splitlines()]
    assert [line["round"] for line in lines] == [1, 2, 3] and lines[-1]["applied"]
    # the report says the run resumed with another budget and more rounds
    changes = privacy_report(copy).settings_changes
    expected = {"rounds": [2, 3], "dp-target-epsilon": [settings.privacy.target_epsilon, 100.0]}
    assert changes == [{"from_round": 3, "changed": expected}]
    assert (
        "Resumed from round 3 with rounds 2 to 3, dp-target-epsilon 8.0 to 100.0"
        in (copy / "privacy.md").read_text()
    )
    with pytest.raises(ValueError, match="server optimiser state"):
        checked_moments(moments, {"m", "v"}, set(trained))
    # on its own budget, which devices 1 and 2 have spent: device 0's update alone is fewer
    # than the 2 noise shares a step needs, so round 3 is not applied. A server restarted in a
    # run planned for 3 rounds (the saved set's plan) withholds the round from them, and so
    # asks no device at all (device 0 keeps its budget); without the saved set, they are asked
    # again and refuse
    for forgot in (False, True):
        short = tmp_path / f"short-{forgot}"
        shutil.copytree(out, short)
        saved = json.loads((short / OUT_OF_BUDGET).read_text())
        assert saved["devices"] == [1, 2]
        (short / OUT_OF_BUDGET).write_text(json.dumps({**saved, "planned": 3}))
        if forgot:
            (short / OUT_OF_BUDGET).unlink()
        simulation_run.simulate(dataclasses.replace(settings, out=str(short), rounds=3))
        last = json.loads((short / "metrics.jsonl").read_text().splitlines()[-1])
        asked, refused, spent = (DEVICES, 2, DEVICES) if forgot else (0, 0, 2)
        assert (last["round"], last["devices"], last["refused"]) == (3, asked, refused)
        assert (last["applied"], last["out_of_budget"]) == (False, spent)


def test_devices_evaluate_the_global_model_as_the_harness_does(run: Run) -> None:
    settings, _, out = run
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [line["devices_evaluated"] for line in lines] == [DEVICES - 1, DEVICES]
    world = load_world(settings.data, settings.devices)
    network = Recommender(settings.model)
    load_checkpoint(out, network)
    scorer = NetworkRecommender(network.eval())
    scorer.use(world.split, world.sequences, world.features)
    positions = np.array([world.position_of(p) for p in range(DEVICES)])
    expected = point_estimates(*rank_users(scorer, world.split, positions), world.split.num_items)
    reported = lines[-1]["device_metrics"]
    assert set(reported) == {"hr@10", "ndcg@10", "mrr"}, reported
    for name in reported:
        assert reported[name] == pytest.approx(expected[name], abs=1e-12), name
    assert reported["mrr"] > 0


def test_each_rounds_user_level_noise_is_recorded_before_the_round_sends_anything(
    run: Run,
) -> None:
    """A crash after a round's weights left the server must not lose its noise: the server
    records it before its first request, and resuming plans around every round begun."""
    settings, _, out = run
    seen = {path.name: int(path.read_text()) for path in (out / "noises-recorded").iterdir()}
    assert seen and all(count == int(name.split("round")[1]) for name, count in seen.items())
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    noises = json.loads((out / USER_NOISE).read_text())
    assert noises == [line["user_noise"] for line in lines] == recorded_user_noises(out)
    copy = Path(str(out) + "-crashed")
    shutil.copytree(out, copy)
    (copy / USER_NOISE).write_text(json.dumps([*noises, noises[-1]]))  # round 3 cut short
    assert recorded_user_noises(copy) == [*noises, noises[-1]]
    (copy / USER_NOISE).write_text('{"round": 1}')
    with pytest.raises(ValueError, match=r"user-noise\.json: not a list of noise multipliers"):
        recorded_user_noises(copy)
    (copy / USER_NOISE).write_text(json.dumps(noises))
    assert check_run_folder(copy, settings) == len(lines)
    # a run begun before user-noise.json drew its devices from the public seed: not resumed
    (copy / USER_NOISE).unlink()
    with pytest.raises(ValueError, match=r"user-level DP run begun by an older fedrec"):
        check_run_folder(copy, settings)
    shutil.rmtree(copy)


def test_the_privacy_report_matches_an_independent_computation(run: Run) -> None:
    settings, _, out = run
    privacy_report(out)
    report = json.loads((out / "privacy.json").read_text())
    world = load_world(settings.data, settings.devices)
    independent = []
    for partition in range(DEVICES):
        user_id = world.split.dataset.user_ids[world.user_of(partition)]
        store = EncryptedStore(out / "devices" / user_id, device_key(out, user_id))
        ledger = PrivacyLedger.from_json(store.get_json(LEDGER_RECORD))
        # the mechanism each entry records is the one the settings give, not only the ledger's
        # word: Poisson sampling at one over the batches, every batch of each epoch, and the
        # noise that spends the budget in the planned rounds (also by Google's accountant)
        examples = len(world.examples(partition, settings.local))
        batches = math.ceil(examples / min(settings.local.batch_size, examples))
        sigma = ledger.entries[0].noise_multiplier
        planned = rdp.RdpAccountant(orders=list(RDP_ORDERS))
        planned.compose(
            dp_accounting.PoissonSampledDpEvent(1 / batches, dp_accounting.GaussianDpEvent(sigma)),
            settings.local.epochs * batches * settings.planned_participations,
        )
        assert 7.9 < planned.get_epsilon(1e-5) <= 8.0
        for entry in ledger.entries:
            assert entry.mechanism == (sigma, 1 / batches, settings.local.epochs * batches)
        accountant = rdp.RdpAccountant(orders=list(RDP_ORDERS))  # Google's, not Opacus'
        for sigma, q, steps in (e.mechanism for e in ledger.entries):
            event = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma))
            accountant.compose(event, steps)
        independent.append(accountant.get_epsilon(1e-5))
    record = report["record_level"]
    assert record["epsilon_max"] == pytest.approx(max(independent), rel=1e-6)
    assert record["epsilon_median"] == pytest.approx(statistics.median(independent), rel=1e-6)
    assert (record["delta"], record["accountant"], record["budget"]) == (1e-5, "rdp", 8.0)
    # user-level: every device every round (q = 1), so each round is the Gaussian mechanism
    # with sigma / 2 (replace-one); Opacus' RDP analysis, not the code under test
    user = report["user_level"]
    assert len(user["noise_multipliers"]) == 2 and user["sampled_per_round"] == DEVICES
    orders = list(RDP_ORDERS)
    total = sum(
        compute_rdp(q=1.0, noise_multiplier=s / 2, steps=1, orders=orders)
        for s in user["noise_multipliers"]
    )
    expected, _ = get_privacy_spent(orders=orders, rdp=total, delta=1e-5)
    assert user["epsilon"] == pytest.approx(expected, rel=1e-6)
    assert 7.0 < user["epsilon"] <= 8.0  # the planned noise spends the budget
    for name in PLOTS:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    text = (out / "privacy.md").read_text()
    assert f"max {record['epsilon_max']:.4f}" in text and f"{user['epsilon']:.4f}" in text


def test_a_restarted_server_resumes_and_devices_out_of_budget_refuse(run: Run) -> None:
    """Run to 4 rounds: devices 1 and 2 spent their budget in rounds 1-2 (planned for 2), so
    they refuse round 3 (devices now plan for 4 rounds, so the server asks them again) and the
    server withholds round 4 from them; device 0 trains on."""
    settings, _, out = run
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert lines[1]["out_of_budget"] == 2  # devices 1 and 2 said so in round 2
    saved = json.loads((out / OUT_OF_BUDGET).read_text())
    assert saved == {"budget": settings.privacy.target_epsilon, "planned": 2, "devices": [1, 2]}
    # the operator extends the user-level budget, which the first 2 rounds spent
    extended = UserPrivacyConfig(enabled=True, target_epsilon=16.0)
    longer = dataclasses.replace(settings, rounds=4, user_privacy=extended)
    simulation_run.simulate(longer)
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert lines[1]["user_epsilon"] <= 8.0 < lines[3]["user_epsilon"] <= 16.0
    assert [line["round"] for line in lines] == [1, 2, 3, 4]
    assert lines[2]["failed"] == 0 and lines[2]["dropped"] == 0
    assert (lines[2]["devices"], lines[2]["refused"]) == (DEVICES, 2)  # under a new plan
    assert (lines[3]["devices"], lines[3]["refused"]) == (1, 0)  # and then only device 0
    assert lines[3]["out_of_budget"] == DEVICES  # device 0 too, after round 4
    world = load_world(settings.data, settings.devices)
    budgets: dict[str, float] = {}
    for partition, rounds in ((0, [2, 3, 4]), (1, [1, 2]), (2, [1, 2])):
        user_id = world.split.dataset.user_ids[world.user_of(partition)]
        store = EncryptedStore(out / "devices" / user_id, device_key(out, user_id))
        ledger = PrivacyLedger.from_json(store.get_json(LEDGER_RECORD))
        assert [e.round for e in ledger.entries] == rounds
        assert ledger.spent <= 8.0 * (1 + 1e-9)
        budgets[str(partition)] = ledger.spent
    # one budget per device across the restart (Flower's node ids change with it)
    assert json.loads((out / "budgets.json").read_text()) == pytest.approx(budgets)


class FailMost:
    """A client mod: in round 1 every device but the last fails its training."""

    def __call__(self, msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        partition = int(context.node_config["partition-id"])
        server_round = int(msg.content.config_records["config"]["server-round"])
        if msg.metadata.message_type == "train" and server_round == 1 and partition < DEVICES - 1:
            raise RuntimeError(f"device {partition} went offline")
        return call_next(msg, context)


def test_a_round_with_too_few_usable_updates_leaves_the_model_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = small_federation(tmp_path, rounds=1, fraction_evaluate=0.0)
    wrap_devices(monkeypatch, FailMost())
    simulation_run.simulate(settings)
    (line,) = [json.loads(text) for text in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert (line["devices"], line["failed"], line["applied"]) == (DEVICES, DEVICES - 1, False)
    torch.manual_seed(settings.seed)
    initial = Recommender(settings.model).state_dict()
    with np.load(tmp_path / CHECKPOINT) as saved:
        for name, value in initial.items():
            assert np.array_equal(saved[name], value.numpy()), name


class Received:
    """A client mod that keeps the arrays each device is sent to train from, by round."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def __call__(self, msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        if msg.metadata.message_type == "train":
            server_round = int(msg.content.config_records["config"]["server-round"])
            arrays = msg.content.array_records["arrays"]
            self.folder.mkdir(exist_ok=True)
            path = self.folder / f"{context.node_config['partition-id']}-round{server_round}.npz"
            np.savez(path, **{name: array.numpy() for name, array in arrays.items()})
        return call_next(msg, context)


def test_the_server_publishes_a_moving_average_and_devices_train_the_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under ``average_decay`` the checkpoint, the bundles and federated evaluation carry the
    moving average; devices train from the weights themselves, also after a restart."""
    settings = small_federation(tmp_path, rounds=1, average_decay=0.5, evaluate_outside_dp=True)
    received = tmp_path / "received"
    wrap_devices(monkeypatch, Received(received))
    simulation_run.simulate(settings)
    first = _checkpoint(tmp_path)
    simulation_run.simulate(dataclasses.replace(settings, rounds=2))  # a restarted server
    second = _checkpoint(tmp_path)
    torch.manual_seed(settings.seed)
    initial = {k: v.numpy() for k, v in Recommender(settings.model).state_dict().items()}
    trained = set(trained_names(Recommender(settings.model), TRAINED))
    assert {k.removeprefix("training/") for k in first if k.startswith("training/")} == trained
    keep = (0.0, 1 / 3)  # round 1: w1 (never the initial weights); round 2: (w1 / 2 + w2) / 1.5
    for name, value in initial.items():
        if name not in trained:
            assert np.array_equal(first[name], value) and np.array_equal(second[name], value)
            continue
        assert not np.allclose(first[f"training/{name}"], value), name
        mixed = keep[0] * value + (1 - keep[0]) * first[f"training/{name}"]
        np.testing.assert_allclose(first[name], mixed, rtol=1e-5, atol=1e-7)
        mixed = keep[1] * first[name] + (1 - keep[1]) * second[f"training/{name}"]
        np.testing.assert_allclose(second[name], mixed, rtol=1e-5, atol=1e-7)
        for partition in range(DEVICES):
            with np.load(received / f"{partition}-round2.npz") as sent:
                assert np.array_equal(sent[name], first[f"training/{name}"]), name
    network = Recommender(settings.model)
    network.load_state_dict({k: torch.from_numpy(v) for k, v in second.items() if "/" not in k})
    world = load_world(settings.data, settings.devices)
    public = load_private_key(tmp_path / "server.key").public_key()
    bundle = verify_bundle((tmp_path / "bundles" / "items-2.bundle").read_bytes(), public)
    with torch.no_grad():
        expected = network.items(world.features.items).numpy()
    np.testing.assert_allclose(bundle.dense(), expected, atol=1e-6)
    scorer = NetworkRecommender(network.eval())
    scorer.use(world.split, world.sequences, world.features)
    positions = np.array([world.position_of(p) for p in range(DEVICES)])
    evaluated = point_estimates(*rank_users(scorer, world.split, positions), world.split.num_items)
    line = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert line["device_metrics"]["mrr"] == pytest.approx(evaluated["mrr"], abs=1e-12)


def test_a_centred_network_reaches_the_devices_the_bundles_and_the_checkpoint(
    tmp_path: Path,
) -> None:
    """With ``center_features`` the server centres the network on the catalog's features;
    the centre is a frozen weight that every device is sent (a device builds its network
    uncentred and could not train without it) and the bundles use."""
    base = small_federation(tmp_path, rounds=1, fraction_evaluate=0.0)
    settings = dataclasses.replace(
        base, model=dataclasses.replace(base.model, center_features=True)
    )
    simulation_run.simulate(settings)
    line = json.loads((tmp_path / "metrics.jsonl").read_text())
    assert (line["devices"], line["failed"], line["applied"]) == (DEVICES, 0, True)
    world = load_world(settings.data, settings.devices)
    saved = _checkpoint(tmp_path)
    catalog_mean = world.features.items.double().mean(dim=0).float().numpy()
    np.testing.assert_allclose(saved["items.center"], catalog_mean, atol=1e-7)
    network = Recommender(settings.model)
    network.load_state_dict({k: torch.from_numpy(v) for k, v in saved.items() if "/" not in k})
    public = load_private_key(tmp_path / "server.key").public_key()
    bundle = verify_bundle((tmp_path / "bundles" / "items-1.bundle").read_bytes(), public)
    with torch.no_grad():
        expected = network.items(world.features.items).numpy()
    np.testing.assert_allclose(bundle.dense(), expected, atol=1e-6)


def test_the_run_seed_picks_the_devices_of_each_round(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Devices are sampled by partition id with the run's seed, so a run with the same seed
    trains the same devices in every round, whatever node ids Flower gives them."""
    settings = small_federation(tmp_path, rounds=3, fraction_train=0.5, seed=5)
    received = tmp_path / "received"
    wrap_devices(monkeypatch, Received(received))
    simulation_run.simulate(settings)
    partitions = {p: p for p in range(DEVICES)}
    for server_round in (1, 2, 3):
        trained = {
            int(path.name.split("-")[0]) for path in received.glob(f"*-round{server_round}.npz")
        }
        expected = seeded_sample(partitions, settings.sampled_devices, 5, server_round, "train")
        assert trained == set(expected), server_round


def _checkpoint(out: Path) -> dict[str, np.ndarray]:
    with np.load(out / CHECKPOINT) as saved:
        return {k: saved[k] for k in saved.files if k != "__round__"}


def test_fedadam_steps_the_global_model_in_every_round(tmp_path: Path) -> None:
    """Server-side Adam (FedAdam) over devices that train with local SGD: every round's
    updates are aggregated, and the global weights stay float32 (Flower's FedAdam computes in
    float64; against a float64 reference every later update was dropped)."""
    settings = small_federation(
        tmp_path,
        rounds=3,
        strategy="fedadam",
        server_tau=1e-4,
        privacy=dataclasses.replace(FederationSettings().privacy, enabled=False),
    )
    local = dataclasses.replace(settings.local, optimizer="sgd", learning_rate=0.1)
    settings = dataclasses.replace(settings, local=local)
    simulation_run.simulate(settings)
    lines = [json.loads(text) for text in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(line["applied"], line["dropped"]) for line in lines] == [(True, 0)] * 3
    assert all(line["loss"] > 0 for line in lines)  # without DP devices report their loss
    torch.manual_seed(settings.seed)
    initial = Recommender(settings.model).state_dict()
    saved = _checkpoint(tmp_path)
    trained = trained_names(Recommender(settings.model), TRAINED)
    assert {saved[name].dtype for name in initial} == {np.dtype(np.float32)}
    assert [n for n in trained if not np.array_equal(saved[n], initial[n].numpy())] == trained
    # the server's Adam moments are checkpointed, so that a restarted server steps on
    for kind in ("m", "v"):
        assert sorted(k for k in saved if k.startswith(f"{SERVER_ADAM}{kind}/")) == sorted(
            f"{SERVER_ADAM}{kind}/{name}" for name in trained
        )
    adam = inner_strategy(make_strategy(settings), FedAdam)
    assert adam is not None
    resumed = Recommender(settings.model)
    done, _, moments = resume(tmp_path, resumed)
    assert done == 3 and set(moments) == {"m", "v"}
    for name in trained:
        assert np.array_equal(moments["m"][name], saved[f"{SERVER_ADAM}m/{name}"])
        assert np.array_equal(resumed.state_dict()[name].numpy(), saved[name])
    fedavg = make_strategy(dataclasses.replace(settings, strategy="fedavg"))
    assert inner_strategy(fedavg, FedAdam) is None
    # resumed with other trained parts, the moments do not fit: an error that says so
    fewer = dataclasses.replace(settings.local, trained="items")
    with pytest.raises(ValueError, match=f"local-trained: '{TRAINED}' -> 'items'"):
        simulation_run.simulate(dataclasses.replace(settings, rounds=4, local=fewer))
    with pytest.raises(ValueError, match="server optimiser state"):
        items = set(trained_names(Recommender(settings.model), "items"))
        checked_moments(moments, {"m", "v"}, items)


def _damaged_copy(out: Path, folder: Path, damage: Any) -> Path:
    shutil.copytree(out, folder)
    damage(folder)
    return folder


def _store_of_device_0(folder: Path) -> Path:
    world = load_world("demo", DEVICES)
    return folder / "devices" / world.split.dataset.user_ids[world.user_of(0)] / STORE_FILE


def test_metrics_lines_the_checkpoint_does_not_hold_are_dropped_on_resume(
    tmp_path: Path,
) -> None:
    """A round's metrics line is written before its checkpoint: a crash between the two leaves
    a line for a round that runs again, a crash while writing it a line cut short. Resuming
    drops both; a damaged line before the last is kept for the report to name. A round 1 that
    stopped before its checkpoint may start over."""
    path = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"round": r}) for r in (1, 2, 3)]
    path.write_text("\n".join(lines) + '\n{"round": 4, "wall')
    trim_metrics(tmp_path, 2)
    assert path.read_text() == lines[0] + "\n" + lines[1] + "\n"
    damaged = "not json\n" + lines[2] + "\n"
    path.write_text(damaged)
    trim_metrics(tmp_path, 1)
    assert path.read_text() == damaged
    settings = small_federation(tmp_path)
    path.write_text(lines[0] + '\n{"round": 1, "wall')
    assert check_run_folder(tmp_path, settings) == 0
    path.write_text(lines[0] + "\n" + lines[1] + "\n")
    with pytest.raises(ValueError, match="holds an earlier run"):
        check_run_folder(tmp_path, settings)


def test_a_run_folder_the_run_cannot_go_on_from_is_refused_before_anything_runs(
    run: Run, tmp_path: Path
) -> None:
    settings, _, out = run
    done = len((out / "metrics.jsonl").read_text().splitlines())
    # user-level budget for one more round, whatever an earlier test extended the run to
    settings = dataclasses.replace(
        settings, user_privacy=dataclasses.replace(settings.user_privacy, target_epsilon=100.0)
    )
    cases: dict[str, tuple[Any, str]] = {
        "no-checkpoint": (
            lambda f: (f / CHECKPOINT).unlink(),
            r"holds an earlier run \(metrics.jsonl, summary.json\) but not its checkpoint.npz",
        ),
        "truncated-checkpoint": (
            lambda f: (f / CHECKPOINT).write_bytes((f / CHECKPOINT).read_bytes()[:1000]),
            r"checkpoint.npz is damaged \(BadZipFile",
        ),
        "no-key": (lambda f: (f / SECRET_FILE).unlink(), r"simulation.key is missing"),
        "run-config-not-an-object": (
            lambda f: (f / "run-config.json").write_text("[1, 2]\n"),
            r"run-config.json: expected a JSON object",
        ),
        "budgets-not-an-object": (
            lambda f: (f / "budgets.json").write_text("[]\n"),
            r"budgets.json \(device ids to the epsilon spent\) must be a JSON object",
        ),
        "out-of-budget-not-partitions": (
            lambda f: (f / OUT_OF_BUDGET).write_text(
                '{"budget": 8, "planned": 2, "devices": [1, 99]}'
            ),
            r"out-of-budget.json: devices must be a list of partition ids, got \[1, 99\]",
        ),
        "lost-store": (
            lambda f: _store_of_device_0(f).unlink(),
            r"store.fedrec is missing, but device 0 .* has spent epsilon \d\.\d\d in this run",
        ),
    }
    for name, (damage, message) in cases.items():
        folder = _damaged_copy(out, tmp_path / name, damage)
        metrics = (folder / "metrics.jsonl").read_bytes()
        with pytest.raises(ValueError, match=message):
            simulation_run.simulate(dataclasses.replace(settings, out=str(folder), rounds=done + 1))
        assert (folder / "metrics.jsonl").read_bytes() == metrics, name  # nothing lost
    folder = _damaged_copy(out, tmp_path / "fewer-rounds", lambda f: None)
    fewer = dataclasses.replace(settings, out=str(folder), rounds=done - 1)
    with pytest.raises(ValueError, match=f"has done {done} rounds, more than the {done - 1}"):
        simulation_run.simulate(fewer)
    smaller = dataclasses.replace(
        settings,
        out=str(folder),
        rounds=done + 1,
        model=dataclasses.replace(settings.model, hidden_dim=8),
    )
    with pytest.raises(ValueError, match=r"other settings \(model-hidden-dim: 16 -> 8\)"):
        simulation_run.simulate(smaller)
    # a round 1 that stopped before its checkpoint left ledgers: not resumed with other settings
    crashed = _damaged_copy(
        out,
        tmp_path / "crashed-in-round-1",
        lambda f: [(f / n).unlink() for n in (CHECKPOINT, "metrics.jsonl", "summary.json")],
    )
    with pytest.raises(ValueError, match=r"other settings \(model-hidden-dim: 16 -> 8\)"):
        simulation_run.simulate(dataclasses.replace(smaller, out=str(crashed)))
    # a resume refused for its budget records nothing of the settings it was asked with
    spent = _damaged_copy(out, tmp_path / "spent", lambda f: None)
    kept = {p.name: p.read_bytes() for p in spent.iterdir() if p.is_file()}
    poorer = dataclasses.replace(settings.user_privacy, target_epsilon=0.5)
    with pytest.raises(ValueError, match="leave no user-level budget"):
        simulation_run.simulate(
            dataclasses.replace(settings, out=str(spent), rounds=done + 1, user_privacy=poorer)
        )
    assert {p.name: p.read_bytes() for p in spent.iterdir() if p.is_file()} == kept
    (folder / "run-config.json").unlink()  # a folder from before run configs were kept
    with pytest.raises(ValueError, match=r"checkpoint.npz does not hold this run's network"):
        simulation_run.simulate(smaller)


#: An audit's figures as ``fedrec.simulations.audit`` writes them into a run folder.
AUDIT_ENTRY = {
    "auc": 0.9,
    "planted_mean_rank": 3,
    "control_mean_rank": 9,
    "canaries": 2,
    "repeats": 4,
}


def test_the_privacy_report_names_what_is_wrong_with_a_damaged_run(
    run: Run, tmp_path: Path
) -> None:
    _, _, out = run

    def first_round_hr(folder: Path) -> None:
        lines = (folder / "metrics.jsonl").read_text().splitlines()
        line = json.loads(lines[0])
        line["metrics"]["hr@10"] = "x"
        (folder / "metrics.jsonl").write_text("\n".join([json.dumps(line), *lines[1:]]) + "\n")

    def summary_ci(folder: Path) -> None:
        summary = json.loads((folder / "summary.json").read_text())
        summary["ci95"]["hr@10"] = []
        (folder / "summary.json").write_text(json.dumps(summary))

    cases: dict[str, tuple[Any, str]] = {
        "no-budgets": (
            lambda f: (f / "budgets.json").unlink(),
            r"a run with record-level DP, but its budgets.json is missing or empty",
        ),
        "metrics-line": (first_round_hr, r"metrics.jsonl round 1 hr@10 must be a number, got 'x'"),
        "summary-ci": (summary_ci, r"summary.json ci95 hr@10 must be \[low, high\], got \[\]"),
        "audit": (
            lambda f: (f / "audit.json").write_text('{"x": 1}'),
            r"audit.json auc must be a number, got None",
        ),
        "audit-untrained": (
            lambda f: (f / "audit.json").write_text(
                json.dumps({**AUDIT_ENTRY, "untrained_auc": None})
            ),
            r"audit.json untrained_auc must be a number, got None",
        ),
    }
    for name, (damage, message) in cases.items():
        folder = _damaged_copy(out, tmp_path / name, damage)
        (folder / "privacy.json").unlink(missing_ok=True)
        with pytest.raises(ValueError, match=message):
            privacy_report(folder)
        assert not (folder / "privacy.json").exists(), name


# Secure aggregation through Flower's SecAgg+: the server gets the federation's aggregate and
# never a device's update, and rounds survive devices that drop out mid-protocol.

SECURE_DEVICES = 5


class SecureCapture:
    """A client mod, outside the device's SecAgg+ mod: keeps what every training reply
    carries, notes whether each request to train carried the frozen weights or named their
    digest, and makes device 0 drop out before it sends its masked update in round 1 and
    device 1 after it, before unmasking, in round 2."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def __call__(self, msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        partition = int(context.node_config["partition-id"])
        configs = msg.content.config_records.get(RECORD_KEY_CONFIGS)
        stage = None if configs is None else configs[Key.STAGE]
        group = msg.metadata.group_id
        server_round = int(group) if group.isdigit() else 0
        if stage == Stage.COLLECT_MASKED_VECTORS:
            request = unpack_request(msg.content)
            noted = f"{'carried' if request.frozen else ''} {request.frozen_digest or ''}"
            (self.folder / "requests").mkdir(parents=True, exist_ok=True)
            (self.folder / "requests" / f"{partition}-round{server_round}").write_text(noted)
        if (partition, server_round, stage) in (
            (0, 1, Stage.COLLECT_MASKED_VECTORS),
            (1, 2, Stage.UNMASK),
        ):
            raise RuntimeError(f"device {partition} went offline in stage {stage}")
        reply = call_next(msg, context)
        content = reply.content
        sent = {
            "arrays": {
                f"{r}/{n}": a.numpy()
                for r, rec in content.array_records.items()
                for n, a in rec.items()
            },
            "metrics": {n: dict(r) for n, r in content.metric_records.items()},
            "configs": {n: dict(r) for n, r in content.config_records.items()},
        }
        self.folder.mkdir(exist_ok=True)
        path = self.folder / f"{partition}-round{server_round}-{stage}.pkl"
        path.write_bytes(pickle.dumps(sent))
        return reply


def secure_federation(out: Path, **overrides: Any) -> FederationSettings:
    """``small_federation`` of ``SECURE_DEVICES`` devices, each sharing its SecAgg+ keys among
    three."""
    shares = {"devices": SECURE_DEVICES, "secagg_shares": 3, "secagg_threshold": 2}
    return small_federation(out, **{**shares, **overrides})


def _checkpoint_weights(out: Path) -> dict[str, np.ndarray]:
    with np.load(out / CHECKPOINT) as saved:
        return {k: saved[k] for k in saved.files if saved[k].dtype.kind == "f"}


def test_the_secure_aggregate_is_the_plain_federations(tmp_path: Path) -> None:
    """Without DP a round's training is deterministic: the weights after a secure round match
    the plain round's up to SecAgg+'s quantization (one step of 16 / 2^22 per device, weighted:
    under 4e-6 here), while training moved them by far more."""
    off = PrivacyConfig(enabled=False)
    plain = secure_federation(tmp_path / "plain", rounds=1, privacy=off)
    secure = secure_federation(tmp_path / "secure", rounds=1, privacy=off, secure_aggregation=True)
    for settings in (plain, secure):
        simulation_run.simulate(settings)
    first, second = (
        _checkpoint_weights(tmp_path / "plain"),
        _checkpoint_weights(tmp_path / "secure"),
    )
    world = federation_world(plain)
    network = initial_network(plain.model, plain.seed, world.features.items)
    initial = {k: v.numpy() for k, v in network.state_dict().items()}
    gap = max(float(np.abs(first[k] - second[k]).max()) for k in first)
    moved = max(float(np.abs(first[k] - initial[k]).max()) for k in first)
    assert 0 < gap < 2e-5
    assert moved > 100 * gap
    summaries = [
        json.loads((tmp_path / n / "summary.json").read_text()) for n in ("plain", "secure")
    ]
    # the masked update travels as uint32, 4 bytes a weight as the plain float32 one, plus
    # the keys and shares (a few hundred bytes each)
    plain_up, secure_up = (s["bytes_up_per_device_round"] for s in summaries)
    assert plain_up < secure_up < plain_up + 4096


def test_secure_aggregation_needs_as_many_devices_a_round_as_shares(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="a round samples 2"):
        secure_federation(tmp_path, fraction_train=0.4, secure_aggregation=True)


@pytest.fixture(scope="module")
def secure_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[FederationSettings, Path]:
    """Distributed DP through SecAgg+, two rounds, with devices dropping out (``SecureCapture``)."""
    out = tmp_path_factory.mktemp("secure")
    privacy = PrivacyConfig(distributed=True, sample_rate=0.5)
    settings = secure_federation(
        out, rounds=2, privacy=privacy, server_momentum=0.9, secure_aggregation=True
    )
    with pytest.MonkeyPatch.context() as patch:
        wrap_devices(patch, SecureCapture(out / "captured"))
        simulation_run.simulate(settings)
    return settings, out


def test_no_device_sends_its_update_in_the_clear(
    secure_run: tuple[FederationSettings, Path],
) -> None:
    """Every training reply of a secure round carries no arrays: the device's update leaves
    only as SecAgg+'s masked integers, beside its keys, shares and metrics."""
    settings, out = secure_run
    network = initial_network(
        settings.model, settings.seed, federation_world(settings).features.items
    )
    names = set(trained_names(network, settings.local.trained))
    trained = sum(p.numel() for n, p in network.named_parameters() if n in names)
    stages = [p for p in (out / "captured").glob("*.pkl") if not p.stem.endswith("None")]
    captured = [pickle.loads(p.read_bytes()) for p in stages]
    # four stages a round, less device 0's last two in round 1 and device 1's last in round 2
    assert len(captured) == 4 * 2 * SECURE_DEVICES - 3
    masked = 0
    for sent in captured:
        assert all(value.size == 0 for value in sent["arrays"].values())
        configs = sent["configs"][RECORD_KEY_CONFIGS]
        if Key.MASKED_PARAMETERS in configs:
            masked += 1
            vectors = [bytes_to_ndarray(b) for b in configs[Key.MASKED_PARAMETERS]]
            assert all(v.dtype == np.uint32 for v in vectors)  # packed: 4 bytes a value
            assert sum(v.size for v in vectors) == trained + 1  # the update and its weight
            assert set(sent["configs"]["fitres.metrics"]) >= {"num-examples", "epsilon"}
    assert masked == 2 * SECURE_DEVICES - 1  # device 0 left round 1 before sending its update


def test_secure_rounds_send_the_frozen_parts_to_a_device_until_it_answered_with_them(
    secure_run: tuple[FederationSettings, Path],
) -> None:
    """As without secure aggregation: device 0 left round 1 before its update was summed, so
    only it is sent the frozen weights again in round 2; the others train from their copies
    (and round 2 sums all five: ``test_rounds_survive_devices_that_drop_out``)."""
    settings, out = secure_run
    network = initial_network(
        settings.model, settings.seed, federation_world(settings).features.items
    )
    _, frozen = split_state(network, settings.local.trained)
    digest = arrays_digest({name: value.numpy() for name, value in frozen.items()})
    seen = {p.name: p.read_text() for p in (out / "captured" / "requests").iterdir()}
    assert seen == {
        **{f"{p}-round1": f"carried {digest}" for p in range(SECURE_DEVICES)},
        "0-round2": f"carried {digest}",
        **{f"{p}-round2": f" {digest}" for p in range(1, SECURE_DEVICES)},
    }


def test_rounds_survive_devices_that_drop_out(secure_run: tuple[FederationSettings, Path]) -> None:
    """Device 0 left round 1 before its masked update: the four others were summed. Device 1
    left round 2 after its update: SecAgg+ rebuilt its mask and all five were summed. Both
    rounds moved the model and every device that trained accounted the round."""
    settings, out = secure_run
    rounds = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(r["devices"], r["failed"], r["applied"]) for r in rounds] == [
        (5, 1, True),
        (5, 0, True),
    ]
    assert all(r["epsilon"]["max"] > 0 for r in rounds)
    assert settings.noise_shares <= 4  # so that round 1's four shares carry a whole noise
    record = privacy_report(out).record_level
    assert record is not None and record["distributed"]["secure_aggregation"] is True
    text = (out / "privacy.md").read_text()
    assert "receives the replies masked (SecAgg+)" in text
    # the rounding's addition to delta: noise far above SecAgg+'s levels, clipping far away
    rounding = record["distributed"]["rounding_delta_log10"]
    assert rounding < -1000 and f"adds at most 10^{math.floor(rounding) + 1} to delta" in text


class StagesSeen:
    """A client mod that notes every SecAgg+ stage each device is asked, and makes device 0
    leave round 1 before it sends its masked update."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def __call__(self, msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        configs = msg.content.config_records.get(RECORD_KEY_CONFIGS)
        if configs is None:
            return call_next(msg, context)
        partition, stage = int(context.node_config["partition-id"]), configs[Key.STAGE]
        self.folder.mkdir(exist_ok=True)
        (self.folder / f"{partition}-round{msg.metadata.group_id}-{stage}").touch()
        if (partition, msg.metadata.group_id, stage) == (0, "1", Stage.COLLECT_MASKED_VECTORS):
            raise RuntimeError("device 0 went offline")
        return call_next(msg, context)


def test_a_sum_of_fewer_updates_than_noise_shares_is_never_unmasked(tmp_path: Path) -> None:
    """Under distributed DP with every one of the five devices' noise shares needed, device 0
    leaves before its masked update is summed: the sum of the four others would carry less
    noise than the devices account, so the server stops before asking any device for the
    shares that unmask it, and the model stays as it was."""
    privacy = PrivacyConfig(distributed=True, sample_rate=0.5)
    settings = secure_federation(
        tmp_path, rounds=1, privacy=privacy, min_update_share=1.0, secure_aggregation=True
    )
    assert settings.noise_shares == SECURE_DEVICES
    with pytest.MonkeyPatch.context() as patch:
        wrap_devices(patch, StagesSeen(tmp_path / "stages"))
        simulation_run.simulate(settings)
    stages = {p.name.rsplit("-", 1)[1] for p in (tmp_path / "stages").iterdir()}
    assert Stage.COLLECT_MASKED_VECTORS in stages and Stage.UNMASK not in stages
    (line,) = (json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines())
    assert (line["devices"], line["failed"], line["applied"]) == (5, 5, False)
    world = federation_world(settings)
    initial = initial_network(settings.model, settings.seed, world.features.items).state_dict()
    for name, value in _checkpoint_weights(tmp_path).items():
        np.testing.assert_array_equal(value, initial[name].numpy())


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"user_privacy": UserPrivacyConfig(enabled=True)}, "user-level DP must clip"),
        ({"secagg_shares": 4}, "odd integer >= 3"),
        ({"secagg_threshold": 1}, "above half"),
        ({"secagg_threshold": 3}, "above half"),
        ({"devices": 3000, "fraction_train": 0.5}, "1500 devices a round would overflow it"),
    ],
)
def test_secure_aggregation_settings_that_cannot_work_are_refused(
    tmp_path: Path, overrides: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        secure_federation(tmp_path, secure_aggregation=True, **overrides)
