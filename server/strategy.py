"""A wrapper around any Flower strategy that refuses bad updates before they are aggregated."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable

import numpy as np
import numpy.typing as npt
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedrec.shared.federated.records import FROZEN_RECORD
from fedrec.shared.federated.validation import too_few_updates, update_problem

logger = logging.getLogger(__name__)


def record_arrays(record: ArrayRecord) -> dict[str, npt.NDArray[np.generic]]:
    """An ArrayRecord as numpy arrays by name."""
    return {name: array.numpy() for name, array in record.items()}


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


class ValidatedStrategy(WrappedStrategy):
    """Delegates to ``inner``; a training reply whose arrays have the wrong names, shapes or
    dtypes, non-finite values, an update norm above ``max_update_norm``, or no valid example
    count is dropped with a logged reason (and kept in ``dropped``) before ``inner`` sees it.
    A round in which fewer than ``min_update_share`` of the replies are usable updates (the
    rest failed or were dropped) is not aggregated: the global model stays as it was."""

    def __init__(self, inner: Strategy, max_update_norm: float, min_update_share: float) -> None:
        super().__init__(inner)
        self.max_update_norm = max_update_norm
        self.min_update_share = min_update_share
        self.dropped: list[tuple[int, int, str]] = []  # (round, node, reason)
        self._reference: dict[str, npt.NDArray[np.generic]] = {}

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._reference = record_arrays(arrays)
        return self.inner.configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        kept, usable = [], 0
        for reply in replies:
            problem = None if reply.has_error() else self.problem(reply)
            if problem is None:
                kept.append(reply)
                usable += not reply.has_error()
                continue
            node = reply.metadata.src_node_id
            logger.warning(
                "round %d: dropped the update of node %d: %s", server_round, node, problem
            )
            self.dropped.append((server_round, node, problem))
        shortfall = too_few_updates(usable, len(replies), self.min_update_share)
        if shortfall is not None:
            logger.warning(
                "round %d: the global model stays as it was: %s", server_round, shortfall
            )
            return None, None
        return self.inner.aggregate_train(server_round, kept)

    def problem(self, reply: Message) -> str | None:
        """Why this training reply cannot be aggregated, or None."""
        content = reply.content
        if "arrays" not in content.array_records or "metrics" not in content.metric_records:
            return "the reply lacks its arrays or metrics"
        count = content.metric_records["metrics"].get("num-examples")
        if not isinstance(count, int | float) or not math.isfinite(count) or count < 1:
            return f"bad num-examples {count!r}"
        arrays = record_arrays(content.array_records["arrays"])
        return update_problem(self._reference, arrays, self.max_update_norm)

    def summary(self) -> None:
        logger.info("updates validated (max update norm %s), then:", self.max_update_norm)
        self.inner.summary()


class BudgetStrategy(WrappedStrategy):
    """Delegates to ``inner`` and keeps devices that have spent their privacy budget out.

    A device says in its training reply whether it can afford another round
    (``budget-exhausted``); from then on its training requests are withheld. A device that
    refuses a round (``budget-refused``, a reply without arrays) is left out of the
    aggregation and remembered in ``refused``. The set lives in memory: after a restart the
    devices say it again, by refusing."""

    def __init__(self, inner: Strategy) -> None:
        super().__init__(inner)
        self.exhausted: set[int] = set()
        self.refused: list[tuple[int, int]] = []  # (round, node)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        messages = super().configure_train(server_round, arrays, config, grid)
        return [m for m in messages if m.metadata.dst_node_id not in self.exhausted]

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        kept = []
        for reply in replies:
            metrics = None if reply.has_error() else reply.content.metric_records.get("metrics")
            node = reply.metadata.src_node_id
            if metrics is not None and metrics.get("budget-exhausted") == 1:
                self.exhausted.add(node)
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
    and adds the frozen rest (``frozen``) to every training and evaluation request, so devices
    can load the whole network while they send back, and ``inner`` aggregates, only what they
    train."""

    def __init__(self, inner: Strategy, frozen: ArrayRecord) -> None:
        super().__init__(inner)
        self.frozen = frozen

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self._with_frozen(super().configure_train(server_round, arrays, config, grid))

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self._with_frozen(super().configure_evaluate(server_round, arrays, config, grid))

    def _with_frozen(self, messages: Iterable[Message]) -> list[Message]:
        messages = list(messages)
        for message in messages:
            message.content[FROZEN_RECORD] = self.frozen
        return messages
