"""Distributed DP: a device's share of one DP-SGD step, the server's momentum, and how the
shares add up to one step's noise."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from opacus.accountants import create_accountant

from fedrec.shared.federated import randomness
from fedrec.shared.federated.distributed import (
    gradient_share,
    plan_step,
    share_noise_multiplier,
)
from fedrec.shared.federated.examples import DeviceExamples
from fedrec.shared.federated.ledger import epsilon_of
from fedrec.shared.federated.local import (
    ExampleScorer,
    LocalConfig,
    PrivacyConfig,
    accountant_options,
    plan_noise,
)
from fedrec.shared.federated.settings import FederationSettings
from fedrec.shared.federated.user_level import UserPrivacyConfig
from fedrec.shared.federated.validation import too_few_updates
from fedrec.shared.model.network import ModelConfig, Recommender, trained_names

SMALL = ModelConfig(feature_dim=12, item_dim=12, hidden_dim=8, pool_window=3, start_events=2)
ITEMS = 30
LOCAL = LocalConfig(context=4, negatives=5)
DISTRIBUTED = PrivacyConfig(distributed=True, sample_rate=1.0)
TRAINED = "items,users.project"


def _examples(count: int = 24) -> DeviceExamples:
    """``count`` examples of up to 4 events over ``ITEMS`` items and one text row."""
    rng = np.random.default_rng(1)
    lengths = rng.integers(1, 5, size=count)
    rows = rng.integers(0, ITEMS + 1, size=(count, 4)) * (np.arange(4) < lengths[:, None])
    types = (rows == ITEMS).astype(np.int64)
    return DeviceExamples(rows, types, lengths, rng.integers(0, ITEMS, size=count))


def _table() -> torch.Tensor:
    return torch.randn(ITEMS + 1, 12, generator=torch.Generator().manual_seed(0))


def _network() -> Recommender:
    torch.manual_seed(0)
    return Recommender(SMALL)


def _moved(before: Recommender, after: Recommender, names: list[str]) -> torch.Tensor:
    """How far ``after``'s ``names`` moved from ``before``'s, flattened."""
    old, new = before.state_dict(), after.state_dict()
    return torch.cat([(new[n] - old[n]).flatten() for n in names])


def test_a_share_moves_the_weights_by_the_clipped_gradient_sum_over_the_expected_batch() -> None:
    """At sampling rate 1 and next to no noise, the share is the sum of every example's
    gradient clipped to the norm, computed here one example at a time without Opacus; the
    device moves its weights by minus that sum over its expected batch (rate times examples)."""
    examples = _examples()
    local = dataclasses.replace(LOCAL, trained=TRAINED)
    privacy = dataclasses.replace(DISTRIBUTED, max_grad_norm=0.05)
    network, reference = _network(), _network()
    gradient_share(network, _table(), ITEMS, examples, local, privacy, 1e-9, 1, seed=7)
    names = trained_names(reference, TRAINED)
    scorer = ExampleScorer(reference, _table())
    params = dict(reference.named_parameters())
    negatives = torch.randint(
        ITEMS, (len(examples), local.negatives), generator=torch.Generator().manual_seed(7)
    )
    total = torch.zeros(sum(params[n].numel() for n in names))
    clipped = 0
    for i in range(len(examples)):
        one = [torch.from_numpy(a[i : i + 1]) for a in (examples.rows, examples.types)]
        lengths = torch.from_numpy(examples.lengths[i : i + 1])
        target = torch.from_numpy(examples.targets[i : i + 1])
        logits = scorer(*one, lengths, torch.cat([target[:, None], negatives[i : i + 1]], 1))
        loss = F.cross_entropy(logits, torch.zeros(1, dtype=torch.long))
        grads = torch.autograd.grad(loss, [params[n] for n in names])
        flat = torch.cat([g.flatten() for g in grads])
        clipped += bool(flat.norm() > privacy.max_grad_norm)
        total += flat * min(1.0, privacy.max_grad_norm / (float(flat.norm()) + 1e-6))
    assert clipped > len(examples) // 2  # the clipping is exercised, not idle
    expected = -total / (privacy.sample_rate * len(examples))
    torch.testing.assert_close(_moved(reference, network, names), expected, atol=1e-6, rtol=1e-4)
    untouched = set(reference.state_dict()) - set(names)
    assert all(torch.equal(network.state_dict()[n], reference.state_dict()[n]) for n in untouched)


def test_a_share_carries_its_part_of_the_noise_drawn_where_the_server_cannot_predict_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With no example sampled, the move times the expected batch is the noise alone:
    Gaussian with standard deviation sigma * clipping norm / sqrt(shares), so that the shares
    of ``shares`` devices sum to one step's noise; two rounds with the same seed draw new noise.
    The OS's random bytes are replaced by a seeded stream, so the check is reproducible."""
    stream = np.random.default_rng(3)
    monkeypatch.setattr(randomness.os, "urandom", lambda size: stream.bytes(size))
    examples = _examples()
    local = dataclasses.replace(LOCAL, trained="all")
    privacy = PrivacyConfig(distributed=True, sample_rate=1e-12, max_grad_norm=2.0)
    sigma, shares = 1.5, 9
    moves = []
    for _ in range(2):
        network = _network()
        result = gradient_share(network, _table(), ITEMS, examples, local, privacy, sigma, shares)
        assert result.sampled == 0 and result.loss == 0.0
        names = trained_names(network, "all")
        moves.append(_moved(_network(), network, names) * privacy.sample_rate * len(examples))
    noise = torch.cat(moves)  # two independent draws: 1,926 values
    assert noise.numel() > 1900
    expected = sigma * privacy.max_grad_norm / math.sqrt(shares)
    assert float(noise.std()) == pytest.approx(expected, rel=0.06)
    assert abs(float(noise.mean())) < 4 * expected / math.sqrt(noise.numel())
    assert not torch.allclose(moves[0], moves[1])
    assert share_noise_multiplier(sigma, shares) == pytest.approx(sigma / 3)
    total = math.sqrt(shares * share_noise_multiplier(sigma, shares) ** 2)
    assert total == pytest.approx(sigma)  # the shares' variances add up to the step's
    with pytest.raises(ValueError, match="shares must be at least 1"):
        share_noise_multiplier(sigma, 0)


def test_a_round_is_one_step_at_the_sampling_rate_planned_for_the_participations() -> None:
    """The ledger accounts a distributed round as one Poisson-sampled Gaussian step of the
    whole step's noise; ``planned`` rounds of it spend the target, and no more."""
    privacy = PrivacyConfig(distributed=True, sample_rate=0.2, target_epsilon=3.0)
    plan = plan_step(privacy, 40)
    assert (plan.sample_rate, plan.steps) == (0.2, 1)
    assert plan.noise_multiplier == plan_noise(privacy, 0.2, 40)
    history = [(plan.noise_multiplier, 0.2, 1)] * 40
    assert 3.0 - 0.01 <= epsilon_of("rdp", history, 1e-5) <= 3.0  # Opacus' search tolerance
    for accountant in ("rdp", "prv"):  # the ledger merges the rounds; Opacus composes each
        unmerged = create_accountant(accountant)
        unmerged.history = list(history)
        expected = unmerged.get_epsilon(1e-5, **accountant_options(accountant))
        assert epsilon_of(accountant, history, 1e-5) == pytest.approx(expected, rel=1e-9)


def test_the_settings_of_distributed_dp_and_the_servers_momentum() -> None:
    settings = FederationSettings(
        devices=40,
        fraction_train=0.5,
        min_update_share=0.9,
        server_momentum=0.9,
        privacy=PrivacyConfig(distributed=True, sample_rate=0.05),
    )
    assert settings.noise_shares == 18  # 0.9 of the 20 sampled
    assert dataclasses.replace(settings, min_update_share=0.0).noise_shares == 1
    config = settings.to_run_config()
    assert (config["dp-distributed"], config["dp-sample-rate"], config["server-momentum"]) == (
        True,
        0.05,
        0.9,
    )
    assert FederationSettings.from_run_config(config) == settings
    movielens = FederationSettings.for_data("movielens:x", privacy=PrivacyConfig(distributed=True))
    assert (movielens.rounds, movielens.server_learning_rate, movielens.min_update_share) == (
        230,
        3.0,
        0.9,
    )
    demo = FederationSettings.for_data("demo", privacy=PrivacyConfig(distributed=True))
    assert demo.rounds == 5 and demo.server_momentum == 0.9 and demo.model.center_features
    with pytest.raises(ValueError, match="sample_rate must be in"):
        PrivacyConfig(sample_rate=0.0)
    with pytest.raises(ValueError, match="distributed DP needs record-level DP enabled"):
        PrivacyConfig(enabled=False, distributed=True)
    with pytest.raises(ValueError, match="server_momentum applies to the 'fedavg'"):
        FederationSettings(server_momentum=0.9, strategy="fedadam")
    with pytest.raises(ValueError, match="server_momentum must be in"):
        dataclasses.replace(settings, server_momentum=1.0)
    with pytest.raises(ValueError, match="distributed DP steps the global model with SGD"):
        dataclasses.replace(settings, server_momentum=0.0, strategy="fedadam")
    with pytest.raises(ValueError, match="cannot be combined"):
        dataclasses.replace(settings, user_privacy=UserPrivacyConfig(enabled=True))


def test_a_round_with_fewer_updates_than_noise_shares_is_not_applied() -> None:
    assert too_few_updates(18, 20, 0.5, noise_shares=18) is None
    assert "fewer than the 18 noise shares" in str(too_few_updates(17, 20, 0.5, noise_shares=18))
    assert too_few_updates(17, 20, 0.5) is None  # without distributed DP, the share alone


def test_the_secret_generator_takes_its_whole_state_from_the_os(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """torch's CPU generator keeps 32 bits of a seed: seeds 5 and 5 + 2^32 draw the same, so a
    seeded generator could be found by trying 2^32 seeds. The secret generator's 624 state
    words are the OS's random bytes, and two of them draw differently."""
    seeded = [torch.rand(4, generator=torch.Generator().manual_seed(5 + k * 2**32)) for k in (0, 1)]
    assert torch.equal(*seeded)  # why manual_seed(secrets.randbits(63)) was not enough
    words = np.arange(1, randomness.MT_WORDS + 1, dtype=np.uint32)
    monkeypatch.setattr(randomness.os, "urandom", lambda size: words.tobytes()[:size])
    state = randomness.secret_generator().get_state().numpy()
    start = randomness._WORDS_AT
    saved = state[start : start + 8 * randomness.MT_WORDS].view(np.uint64)
    np.testing.assert_array_equal(saved, words.astype(np.uint64))
    monkeypatch.undo()
    first, second = randomness.secret_generator(), randomness.secret_generator()
    assert not torch.equal(torch.rand(8, generator=first), torch.rand(8, generator=second))
