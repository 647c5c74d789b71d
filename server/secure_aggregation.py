"""Secure aggregation on the server: a round's training exchange through Flower's SecAgg+.

``secure_exchange`` takes the training requests the server's strategies made for a round and
runs them through ``SecAggPlusWorkflow`` (four stages: keys, key shares, masked updates,
unmasking; docs/secure-aggregation.md). The devices (``fedrec.client.secure_aggregation``)
mask the change their training made, weighted by their example count; the server learns
only the weighted mean of those changes, and each device's metrics, which travel in the
clear. It hands the rest of the server one reply per device that took part, each carrying
the global weights moved by that mean, so that validation, budgets, FedAvg and the server's
step run unchanged: their checks on an update become checks on the aggregate, the only update
the server sees. A device that dropped out before its masked update was summed gets an error
reply; SecAgg+ removes the masks of those that dropped out later.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.common import (
    EvaluateIns,
    EvaluateRes,
    FitIns,
    FitRes,
    Parameters,
    Scalar,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.strategy import Strategy as LegacyStrategy
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD, Key
from flwr.server.workflow.secure_aggregation.secaggplus_workflow import WorkflowState
from flwr.serverapp import Grid
from flwr.supercore.run import Run

from fedrec.server.strategy import array_record, record_nbytes
from fedrec.shared.federated.masked_vectors import unpack_masked_vectors
from fedrec.shared.federated.records import (
    FROZEN_DIGEST_KEY,
    FROZEN_RECORD,
    SECURE_NAMES_KEY,
    SECURE_ROUND_KEY,
    SECURE_TRAINED_KEY,
    record_arrays,
)
from fedrec.shared.federated.secure_masks import use_secure_masks
from fedrec.shared.federated.secure_rounding import (
    CLIPPING_RANGE,
    MASK_MODULUS,
    QUANTIZATION_LEVELS,
)
from fedrec.shared.federated.settings import FederationSettings

logger = logging.getLogger(__name__)

#: The error code of a device that left the protocol before its update was summed.
LEFT_SECURE_AGGREGATION = 1


@dataclass(frozen=True)
class Exchange:
    """A round's training exchange: the replies, and the bytes sent each way (every message's
    arrays and config values: under SecAgg+ the masked updates and the keys)."""

    replies: list[Message]
    bytes_up: int
    bytes_down: int


def secure_workflow(settings: FederationSettings, timeout: float) -> SecAggPlusWorkflow:
    """SecAgg+ with the run's shares and threshold; a device's weight is its example count,
    at most ``local.max_examples`` (what the server's validation allows); values clipped and
    rounded as ``fedrec.shared.federated.secure_rounding`` bounds it. Under distributed DP it
    stops before unmasking a sum of fewer updates than ``noise_shares``."""
    return NoisedSumWorkflow(
        min_summed=settings.noise_shares if settings.privacy.distributed else 0,
        num_shares=settings.secagg_shares,
        reconstruction_threshold=settings.secagg_threshold,
        max_weight=settings.local.max_examples,
        clipping_range=CLIPPING_RANGE,
        quantization_range=QUANTIZATION_LEVELS,
        modulus_range=MASK_MODULUS,
        timeout=timeout,
    )


class NoisedSumWorkflow(SecAggPlusWorkflow):
    """SecAgg+ that unmasks the round's sum only when at least ``min_summed`` devices sent a
    masked update of positive weight. Under distributed DP each such update carries one share
    of the step's noise, sized for ``noise_shares`` of them: a sum of fewer would reach the
    server with less noise than every device's ledger accounts. Stopped before the unmask
    stage, the server holds only masked vectors and learns nothing of the sum."""

    def __init__(self, min_summed: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.min_summed = min_summed

    def collect_masked_vectors_stage(
        self, grid: Grid, context: LegacyContext, state: WorkflowState
    ) -> bool:
        if not super().collect_masked_vectors_stage(grid, context, state):
            return False
        summed = sum(fitres.num_examples > 0 for _, fitres in state.legacy_results)
        if summed < self.min_summed:
            logger.warning(
                "secure aggregation stopped before unmasking: %d updates summed, fewer than the "
                "%d noise shares distributed DP needs in the sum",
                summed,
                self.min_summed,
            )
            return False
        return True


def secure_exchange(
    grid: Grid, workflow: SecAggPlusWorkflow, server_round: int, requests: list[Message]
) -> Exchange:
    """Run round ``server_round``'s training ``requests`` through ``workflow``: one reply per
    request, the devices' metrics with the global weights moved by their weighted mean change
    (module docstring), or an error for a device whose update was not summed."""
    if not requests:
        return Exchange([], 0, 0)
    counting = CountingGrid(grid)
    relay = _Relay(grid, requests)
    state = RecordDict(
        {
            MAIN_CONFIGS_RECORD: ConfigRecord({Key.CURRENT_ROUND: server_round}),
            MAIN_PARAMS_RECORD: ArrayRecord(),
        }
    )
    context = Context(run_id=grid.run.run_id, node_id=0, node_config={}, state=state, run_config={})
    use_secure_masks()  # the masks the devices add, which the workflow removes
    workflow(counting, LegacyContext(context, strategy=relay))
    return Exchange(relay.replies(), counting.bytes_up, counting.bytes_down)


def content_bytes(content: RecordDict) -> int:
    """The bytes of a message's arrays and of its config records' bytes and text values."""
    total = sum(record_nbytes(record) for record in content.array_records.values())
    for record in content.config_records.values():
        for value in record.values():
            for item in value if isinstance(value, list) else [value]:
                if isinstance(item, bytes | str):
                    total += len(item)
    return total


class CountingGrid(Grid):
    """``grid``, counting the bytes of what ``send_and_receive`` sends and receives (as they
    cross the wire: masked vectors packed in 4 bytes a value), and unpacking the replies'
    masked vectors for SecAgg+."""

    def __init__(self, grid: Grid) -> None:
        self.grid = grid
        self.bytes_up = 0
        self.bytes_down = 0

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        messages = list(messages)
        self.bytes_down += sum(content_bytes(m.content) for m in messages)
        replies = list(self.grid.send_and_receive(messages, timeout=timeout))
        for reply in replies:
            if not reply.has_error():
                self.bytes_up += content_bytes(reply.content)
                reply.content = unpack_masked_vectors(reply.content)
        return replies

    def set_run(self, run: Run) -> None:
        self.grid.set_run(run)

    @property
    def run(self) -> Run:
        return self.grid.run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return self.grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self.grid.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.grid.pull_messages(message_ids)


class _Relay(LegacyStrategy):
    """The legacy strategy SecAgg+ drives: it hands the workflow the round's requests as
    ``FitIns`` and keeps the unmasked mean with the devices' results. Every request carries
    the same trained weights (fedrec's strategies send every device one record); the frozen
    weights go only with the requests that carry them, and their digest with those that name
    it (``FrozenPartsStrategy``)."""

    def __init__(self, grid: Grid, requests: list[Message]) -> None:
        trained = {id(m.content.array_records["arrays"]) for m in requests}
        if len(trained) != 1:
            raise ValueError(
                f"secure aggregation sums one set of trained weights, got {len(trained)}"
            )
        self.grid = grid
        self.requests = {m.metadata.dst_node_id: m for m in requests}
        self.results: list[tuple[ClientProxy, FitRes]] = []
        self.sent = record_arrays(requests[0].content.array_records["arrays"])
        #: one FitIns per kind of request (with or without the frozen weights), made once
        self.fitins: dict[tuple[int | None, str | None], FitIns] = {}

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        run_id = self.grid.run.run_id
        return [
            (GridClientProxy(node, self.grid, run_id), self._fitins(server_round, request))
            for node, request in self.requests.items()
        ]

    def _fitins(self, server_round: int, request: Message) -> FitIns:
        """``request`` as SecAgg+'s ``FitIns``: the trained arrays, then any frozen ones it
        carries, their names in the config with the round and any digest it names."""
        content = request.content
        carried = content.array_records.get(FROZEN_RECORD)
        named = content.config_records.get("config", ConfigRecord()).get(FROZEN_DIGEST_KEY)
        digest = named if isinstance(named, str) else None
        kind = (None if carried is None else id(carried), digest)
        if kind in self.fitins:
            return self.fitins[kind]
        frozen = record_arrays(carried or ArrayRecord())
        config: dict[str, Scalar] = {
            SECURE_ROUND_KEY: server_round,
            SECURE_NAMES_KEY: "\n".join([*self.sent, *frozen]),
            SECURE_TRAINED_KEY: len(self.sent),
        }
        if digest is not None:
            config[FROZEN_DIGEST_KEY] = digest
        arrays = [*self.sent.values(), *frozen.values()]
        self.fitins[kind] = FitIns(ndarrays_to_parameters(arrays), config)
        return self.fitins[kind]

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        self.results = results
        return (results[0][1].parameters if results else None), {}

    def replies(self) -> list[Message]:
        """One reply per request (module docstring)."""
        answered: dict[int, Message] = {}
        if not self.results:
            return [self._left(request) for request in self.requests.values()]
        mean = parameters_to_ndarrays(self.results[0][1].parameters)
        moved = array_record(
            {
                name: (value + change).astype(value.dtype)
                for (name, value), change in zip(self.sent.items(), mean, strict=True)
            }
        )
        for proxy, fitres in self.results:
            metrics = MetricRecord(
                {k: v for k, v in fitres.metrics.items() if isinstance(v, int | float)}
            )
            content = RecordDict({"metrics": metrics})
            if fitres.num_examples > 0:  # a device that refused the round added a weight of 0
                content["arrays"] = moved
            answered[proxy.node_id] = Message(content, reply_to=self.requests[proxy.node_id])
        return [answered.get(node) or self._left(r) for node, r in self.requests.items()]

    @staticmethod
    def _left(request: Message) -> Message:
        reason = "secure aggregation did not sum this update: the device left, or too few stayed"
        return Message(error=Error(LEFT_SECURE_AGGREGATION, reason), reply_to=request)

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        return None

    def configure_evaluate(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, EvaluateIns]]:
        return []

    def aggregate_evaluate(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, EvaluateRes]],
        failures: list[tuple[ClientProxy, EvaluateRes] | BaseException],
    ) -> tuple[float | None, dict[str, Scalar]]:
        return None, {}

    def evaluate(
        self, server_round: int, parameters: Parameters
    ) -> tuple[float, dict[str, Scalar]] | None:
        return None
