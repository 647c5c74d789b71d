"""The Flower ClientApp: one device's private training round, and its evaluation.

The device trains the global weights (the parts the federation trains) on its own examples with
DP-SGD and replies with their new values, its example count and the epsilon it has spent (and
its training loss, which no noise covers, only without DP). Example counts are
treated as public, as Opacus treats a data set's size. Its texts, events and interest vector
never enter the reply. Its privacy ledger (every round's epsilon and the parameters behind it)
lives in its encrypted store, so the spent budget carries over between rounds and restarts, and
the device refuses a round that would take it past its budget.

To evaluate, the device ranks the catalog for itself with the global weights and replies with
only the metrics of its held-out item (HR@10, nDCG@10, MRR), which the server averages. No
noise covers them: under DP it evaluates only where the run config allows it.
Asked which device it is (a query message), it answers with its partition id alone, so the
server can sample devices by it (with the run's seed, or under user-level DP secretly).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import Mod

from fedrec.client.frozen_cache import FrozenCache
from fedrec.client.secure_aggregation import secure_aggregation_mod
from fedrec.client.store import EncryptedStore, StoreNotFoundError
from fedrec.shared.evaluation.harness import rank_users
from fedrec.shared.evaluation.metrics import point_estimates
from fedrec.shared.federated.distributed import gradient_share, plan_step
from fedrec.shared.federated.examples import DeviceExamples
from fedrec.shared.federated.ledger import LedgerEntry, PrivacyLedger, epsilon_of
from fedrec.shared.federated.local import PrivacyConfig, RoundPlan, plan_round, train_local
from fedrec.shared.federated.records import (
    FROZEN_DIGEST_KEY,
    FROZEN_RECORD,
    arrays_digest,
    record_arrays,
)
from fedrec.shared.federated.settings import FederationSettings
from fedrec.shared.model.network import Recommender, split_state
from fedrec.simulations.canaries import make_canaries, plant
from fedrec.simulations.keys import device_key
from fedrec.simulations.world import World, federation_world

#: The device's privacy ledger in its encrypted store (``fedrec.shared.federated.ledger``).
LEDGER_RECORD = "privacy/ledger"

logger = logging.getLogger(__name__)


def make_client_app(
    settings: FederationSettings | None = None, mods: list[Mod] | None = None
) -> ClientApp:
    """A ClientApp for ``settings``, or for the run config of each run when None."""
    app = ClientApp(mods=[*(mods or []), secure_aggregation_mod])

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        run = settings or FederationSettings.from_run_config(context.run_config)
        partition = device_partition(context, run)
        return Message(content=train_device(run, partition, msg.content), reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        run = settings or FederationSettings.from_run_config(context.run_config)
        partition = device_partition(context, run)
        return Message(content=evaluate_device(run, partition, msg.content), reply_to=msg)

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        """Which device this is (its partition id), so that the server can sample devices by
        it; nothing else."""
        run = settings or FederationSettings.from_run_config(context.run_config)
        device = MetricRecord({"device": device_partition(context, run)})
        return Message(content=RecordDict({"metrics": device}), reply_to=msg)

    return app


def device_partition(context: Context, settings: FederationSettings) -> int:
    """The device's partition id from its node config (``partition-id``): an integer in
    [0, devices), else a ValueError that says so."""
    partition = context.node_config.get("partition-id")
    if not (isinstance(partition, int) and not isinstance(partition, bool)) or not (
        0 <= partition < settings.devices
    ):
        raise ValueError(
            f"node config partition-id must be an integer in [0, {settings.devices}), "
            f"got {partition!r}"
        )
    return partition


def _global_network(
    settings: FederationSettings, content: RecordDict, cache: FrozenCache
) -> Recommender:
    """The global weights: the parts the federation trains (``arrays``) and, when it trains
    only some, the frozen rest (``_frozen_parts``); a ValueError when the message lacks them
    or they are not this network's finite float weights."""
    if "arrays" not in content.array_records:
        raise ValueError("the message holds no global weights (no 'arrays' record)")
    trained = record_arrays(content.array_records["arrays"])
    frozen, carried = _frozen_parts(content, cache)
    state: dict[str, torch.Tensor] = {}
    for name, value in [*trained.items(), *frozen.items()]:
        if name in state:
            raise ValueError(f"the message sends weight {name!r} twice")
        if value.dtype.kind != "f" or not np.isfinite(value).all():
            raise ValueError(f"the message's weight {name!r} is not finite floats")
        state[name] = torch.tensor(value)
    network = Recommender(settings.model)
    try:
        network.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f"the message's weights are not this run's network: {err}") from None
    if carried:
        cache.save(frozen)
    return network


def _frozen_parts(content: RecordDict, cache: FrozenCache) -> tuple[dict[str, np.ndarray], bool]:
    """The frozen weights a request names, and whether the device should keep them: those it
    carries (to keep when it names their digest, which they must match), else the device's
    copy with the digest it names (``cache``); none when it names none. A ValueError when the
    carried weights are not those the digest names, or the device has no copy of them (the
    server then sends them with its next request)."""
    config = content.config_records.get("config")
    digest = None if config is None else config.get(FROZEN_DIGEST_KEY)
    if digest is not None and not isinstance(digest, str):
        raise ValueError(f"{FROZEN_DIGEST_KEY} must be a string, got {digest!r}")
    if FROZEN_RECORD in content.array_records:
        frozen = record_arrays(content.array_records[FROZEN_RECORD])
        if digest is not None and arrays_digest(frozen) != digest:
            raise ValueError("the frozen weights sent are not those their digest names")
        return frozen, digest is not None
    if digest is None:
        return {}, False
    kept = cache.load(digest)
    if kept is None:
        raise ValueError(
            f"the request sends no frozen weights and this device holds none with digest "
            f"{digest[:16]}...: the server sends them with its next request"
        )
    return kept, False


def train_device(settings: FederationSettings, partition: int, content: RecordDict) -> RecordDict:
    """One round of device ``partition``: the reply's records. Under DP the device refuses
    (a reply without arrays, ``budget-refused`` 1) when the round would take it past its
    budget, and says in every reply whether it can afford another (``budget-exhausted``)."""
    world = federation_world(settings)
    user_id = world.split.dataset.user_ids[world.user_of(partition)]
    network = _global_network(settings, content, _frozen_cache(settings, user_id))
    config = content.config_records.get("config")
    server_round = None if config is None else config.get("server-round")
    if not isinstance(server_round, int) or isinstance(server_round, bool) or server_round < 1:
        raise ValueError(f"server-round must be an integer >= 1, got {server_round!r}")
    store = _device_store(settings, user_id)
    ledger = _ledger(store)
    privacy = settings.privacy
    examples = world.examples(partition, settings.local)
    if settings.canaries:
        canaries = make_canaries(
            world.split.num_items, settings.devices, settings.canaries, settings.seed
        )
        examples = plant(
            examples, canaries, partition, settings.canary_repeats, settings.local.max_examples
        )
    if privacy.distributed:
        plan = plan_step(privacy, settings.planned_participations)
    else:
        plan = plan_round(len(examples), settings.local, privacy, settings.planned_participations)
    if privacy.enabled and not _affordable(ledger, plan, privacy):
        logger.info("device %d: round %d would exceed its budget; refused", partition, server_round)
        refusal = {"num-examples": 0, "epsilon": ledger.spent, "device-weight": 1}
        flags = {"budget-refused": 1, "budget-exhausted": 1}
        return RecordDict({"metrics": MetricRecord({**refusal, **flags})})
    seed = settings.seed * 1_000_003 + server_round * 1009 + partition
    num_examples, loss, epsilon, mechanism = _train(
        settings, world, network, examples, ledger, plan, seed
    )
    exhausted = False
    if epsilon is not None and mechanism.noise_multiplier is not None:
        entry = LedgerEntry(
            round=server_round,
            epsilon=epsilon,
            delta=privacy.delta,
            accountant=privacy.accountant,
            noise_multiplier=mechanism.noise_multiplier,
            sample_rate=mechanism.sample_rate,
            steps=mechanism.steps,
            max_grad_norm=privacy.max_grad_norm,
        )
        ledger = ledger.with_entry(entry)
        store.put_json(LEDGER_RECORD, ledger.to_json())
        exhausted = not _affordable(ledger, plan, privacy)
    # the loss is computed from the device's examples without noise: sent only without DP
    unnoised = {} if settings.dp else {"train-loss": loss}
    metrics = MetricRecord(
        {
            "num-examples": num_examples,
            **unnoised,
            "epsilon": -1.0 if epsilon is None else epsilon,
            "budget-exhausted": int(exhausted),
            "device-weight": 1,  # equal weights under user-level DP
        }
    )
    trained, _ = split_state(network, settings.local.trained)
    return RecordDict({"arrays": ArrayRecord(trained), "metrics": metrics})


def _train(
    settings: FederationSettings,
    world: World,
    network: Recommender,
    examples: DeviceExamples,
    ledger: PrivacyLedger,
    plan: RoundPlan,
    seed: int,
) -> tuple[int, float, float | None, RoundPlan]:
    """Train ``network`` in place for the round ``plan`` says: a local DP-SGD round, or the
    device's share of a distributed DP step. Its example count, loss, the epsilon spent after
    it (None without DP), and the mechanism the ledger records."""
    privacy = settings.privacy
    if privacy.distributed:
        assert plan.noise_multiplier is not None  # distributed DP is record-level DP
        share = gradient_share(
            network,
            world.features.table,
            world.split.num_items,
            examples,
            settings.local,
            privacy,
            plan.noise_multiplier,
            settings.noise_shares,
            seed=seed,
        )
        count, loss, ran = share.num_examples, share.loss, plan
    else:
        # the round's own accounting is the ledger's below, not Opacus' running figure: its
        # loader runs int(1 / q) steps an epoch (one fewer than planned for some batch counts)
        # and its accountant takes the sampling rate from that count, a little above the one
        # used; so Opacus is not given the device's history
        result = train_local(
            network,
            world.features.table,
            world.split.num_items,
            examples,
            settings.local,
            privacy,
            plan=plan,
            seed=seed,
        )
        count, loss = result.num_examples, result.loss
        ran = RoundPlan(plan.batch_size, result.sample_rate, result.steps, result.noise_multiplier)
    if ran.noise_multiplier is None:
        return count, loss, None, ran
    mechanism = (ran.noise_multiplier, ran.sample_rate, ran.steps)
    history = [*ledger.history(privacy.accountant), mechanism]
    return count, loss, epsilon_of(privacy.accountant, history, privacy.delta), ran


def _ledger(store: EncryptedStore) -> PrivacyLedger:
    saved = store.get_json(LEDGER_RECORD)
    return PrivacyLedger() if saved is None else PrivacyLedger.from_json(saved)


def _affordable(ledger: PrivacyLedger, plan: RoundPlan, privacy: PrivacyConfig) -> bool:
    """Whether one more round as ``plan`` keeps the device within its budget."""
    if plan.noise_multiplier is None:
        return True
    mechanism = (plan.noise_multiplier, plan.sample_rate, plan.steps)
    after = epsilon_of(
        privacy.accountant, [*ledger.history(privacy.accountant), mechanism], privacy.delta
    )
    return after <= privacy.target_epsilon * (1 + 1e-9)


def evaluate_device(
    settings: FederationSettings, partition: int, content: RecordDict
) -> RecordDict:
    """Device ``partition`` ranks the catalog with the global weights; the reply holds only
    the metrics of its held-out item (as one example). No noise covers them, so under DP at
    either level the device refuses unless the run config says ``evaluate-outside-dp``."""
    if settings.dp and not settings.evaluate_outside_dp:
        raise PermissionError(
            f"device {partition} does not evaluate under DP: its held-out item's metrics would "
            "leave it without noise (set evaluate-outside-dp = true to allow it)"
        )
    world = federation_world(settings)
    position = world.position_of(partition)
    cache = _frozen_cache(settings, world.split.dataset.user_ids[world.user_of(partition)])
    scorer = world.recommender(_global_network(settings, content, cache), "device")
    ranks, top = rank_users(scorer, world.split, np.array([position]))
    metrics = point_estimates(ranks, top, world.split.num_items)
    del metrics["coverage@10"]  # a catalog-wide figure, meaningless for one device
    weights = {"num-examples": 1, "device-weight": 1}  # one example, one device
    return RecordDict({"metrics": MetricRecord({**metrics, **weights})})


def device_folder(out: Path, user_id: str) -> Path:
    """Where the simulated device of ``user_id`` keeps its store in run folder ``out``."""
    return out / "devices" / user_id


def _frozen_cache(settings: FederationSettings, user_id: str) -> FrozenCache:
    return FrozenCache(device_folder(Path(settings.out), user_id))


def _device_store(settings: FederationSettings, user_id: str) -> EncryptedStore:
    folder = device_folder(Path(settings.out), user_id)
    key = device_key(Path(settings.out), user_id)
    try:
        return EncryptedStore(folder, key)
    except StoreNotFoundError:
        return EncryptedStore(folder, key, create=True)


app = make_client_app()
