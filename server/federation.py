"""The server's round loop: sample devices, validate and aggregate their updates, evaluate the
global model on held-out interactions (with the harness, and on devices through federated
evaluation), publish a signed item bundle, checkpoint, report.

It writes to the run folder ``settings.out``: ``metrics.jsonl`` (one line per round),
``summary.json``, ``checkpoint.npz`` and ``run-config.json`` (a restarted server resumes after
the last round in it: ``fedrec.server.checkpoint``), ``bundles/items-<round>.bundle`` and the
signing key ``server.key``.
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import (
    DifferentialPrivacyServerSideFixedClipping,
    FedAdam,
    FedAvg,
    Strategy,
)

from fedrec.server.averaging import average_weight, moving_average
from fedrec.server.checkpoint import (
    CHECKPOINT,
    SETTINGS_CHANGES,
    check_resumable,
    check_same_run,
    checked_moments,
    record_settings,
    resume,
    save_checkpoint,
    trained_part,
)
from fedrec.server.secure_aggregation import Exchange, secure_exchange, secure_workflow
from fedrec.server.strategy import (
    BudgetStrategy,
    FrozenPartsStrategy,
    MomentumStrategy,
    SampledMeanStrategy,
    ScheduledStepStrategy,
    SecretSampling,
    SeededSamplingStrategy,
    ValidatedStrategy,
    array_record,
    record_nbytes,
)
from fedrec.shared.bundle import (
    ItemBundle,
    generate_signing_key,
    load_private_key,
    save_private_key,
    sign_bundle,
)
from fedrec.shared.evaluation.harness import EvaluationConfig, evaluate
from fedrec.shared.federated.records import FROZEN_RECORD, record_arrays, train_metrics
from fedrec.shared.federated.settings import USER_DP_TRAINED, FederationSettings
from fedrec.shared.federated.user_level import (
    plan_user_noise,
    user_level_epsilon,
    user_noise_norm,
)
from fedrec.shared.files import (
    append_line,
    check_output_folder,
    json_number,
    json_object,
    read_json,
    read_json_lines,
    write_atomic,
    write_json,
)
from fedrec.shared.model.network import Recommender, initial_network, split_state
from fedrec.shared.quantization import quantize_int8
from fedrec.simulations.keys import SECRET_FILE, ensure_secret
from fedrec.simulations.world import World, federation_world

logger = logging.getLogger(__name__)

METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
#: The epsilon each device last reported, by its partition id (for the privacy report).
BUDGETS = "budgets.json"
#: Under user-level DP, the noise multiplier of every round begun, written before the round
#: sends anything: a round a crash cut short counts, and so does its run again.
USER_NOISE = "user-noise.json"
#: The devices out of record-level budget (partition ids), with the budget and the rounds each
#: device planned for: a restarted server withholds rounds from them while both stay the same.
OUT_OF_BUDGET = "out-of-budget.json"


@dataclass(frozen=True)
class RoundReport:
    """What one round did, as a line of ``metrics.jsonl``."""

    round: int
    wall_s: float
    devices: int
    failed: int
    dropped: int
    applied: bool
    refused: int
    out_of_budget: int
    loss: float | None
    metrics: dict[str, float]
    device_metrics: dict[str, float] | None
    devices_evaluated: int
    epsilon: dict[str, float] | None
    user_noise: float | None
    user_epsilon: float | None
    bytes_up: int
    bytes_down: int


#: The fields of every line of ``metrics.jsonl``.
ROUND_FIELDS = tuple(field.name for field in fields(RoundReport))


def make_strategy(settings: FederationSettings, user_noise: float | None = None) -> Strategy:
    """FedAvg or FedAdam over the sampled devices, weighted by their example counts; under
    user-level DP, weighted equally and wrapped by Flower's server-side clipping and noise;
    with ``server_momentum`` or distributed DP, wrapped by ``MomentumStrategy``; under a
    server schedule other than ``constant``, wrapped by ``ScheduledStepStrategy``."""
    strategy = _aggregation(settings, user_noise)
    if settings.server_momentum or settings.privacy.distributed:
        strategy = MomentumStrategy(
            strategy, settings.server_learning_rate, settings.server_momentum
        )
    if settings.server_schedule == "constant":
        return strategy
    return ScheduledStepStrategy(strategy, settings.server_schedule, settings.rounds)


def _aggregation(settings: FederationSettings, user_noise: float | None) -> Strategy:
    user_level = settings.user_privacy
    common: dict[str, Any] = {
        "fraction_train": settings.fraction_train,
        "fraction_evaluate": settings.fraction_evaluate if settings.device_evaluation else 0.0,
        "min_train_nodes": settings.sampled_devices,
        "min_evaluate_nodes": max(1, round(settings.fraction_evaluate * settings.devices)),
        "min_available_nodes": settings.devices,
        "weighted_by_key": "device-weight" if user_level.enabled else "num-examples",
    }
    if settings.strategy == "fedadam":
        strategy: Strategy = FedAdam(
            **common, eta=settings.server_learning_rate, tau=settings.server_tau
        )
    else:
        strategy = FedAvg(**common)
    if not user_level.enabled:
        return strategy
    if user_noise is None:
        raise ValueError("user-level DP needs the server's noise multiplier")
    return DifferentialPrivacyServerSideFixedClipping(
        SampledMeanStrategy(strategy, settings.sampled_devices),
        noise_multiplier=user_noise,
        clipping_norm=user_level.clipping_norm,
        num_sampled_clients=settings.sampled_devices,
    )


def run_federation(grid: Grid, settings: FederationSettings) -> dict[str, Any]:
    """Run (or resume) the federation; returns what ``summary.json`` holds."""
    out = Path(settings.out)
    done = check_run_folder(out, settings)
    out.mkdir(parents=True, exist_ok=True)
    record_settings(out, settings, done)
    ensure_secret(out)
    started = time.perf_counter()
    world = federation_world(settings)
    network = initial_network(settings.model, settings.seed, world.features.items)
    done, training, moments = resume(out, network)
    trim_metrics(out, done)
    if done:
        logger.info("resuming after round %d from %s", done, out / CHECKPOINT)
    first = done + 1
    if first == 1:  # of a round 1 that did not finish
        (out / BUDGETS).unlink(missing_ok=True)
        (out / OUT_OF_BUDGET).unlink(missing_ok=True)
        (out / SETTINGS_CHANGES).unlink(missing_ok=True)
    spent = load_budgets(out)
    user_noises = recorded_user_noises(out)
    noise = user_level_noise(settings, user_noises, done)
    published, frozen = (ArrayRecord(s) for s in split_state(network, settings.local.trained))
    arrays = published if training is None else trained_part(training, published)
    if noise is not None:
        _log_user_noise(noise, sum(a.size for a in record_arrays(published).values()), settings)
    validated = ValidatedStrategy(
        make_strategy(settings, noise),
        settings.update_norm_bound,
        settings.usable_update_share,
        settings.local.max_examples,
        train_metrics(settings.dp),
        noise_shares=settings.noise_shares if settings.privacy.distributed else 0,
    )
    adam = inner_strategy(validated, FedAdam)
    if adam is not None and moments:
        checked = checked_moments(moments, {"m", "v"}, set(published))
        adam.m_t, adam.v_t = checked["m"], checked["v"]
    momentum = inner_strategy(validated, MomentumStrategy)
    if momentum is not None and moments:
        momentum.velocity = checked_moments(moments, {"velocity"}, set(published))["velocity"]
    if settings.fraction_evaluate and not settings.device_evaluation:
        logger.info(
            "devices do not evaluate under DP: their metrics would leave them without noise "
            "(evaluate-outside-dp = true asks them anyway)"
        )
    sampling = sampling_strategy(settings, validated)
    strategy = BudgetStrategy(
        FrozenPartsStrategy(sampling, frozen),
        sampling.partitions,
        out_of_budget(out, settings),
    )
    key = _signing_key(out)
    secure = secure_workflow(settings, timeout=3600) if settings.secure_aggregation else None
    result: dict[str, Any] = {}
    for server_round in range(first, settings.rounds + 1):
        if len(strategy.exhausted) >= settings.devices:
            logger.info(
                "every device has spent its privacy budget: stopping before round %d", server_round
            )
            break
        tic = time.perf_counter()
        if noise is not None:  # recorded before anything of the round leaves the server
            user_noises.append(noise)
            write_json(out / USER_NOISE, user_noises)
        messages = list(strategy.configure_train(server_round, arrays, ConfigRecord(), grid))
        if settings.privacy.distributed and len(messages) < settings.noise_shares:
            logger.warning(
                "round %d: %d devices to ask, fewer than the %d noise shares distributed DP "
                "needs in the sum: skipped, asking none",
                server_round,
                len(messages),
                settings.noise_shares,
            )
            messages = []
        if secure is None:
            exchange = plain_exchange(grid, messages)
        else:
            exchange = secure_exchange(grid, secure, server_round, messages)
        replies = exchange.replies
        dropped_before, refused_before = len(validated.dropped), len(strategy.refused)
        aggregated, _ = strategy.aggregate_train(server_round, replies)
        if aggregated is not None:
            arrays = aggregated
        keep = average_weight(settings.average_decay, server_round)
        if keep:
            average = moving_average(record_arrays(published), record_arrays(arrays), keep)
            published = array_record(average)
        else:
            published = arrays
        if keep or aggregated is not None:
            state = {**frozen.to_torch_state_dict(), **published.to_torch_state_dict()}
            network.load_state_dict(state)
        evaluation = evaluate(
            world.recommender(network, "federated"), world.split, EvaluationConfig(resamples=200)
        )
        asked = list(strategy.configure_evaluate(server_round, published, ConfigRecord(), grid))
        answers = list(grid.send_and_receive(asked, timeout=3600)) if asked else []
        device_metrics = strategy.aggregate_evaluate(server_round, answers)
        if server_round % settings.bundle_every == 0 or server_round == settings.rounds:
            _publish(out, network, world, settings, server_round, key)
        report = RoundReport(
            round=server_round,
            wall_s=time.perf_counter() - tic,
            devices=len(messages),
            failed=sum(r.has_error() for r in replies),
            dropped=len(validated.dropped) - dropped_before,
            applied=aggregated is not None,
            refused=len(strategy.refused) - refused_before,
            out_of_budget=len(strategy.exhausted),
            loss=_mean_metric(replies, "train-loss"),
            metrics=evaluation.metrics,
            device_metrics=_scalars(device_metrics),
            devices_evaluated=len(_ok(answers)),
            epsilon=_epsilons(replies),
            user_noise=noise,
            user_epsilon=None if noise is None else user_epsilon(settings, user_noises),
            bytes_up=exchange.bytes_up,
            bytes_down=exchange.bytes_down,
        )
        for reply in _ok(replies):
            epsilon = reply.content.metric_records["metrics"].get("epsilon")
            device = sampling.partitions.get(reply.metadata.src_node_id)
            if isinstance(epsilon, int | float) and epsilon >= 0 and device is not None:
                spent[str(device)] = float(epsilon)
        write_json(out / BUDGETS, spent, indent=1)
        exhausted = {**_budget_plan(settings), "devices": sorted(strategy.exhausted)}
        write_json(out / OUT_OF_BUDGET, exhausted)
        append_line(out / METRICS, json.dumps(report.__dict__))  # first: see trim_metrics
        save_checkpoint(
            out,
            network,
            arrays if settings.average_decay else None,
            adam,
            server_round,
            None if momentum is None else momentum.velocity,
        )
        logger.info("round %d: %s", server_round, _brief(report))
        result = {
            **evaluation.to_json(),
            "rounds": settings.rounds,
            "devices": settings.devices,
            "epsilon_max": None if report.epsilon is None else report.epsilon["max"],
            "user_epsilon": report.user_epsilon,
            "bytes_up_per_device_round": report.bytes_up / max(1, report.devices),
            "wall_s": time.perf_counter() - started,
            "settings": settings.to_run_config(),
        }
        write_json(out / SUMMARY, result)
    return result


def plain_exchange(grid: Grid, requests: list[Message]) -> Exchange:
    """Send a round's training ``requests`` and collect the replies; the bytes counted are
    the arrays each way."""
    replies = list(grid.send_and_receive(requests, timeout=3600)) if requests else []
    records = [r.content.array_records for r in requests]
    down = sum(
        record_nbytes(r.get("arrays")) + record_nbytes(r.get(FROZEN_RECORD)) for r in records
    )
    up = sum(record_nbytes(r.content.array_records.get("arrays")) for r in _ok(replies))
    return Exchange(replies, up, down)


def query_partitions(grid: Grid, nodes: list[int]) -> dict[int, int]:
    """Ask ``nodes`` which device (partition id) each is, before they train: node id to
    partition id for the nodes that answered."""
    asked = [
        Message(
            content=RecordDict({"config": ConfigRecord({"server-round": 0})}),
            dst_node_id=node,
            message_type=MessageType.QUERY,
        )
        for node in nodes
    ]
    partitions = {}
    for reply in _ok(list(grid.send_and_receive(asked, timeout=600))):
        device = reply.content.metric_records["metrics"].get("device")
        if isinstance(device, int):
            partitions[reply.metadata.src_node_id] = device
    missing = len(nodes) - len(partitions)
    if missing:
        logger.warning("%d of %d devices did not say which they are", missing, len(nodes))
    return partitions


def _publish(
    out: Path,
    network: Recommender,
    world: World,
    settings: FederationSettings,
    server_round: int,
    key: Any,
) -> None:
    """Re-embed the catalog with the new item tower over the cached frozen-encoder features
    (only the trainable part is recomputed) and write a signed bundle."""
    with torch.no_grad():
        vectors = network.items(world.features.items).numpy()
    embeddings = quantize_int8(vectors) if settings.bundle_format == "int8" else vectors
    bundle = ItemBundle(
        version=server_round,
        model=bundle_model(settings),
        item_ids=list(world.split.dataset.item_ids),
        embeddings=embeddings,
        round=server_round,
    )
    folder = out / "bundles"
    folder.mkdir(exist_ok=True)
    write_atomic(folder / f"items-{server_round}.bundle", sign_bundle(bundle, key))


def _signing_key(out: Path) -> Any:
    path = out / "server.key"
    if not path.exists():
        save_private_key(generate_signing_key(), path)
    return load_private_key(path)


S = TypeVar("S", bound=Strategy)


def bundle_model(settings: FederationSettings) -> str:
    """The model every bundle of a run names (its round is the bundle's ``round``), which a
    device pins when it is created: the data set's kind and the item vectors' dimension."""
    return f"fedrec-{settings.data.partition(':')[0]}-{settings.model.item_dim}d"


def sampling_strategy(settings: FederationSettings, inner: Strategy) -> SeededSamplingStrategy:
    """``inner`` sending its requests to the devices of the run's seed, or, where
    ``settings.secret_sampling``, its training requests to ``SecretSampling``'s."""
    secret = None
    if settings.secret_sampling:
        secret = SecretSampling(settings.devices, settings.sampled_devices)
    return SeededSamplingStrategy(inner, settings.seed, query_partitions, secret)


def inner_strategy(strategy: Strategy, kind: type[S]) -> S | None:
    """The strategy of type ``kind`` inside ``strategy``'s wrappers (fedrec's ``inner``,
    Flower's DP wrapper's ``strategy``), or None when there is none."""
    while not isinstance(strategy, kind):
        inner = getattr(strategy, "inner", None) or getattr(strategy, "strategy", None)
        if not isinstance(inner, Strategy):
            return None
        strategy = inner
    return strategy


def check_run_folder(out: Path, settings: FederationSettings) -> int:
    """The rounds the run in ``out`` has done; a ValueError, before anything runs, when ``out``
    cannot hold the run ``settings`` describe: a file; the files of an earlier run without its
    checkpoint (starting over would overwrite them); a checkpoint that ``check_resumable``
    refuses; a damaged ``budgets.json`` or ``out-of-budget.json``; a user-level run begun
    before its rounds' noise was recorded in ``user-noise.json``, whose devices were drawn
    from the public seed, which the user-level accounting of a resumed run does not cover."""
    check_output_folder(out, "the run folder")
    if not (out / CHECKPOINT).exists():
        earlier = [name for name in (METRICS, SUMMARY) if (out / name).exists()]
        if earlier == [METRICS] and _only_round_one(out / METRICS):
            earlier = []  # a round 1 that stopped between its metrics line and its checkpoint
        if earlier:
            raise ValueError(
                f"{out} holds an earlier run ({', '.join(earlier)}) but not its "
                f"{CHECKPOINT}, so it cannot go on, and starting over would overwrite it: "
                "restore the checkpoint, or start the run in another folder"
            )
    done = check_resumable(out, settings)
    if not done and (out / SECRET_FILE).exists():
        # a round 1 that stopped before its checkpoint: its devices' ledgers and its noise stay
        # accounted, so it goes on only with the settings they were accounted under
        check_same_run(out, settings)
    out_of_budget(out, settings)
    if done and settings.user_privacy.enabled and not (out / USER_NOISE).exists():
        raise ValueError(
            f"{out} holds a user-level DP run begun by an older fedrec (it has no "
            f"{USER_NOISE}): its devices were drawn from the run seed, which anyone with it "
            "can replay, so its user-level epsilon does not hold; start the run in another "
            "folder"
        )
    load_budgets(out)
    if settings.user_privacy.enabled:  # a user-level budget left for more rounds
        user_level_noise(settings, recorded_user_noises(out), done)
    return done


def load_budgets(out: Path) -> dict[str, float]:
    """The epsilon each device has spent in the run (by partition id) from ``budgets.json``
    (none without one); a ValueError naming the file when it is not such a record."""
    path = out / BUDGETS
    if not path.exists():
        return {}
    spent = {
        str(device): json_number(epsilon, f"{path} device {device}'s epsilon")
        for device, epsilon in json_object(
            read_json(path), f"{path} (device ids to the epsilon spent)"
        ).items()
    }
    negative = [device for device, epsilon in spent.items() if epsilon < 0]
    if negative:
        raise ValueError(f"{path}: devices {negative} have spent a negative epsilon")
    return spent


def _budget_plan(settings: FederationSettings) -> dict[str, float | int]:
    """What decides whether a device can afford another round, beside its ledger."""
    return {"budget": settings.privacy.target_epsilon, "planned": settings.planned_participations}


def out_of_budget(out: Path, settings: FederationSettings) -> set[int]:
    """The devices the run in ``out`` found out of its record-level budget (``OUT_OF_BUDGET``);
    none when there is no record or when the run now has another budget or plans devices for
    other rounds (``rounds``, ``participation-margin``): the devices are then asked again, and
    refuse what they cannot afford. A ValueError names a damaged file."""
    path = out / OUT_OF_BUDGET
    if not path.exists():
        return set()
    record = json_object(read_json(path), f"{path} (budget, planned rounds and devices)")
    devices = record.get("devices")
    if not isinstance(devices, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and 0 <= d < settings.devices
        for d in devices
    ):
        raise ValueError(f"{path}: devices must be a list of partition ids, got {devices!r}")
    for key in ("budget", "planned"):
        json_number(record.get(key), f"{path} {key}")
    same = all(record[key] == value for key, value in _budget_plan(settings).items())
    return set(devices) if same else set()


def _scalars(record: MetricRecord | None) -> dict[str, float] | None:
    """A metric record's scalar metrics, without the weights."""
    if record is None:
        return None
    weights = ("num-examples", "device-weight")  # what the strategy weighs replies by
    return {
        k: float(v) for k, v in record.items() if isinstance(v, int | float) and k not in weights
    }


def _ok(replies: list[Message]) -> list[Message]:
    return [r for r in replies if not r.has_error()]


def _metric(replies: list[Message], name: str) -> list[float]:
    """The scalar metric ``name`` of every successful reply."""
    values = [r.content.metric_records["metrics"].get(name) for r in _ok(replies)]
    return [float(v) for v in values if isinstance(v, int | float)]


def _mean_metric(replies: list[Message], name: str) -> float | None:
    values = _metric(replies, name)
    return statistics.fmean(values) if values else None


def user_level_noise(settings: FederationSettings, spent: list[float], done: int) -> float | None:
    """The server's noise multiplier for the rounds after the ``done`` the checkpoint holds
    under user-level DP (None when off), planned around the noise multipliers ``spent`` of
    every release so far (one more than ``done`` when a crash came between recording a
    round's noise and its checkpoint: that round runs again); a ValueError when they leave no budget
    for more. A finished run keeps its last one."""
    if not settings.user_privacy.enabled:
        return None
    if spent and done >= settings.rounds:
        return spent[-1]
    return plan_user_noise(
        settings.user_privacy,
        settings.devices,
        settings.sampled_devices,
        settings.rounds - done,
        tuple(spent),
    )


def _log_user_noise(noise: float, parameters: int, settings: FederationSettings) -> None:
    """Say how loud user-level DP's noise is on each round's average; warn when it outweighs
    any update (``user_noise_norm`` above 1)."""
    norm = user_noise_norm(noise, parameters, settings.sampled_devices)
    message = (
        "user-level DP: noise multiplier %.3f over %d trained parameters from %d devices a "
        "round: noise of about %.2f clipping norms on each round's average"
    )
    if norm <= 1:
        logger.info(message, noise, parameters, settings.sampled_devices, norm)
        return
    logger.warning(
        message + ", more than any update can move it; train fewer parts (local-trained = %r, "
        "docs/privacy.md) or sample more devices a round",
        noise,
        parameters,
        settings.sampled_devices,
        norm,
        USER_DP_TRAINED,
    )


def user_epsilon(settings: FederationSettings, noises: list[float]) -> float:
    """User-level epsilon after rounds with these noise multipliers."""
    return user_level_epsilon(
        noises, settings.devices, settings.sampled_devices, settings.user_privacy.delta
    )


def trim_metrics(out: Path, done: int) -> None:
    """Keep the lines of ``metrics.jsonl`` for the ``done`` rounds the checkpoint holds. A
    round's line is written before its checkpoint, so a crash between the two leaves a line
    for a round that runs again, and a crash while writing it a last line cut short: both
    go. A damaged line before the last is left for ``read_metrics`` to name."""
    path = out / METRICS
    if not path.exists():
        return
    lines = path.read_text(encoding="utf-8").splitlines()
    rounds = _round_lines(lines)
    if rounds is None:
        return
    kept = [line for line, number in rounds if number is None or number <= done]
    if len(kept) < len(lines):
        logger.info("%s: dropped %d lines after round %d", path, len(lines) - len(kept), done)
        write_atomic(path, "".join(line + "\n" for line in kept).encode(), mode=0o644)


def _only_round_one(path: Path) -> bool:
    """Whether every line of ``path`` is round 1's (the last may be cut short)."""
    rounds = _round_lines(path.read_text(encoding="utf-8").splitlines())
    return rounds is not None and all(number == 1 for _, number in rounds)


def _round_lines(lines: list[str]) -> list[tuple[str, int | None]] | None:
    """``metrics.jsonl``'s ``lines`` with the round each is for (None where it names none),
    less a last line cut short; None when a line before the last is not JSON."""
    rounds: list[tuple[str, int | None]] = []
    for number, line in enumerate(lines, start=1):
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                break
            return None
        found = value.get("round") if isinstance(value, dict) else None
        rounds.append((line, found if isinstance(found, int) else None))
    return rounds


def read_metrics(out: Path) -> list[dict[str, Any]]:
    """The rounds of the run folder's ``metrics.jsonl`` (none without one), each with every
    field of ``RoundReport``; a ValueError naming the line that is not."""
    path = out / METRICS
    return read_json_lines(path, ROUND_FIELDS) if path.exists() else []


def recorded_user_noises(out: Path) -> list[float]:
    """The user-level noise multiplier of every round the run in ``out`` began, from
    ``user-noise.json`` (from ``metrics.jsonl`` in a run from before it); a ValueError naming
    the file when it is not such a list."""
    path = out / USER_NOISE
    if not path.exists():
        lines = read_metrics(out)
        return [line["user_noise"] for line in lines if line["user_noise"] is not None]
    noises = read_json(path)
    if not isinstance(noises, list):
        raise ValueError(f"{path}: not a list of noise multipliers, got {type(noises).__name__}")
    checked = [json_number(noise, f"{path} round {i + 1}") for i, noise in enumerate(noises)]
    if any(noise <= 0 for noise in checked):
        raise ValueError(f"{path}: noise multipliers must be positive")
    return checked


def _epsilons(replies: list[Message]) -> dict[str, float] | None:
    values = [v for v in _metric(replies, "epsilon") if v >= 0]
    if not values:
        return None
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def _brief(report: RoundReport) -> str:
    hr, ndcg = report.metrics.get("hr@10", 0.0), report.metrics.get("ndcg@10", 0.0)
    eps = "off" if report.epsilon is None else f"{report.epsilon['max']:.2f}"
    on_devices = ""
    if report.device_metrics:
        on_devices = (
            f" (on {report.devices_evaluated} devices: HR@10 "
            f"{report.device_metrics.get('hr@10', float('nan')):.4f})"
        )
    return (
        f"{report.devices} devices ({report.failed} failed, {report.dropped} dropped), "
        f"HR@10 {hr:.4f}, nDCG@10 {ndcg:.4f}{on_devices}, epsilon max {eps}, "
        f"{report.wall_s:.1f} s"
    )
