"""The device's side of secure aggregation: Flower's ``secaggplus_mod`` around fedrec's training.

SecAgg+ (docs/secure-aggregation.md) runs a training round in four stages, each a TRAIN
message carrying the protocol's config record. In the third the device trains, and the mod
masks what it would reply before it leaves: only the sum over devices can be unmasked. The mod
speaks Flower's legacy records (``FitIns``: positional arrays and a config; ``FitRes``), so
``secure_aggregation_mod`` translates for the train handler: it hands it the global weights
as fedrec's named records, and masks the difference the device's training made to the trained
weights (small numbers, far inside SecAgg+'s clipping range, where whole weights need not be)
with its example count as the weight, and packs the masked values in 4 bytes each
(``fedrec.shared.federated.masked_vectors``). The masks come from a cryptographic generator
keyed by the whole secret, not Flower's MT19937 (``fedrec.shared.federated.secure_masks``).
The reply's metrics (example count, epsilon, budget flags) travel in the clear, as
without secure aggregation. Any other message passes through untouched.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.app.message_type import MessageType
from flwr.client.mod import secaggplus_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.compat.common import recorddict_compat as compat

from fedrec.shared.federated.masked_vectors import pack_masked_vectors
from fedrec.shared.federated.records import (
    FROZEN_DIGEST_KEY,
    FROZEN_RECORD,
    SECURE_NAMES_KEY,
    SECURE_ROUND_KEY,
    SECURE_TRAINED_KEY,
)
from fedrec.shared.federated.secure_masks import use_secure_masks


def secure_aggregation_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """A client mod: SecAgg+ for a training request that carries its config record, with the
    train handler behind it speaking fedrec's records; anything else passes through."""
    secure = RECORD_KEY_CONFIGS in msg.content.config_records
    if msg.metadata.message_type != MessageType.TRAIN or not secure:
        return call_next(msg, context)
    use_secure_masks()
    reply = secaggplus_mod(msg, context, _named(call_next))
    if not reply.has_error():
        reply.content = pack_masked_vectors(reply.content)
    return reply


def _named(call_next: ClientAppCallable) -> ClientAppCallable:
    def train(msg: Message, context: Context) -> Message:
        request = unpack_request(msg.content)
        config = ConfigRecord({SECURE_ROUND_KEY: request.server_round})
        if request.frozen_digest is not None:
            config[FROZEN_DIGEST_KEY] = request.frozen_digest
        content = RecordDict(
            {
                "arrays": ArrayRecord({n: Array(a) for n, a in request.trained.items()}),
                "config": config,
            }
        )
        if request.frozen:
            content[FROZEN_RECORD] = ArrayRecord({n: Array(a) for n, a in request.frozen.items()})
        msg.content = content
        reply = call_next(msg, context)
        return Message(pack_reply(reply.content, request.trained), reply_to=msg)

    return train


@dataclass(frozen=True)
class SecureRequest:
    """A secure round's training request: its round, the global weights, named (the frozen
    ones only if it carries them), and the digest of the frozen weights if it names one."""

    server_round: int
    trained: dict[str, np.ndarray]
    frozen: dict[str, np.ndarray]
    frozen_digest: str | None = None


def unpack_request(content: RecordDict) -> SecureRequest:
    """A secure round's ``FitIns`` as fedrec's request; a ValueError when its config lacks
    the round, the names or the trained count, the names do not match the arrays, or the
    digest is not text."""
    fitins = compat.recorddict_to_fitins(content, keep_input=True)
    digest = fitins.config.get(FROZEN_DIGEST_KEY)
    if digest is not None and not isinstance(digest, str):
        raise ValueError(f"{FROZEN_DIGEST_KEY} must be a string, got {digest!r}")
    server_round, names, trained = (
        fitins.config.get(key) for key in (SECURE_ROUND_KEY, SECURE_NAMES_KEY, SECURE_TRAINED_KEY)
    )
    if not (isinstance(server_round, int) and isinstance(trained, int) and isinstance(names, str)):
        raise ValueError(
            "the secure round's request lacks its round, the names of its arrays or the count "
            "of those trained"
        )
    arrays = parameters_to_ndarrays(fitins.parameters)
    named = names.split("\n")
    if len(named) != len(arrays) or len(set(named)) != len(named) or not 0 < trained <= len(named):
        raise ValueError(
            f"the secure round's request names {len(named)} arrays ({trained} trained) but "
            f"sends {len(arrays)}"
        )
    weights = dict(zip(named, arrays, strict=True))
    return SecureRequest(
        server_round,
        trained={n: weights[n] for n in named[:trained]},
        frozen={n: weights[n] for n in named[trained:]},
        frozen_digest=digest,
    )


def pack_reply(content: RecordDict, before: dict[str, np.ndarray]) -> RecordDict:
    """A training reply as SecAgg+ masks it: the change to each trained array, weighted by
    the device's example count (zeros of weight 0 when it refused the round), and its
    metrics."""
    metrics = content.metric_records["metrics"]
    after = content.array_records.get("arrays")
    if after is None:
        change = [np.zeros_like(value) for value in before.values()]
    else:
        change = [after[name].numpy() - value for name, value in before.items()]
    examples = metrics.get("num-examples", 0)
    fitres = FitRes(
        status=Status(code=Code.OK, message=""),
        parameters=ndarrays_to_parameters(change),
        num_examples=int(examples) if after is not None and isinstance(examples, int) else 0,
        metrics={k: v for k, v in metrics.items() if isinstance(v, int | float)},
    )
    return compat.fitres_to_recorddict(fitres, keep_input=True)
