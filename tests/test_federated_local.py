"""A device's local round: its examples, DP-SGD with Opacus, and the accountant it carries."""

from __future__ import annotations

import dataclasses
import gc
import itertools
from collections.abc import Sequence

import dp_accounting
import numpy as np
import pytest
import torch
from dp_accounting import rdp

from fedrec.shared.data.dataset import Interactions, UserTexts
from fedrec.shared.federated.examples import DeviceExamples, device_examples
from fedrec.shared.federated.ledger import LedgerEntry, PrivacyLedger, epsilon_of
from fedrec.shared.federated.local import (
    RDP_ORDERS,
    LocalConfig,
    PrivacyConfig,
    RoundPlan,
    plan_round,
    train_local,
)
from fedrec.shared.federated.schedule import schedule_share
from fedrec.shared.federated.user_level import UserPrivacyConfig
from fedrec.shared.model.events import build_sequences
from fedrec.shared.model.network import ModelConfig, Recommender

SMALL = ModelConfig(feature_dim=12, item_dim=12, hidden_dim=8, pool_window=3, start_events=2)
ITEMS = 30
LOCAL = LocalConfig(batch_size=4, context=4, negatives=5, learning_rate=1e-2)
OFF = PrivacyConfig(enabled=False)


def sequences(events: int = 24):
    """One user: items 0, 1, 2, ... in order, with a text after the third event."""
    interactions = Interactions(
        users=np.zeros(events, dtype=np.int64),
        items=np.arange(events, dtype=np.int64) % ITEMS,
        timestamps=np.arange(events, dtype=np.int64) * 10,
        values=np.ones(events, dtype=np.float32),
    )
    texts = UserTexts(
        users=np.zeros(1, dtype=np.int64),
        texts=["a note"],
        timestamps=np.array([25], dtype=np.int64),
        items=np.full(1, -1, dtype=np.int64),
    )
    return build_sequences(1, ITEMS, interactions, texts)


def plan(examples: DeviceExamples, privacy: PrivacyConfig, rounds: int) -> RoundPlan:
    """The round a device with ``examples`` trains, planned for ``rounds`` rounds."""
    return plan_round(len(examples), LOCAL, privacy, rounds)


def table() -> torch.Tensor:
    return torch.randn(ITEMS + 1, 12, generator=torch.Generator().manual_seed(0))


def test_examples_are_the_events_before_each_next_item() -> None:
    seqs = sequences()
    examples = device_examples(seqs, 0, context=4, max_examples=100)
    rows = seqs.rows[seqs.user(0)]
    assert len(examples) == 24  # every event but the last item: 23 items and the text
    for i in range(len(examples)):
        end = int(np.flatnonzero(seqs.next_items[seqs.user(0)] >= 0)[i])
        length = int(examples.lengths[i])
        assert length == min(4, end + 1)
        np.testing.assert_array_equal(examples.rows[i, :length], rows[end + 1 - length : end + 1])
        assert (examples.rows[i, length:] == 0).all()
        assert examples.targets[i] == seqs.next_items[end]
    assert ITEMS in examples.rows  # the text (feature row ITEMS) is context
    latest = device_examples(seqs, 0, context=4, max_examples=5)
    np.testing.assert_array_equal(latest.targets, examples.targets[-5:])


def test_training_without_dp_updates_the_network_in_place() -> None:
    torch.manual_seed(0)
    network = Recommender(SMALL)
    before = {k: v.clone() for k, v in network.state_dict().items()}
    examples = device_examples(sequences(), 0, 4, 100)
    first = train_local(network, table(), ITEMS, examples, LOCAL, OFF, plan(examples, OFF, 1))
    assert first.epsilon is None
    assert first.num_examples == len(examples)
    changed = [k for k, v in network.state_dict().items() if not torch.equal(v, before[k])]
    assert "users.lstm.weight_ih_l0" in changed and "items.project.weight" in changed
    for _ in range(5):
        last = train_local(network, table(), ITEMS, examples, LOCAL, OFF, plan(examples, OFF, 1))
    assert last.loss < first.loss


@pytest.mark.parametrize("privacy", [OFF, PrivacyConfig()], ids=["no-dp", "dp"])
def test_a_device_trains_only_the_parts_it_is_told_to(privacy: PrivacyConfig) -> None:
    """With ``trained`` set, local SGD moves only those parts (the LSTM keeps its weights even
    though Opacus swaps it for its own LSTM under DP)."""
    torch.manual_seed(0)
    network = Recommender(SMALL)
    before = {k: v.clone() for k, v in network.state_dict().items()}
    examples = device_examples(sequences(), 0, 4, 100)
    local = dataclasses.replace(
        LOCAL, optimizer="sgd", learning_rate=0.5, trained="items,users.project"
    )
    train_local(network, table(), ITEMS, examples, local, privacy, plan(examples, privacy, 1))
    changed = {k for k, v in network.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {
        "items.project.weight",
        "items.project.bias",
        "users.project.weight",
        "users.project.bias",
    }


def independent_epsilon(history: Sequence[Sequence[float]], delta: float) -> float:
    accountant = rdp.RdpAccountant(orders=list(RDP_ORDERS))
    for sigma, q, steps in history:
        event = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma))
        accountant.compose(event, int(steps))
    return float(accountant.get_epsilon(delta))


def test_dp_rounds_accumulate_epsilon_within_the_planned_budget() -> None:
    torch.manual_seed(0)
    network = Recommender(SMALL)
    examples = device_examples(sequences(), 0, 4, 100)
    privacy = PrivacyConfig(target_epsilon=3.0, delta=1e-5)
    history: list[tuple[float, float, int]] = []
    epsilons = []
    planned = plan(examples, privacy, 3)
    for round_ in range(3):
        result = train_local(
            network, table(), ITEMS, examples, LOCAL, privacy, planned, seed=round_
        )
        assert result.noise_multiplier is not None and result.noise_multiplier > 0.5
        assert result.epsilon is not None
        mechanism = (result.noise_multiplier, result.sample_rate, result.steps)
        # the round's own figure, by Opacus' accountant, is that of its mechanism alone
        assert result.epsilon == pytest.approx(independent_epsilon([mechanism], 1e-5), rel=1e-6)
        history.append(mechanism)  # as a device's ledger keeps it
        epsilons.append(epsilon_of("rdp", history, 1e-5))
        assert epsilons[-1] == pytest.approx(independent_epsilon(history, 1e-5), rel=1e-6)
    assert epsilons[0] < epsilons[1] < epsilons[2] <= 3.0 + 0.01
    assert epsilons[2] > 2.5  # the plan spends the budget, it does not waste it
    q = 4 / len(examples)
    steps = LOCAL.epochs * round(1 / q)  # epochs x steps per epoch
    assert history == [(planned.noise_multiplier, pytest.approx(q), steps)] * 3


def test_a_dp_round_leaves_no_tensors_for_the_garbage_collector() -> None:
    """Opacus' hooks put the per-example gradients in reference cycles; a round releases
    them, so that a process training device after device (a Ray actor) does not grow until
    a full collection happens to run."""
    network = Recommender(SMALL)
    examples = device_examples(sequences(), 0, 4, 100)
    privacy = PrivacyConfig()
    planned = plan(examples, privacy, 3)
    train_local(network, table(), ITEMS, examples, LOCAL, privacy, planned)  # warm caches
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)  # unreachable objects go to gc.garbage, for inspection
    try:
        train_local(network, table(), ITEMS, examples, LOCAL, privacy, planned, seed=1)
        gc.collect()
        cyclic = [o for o in gc.garbage if isinstance(o, torch.Tensor)]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert cyclic == []


def test_fixed_noise_and_the_prv_accountant() -> None:
    examples = device_examples(sequences(), 0, 4, 100)
    privacy = PrivacyConfig(noise_multiplier=2.0, accountant="prv")
    result = train_local(
        Recommender(SMALL), table(), ITEMS, examples, LOCAL, privacy, plan(examples, privacy, 1)
    )
    assert result.noise_multiplier == 2.0
    assert result.epsilon is not None and 0 < result.epsilon < 2
    mechanism = (2.0, result.sample_rate, result.steps)
    assert result.epsilon == pytest.approx(epsilon_of("prv", [mechanism], 1e-5), rel=1e-3)


def test_bad_configs_and_an_empty_device() -> None:
    with pytest.raises(ValueError, match="accountant must be 'rdp' or 'prv'"):
        PrivacyConfig(accountant="gdp")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="target_epsilon must be a finite number > 0, got 0"):
        PrivacyConfig(target_epsilon=0)
    with pytest.raises(ValueError, match=r"delta must be in \(0, 1\), got 2"):
        PrivacyConfig(delta=2)
    with pytest.raises(
        ValueError, match=r"user-level target_epsilon must be a finite number > 0, got -1"
    ):
        UserPrivacyConfig(target_epsilon=-1)
    with pytest.raises(ValueError, match="negatives must be at least 1"):
        LocalConfig(negatives=0)
    with pytest.raises(ValueError, match="optimizer must be 'adam' or 'sgd'"):
        LocalConfig(optimizer="lbfgs")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="trained must be 'all' or comma-separated"):
        LocalConfig(trained=" ")
    with pytest.raises(ValueError, match="momentum applies to the 'sgd' optimizer only"):
        LocalConfig(momentum=0.9)
    with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\), got 1.0"):
        LocalConfig(optimizer="sgd", momentum=1.0)
    with pytest.raises(ValueError, match=r"schedule must be one of .*'linear'"):
        LocalConfig(schedule="linear")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="name no module"):
        train_local(
            Recommender(SMALL),
            table(),
            ITEMS,
            device_examples(sequences(), 0, 4, 100),
            dataclasses.replace(LOCAL, trained="items,tower"),
            OFF,
            plan_round(9, LOCAL, OFF, 1),
        )
    empty = device_examples(sequences(1), 0, 4, 100)
    with pytest.raises(ValueError, match="no examples"):
        plan_round(len(empty), LOCAL, OFF, 1)
    with pytest.raises(ValueError, match="no examples"):
        train_local(
            Recommender(SMALL), table(), ITEMS, empty, LOCAL, OFF, plan_round(9, LOCAL, OFF, 1)
        )


def test_the_plan_matches_what_opacus_samples_and_steps() -> None:
    examples = device_examples(sequences(23), 0, 4, 100)  # 23 examples, batches of 4: 6 batches
    round_plan = plan_round(len(examples), LOCAL, PrivacyConfig(), planned_rounds=2)
    assert (round_plan.batch_size, round_plan.sample_rate, round_plan.steps) == (
        4,
        1 / 6,
        LOCAL.epochs * 6,
    )
    result = train_local(
        Recommender(SMALL), table(), ITEMS, examples, LOCAL, PrivacyConfig(), round_plan
    )
    assert result.steps == round_plan.steps and result.sample_rate == round_plan.sample_rate
    assert round_plan.noise_multiplier is not None and result.epsilon is not None
    mechanism = (round_plan.noise_multiplier, 1 / 6, round_plan.steps)  # what Opacus accounted
    assert result.epsilon == pytest.approx(independent_epsilon([mechanism], 1e-5), rel=1e-6)


def test_the_ledger_recomputes_epsilon_and_round_trips() -> None:
    entries = []
    history: list[tuple[float, float, int]] = []
    for round_, (sigma, q, steps) in enumerate([(1.2, 0.25, 8), (1.2, 0.25, 8), (2.0, 0.1, 20)]):
        history.append((sigma, q, steps))
        epsilon = epsilon_of("rdp", history, 1e-5)
        assert epsilon == pytest.approx(independent_epsilon(history, 1e-5), rel=1e-6)
        entries.append(LedgerEntry(round_ + 1, epsilon, 1e-5, "rdp", sigma, q, steps, 1.0))
    ledger = PrivacyLedger(tuple(entries))
    assert ledger.spent == entries[-1].epsilon and PrivacyLedger().spent == 0.0
    assert PrivacyLedger.from_json(ledger.to_json()) == ledger
    assert ledger.history("rdp") == history
    with pytest.raises(ValueError, match=r"kept with the \['rdp'\] accountant; .* 'prv'"):
        ledger.history("prv")
    with pytest.raises(ValueError, match="malformed privacy ledger"):
        PrivacyLedger.from_json({"entries": [{"round": 1}]})
    assert epsilon_of("prv", [], 1e-5) == 0.0


def test_the_cosine_schedule_falls_from_the_whole_step_to_near_zero() -> None:
    assert [schedule_share("constant", step, 4) for step in range(4)] == [1.0] * 4
    shares = [schedule_share("cosine", step, 4) for step in range(4)]
    assert shares[0] == 1.0 and shares[2] == pytest.approx(0.5)
    assert all(a > b > 0 for a, b in itertools.pairwise(shares))
    with pytest.raises(ValueError, match="schedule must be one of"):
        schedule_share("linear", 0, 4)


@pytest.mark.parametrize("privacy", [OFF, PrivacyConfig()], ids=["no-dp", "dp"])
def test_each_step_takes_the_scheduled_rate_with_momentum(
    privacy: PrivacyConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    rates: list[float] = []
    momenta: list[float] = []
    step = torch.optim.SGD.step

    def recording_step(self: torch.optim.SGD, *args: object, **kwargs: object) -> object:
        rates.append(self.param_groups[0]["lr"])
        momenta.append(self.param_groups[0]["momentum"])
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", recording_step)
    local = dataclasses.replace(
        LOCAL, optimizer="sgd", momentum=0.9, schedule="cosine", learning_rate=2.0
    )
    examples = device_examples(sequences(), 0, 4, 100)
    round_plan = plan_round(len(examples), local, privacy, 1)
    result = train_local(Recommender(SMALL), table(), ITEMS, examples, local, privacy, round_plan)
    assert result.steps == round_plan.steps == len(rates)
    assert rates == pytest.approx(
        [2.0 * schedule_share("cosine", i, len(rates)) for i in range(len(rates))]
    )
    assert set(momenta) == {0.9}


def test_momentum_starts_from_the_first_gradient_and_then_carries_it() -> None:
    examples = device_examples(sequences(), 0, 4, 100)
    one_step = dataclasses.replace(LOCAL, optimizer="sgd", epochs=1, batch_size=len(examples))
    trained = {}
    for name, local in {
        "plain": one_step,
        "momentum": dataclasses.replace(one_step, momentum=0.9),
        "plain, 3 epochs": dataclasses.replace(one_step, epochs=3),
        "momentum, 3 epochs": dataclasses.replace(one_step, epochs=3, momentum=0.9),
    }.items():
        torch.manual_seed(0)
        network = Recommender(SMALL)
        train_local(
            network, table(), ITEMS, examples, local, OFF, plan_round(len(examples), local, OFF, 1)
        )
        trained[name] = network.state_dict()
    assert all(torch.equal(trained["plain"][k], v) for k, v in trained["momentum"].items())
    assert not all(
        torch.equal(trained["plain, 3 epochs"][k], v)
        for k, v in trained["momentum, 3 epochs"].items()
    )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_round_on_the_gpu_matches_the_cpu() -> None:
    examples = device_examples(sequences(), 0, 4, 100)
    round_plan = plan(examples, OFF, 1)
    networks = []
    for device in ("cpu", "cuda"):
        torch.manual_seed(0)
        network = Recommender(SMALL)
        train_local(network, table(), ITEMS, examples, LOCAL, OFF, round_plan, device=device)
        networks.append(network.state_dict())
    for name, weights in networks[0].items():
        assert networks[1][name].device.type == "cpu"
        torch.testing.assert_close(networks[1][name], weights, rtol=1e-4, atol=1e-5)
    private = train_local(
        Recommender(SMALL),
        table(),
        ITEMS,
        examples,
        LOCAL,
        PrivacyConfig(),
        plan(examples, PrivacyConfig(), 1),
        device="cuda",
    )
    assert private.epsilon is not None and 0 < private.epsilon <= 8.0
