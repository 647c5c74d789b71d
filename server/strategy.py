"""A wrapper around any Flower strategy that refuses bad updates before they are aggregated."""

from __future__ import annotations

import logging
import math
import random
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedrec.shared.federated.records import (
    FROZEN_DIGEST_KEY,
    FROZEN_RECORD,
    arrays_digest,
    record_arrays,
)
from fedrec.shared.federated.schedule import SCHEDULES, schedule_share
from fedrec.shared.federated.validation import (
    evaluation_problem,
    records_problem,
    too_few_updates,
    update_problem,
    weight_problem,
)

logger = logging.getLogger(__name__)


def record_nbytes(record: ArrayRecord | None) -> int:
    """The bytes of a record's array values (none for None): from their shapes and dtypes,
    without decoding them, where they say (Flower's legacy records leave them empty)."""
    if record is None:
        return 0
    return sum(
        math.prod(a.shape) * np.dtype(a.dtype).itemsize if a.dtype else a.numpy().nbytes
        for a in record.values()
    )


def array_record(arrays: dict[str, npt.NDArray[np.generic]]) -> ArrayRecord:
    """Numpy arrays by name as an ArrayRecord (the inverse of ``record_arrays``)."""
    return ArrayRecord({name: Array(value) for name, value in arrays.items()})


class WrappedStrategy(Strategy):
    """A strategy that hands everything to ``inner``; wrappers override what they change."""

    def __init__(self, inner: Strategy) -> None:
        self.inner = inner

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.inner.configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        return self.inner.aggregate_train(server_round, replies)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.inner.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        return self.inner.aggregate_evaluate(server_round, replies)

    def summary(self) -> None:
        self.inner.summary()


def seeded_sample(
    partitions: Mapping[int, int], count: int, seed: int, server_round: int, purpose: str
) -> list[int]:
    """``count`` of the nodes in ``partitions`` (node id to partition id), drawn by partition
    id with a generator seeded by ``seed``, the round and the ``purpose`` (``train`` or
    ``evaluate``): the same devices in every run with that seed, whatever node ids Flower
    gave them."""
    if not 0 <= count <= len(partitions):
        raise ValueError(f"cannot sample {count} of {len(partitions)} devices")
    population = sorted(partitions, key=lambda node: (partitions[node], node))
    return random.Random(f"{seed}/{purpose}/{server_round}").sample(population, count)


@dataclass(frozen=True)
class SecretSampling:
    """User-level DP's sampling: each round exactly ``sampled`` of the partition ids
    0..``devices``-1, drawn from the operating system's randomness, as its accounting
    (``sampled`` of ``devices`` without replacement, by nobody predictable) assumes."""

    devices: int
    sampled: int

    def __post_init__(self) -> None:
        if not 1 <= self.sampled <= self.devices:
            raise ValueError(f"cannot sample {self.sampled} of {self.devices} devices")

    def draw(self) -> list[int]:
        """This round's partition ids, in ascending order."""
        return sorted(random.SystemRandom().sample(range(self.devices), self.sampled))


#: Asks the given nodes which device (partition id) each is: node id to partition id, for the
#: nodes that answered.
PartitionQuery = Callable[[Grid, list[int]], dict[int, int]]

#: How many times a node is asked which device it is before it is left out of sampling.
QUERY_ATTEMPTS = 3


class SeededSamplingStrategy(WrappedStrategy):
    """Delegates to ``inner`` and sends its training and evaluation requests to devices drawn
    by ``seeded_sample`` instead of Flower's unseeded ``random``, as many as ``inner`` asked
    for. It learns each node's partition id with ``query`` the first time it sees the node.
    A node that does not answer is not sampled, and is asked again each time the strategy
    samples, up to ``QUERY_ATTEMPTS`` asks in all. With ``secret`` it draws the devices to
    train with ``SecretSampling`` instead: from every partition id, not only those of nodes it
    knows, so that a device without a node misses the round (as a device that drops out does)
    rather than raising the others' chance of being drawn."""

    def __init__(
        self,
        inner: Strategy,
        seed: int,
        query: PartitionQuery,
        secret: SecretSampling | None = None,
    ) -> None:
        super().__init__(inner)
        self.seed, self.query, self.secret = seed, query, secret
        self.partitions: dict[int, int] = {}
        self.asks: Counter[int] = Counter()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        messages = self.inner.configure_train(server_round, arrays, config, grid)
        return self._resample(messages, grid, server_round, "train")

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        messages = self.inner.configure_evaluate(server_round, arrays, config, grid)
        return self._resample(messages, grid, server_round, "evaluate")

    def _resample(
        self, messages: Iterable[Message], grid: Grid, server_round: int, purpose: str
    ) -> list[Message]:
        messages = list(messages)
        online = set(grid.get_node_ids())
        ask = sorted(
            node for node in online - self.partitions.keys() if self.asks[node] < QUERY_ATTEMPTS
        )
        if ask:
            self.partitions.update(self.query(grid, ask))
            self.asks.update(ask)
            given_up = [
                n for n in ask if self.asks[n] == QUERY_ATTEMPTS and n not in self.partitions
            ]
            if given_up:
                logger.warning(
                    "%d nodes did not say which device they are in %d asks and are left out: %s",
                    len(given_up),
                    QUERY_ATTEMPTS,
                    given_up,
                )
        known = _unique_partitions(
            {node: self.partitions[node] for node in online if node in self.partitions}
        )
        if self.secret is not None and purpose == "train":
            chosen = _secret_nodes(known, self.secret, len(messages))
        else:
            chosen = seeded_sample(
                known, min(len(messages), len(known)), self.seed, server_round, purpose
            )
        messages = messages[: len(chosen)]
        for message, node in zip(messages, chosen, strict=True):
            message.metadata.dst_node_id = node
        return messages


def _secret_nodes(known: dict[int, int], sampling: SecretSampling, most: int) -> list[int]:
    """The nodes of the devices ``sampling`` draws, of those ``known`` (node id to partition
    id), at most ``most`` (the requests Flower made); a warning counts the drawn devices left
    out."""
    nodes = {partition: node for node, partition in known.items()}
    drawn = sampling.draw()
    chosen = [nodes[p] for p in drawn if p in nodes][:most]
    if len(chosen) < len(drawn):
        logger.warning(
            "%d of the %d devices drawn have no node to ask: the round trains without them",
            len(drawn) - len(chosen),
            len(drawn),
        )
    return chosen


def _unique_partitions(partitions: dict[int, int]) -> dict[int, int]:
    """``partitions`` (node id to partition id) without the nodes that claim a partition
    another online node claims too: which of them is the device cannot be told, and training
    both would count its user twice (a warning names them)."""
    claims = Counter(partitions.values())
    shared = sorted(p for p, count in claims.items() if count > 1)
    if shared:
        logger.warning("nodes claiming the same device are left out: partitions %s", shared)
    return {node: p for node, p in partitions.items() if claims[p] == 1}


class ReferenceStrategy(WrappedStrategy):
    """A wrapper that keeps the weights of the round it is asked to train (``reference``),
    which the updates it sees start from."""

    def __init__(self, inner: Strategy) -> None:
        super().__init__(inner)
        self.reference: dict[str, npt.NDArray[np.generic]] = {}

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self.reference = record_arrays(arrays)
        return self.inner.configure_train(server_round, arrays, config, grid)

    def toward(self, target: ArrayRecord, share: float) -> ArrayRecord:
        """The reference weights moved ``share`` of the way to ``target`` (in float64, kept in
        the reference's dtypes)."""
        new = record_arrays(target)
        moved = {}
        for name, old in self.reference.items():
            start = old.astype(np.float64)
            moved[name] = (start + share * (new[name].astype(np.float64) - start)).astype(old.dtype)
        return array_record(moved)


def server_step(schedule: str, server_round: int, rounds: int) -> float:
    """The share of the aggregate's step the server takes in ``server_round`` (from 1) of
    ``rounds``: ``schedule_share`` of round ``server_round - 1``."""
    if schedule not in SCHEDULES:
        raise ValueError(f"server-schedule must be one of {SCHEDULES}, got {schedule!r}")
    return schedule_share(schedule, server_round - 1, rounds)


class SampledMeanStrategy(ReferenceStrategy):
    """Delegates to ``inner`` (an unweighted mean of the updates that arrive) and divides their
    sum by the ``sampled`` devices asked instead of by those that replied: a device that drops
    out, refuses, is withheld or is dropped counts as a zero update, and a round without any
    update is a zero sum that the noise is still added to. So one device moves the result by
    at most C / ``sampled`` for updates clipped to C, whatever else happens in the round, as
    user-level DP's noise (sigma C / ``sampled``) assumes."""

    def __init__(self, inner: Strategy, sampled: int) -> None:
        super().__init__(inner)
        self.sampled = sampled

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        if len(replies) > self.sampled:
            raise ValueError(
                f"round {server_round}: {len(replies)} updates from {self.sampled} devices asked"
            )
        if not replies:  # every device failed or was left out: a zero sum, noised all the same
            return array_record(self.reference), MetricRecord()
        aggregated, metrics = self.inner.aggregate_train(server_round, replies)
        if aggregated is None:
            return None, metrics
        return self.toward(aggregated, len(replies) / self.sampled), metrics


class ScheduledStepStrategy(ReferenceStrategy):
    """Delegates to ``inner`` and moves the global weights from where they were towards
    ``inner``'s aggregate by ``server_step(schedule, round, rounds)`` of the way: a server
    learning rate that falls over the run, so that late rounds (and under DP their noise)
    move the model less."""

    def __init__(self, inner: Strategy, schedule: str, rounds: int) -> None:
        super().__init__(inner)
        server_step(schedule, 1, rounds)  # a bad schedule fails here, before any round
        self.schedule, self.rounds = schedule, rounds

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        aggregated, metrics = self.inner.aggregate_train(server_round, replies)
        step = server_step(self.schedule, server_round, self.rounds)
        if aggregated is None or step == 1:
            return aggregated, metrics
        return self.toward(aggregated, step), metrics


class MomentumStrategy(ReferenceStrategy):
    """Delegates to ``inner`` (FedAvg) and steps the global weights with SGD with momentum
    over its aggregate: with ``g`` the global weights minus the aggregate, ``velocity = momentum
    * velocity + g`` and the new weights are the old minus ``learning_rate * velocity``, as
    ``torch.optim.SGD`` steps. Flower's FedAvgM keeps its own copy of the global weights, which
    goes stale once a wrapper (``ScheduledStepStrategy``) moves them; this one steps from the
    weights of the round it trains. ``velocity`` is checkpointed (``server-momentum/``)."""

    def __init__(self, inner: Strategy, learning_rate: float, momentum: float) -> None:
        super().__init__(inner)
        self.learning_rate, self.momentum = learning_rate, momentum
        self.velocity: dict[str, npt.NDArray[np.generic]] = {}

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        aggregated, metrics = self.inner.aggregate_train(server_round, replies)
        if aggregated is None:
            return None, metrics
        new = record_arrays(aggregated)
        stepped = {}
        for name, old in self.reference.items():
            start = old.astype(np.float64)
            gradient = start - new[name].astype(np.float64)
            if name in self.velocity:
                gradient += self.momentum * self.velocity[name].astype(np.float64)
            self.velocity[name] = gradient.astype(old.dtype)
            stepped[name] = (start - self.learning_rate * gradient).astype(old.dtype)
        return array_record(stepped), metrics


class ValidatedStrategy(ReferenceStrategy):
    """Delegates to ``inner``; a training reply whose arrays have the wrong names, shapes or
    dtypes, non-finite values, an update norm above ``max_update_norm``, or aggregation weights
    it cannot have (``weight_problem``: at most ``max_examples`` examples) is dropped with a
    logged reason (and kept in ``dropped``) before ``inner`` sees it, as is a failed reply;
    a kept reply's arrays are put in the global weights' order. A round in which fewer
    than ``min_update_share`` of the replies are usable updates (the rest failed or were
    dropped) is not aggregated: the global model stays as it was. The aggregate keeps the
    global weights' dtypes (Flower's FedAdam computes in float64, and the next round's float32
    updates would all be dropped against a float64 reference)."""

    def __init__(
        self,
        inner: Strategy,
        max_update_norm: float,
        min_update_share: float,
        max_examples: int,
        metrics: frozenset[str],
        noise_shares: int = 0,
    ) -> None:
        super().__init__(inner)
        self.metrics = metrics
        self.noise_shares = noise_shares
        self.max_update_norm = max_update_norm
        self.max_examples = max_examples
        self.min_update_share = min_update_share
        self.dropped: list[tuple[int, int, str]] = []  # (round, node, reason)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        kept = []
        for reply in replies:
            if reply.has_error():  # counted in the round's report; nothing to aggregate
                continue
            problem = self.problem(reply)
            if problem is None:
                kept.append(_in_order(reply, self.reference))
                continue
            node = reply.metadata.src_node_id
            logger.warning(
                "round %d: dropped the update of node %d: %s", server_round, node, problem
            )
            self.dropped.append((server_round, node, problem))
        shortfall = too_few_updates(
            len(kept), len(replies), self.min_update_share, self.noise_shares
        )
        if shortfall is not None:
            logger.warning(
                "round %d: the global model stays as it was: %s", server_round, shortfall
            )
            return None, None
        aggregated, metrics = self.inner.aggregate_train(server_round, kept)
        if aggregated is None:
            return None, metrics
        arrays = record_arrays(aggregated)
        kept_dtypes = {k: v.astype(self.reference[k].dtype, copy=False) for k, v in arrays.items()}
        return array_record(kept_dtypes), metrics

    def problem(self, reply: Message) -> str | None:
        """Why this training reply cannot be aggregated, or None."""
        content = reply.content
        records = records_problem(content, {"arrays"}, self.metrics)
        if records is not None:
            return records
        weights = weight_problem(content.metric_records["metrics"], self.max_examples)
        if weights is not None:
            return weights
        try:
            arrays = record_arrays(content.array_records["arrays"])
        except (ValueError, TypeError) as err:
            return f"its arrays do not decode ({err})"
        return update_problem(self.reference, arrays, self.max_update_norm)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """``inner``'s average of the evaluation replies, less those whose metrics are not a
        device's (``evaluation_problem``), each dropped with a logged reason."""
        kept = []
        for reply in replies:
            problem = None if reply.has_error() else evaluation_problem(reply.content)
            if problem is None:
                kept.append(reply)
                continue
            node = reply.metadata.src_node_id
            logger.warning(
                "round %d: dropped the evaluation of node %d: %s", server_round, node, problem
            )
        return self.inner.aggregate_evaluate(server_round, kept)

    def summary(self) -> None:
        logger.info("updates validated (max update norm %s), then:", self.max_update_norm)
        self.inner.summary()


def _in_order(reply: Message, reference: Mapping[str, object]) -> Message:
    """``reply`` with its arrays in the global weights' order: Flower's DP wrappers clip an
    update array by array in order, so arrays sent in another order would escape clipping."""
    arrays = reply.content.array_records["arrays"]
    if list(arrays) != list(reference):
        reply.content["arrays"] = ArrayRecord({name: arrays[name] for name in reference})
    return reply


class BudgetStrategy(WrappedStrategy):
    """Delegates to ``inner`` and keeps devices that have spent their privacy budget out.

    A device says in its training reply whether it can afford another round
    (``budget-exhausted``); from then on its training requests are withheld. ``exhausted``
    holds the partition ids of those devices (a restarted server starts from the set it
    saved), ``partitions`` the partition id of each node the sampling knows
    (``SeededSamplingStrategy.partitions``, filled as it samples): a reply counts for the
    device its node answered it was, whatever device its metrics name. A device that
    refuses a round (``budget-refused``, a reply without arrays) is left out of the
    aggregation and remembered in ``refused``."""

    def __init__(
        self, inner: Strategy, partitions: Mapping[int, int], exhausted: Iterable[int] = ()
    ) -> None:
        super().__init__(inner)
        self.partitions = partitions
        self.exhausted: set[int] = set(exhausted)
        self.refused: list[tuple[int, int]] = []  # (round, node)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        messages = super().configure_train(server_round, arrays, config, grid)
        return [
            m for m in messages if self.partitions.get(m.metadata.dst_node_id) not in self.exhausted
        ]

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        kept = []
        for reply in replies:
            metrics = None if reply.has_error() else reply.content.metric_records.get("metrics")
            node = reply.metadata.src_node_id
            device = self.partitions.get(node)  # what it answered when asked, not what it claims
            exhausted = metrics is not None and metrics.get("budget-exhausted") == 1
            if exhausted and device is not None:
                self.exhausted.add(device)
            if metrics is not None and metrics.get("budget-refused") == 1:
                logger.info(
                    "round %d: node %d refused: its privacy budget is spent", server_round, node
                )
                self.refused.append((server_round, node))
                continue
            kept.append(reply)
        return self.inner.aggregate_train(server_round, kept)

    def summary(self) -> None:
        logger.info("devices out of privacy budget: %d", len(self.exhausted))
        self.inner.summary()


class FrozenPartsStrategy(WrappedStrategy):
    """Delegates to ``inner``, which sees only the parts of the network the federation trains,
    and adds the frozen rest (``frozen``) to training and evaluation requests, so devices can
    load the whole network while they send back, and ``inner`` aggregates, only what they
    train. Every request names the frozen weights' digest, and carries the weights themselves
    only to a device that has not yet answered a request that carried them (``holders``; a
    device whose answer fails is sent them again); the device keeps a copy
    (``fedrec.client.frozen_cache``)."""

    def __init__(self, inner: Strategy, frozen: ArrayRecord) -> None:
        super().__init__(inner)
        self.frozen = frozen
        self.digest = arrays_digest(record_arrays(frozen)) if len(frozen) else None
        #: the nodes that answered a request carrying the frozen weights, and none failed since
        self.holders: set[int] = set()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self._with_frozen(super().configure_train(server_round, arrays, config, grid))

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        return super().aggregate_train(server_round, self._note_holders(replies))

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self._with_frozen(super().configure_evaluate(server_round, arrays, config, grid))

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        return super().aggregate_evaluate(server_round, self._note_holders(replies))

    def _with_frozen(self, messages: Iterable[Message]) -> list[Message]:
        messages = list(messages)
        if self.digest is None:  # the federation trains every part
            return messages
        for message in messages:
            content = RecordDict(dict(message.content.items()))
            config = content.config_records.get("config", ConfigRecord())
            content["config"] = ConfigRecord({**config, FROZEN_DIGEST_KEY: self.digest})
            if message.metadata.dst_node_id not in self.holders:
                content[FROZEN_RECORD] = self.frozen
            message.content = content
        return messages

    def _note_holders(self, replies: Iterable[Message]) -> list[Message]:
        replies = list(replies)
        for reply in replies:  # a node answers a request without them only if it holds them
            if reply.has_error():
                self.holders.discard(reply.metadata.src_node_id)
            else:
                self.holders.add(reply.metadata.src_node_id)
        return replies
