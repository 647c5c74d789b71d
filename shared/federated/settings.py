"""Every knob of a federation, typed, read from Flower's run config (``[tool.flwr.app.config]``
in pyproject.toml, overridden by ``flwr run --run-config`` or ``fedrec simulate`` flags)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal

import torch

from fedrec.shared.federated.local import LocalConfig, PrivacyConfig
from fedrec.shared.federated.schedule import SCHEDULES, Schedule
from fedrec.shared.federated.secure_rounding import MASK_MODULUS, QUANTIZATION_LEVELS
from fedrec.shared.federated.user_level import UserPrivacyConfig
from fedrec.shared.model.network import ALL_PARTS, ModelConfig, Recommender, trained_names

Strategy = Literal["fedavg", "fedadam"]
BundleFormat = Literal["fp32", "int8"]


def federated_model() -> ModelConfig:
    """The network a federation trains: an LSTM of 128 and a rank-16 item tower, so that a
    device's whole update (244k float32 parameters, 0.98 MB) stays under 1 MB."""
    return ModelConfig(hidden_dim=128, item_rank=16)


@dataclass(frozen=True)
class FederationSettings:
    """One federated run: data and devices, rounds and strategy, local training and DP, and
    where the server writes its metrics, checkpoints and bundles (``out``). A device plans its
    DP noise for ``participation_margin`` standard deviations above the number of rounds it
    is expected to be sampled for (``planned_participations``). ``strategy`` ``fedadam`` steps
    the global model with Adam over the rounds' averaged updates (Flower's FedAdam: step
    ``server_learning_rate``, adaptivity ``server_tau``; its moments are checkpointed).
    ``server_momentum`` > 0 (with ``fedavg``), or distributed DP, steps it with SGD with that
    momentum and step ``server_learning_rate`` over the rounds' averaged updates
    (``fedrec.server.strategy.MomentumStrategy``, checkpointed).
    ``server_schedule`` scales the server's step over the rounds
    (``fedrec.server.strategy.server_step``); with ``average_decay`` > 0 the server evaluates
    and publishes a moving average of the global weights (``fedrec.server.averaging``).
    ``seed`` fixes the initial weights, the devices sampled in each round
    (``fedrec.server.strategy.seeded_sample``; not under user-level DP, ``secret_sampling``)
    and each device's own batches, never its DP noise or sampling. Under DP at either level,
    devices answer federated evaluation only with ``evaluate_outside_dp``
    (``device_evaluation``). ``canaries`` > 0 plants that many audit canaries
    (``fedrec.simulations.audit``), ``canary_repeats`` times each, in the first devices.
    ``secure_aggregation`` sends every training round through Flower's SecAgg+
    (``fedrec.server.secure_aggregation``), each device's keys split among ``secagg_shares``
    devices, any ``secagg_threshold`` of which rebuild them."""

    data: str = "demo"
    devices: int = 50
    rounds: int = 5
    fraction_train: float = 1.0
    fraction_evaluate: float = 1.0
    evaluate_outside_dp: bool = False
    participation_margin: float = 2.0
    strategy: Strategy = "fedavg"
    server_learning_rate: float = 1e-2
    server_tau: float = 1e-3
    server_schedule: Schedule = "constant"
    server_momentum: float = 0.0
    max_update_norm: float = 50.0
    min_update_share: float = 0.5
    average_decay: float = 0.0
    bundle_every: int = 1
    bundle_format: BundleFormat = "fp32"
    out: str = "fedrec-run"
    seed: int = 0
    canaries: int = 0
    canary_repeats: int = 10
    secure_aggregation: bool = False
    secagg_shares: int = 5
    secagg_threshold: int = 3
    model: ModelConfig = field(default_factory=federated_model)
    local: LocalConfig = field(default_factory=LocalConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    user_privacy: UserPrivacyConfig = field(default_factory=UserPrivacyConfig)

    def __post_init__(self) -> None:
        for name, least in (("devices", 2), ("rounds", 1), ("bundle_every", 1)):
            if getattr(self, name) < least:
                raise ValueError(f"a federation needs {name} >= {least}, got {getattr(self, name)}")
        if not 0 < self.fraction_train <= 1:
            raise ValueError(f"fraction_train must be in (0, 1], got {self.fraction_train}")
        if not 0 <= self.fraction_evaluate <= 1:
            raise ValueError(f"fraction_evaluate must be in [0, 1], got {self.fraction_evaluate}")
        if self.strategy not in ("fedavg", "fedadam"):
            raise ValueError(f"strategy must be 'fedavg' or 'fedadam', got {self.strategy!r}")
        if self.server_schedule not in SCHEDULES:
            raise ValueError(
                f"server_schedule must be one of {SCHEDULES}, got {self.server_schedule!r}"
            )
        if self.bundle_format not in ("fp32", "int8"):
            raise ValueError(f"bundle-format must be 'fp32' or 'int8', got {self.bundle_format!r}")
        if not 0 <= self.min_update_share <= 1:
            raise ValueError(f"min_update_share must be in [0, 1], got {self.min_update_share}")
        if not 0 <= self.server_momentum < 1:
            raise ValueError(f"server_momentum must be in [0, 1), got {self.server_momentum}")
        if self.privacy.distributed and self.strategy != "fedavg":
            raise ValueError(
                "distributed DP steps the global model with SGD (server-learning-rate, "
                f"server-momentum): strategy must be 'fedavg', got {self.strategy!r}"
            )
        if self.user_privacy.enabled and self.strategy != "fedavg":
            raise ValueError(
                "user-level DP adds its noise to the aggregate the strategy returns, which "
                "bounds one user's influence only for FedAvg's mean (FedAdam would step on the "
                f"mean before the noise): strategy must be 'fedavg', got {self.strategy!r}"
            )
        if self.server_momentum and self.strategy != "fedavg":
            raise ValueError(
                "server_momentum applies to the 'fedavg' strategy (FedAdam has its own)"
            )
        if self.privacy.distributed and self.user_privacy.enabled:
            raise ValueError(
                "distributed record-level DP and user-level DP cannot be combined: the server "
                "would clip and noise the devices' noise shares"
            )
        if not 0 <= self.average_decay < 1:
            raise ValueError(f"average_decay must be in [0, 1), got {self.average_decay}")
        for name in ("max_update_norm", "server_learning_rate", "server_tau"):
            if not 0 < getattr(self, name) < math.inf:
                raise ValueError(f"{name} must be a finite number > 0, got {getattr(self, name)}")
        if not 0 <= self.seed <= MAX_SEED:
            raise ValueError(f"seed must be in [0, {MAX_SEED}], got {self.seed}")
        if not 0 <= self.participation_margin <= 10:
            raise ValueError(
                f"participation_margin must be in [0, 10], got {self.participation_margin}"
            )
        if self.secure_aggregation:
            self._check_secure_aggregation()
        if not 0 <= self.canaries <= self.devices or self.canary_repeats < 1:
            raise ValueError("canaries must be in [0, devices] and canary_repeats at least 1")
        if self.canaries and self.canary_repeats > self.local.max_examples:
            raise ValueError(
                f"canary-repeats ({self.canary_repeats}) must fit a device's "
                f"local-max-examples ({self.local.max_examples})"
            )
        with torch.device("meta"):  # the module paths only: no weights allocated
            trained_names(Recommender(self.model), self.local.trained)

    def _check_secure_aggregation(self) -> None:
        """SecAgg+ (``fedrec.server.secure_aggregation``) sums what devices send without the
        server seeing one reply: nothing per device can be clipped or noised at the server, and
        each device splits its keys among ``secagg_shares`` neighbours (itself included), any
        ``secagg_threshold`` of which rebuild them."""
        if self.user_privacy.enabled:
            raise ValueError(
                "secure aggregation hides each device's update from the server, which user-level "
                "DP must clip: use distributed DP (dp-distributed = true) with it instead"
            )
        shares, threshold = self.secagg_shares, self.secagg_threshold
        if shares < 3 or shares % 2 == 0:
            raise ValueError(f"secagg-shares must be an odd integer >= 3, got {shares}")
        if not shares / 2 < threshold < shares:
            raise ValueError(
                f"secagg-threshold must be above half of secagg-shares ({shares}) and below it, "
                f"got {threshold}: at half or less, a server could rebuild both a device's mask "
                "and its key"
            )
        if self.sampled_devices * QUANTIZATION_LEVELS >= MASK_MODULUS:
            raise ValueError(
                f"secure aggregation sums each device's weight, up to {QUANTIZATION_LEVELS} "
                f"levels, modulo {MASK_MODULUS}: {self.sampled_devices} devices a round would "
                f"overflow it; sample fewer than {MASK_MODULUS // QUANTIZATION_LEVELS}"
            )
        if self.sampled_devices < shares:
            raise ValueError(
                f"secure aggregation shares each device's keys among {shares} devices, but a "
                f"round samples {self.sampled_devices}: lower secagg-shares or raise "
                "fraction-train"
            )

    @property
    def sampled_devices(self) -> int:
        """Devices asked to train each round (Flower's FedAvg: a fraction, at least 2)."""
        return max(2, round(self.fraction_train * self.devices))

    @property
    def dp(self) -> bool:
        """Whether DP at either level covers what devices send."""
        return self.privacy.enabled or self.user_privacy.enabled

    @property
    def device_evaluation(self) -> bool:
        """Whether the server asks devices to evaluate. A device's reply holds its held-out
        item's HR@10, nDCG@10 and MRR, which no noise covers: under DP at either level only
        when ``evaluate_outside_dp`` says so, and the device checks it too
        (``fedrec.client.app.evaluate_device``)."""
        return self.fraction_evaluate > 0 and (self.evaluate_outside_dp or not self.dp)

    @property
    def update_norm_bound(self) -> float:
        """The norm above which the server drops an update: ``max_update_norm``, but none
        under distributed or user-level DP, whose guarantees cover only the noised sum:
        dropping a device because of its update's norm would make the set of devices that
        count depend on their data, and that set shows in the release. Under both the server
        drops only malformed updates (and clips each one under user-level DP)."""
        if self.privacy.distributed or self.user_privacy.enabled:
            return math.inf
        return self.max_update_norm

    @property
    def usable_update_share(self) -> float:
        """The least share of a round's replies that must be usable updates for the round to
        be applied: ``min_update_share``, but none under user-level DP, where a device that
        fails or is dropped counts as a zero update (``SampledMeanStrategy``) and a round
        skipped because of single replies would show what they were."""
        return 0.0 if self.user_privacy.enabled else self.min_update_share

    @property
    def secret_sampling(self) -> bool:
        """Whether the server draws each round's devices from the operating system's randomness
        rather than the run's seed: under user-level DP, whose accounting amplifies by a
        sampling of devices nobody can predict."""
        return self.user_privacy.enabled

    @property
    def noise_shares(self) -> int:
        """Under distributed DP, the devices whose noise shares must sum to one step's noise:
        the fewest usable updates a round may aggregate (``min_update_share`` of those sampled,
        at least 1). Each device adds noise of 1/sqrt(noise_shares) of the step's standard
        deviation, so a round that aggregates more updates carries more noise than the plan,
        never less."""
        return max(1, math.ceil(self.min_update_share * self.sampled_devices - 1e-9))

    @property
    def planned_participations(self) -> int:
        """Rounds a device plans its DP noise for. Sampled with probability p = sampled/devices
        in each of R rounds, it trains a binomial number of them: mean R p, deviation
        sqrt(R p (1 - p)). The plan is the mean plus ``participation_margin`` deviations, at
        most R; a device sampled more often refuses once its budget is spent."""
        share = self.sampled_devices / self.devices  # 1 when all train: the plan is then R
        mean = self.rounds * share
        spread = math.sqrt(mean * (1 - share))
        return min(self.rounds, math.ceil(mean + self.participation_margin * spread - 1e-9))

    @classmethod
    def for_data(cls, data: str, **overrides: Any) -> FederationSettings:
        """The documented defaults for data spec ``data`` (by its kind: ``demo``,
        ``movielens``; any other kind takes the plain defaults), with ``NO_DP_DEFAULTS`` over
        them when ``overrides`` leave both DP levels off, ``DISTRIBUTED_DP_DEFAULTS`` when they
        turn distributed DP on, or devices training only ``USER_DP_TRAINED`` when they turn
        user-level DP on, then ``overrides``."""
        kind = data.partition(":")[0]
        defaults = DATA_DEFAULTS.get(kind, {})
        record = overrides.get("privacy", PrivacyConfig())
        user = overrides.get("user_privacy", UserPrivacyConfig())
        if not (record.enabled or user.enabled):
            defaults = {**defaults, **NO_DP_DEFAULTS.get(kind, {})}
        if record.distributed:
            defaults = {**defaults, **DISTRIBUTED_DP_DEFAULTS.get(kind, DISTRIBUTED_DP)}
        if user.enabled:
            defaults = {**defaults, "local": user_level_local(defaults.get("local", LocalConfig()))}
        return cls(**{**defaults, "data": data, **overrides})

    def to_run_config(self) -> dict[str, bool | int | float | str]:
        """Flat ``kebab-case`` keys; nested configs are prefixed (``local-epochs``, ``dp-...``)."""
        flat: dict[str, bool | int | float | str] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if dataclasses.is_dataclass(value):
                for inner in fields(value):
                    item = getattr(value, inner.name)
                    if item is not None:
                        flat[_key(_PREFIX[f.name] + inner.name)] = item
            else:
                flat[_key(f.name)] = value
        return flat

    @classmethod
    def from_run_config(cls, config: Mapping[str, Any]) -> FederationSettings:
        """Settings from a run config; unknown keys are an error that names them."""
        nested: dict[str, dict[str, Any]] = {name: {} for name in _PREFIX}
        top: dict[str, Any] = {}
        defaults: dict[str, Any] = {**cls().to_run_config(), "dp-noise-multiplier": 1.0}
        unknown = sorted(set(config) - set(defaults))
        if unknown:
            raise ValueError(f"unknown run-config keys {unknown}; known: {sorted(defaults)}")
        for key, raw in config.items():
            value = _typed(key, raw, defaults[key])
            name = key.replace("-", "_")
            for group, prefix in _PREFIX.items():
                if name.startswith(prefix):
                    nested[group][name.removeprefix(prefix)] = value
                    break
            else:
                top[name] = value
        return cls(
            **top,
            model=ModelConfig(**nested["model"]),
            local=LocalConfig(**nested["local"]),
            privacy=PrivacyConfig(**nested["privacy"]),
            user_privacy=UserPrivacyConfig(**nested["user_privacy"]),
        )

    def with_run_config(self, overrides: Mapping[str, Any]) -> FederationSettings:
        """These settings with some run-config keys replaced (``fedrec simulate --set``)."""
        return self.from_run_config({**self.to_run_config(), **overrides})


#: The largest run seed: devices derive theirs from it (``seed * 1_000_003 + ...``), which must
#: stay within torch's 64-bit generator seeds.
MAX_SEED = 2**32 - 1

_PREFIX = {"model": "model_", "local": "local_", "privacy": "dp_", "user_privacy": "user_dp_"}

#: ``fedrec simulate --data SPEC`` without flags (docs/federated.md gives the figures they
#: reach): the demo runs every device each round; MovieLens samples a fifth of its 610 devices
#: per round for 25 rounds and caps each device's examples at its latest 128, to finish in an
#: hour on 2 cores.
DATA_DEFAULTS: dict[str, dict[str, Any]] = {
    "demo": {"devices": 50, "rounds": 5},
    "movielens": {
        "devices": 610,
        "rounds": 25,
        "fraction_train": 0.2,
        "fraction_evaluate": 0.1,
        "local": LocalConfig(max_examples=128),
    },
}

#: What ``fedrec simulate --data SPEC --no-dp`` changes in ``DATA_DEFAULTS``: on MovieLens,
#: FedAdam over local SGD with a falling server step for 100 rounds, which meets the target
#: without DP (docs/federated.md). Under DP the server's Adam normalises every coordinate by
#: the noise, and FedAvg over local Adam does better, so the DP defaults keep it (also for
#: user-level DP alone).
NO_DP_DEFAULTS: dict[str, dict[str, Any]] = {
    "movielens": {
        "rounds": 100,
        "strategy": "fedadam",
        "server_tau": 1e-4,
        "server_schedule": "cosine",
        "local": dataclasses.replace(
            DATA_DEFAULTS["movielens"]["local"], optimizer="sgd", learning_rate=0.1
        ),
    },
}


#: What ``fedrec simulate --distributed-dp`` changes: each round one DP-SGD step of the sampled
#: devices' examples together, which the server steps as ``fedrec pooled`` does (SGD with
#: momentum 0.9 at 3, in units of the mean clipped gradient, falling along a cosine), on the
#: catalog-centred features ``fedrec pooled`` learns best from (docs/model.md). A round
#: aggregates at least 0.9 of the sampled devices' updates, so each adds the noise share of
#: that many (``FederationSettings.noise_shares``).
DISTRIBUTED_DP: dict[str, Any] = {
    "server_momentum": 0.9,
    "server_learning_rate": 3.0,
    "server_schedule": "cosine",
    "min_update_share": 0.9,
    "model": dataclasses.replace(federated_model(), center_features=True),
}
#: ``DISTRIBUTED_DP`` per data set: MovieLens runs 230 rounds (docs/privacy.md, "Distributed DP").
DISTRIBUTED_DP_DEFAULTS: dict[str, dict[str, Any]] = {
    "movielens": {**DISTRIBUTED_DP, "rounds": 230},
}


#: What devices train under user-level DP unless told otherwise: the 20 recency weights, since
#: the server's noise grows with the square root of the parameters sent (docs/privacy.md,
#: "User-level: DP-FedAvg").
USER_DP_TRAINED = "users.recency"


def user_level_local(local: LocalConfig) -> LocalConfig:
    """``local`` as user-level DP takes it: training ``USER_DP_TRAINED`` where ``local``
    trains every part."""
    if local.trained != ALL_PARTS:
        return local
    return dataclasses.replace(local, trained=USER_DP_TRAINED)


#: Run-config keys a resumed run may change: how long it runs and to what budget, what it
#: evaluates and publishes, how it screens updates, where its folder is. Every other key fixes
#: what the run trains, on which devices, and how its privacy is accounted (user-level epsilon
#: assumes one sampling rate and clipping norm in every round).
RESUMABLE_KEYS = frozenset(
    {
        "rounds",
        "out",
        "fraction-evaluate",
        "evaluate-outside-dp",
        "participation-margin",
        "max-update-norm",
        "min-update-share",
        "bundle-every",
        "bundle-format",
        "dp-target-epsilon",
        "user-dp-target-epsilon",
    }
)


def resume_conflicts(started: Mapping[str, Any], settings: FederationSettings) -> list[str]:
    """What ``settings`` changes, outside ``RESUMABLE_KEYS``, in the run config a run
    ``started`` with: one ``'key: before -> now'`` per key. A key that run config lacks (one
    fedrec added since) counts as its default, which keeps what fedrec did before it."""
    now = settings.to_run_config()
    defaults = FederationSettings().to_run_config()
    before = {key: started.get(key, defaults.get(key)) for key in set(started) | set(now)}
    return [
        f"{key}: {before[key]!r} -> {now.get(key)!r}"
        for key in sorted(before)
        if key not in RESUMABLE_KEYS and before[key] != now.get(key)
    ]


def _key(name: str) -> str:
    return name.replace("_", "-")


_KINDS = {bool: "true or false", int: "an integer", float: "a number", str: "text"}


def _typed(key: str, value: Any, default: bool | int | float | str) -> Any:
    """``value`` if it has the type of the key's default (an int where a float is due becomes
    a float), else an error that names the key."""
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if type(value) is not type(default):
        kind = _KINDS[type(default)]
        raise ValueError(f"run-config key {key!r} takes {kind}, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"run-config key {key!r} takes a finite number, got {value!r}")
    return value
